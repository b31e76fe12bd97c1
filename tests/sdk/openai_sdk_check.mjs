// Drive weir with the official `openai` JavaScript SDK, changing only baseURL.
//
// Run by tests/e2e/sdk.rs against a gateway in front of a scripted mock
// upstream; the upstream's replies are queued in the order of the calls
// below (the same as openai_sdk_check.py's). Exits non-zero with a message
// on the first mismatch.
//
//   node tests/sdk/openai_sdk_check.mjs BASE_URL KEY

import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

function check(cond, what) {
  if (!cond) {
    console.error(`FAIL: ${what}`);
    process.exit(1);
  }
}

// Run `call`, which must throw an instance of `type`; return the error.
async function rejects(call, type, what) {
  try {
    await call();
  } catch (err) {
    check(err instanceof type, `${what}: ${err}`);
    return err;
  }
  check(false, `${what} must throw`);
}

// models.list() returns the configured model names.
const ids = [];
for await (const model of client.models.list()) ids.push(model.id);
check(JSON.stringify(ids) === '["chat","embed"]', `models.list: ${ids}`);

// 1. Not streamed, with tools and response_format passing through.
const r = await client.chat.completions.create({
  model: "chat",
  messages: [{ role: "user", content: "hello" }],
  tools: [{ type: "function", function: { name: "f", parameters: { type: "object" } } }],
  response_format: { type: "text" },
});
check(r.model === "chat", `model ${r.model}`);
check(r.choices[0].message.content === "Hello from upstream", `content ${r.choices[0].message.content}`);
check(r.usage.prompt_tokens === 11 && r.usage.completion_tokens === 3, `usage ${JSON.stringify(r.usage)}`);

// 2. Streamed with include_usage.
let text = "";
let usage = null;
for await (const chunk of await client.chat.completions.create({
  model: "chat",
  messages: [{ role: "user", content: "stream please" }],
  stream: true,
  stream_options: { include_usage: true },
})) {
  if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
check(text === "Hello from upstream", `streamed text ${text}`);
check(usage?.completion_tokens === 3, `stream usage ${JSON.stringify(usage)}`);

// 3. A streamed tool call, reassembled by the caller as the SDK docs show.
let name = "";
let args = "";
for await (const chunk of await client.chat.completions.create({
  model: "chat",
  messages: [{ role: "user", content: "weather?" }],
  tools: [{ type: "function", function: { name: "get_weather", parameters: { type: "object" } } }],
  stream: true,
})) {
  for (const call of chunk.choices[0]?.delta.tool_calls ?? []) {
    name += call.function?.name ?? "";
    args += call.function?.arguments ?? "";
  }
}
check(name === "get_weather" && args === '{"city": "Paris"}', `tool call ${name} ${args}`);

// 4. A failure mid-stream makes the SDK throw instead of ending quietly.
const midStream = await rejects(
  async () => {
    const stream = await client.chat.completions.create({
      model: "chat",
      messages: [{ role: "user", content: "x" }],
      stream: true,
    });
    for await (const _ of stream);
  },
  OpenAI.APIError,
  "a mid-stream error",
);
check(
  midStream.code === "upstream_error" && /mid-stream/.test(midStream.message),
  `mid-stream error: ${midStream.code} ${midStream.message}`,
);

// 5. Embeddings.
const e = await client.embeddings.create({ model: "embed", input: ["one two", "three"] });
check(e.data.length === 2 && e.model === "embed", `embeddings ${JSON.stringify(e)}`);

// 6. Errors arrive as the SDK's typed errors with weir's codes.
const notFound = await rejects(
  () => client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "x" }] }),
  OpenAI.NotFoundError,
  "an unknown model",
);
check(notFound.code === "model_not_found", `code ${notFound.code}`);
const wrongKey = await rejects(
  () => new OpenAI({ baseURL, apiKey: "sk-wrong", maxRetries: 0 }).models.list(),
  OpenAI.AuthenticationError,
  "a wrong key",
);
check(wrongKey.code === "invalid_api_key", `code ${wrongKey.code}`);

console.log("ok");
