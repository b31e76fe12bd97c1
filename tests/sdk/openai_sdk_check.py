"""Drive weir with the official `openai` Python SDK, changing only base_url.

Run by tests/e2e/sdk.rs against a gateway in front of a scripted mock
upstream; the upstream's replies are queued in the order of the calls below.
Exits non-zero with a message on the first mismatch.
"""

import sys

import openai
from openai import OpenAI

base_url, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0)


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)


# models.list() returns the configured model names.
ids = [m.id for m in client.models.list()]
check(ids == ["chat", "embed"], f"models.list: {ids}")

# 1. Not streamed, with tools and response_format passing through.
r = client.chat.completions.create(
    model="chat",
    messages=[{"role": "user", "content": "hello"}],
    tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    response_format={"type": "text"},
)
check(r.model == "chat", f"model {r.model}")
check(r.choices[0].message.content == "Hello from upstream", f"content {r.choices[0].message.content!r}")
check(r.usage.prompt_tokens == 11 and r.usage.completion_tokens == 3, f"usage {r.usage}")

# 2. Streamed with include_usage.
text, usage = "", None
for chunk in client.chat.completions.create(
    model="chat",
    messages=[{"role": "user", "content": "stream please"}],
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
check(text == "Hello from upstream", f"streamed text {text!r}")
check(usage is not None and usage.completion_tokens == 3, f"stream usage {usage}")

# 3. A streamed tool call, reassembled by the caller as the SDK docs show.
name, args = "", ""
for chunk in client.chat.completions.create(
    model="chat",
    messages=[{"role": "user", "content": "weather?"}],
    tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    stream=True,
):
    for call in chunk.choices[0].delta.tool_calls or []:
        name += call.function.name or ""
        args += call.function.arguments or ""
check((name, args) == ("get_weather", '{"city": "Paris"}'), f"tool call {name} {args}")

# 4. A failure mid-stream makes the SDK raise instead of ending quietly.
try:
    for _ in client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "x"}], stream=True
    ):
        pass
    check(False, "a mid-stream error must raise")
except openai.APIError as e:
    check("error" in str(e).lower(), f"mid-stream error: {e}")

# 5. Embeddings.
e = client.embeddings.create(model="embed", input=["one two", "three"])
check(len(e.data) == 2 and e.model == "embed", f"embeddings {e}")

# 6. Errors arrive as the SDK's typed exceptions with weir's codes.
try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    check(False, "unknown model must raise")
except openai.NotFoundError as err:
    check(err.code == "model_not_found", f"code {err.code}")
try:
    OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0).models.list()
    check(False, "a wrong key must raise")
except openai.AuthenticationError as err:
    check(err.code == "invalid_api_key", f"code {err.code}")

print("ok")
