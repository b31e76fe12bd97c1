//! The translating provider kinds through the binary: `anthropic`, `gemini`
//! and `azure-openai` against mock upstreams that speak each vendor's wire
//! format. What reached the upstream (the translated request) and what the
//! client received (normalized OpenAI JSON and SSE) are snapshot-tested in
//! `snapshots/`; failures are checked for each kind: vendor 4xx relayed in
//! OpenAI's shape, failover-worthy answers moving on to a plain OpenAI
//! target, and no failover once the stream has begun.

use serde_json::{Value, json};
use weir_testkit::client::{self, HttpResponse, SseResponse, post_json};
use weir_testkit::gateway::run;
use weir_testkit::upstream::{Chat, MockUpstream, Reply};

use crate::support::{SERVER, UPSTREAM_KEY, bin, chat_body, gateway, start, stream_body};

/// A provider block of `kind` named `name` pointing at `up`.
fn provider(name: &str, kind: &str, up: &MockUpstream, timeout_ms: u64, extra: &str) -> String {
    let base = if kind == "azure-openai" {
        up.root_url()
    } else {
        up.base_url()
    };
    format!(
        r#"
[[providers]]
name = "{name}"
kind = "{kind}"
base_url = "{base}"
api_key_env = "WEIR_TEST_UPSTREAM_KEY"
timeout_ms = {timeout_ms}
stream_idle_timeout_ms = {timeout_ms}
{extra}
"#
    )
}

/// Model `chat` served by one `kind` target named `p`, as `model`.
fn one_target(kind: &str, up: &MockUpstream, model: &str) -> String {
    format!(
        r#"{SERVER}
{}
[[models]]
name = "chat"
targets = [{{ provider = "p", model = "{model}" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0, cached_input_per_mtok = 0.5 }}
"#,
        provider("p", kind, up, 2000, "")
    )
}

fn chat_url(gw: &weir_testkit::gateway::Gateway) -> String {
    gw.url("/v1/chat/completions")
}

/// A Gemini tool-call id weir generated: `call_<16 hex>_<n>`.
fn is_generated_id(id: &str) -> bool {
    id.strip_prefix("call_")
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(hex, n)| {
            hex.len() == 16
                && hex.chars().all(|c| c.is_ascii_hexdigit())
                && n.parse::<u32>().is_ok()
        })
}

/// `created` zeroed and generated tool-call ids replaced, for snapshots.
fn stable(mut v: Value) -> Value {
    if v.get("created").is_some() {
        v["created"] = json!(0);
    }
    let Some(choices) = v["choices"].as_array_mut() else {
        return v;
    };
    for choice in choices {
        for field in ["delta", "message"] {
            let calls = choice
                .get_mut(field)
                .and_then(|d| d.get_mut("tool_calls"))
                .and_then(Value::as_array_mut);
            let Some(calls) = calls else { continue };
            for call in calls {
                if call["id"].as_str().is_some_and(is_generated_id) {
                    call["id"] = json!("call_[generated]");
                }
            }
        }
    }
    v
}

/// Every event the client received, `[DONE]` as a string.
fn transcript(s: &SseResponse) -> Value {
    Value::Array(
        s.events
            .iter()
            .map(|e| match serde_json::from_str::<Value>(e) {
                Ok(v) => stable(v),
                Err(_) => json!(e),
            })
            .collect(),
    )
}

/// The concatenated arguments of streamed tool call `index`.
fn streamed_arguments(s: &SseResponse, index: u64) -> String {
    s.chunks()
        .iter()
        .flat_map(|c| {
            c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|t| t["index"] == index)
        .filter_map(|t| t["function"]["arguments"].as_str().map(str::to_owned))
        .collect()
}

fn last_finish(s: &SseResponse) -> Value {
    s.chunks()
        .iter()
        .rev()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str().map(|f| json!(f)))
        .unwrap_or(Value::Null)
}

/// A conversation with every feature the translations cover.
fn rich_body() -> Value {
    json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "developer", "content": "Answer in one sentence."},
            {"role": "user", "content": [
                {"type": "text", "text": "Where was this taken, and what is the weather there?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/photos/tower.jpg"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                {"id": "call_t1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_w1", "content": "{\"celsius\": 18, \"sky\": \"cloudy\"}"},
            {"role": "tool", "tool_call_id": "call_t1", "content": "14:05"},
            {"role": "user", "content": "Thanks. And tomorrow?"}
        ],
        "tools": [
            {"type": "function", "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}
            }},
            {"type": "function", "function": {"name": "get_time", "description": "Local time", "parameters": {"type": "object", "properties": {}}}}
        ],
        "tool_choice": "auto",
        "temperature": 0.3,
        "top_p": 0.95,
        "max_tokens": 512,
        "stop": ["\n\n"]
    })
}

// ---------------------------------------------------------------- anthropic

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_text_with_system_prompts_cache_usage_and_headers() {
    let up = MockUpstream::anthropic().await;
    up.set_default(Reply::Chat(
        Chat::text(&["Bonjour", " !"]).usage(10, 4).cache(100, 20),
    ));
    let gw = start(&one_target("anthropic", &up, "claude-sonnet-4-5"));
    let body = json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello in French."},
            {"role": "assistant", "content": "Bonjour."},
            {"role": "user", "content": "Again, with feeling."}
        ],
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": "END"
    });
    let r = post_json(&chat_url(&gw), &body, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-weir-provider"), Some("p/claude-sonnet-4-5"));
    let v = r.json();
    assert_eq!(v["model"], "chat");
    assert_eq!(v["choices"][0]["message"]["content"], "Bonjour !");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // input 10 + cache reads 100 + cache writes 20.
    assert_eq!(v["usage"]["prompt_tokens"], 130);
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], 134);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cache_creation_tokens"],
        20
    );
    // 30 uncached × $1 + 100 cached × $0.5 + 4 out × $2 per Mtok = 88 µUSD.
    assert_eq!(r.header("x-weir-cost-usd"), Some("0.000088"));

    let sent = up.last();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.headers["x-api-key"], UPSTREAM_KEY);
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert!(sent.headers.get("authorization").is_none());
    insta::assert_json_snapshot!("anthropic_text_request", sent.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_stream_is_normalized_to_openai_chunks() {
    let up = MockUpstream::anthropic().await;
    up.set_default(Reply::Chat(
        Chat::text(&["The sky", " is", " blue."])
            .usage(25, 6)
            .cache(40, 0),
    ));
    let gw = start(&one_target("anthropic", &up, "claude-haiku-4-5"));
    let mut body = stream_body("What colour is the sky?");
    body["stream_options"] = json!({"include_usage": true});
    let s = client::stream(&chat_url(&gw), &body, None).await;
    assert_eq!(s.status, 200);
    assert!(s.done(), "{:?}", s.events);
    assert_eq!(s.text(), "The sky is blue.");
    assert_eq!(up.last().body["stream"], true);
    insta::assert_json_snapshot!("anthropic_stream_client", transcript(&s));

    // Without include_usage the usage chunk is accounted but not shown.
    let s = client::stream(&chat_url(&gw), &stream_body("again"), None).await;
    assert!(s.done());
    assert!(s.chunks().iter().all(|c| c.get("usage").is_none()));
    let line = gw.wait_for_log("\"input_tokens\":65", std::time::Duration::from_secs(5));
    assert!(line.contains("\"output_tokens\":6"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_tools_images_and_tool_results() {
    let up = MockUpstream::anthropic().await;
    up.set_default(Reply::Chat(
        Chat::tool_call("get_weather", &["{\"city\": ", "\"Paris\"}"])
            .with_text(&["Let me check."]),
    ));
    let gw = start(&one_target("anthropic", &up, "claude-sonnet-4-5"));
    let r = post_json(&chat_url(&gw), &rich_body(), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    insta::assert_json_snapshot!("anthropic_tools_request", up.last().body);
    insta::assert_json_snapshot!("anthropic_tools_response", stable(r.json()));
    let message = &r.json()["choices"][0]["message"];
    let args: Value = serde_json::from_str(
        message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"city": "Paris"}));

    // A named tool choice, and parallel calls turned off.
    let mut body = rich_body();
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});
    body["parallel_tool_calls"] = json!(false);
    let r = post_json(&chat_url(&gw), &body, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().body["tool_choice"],
        json!({"type": "tool", "name": "get_time", "disable_parallel_tool_use": true})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_streamed_tool_calls_keep_their_index() {
    let up = MockUpstream::anthropic().await;
    up.set_default(Reply::Chat(
        Chat::tool_call("get_weather", &["{\"ci", "ty\": \"Par", "is\"}"])
            .and_tool_call("get_time", &["{}"])
            .with_text(&["Checking both."])
            .usage(50, 30),
    ));
    let gw = start(&one_target("anthropic", &up, "claude-sonnet-4-5"));
    let mut body = rich_body();
    body["stream"] = json!(true);
    let s = client::stream(&chat_url(&gw), &body, None).await;
    assert!(s.done(), "{:?}", s.events);
    assert_eq!(s.text(), "Checking both.");
    assert_eq!(streamed_arguments(&s, 0), "{\"city\": \"Paris\"}");
    assert_eq!(streamed_arguments(&s, 1), "{}");
    assert_eq!(last_finish(&s), "tool_calls");
    insta::assert_json_snapshot!("anthropic_tool_stream_client", transcript(&s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_stop_reasons_become_finish_reasons() {
    let up = MockUpstream::anthropic().await;
    let gw = start(&one_target("anthropic", &up, "claude-sonnet-4-5"));
    for (stop_reason, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("tool_use", "tool_calls"),
    ] {
        let chat = Chat::text(&["a", "b"]).finish(stop_reason);
        up.push(Reply::Chat(chat.clone()));
        let r = post_json(&chat_url(&gw), &chat_body("x"), None).await;
        assert_eq!(
            r.json()["choices"][0]["finish_reason"],
            finish,
            "{stop_reason}"
        );
        up.push(Reply::Chat(chat));
        let s = client::stream(&chat_url(&gw), &stream_body("x"), None).await;
        assert!(s.done());
        assert_eq!(last_finish(&s), finish, "{stop_reason} streamed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_client_errors_are_relayed_in_openai_shape() {
    let up = MockUpstream::anthropic().await;
    let gw = start(&one_target("anthropic", &up, "claude-sonnet-4-5"));
    for (status, message, kind) in [
        (
            400,
            "max_tokens: 100000 > 64000, which is the maximum allowed number of output tokens for claude-sonnet-4-5",
            "invalid_request_error",
        ),
        (404, "model: claude-sonnet-4-5", "not_found_error"),
        (
            413,
            "Request exceeds the maximum allowed number of bytes.",
            "request_too_large",
        ),
    ] {
        up.push(Reply::Error {
            status,
            message: message.into(),
            code: None,
        });
        let r = post_json(&chat_url(&gw), &chat_body("x"), None).await;
        assert_eq!(r.status, status, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["message"], message);
        assert_eq!(v["error"]["type"], kind);
    }
    // A request Anthropic cannot express is refused before it is sent.
    let before = up.received().len();
    let mut body = chat_body("x");
    body["n"] = json!(3);
    let r = post_json(&chat_url(&gw), &body, None).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "n");
    assert_eq!(up.received().len(), before);
    // No embeddings API.
    let r = post_json(
        &gw.url("/v1/embeddings"),
        &json!({"model": "chat", "input": "x"}),
        None,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "invalid_request");
    assert!(r.text().contains("anthropic"), "{}", r.text());
}

// ------------------------------------------------------------------- gemini

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_text_with_system_instruction_usage_and_headers() {
    let up = MockUpstream::gemini().await;
    up.set_default(Reply::Chat(
        Chat::text(&["Bonjour", " !"])
            .usage(120, 9)
            .cache(100, 0)
            .reasoning(20),
    ));
    let gw = start(&one_target("gemini", &up, "gemini-2.5-flash"));
    let body = json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello in French."},
            {"role": "assistant", "content": "Bonjour."},
            {"role": "user", "content": "Again, with feeling."}
        ],
        "temperature": 0.7,
        "max_completion_tokens": 64,
        "stop": "END",
        "response_format": {"type": "json_object"}
    });
    let r = post_json(&chat_url(&gw), &body, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-weir-provider"), Some("p/gemini-2.5-flash"));
    let v = r.json();
    assert_eq!(v["model"], "chat");
    assert_eq!(v["choices"][0]["message"]["content"], "Bonjour !");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 120);
    // Thinking tokens are output tokens.
    assert_eq!(v["usage"]["completion_tokens"], 29);
    assert_eq!(v["usage"]["total_tokens"], 149);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        20
    );

    let sent = up.last();
    assert_eq!(sent.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(sent.query, "");
    assert_eq!(sent.headers["x-goog-api-key"], UPSTREAM_KEY);
    assert!(sent.headers.get("authorization").is_none());
    insta::assert_json_snapshot!("gemini_text_request", sent.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_stream_is_normalized_to_openai_chunks() {
    let up = MockUpstream::gemini().await;
    up.set_default(Reply::Chat(
        Chat::text(&["The sky", " is", " blue."])
            .usage(25, 6)
            .cache(10, 0),
    ));
    let gw = start(&one_target("gemini", &up, "gemini-2.5-flash"));
    let mut body = stream_body("What colour is the sky?");
    body["stream_options"] = json!({"include_usage": true});
    let s = client::stream(&chat_url(&gw), &body, None).await;
    assert_eq!(s.status, 200);
    assert!(s.done(), "{:?}", s.events);
    assert_eq!(s.text(), "The sky is blue.");
    let sent = up.last();
    assert_eq!(
        sent.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert_eq!(sent.query, "alt=sse");
    insta::assert_json_snapshot!("gemini_stream_client", transcript(&s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_tools_images_and_tool_results() {
    let up = MockUpstream::gemini().await;
    up.set_default(Reply::Chat(
        Chat::tool_call("get_weather", &["{\"city\": \"Paris\"}"])
            .and_tool_call("get_time", &["{}"])
            .with_text(&["Let me check."]),
    ));
    let gw = start(&one_target("gemini", &up, "gemini-2.5-flash"));
    let r = post_json(&chat_url(&gw), &rich_body(), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    insta::assert_json_snapshot!("gemini_tools_request", up.last().body);
    let v = r.json();
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert!(
        calls
            .iter()
            .all(|c| is_generated_id(c["id"].as_str().unwrap()))
    );
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    insta::assert_json_snapshot!("gemini_tools_response", stable(v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_streamed_tool_calls() {
    let up = MockUpstream::gemini().await;
    up.set_default(Reply::Chat(
        Chat::tool_call("get_weather", &["{\"city\": \"Paris\"}"])
            .and_tool_call("get_time", &["{}"]),
    ));
    let gw = start(&one_target("gemini", &up, "gemini-2.5-flash"));
    let mut body = rich_body();
    body["stream"] = json!(true);
    let s = client::stream(&chat_url(&gw), &body, None).await;
    assert!(s.done(), "{:?}", s.events);
    assert_eq!(streamed_arguments(&s, 0), "{\"city\":\"Paris\"}");
    assert_eq!(streamed_arguments(&s, 1), "{}");
    assert_eq!(last_finish(&s), "tool_calls");
    insta::assert_json_snapshot!("gemini_tool_stream_client", transcript(&s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_finish_reasons_and_candidates() {
    let up = MockUpstream::gemini().await;
    let gw = start(&one_target("gemini", &up, "gemini-2.5-flash"));
    for (reason, finish) in [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
    ] {
        let chat = Chat::text(&["a", "b"]).finish(reason);
        up.push(Reply::Chat(chat.clone()));
        let r = post_json(&chat_url(&gw), &chat_body("x"), None).await;
        assert_eq!(r.json()["choices"][0]["finish_reason"], finish, "{reason}");
        up.push(Reply::Chat(chat));
        let s = client::stream(&chat_url(&gw), &stream_body("x"), None).await;
        assert!(s.done());
        assert_eq!(last_finish(&s), finish, "{reason} streamed");
    }
    // n → candidateCount → one choice per candidate.
    up.set_default(Reply::Chat(Chat::text(&["x", "y"])));
    let mut body = chat_body("x");
    body["n"] = json!(2);
    let r = post_json(&chat_url(&gw), &body, None).await;
    assert_eq!(up.last().body["generationConfig"]["candidateCount"], 2);
    let choices = r.json()["choices"].as_array().unwrap().clone();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["index"], 1);
    body["stream"] = json!(true);
    let s = client::stream(&chat_url(&gw), &body, None).await;
    assert!(s.done());
    for index in [0, 1] {
        let text: String = s
            .chunks()
            .iter()
            .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
            .filter(|c| c["index"] == index)
            .filter_map(|c| c["delta"]["content"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(text, "xy", "choice {index}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_errors_blocked_prompts_and_embeddings() {
    let up = MockUpstream::gemini().await;
    let gw = start(&one_target("gemini", &up, "gemini-2.5-flash"));
    let message = "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"";
    up.push(Reply::Error {
        status: 400,
        message: message.into(),
        code: None,
    });
    let r = post_json(&chat_url(&gw), &chat_body("x"), None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["message"], message);
    assert_eq!(v["error"]["code"], "invalid_argument");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let blocked = Reply::Raw {
        status: 200,
        content_type: "application/json".into(),
        body: json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}}).to_string(),
    };
    up.push(blocked.clone());
    let r = post_json(&chat_url(&gw), &chat_body("x"), None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "content_filter");
    assert!(r.text().contains("PROHIBITED_CONTENT"));
    up.push(Reply::Raw {
        status: 200,
        content_type: "text/event-stream".into(),
        body: format!(
            "data: {}\r\n\r\n",
            json!({"promptFeedback": {"blockReason": "SAFETY"}})
        ),
    });
    let r = post_json(&chat_url(&gw), &stream_body("x"), None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "content_filter");

    let url = gw.url("/v1/embeddings");
    let r = post_json(
        &url,
        &json!({"model": "chat", "input": ["ab", "cde"]}),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["model"], "chat");
    assert_eq!(v["data"][1]["embedding"], json!([3.0, 0.5, -0.25]));
    let sent = up.last();
    assert_eq!(
        sent.path,
        "/v1beta/models/gemini-2.5-flash:batchEmbedContents"
    );
    assert_eq!(
        sent.body["requests"][0],
        json!({"model": "models/gemini-2.5-flash", "content": {"parts": [{"text": "ab"}]}})
    );
    // The official SDKs ask for base64 by default.
    let r = post_json(
        &url,
        &json!({"model": "chat", "input": "ab", "encoding_format": "base64"}),
        None,
    )
    .await;
    // [2.0, 0.5, -0.25] as little-endian f32.
    assert_eq!(r.json()["data"][0]["embedding"], "AAAAQAAAAD8AAIC+");
}

// -------------------------------------------------------------------- azure

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_deployment_urls_api_version_and_api_key() {
    let up = MockUpstream::start().await;
    let cfg = format!(
        r#"{SERVER}
{}{}
[[models]]
name = "chat"
targets = [{{ provider = "az", model = "gpt4o-prod" }}]

[[models]]
name = "preview"
targets = [{{ provider = "az-preview", model = "o3-mini" }}]

[[models]]
name = "embed"
targets = [{{ provider = "az", model = "embeddings-3-small" }}]
"#,
        provider("az", "azure-openai", &up, 2000, ""),
        provider(
            "az-preview",
            "azure-openai",
            &up,
            2000,
            "api_version = \"2025-04-01-preview\""
        ),
    );
    let gw = start(&cfg);
    let r = post_json(&chat_url(&gw), &chat_body("hi"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from upstream"
    );
    assert_eq!(r.header("x-weir-provider"), Some("az/gpt4o-prod"));
    let sent = up.last();
    assert_eq!(sent.path, "/openai/deployments/gpt4o-prod/chat/completions");
    assert_eq!(sent.query, "api-version=2024-10-21");
    assert_eq!(sent.headers["api-key"], UPSTREAM_KEY);
    assert!(sent.headers.get("authorization").is_none());

    let s = client::stream(&chat_url(&gw), &stream_body("hi"), None).await;
    assert!(s.done());
    assert_eq!(s.text(), "Hello from upstream");
    assert_eq!(up.last().body["stream_options"]["include_usage"], true);

    let mut body = chat_body("hi");
    body["model"] = json!("preview");
    let r = post_json(&chat_url(&gw), &body, None).await;
    assert_eq!(r.status, 200);
    let sent = up.last();
    assert_eq!(sent.path, "/openai/deployments/o3-mini/chat/completions");
    assert_eq!(sent.query, "api-version=2025-04-01-preview");

    let r = post_json(
        &gw.url("/v1/embeddings"),
        &json!({"model": "embed", "input": "hello there"}),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = up.last();
    assert_eq!(
        sent.path,
        "/openai/deployments/embeddings-3-small/embeddings"
    );
    assert_eq!(sent.query, "api-version=2024-10-21");
    assert_eq!(sent.headers["api-key"], UPSTREAM_KEY);
}

// ------------------------------------------------------- failures, any kind

/// Model `chat`: a `kind` target first, then a plain OpenAI one answering
/// "from b"; the circuit never opens, so every request tries the first.
async fn vendor_then_openai(kind: &str) -> (MockUpstream, MockUpstream, String) {
    let a = match kind {
        "anthropic" => MockUpstream::anthropic().await,
        "gemini" => MockUpstream::gemini().await,
        _ => MockUpstream::start().await,
    };
    let b = MockUpstream::start().await;
    b.set_default(Reply::Chat(Chat::text(&["from ", "b"])));
    let cfg = format!(
        r#"{SERVER}
{}{}
[[models]]
name = "chat"
targets = [{{ provider = "a", model = "model-a" }}, {{ provider = "b", model = "model-b" }}]
circuit = {{ failures = 1000 }}
"#,
        provider("a", kind, &a, 300, ""),
        provider("b", "openai", &b, 2000, ""),
    );
    (a, b, cfg)
}

async fn answered_by(url: &str, stream: bool) -> (u16, Option<String>, String) {
    if stream {
        let s = client::stream(url, &stream_body("x"), None).await;
        assert!(s.done(), "{:?}", s.events);
        let provider = s.header("x-weir-provider").map(str::to_owned);
        (s.status, provider, s.text())
    } else {
        let r: HttpResponse = post_json(url, &chat_body("x"), None).await;
        let text = r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (
            r.status,
            r.header("x-weir-provider").map(str::to_owned),
            text,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_worthy_answers_move_to_the_next_target() {
    for kind in ["anthropic", "gemini", "azure-openai"] {
        let (a, b, cfg) = vendor_then_openai(kind).await;
        let gw = start(&cfg);
        let url = chat_url(&gw);
        let mut triggers = vec![
            ("429", Reply::status(429), false),
            ("500", Reply::status(500), false),
            ("503", Reply::status(503), false),
            ("401", Reply::status(401), false),
            ("hang", Reply::Hang, false),
            ("malformed", Reply::Malformed, false),
        ];
        if kind == "anthropic" {
            triggers.push(("529", Reply::status(529), false));
        }
        if kind != "azure-openai" {
            // An error event before any content: nothing reached the client.
            triggers.push((
                "error event first",
                Reply::ErrorEventAfter(Chat::default(), 0),
                true,
            ));
        }
        for (name, reply, stream_only) in triggers {
            for stream in [false, true] {
                if stream_only && !stream {
                    continue;
                }
                a.push(reply.clone());
                let (tried, before) = (a.received().len(), b.received().len());
                let (status, provider, text) = answered_by(&url, stream).await;
                assert_eq!(a.received().len(), tried + 1, "{kind} {name}: a was tried");
                assert_eq!(status, 200, "{kind} {name} stream={stream}");
                assert_eq!(provider.as_deref(), Some("b/model-b"), "{kind} {name}");
                assert_eq!(text, "from b", "{kind} {name}");
                assert_eq!(b.received().len(), before + 1, "{kind} {name}");
            }
        }
        let logs = gw.logs().join("\n");
        assert!(!logs.contains(UPSTREAM_KEY), "{kind}: the key leaked");
        assert!(
            !logs.contains("sk-up***key"),
            "{kind}: a 401 message was kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_after_the_first_byte_end_with_an_error_event_and_no_failover() {
    for kind in ["anthropic", "gemini", "azure-openai"] {
        let (a, b, cfg) = vendor_then_openai(kind).await;
        let gw = start(&cfg);
        let chat = Chat::text(&["one ", "two ", "three"]);
        for reply in [
            Reply::DropAfter(chat.clone(), 2),
            Reply::ErrorEventAfter(chat.clone(), 2),
        ] {
            a.push(reply.clone());
            let s = client::stream(&chat_url(&gw), &stream_body("x"), None).await;
            assert_eq!(s.status, 200);
            assert_eq!(s.text(), "one two ", "{kind} {reply:?}: {:?}", s.events);
            assert!(
                !s.done(),
                "{kind}: no [DONE] after a failure: {:?}",
                s.events
            );
            let error = s.error().expect("an error event");
            assert_eq!(error["error"]["code"], "upstream_error", "{kind}");
            assert!(
                b.received().is_empty(),
                "{kind}: no failover after the first byte"
            );
        }
        // The vendor's own mid-stream message reaches the client.
        if kind != "azure-openai" {
            a.push(Reply::ErrorEventAfter(chat.clone(), 1));
            let s = client::stream(&chat_url(&gw), &stream_body("x"), None).await;
            let message = s.error().unwrap()["error"]["message"].to_string();
            assert!(message.contains("verloaded"), "{kind}: {message}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_target_fails_the_vendor_status_is_reported_without_the_key() {
    let up = MockUpstream::anthropic().await;
    let gw = gateway(&one_target("anthropic", &up, "claude-sonnet-4-5")).start();
    up.push(Reply::status(529));
    let r = post_json(&chat_url(&gw), &chat_body("x"), None).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code(), "upstream_error");
    assert!(r.text().contains("HTTP 529: Overloaded"), "{}", r.text());
    up.push(Reply::status(401));
    let r = post_json(&chat_url(&gw), &chat_body("x"), None).await;
    assert_eq!(r.status, 502);
    assert!(!r.text().contains("sk-up"), "{}", r.text());
}

#[test]
fn provider_settings_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        r#"
[[providers]]
name = "az"
kind = "azure-openai"

[[providers]]
name = "openai"
kind = "openai"
api_version = "2024-10-21"

[[providers]]
name = "az2"
kind = "azure-openai"
base_url = "https://example.openai.azure.com"
api_version = "2024-10-21&x=1"

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "https://api.anthropic.com/v1"

[[models]]
name = "chat"
targets = [{ provider = "openai", model = "x" }]
"#,
    )
    .unwrap();
    let (code, out, err) = run(bin(), &["check", "--config", "bad.toml"], dir.path());
    assert_eq!(code, 2, "{out}{err}");
    for key in [
        "providers[0].base_url",
        "providers[1].api_version",
        "providers[2].api_version",
        "providers[3].base_url",
    ] {
        assert!(err.contains(key), "{key} missing: {err}");
    }
    assert!(err.contains("https://NAME.openai.azure.com"), "{err}");

    std::fs::write(
        dir.path().join("good.toml"),
        r#"
[[providers]]
name = "claude"
kind = "anthropic"

[[providers]]
name = "gemini"
kind = "gemini"

[[providers]]
name = "az"
kind = "azure-openai"
base_url = "https://example.openai.azure.com"
api_version = "2025-04-01-preview"

[[models]]
name = "chat"
targets = [{ provider = "claude", model = "claude-haiku-4-5" }, { provider = "gemini", model = "gemini-2.5-flash" }, { provider = "az", model = "gpt4o" }]
"#,
    )
    .unwrap();
    let (code, out, err) = run(bin(), &["check", "--config", "good.toml"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
}
