//! Chat completions, embeddings and models as the OpenAI SDKs use them.

use std::time::Duration;

use serde_json::{Value, json};
use weir_testkit::client::{self, get, post_json};
use weir_testkit::upstream::{Chat, MockUpstream, Reply};

use crate::support::{UPSTREAM_KEY, chat_body, config, start, stream_body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streamed_chat_passes_fields_through_and_renames_the_model() {
    let up = MockUpstream::start().await;
    let gw = start(&config(&up, ""));
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let body = json!({
        "model": "chat",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        "tools": tools,
        "response_format": {"type": "json_object"},
        "seed": 7,
        "x_custom_field": {"kept": true},
    });
    let r = post_json(&gw.url("/v1/chat/completions"), &body, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["model"], "chat");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from upstream");
    assert_eq!(v["system_fingerprint"], "fp_mock");
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(r.header("x-weir-provider"), Some("up/gpt-4o-mini"));
    assert!(r.header("x-weir-request-id").unwrap().starts_with("req_"));
    // 11 input * 0.15 + 3 output * 0.60 = 3.45 µUSD → 3.
    assert_eq!(r.header("x-weir-cost-usd"), Some("0.000003"));

    let sent = up.last();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.body["model"], "gpt-4o-mini");
    assert_eq!(sent.body["tools"], tools);
    assert_eq!(sent.body["response_format"], json!({"type": "json_object"}));
    assert_eq!(sent.body["seed"], 7);
    assert_eq!(sent.body["x_custom_field"], json!({"kept": true}));
    assert_eq!(sent.body["messages"], body["messages"]);
    assert!(sent.body.get("stream_options").is_none());
    assert_eq!(
        sent.headers["authorization"].to_str().unwrap(),
        format!("Bearer {UPSTREAM_KEY}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_clients_bytes_with_only_the_model_changed() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(Chat::text(&["ok"])));
    let gw = start(&config(&up, ""));
    let url = gw.url("/v1/chat/completions");
    // Key order, spacing and number formatting as a client wrote them.
    let sent = |body: &'static str| {
        let url = url.clone();
        let up = &up;
        async move {
            let r = client::send(
                http::Method::POST,
                &url,
                &[("content-type", "application/json")],
                body.as_bytes().to_vec(),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            String::from_utf8(up.last().raw.to_vec()).unwrap()
        }
    };
    // And the client gets the upstream's completion as it was sent (the
    // mock writes its keys sorted), with the model renamed.
    let r = post_json(&url, &chat_body("hi"), None).await;
    let text = r.text();
    assert!(
        text.starts_with(r#"{"choices":[{"finish_reason":"stop""#),
        "{text}"
    );
    assert!(
        text.contains(r#""model":"chat","object":"chat.completion""#),
        "{text}"
    );
    let plain = r#"{"temperature": 0.50, "model": "chat", "messages": [{"role": "user", "content": "a \"model\": here"}]}"#;
    assert_eq!(
        sent(plain).await,
        r#"{"temperature": 0.50, "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a \"model\": here"}]}"#
    );
    // A stream asks for usage (weir accounts from it) in front of the rest.
    let streamed =
        r#"{ "model":"chat","stream":true,"messages":[{"role":"user","content":"hi"}] }"#;
    assert_eq!(
        sent(streamed).await,
        r#"{"stream_options":{"include_usage":true}, "model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}] }"#
    );
    // A client's own stream options are merged, so that body is re-encoded.
    let own = r#"{"model": "chat", "stream": true, "stream_options": {"x": 1}, "messages": [{"role": "user", "content": "hi"}]}"#;
    let body: Value = serde_json::from_str(&sent(own).await).unwrap();
    assert_eq!(
        body["stream_options"],
        json!({"x": 1, "include_usage": true})
    );
    assert_eq!(body["model"], "gpt-4o-mini");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_without_include_usage_hides_the_usage_chunk_but_accounts_it() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(
        Chat::text(&["Hel", "lo", " there"]).usage(21, 5),
    ));
    let gw = start(&config(&up, ""));
    let s = client::stream(&gw.url("/v1/chat/completions"), &stream_body("hi"), None).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("x-weir-provider"), Some("up/gpt-4o-mini"));
    assert_eq!(s.text(), "Hello there");
    assert!(s.done(), "{:?}", s.events);
    for chunk in s.chunks() {
        assert_eq!(chunk["model"], "chat");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(chunk.get("usage").is_none(), "usage leaked: {chunk}");
        assert!(!chunk["choices"].as_array().unwrap().is_empty());
    }
    let last = s.chunks().pop().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    // weir asked the upstream for usage so it can account the stream.
    assert_eq!(up.last().body["stream_options"]["include_usage"], true);
    let line = gw.wait_for_log("\"status\":200", Duration::from_secs(5));
    assert!(line.contains("\"input_tokens\":21"), "{line}");
    assert!(line.contains("\"output_tokens\":5"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_with_include_usage_ends_with_the_usage_chunk() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(Chat::text(&["a", "b"]).usage(9, 2)));
    let gw = start(&config(&up, ""));
    let mut body = stream_body("hi");
    body["stream_options"] = json!({"include_usage": true});
    let s = client::stream(&gw.url("/v1/chat/completions"), &body, None).await;
    assert!(s.done());
    let chunks = s.chunks();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 9);
    assert_eq!(last["usage"]["completion_tokens"], 2);
    assert_eq!(last["model"], "chat");
    assert_eq!(
        up.last().body["stream_options"],
        json!({"include_usage": true})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_tool_call_fragments_pass_through() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(Chat::tool_call(
        "get_weather",
        &["{\"ci", "ty\": \"Par", "is\"}"],
    )));
    let gw = start(&config(&up, ""));
    let mut body = stream_body("weather in Paris?");
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    body["tool_choice"] = json!("auto");
    let s = client::stream(&gw.url("/v1/chat/completions"), &body, None).await;
    assert!(s.done());
    let chunks = s.chunks();
    let first = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first["id"], "call_abc123");
    assert_eq!(first["type"], "function");
    assert_eq!(first["function"]["name"], "get_weather");
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{\"city\": \"Paris\"}");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(up.last().body["tool_choice"], "auto");

    up.set_default(Reply::Chat(Chat::tool_call("get_weather", &["{}"])));
    let r = post_json(&gw.url("/v1/chat/completions"), &chat_body("x"), None).await;
    let call = &r.json()["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_chunk_reaches_the_client_before_the_upstream_finishes() {
    let up = MockUpstream::start().await;
    // Two content chunks, then the upstream stalls with the stream open.
    up.set_default(Reply::StallAfter(
        Chat::text(&["first", "second", "never"]),
        2,
    ));
    let gw = start(&config(&up, ""));
    let mut reader =
        client::open_stream(&gw.url("/v1/chat/completions"), &stream_body("hi"), None).await;
    assert_eq!(reader.status, 200);
    let mut seen = String::new();
    while seen != "firstsecond" {
        let event = reader
            .next_event_within(Duration::from_secs(1))
            .await
            .expect("stream ended early");
        let v: Value = serde_json::from_str(&event).unwrap();
        seen.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    // The upstream is still silent: the gateway's idle timeout (2 s) ends it.
    let end = reader.next_event().await.expect("an error event");
    let v: Value = serde_json::from_str(&end).unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    assert_eq!(reader.next_event().await, None, "no [DONE] after an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_and_models() {
    let up = MockUpstream::start().await;
    let extra = r#"
[[models]]
name = "embed"
targets = [{ provider = "up", model = "text-embedding-3-small" }]

[[keys]]
name = "team-a"
key = "sk-weir-team-a"
models = ["embed"]

[[keys]]
name = "admin"
key = "sk-weir-admin"
"#;
    let gw = start(&config(&up, extra));
    let body = json!({"model": "embed", "input": ["one two", "three"]});
    let r = post_json(&gw.url("/v1/embeddings"), &body, Some("sk-weir-team-a")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["model"], "embed");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(up.last().path, "/v1/embeddings");
    assert_eq!(up.last().body["model"], "text-embedding-3-small");
    assert_eq!(
        r.header("x-weir-provider"),
        Some("up/text-embedding-3-small")
    );

    let ids = |r: &weir_testkit::client::HttpResponse| -> Vec<String> {
        r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let team = get(&gw.url("/v1/models"), Some("sk-weir-team-a")).await;
    assert_eq!(team.json()["object"], "list");
    assert_eq!(ids(&team), vec!["embed"]);
    let admin = get(&gw.url("/v1/models"), Some("sk-weir-admin")).await;
    assert_eq!(ids(&admin), vec!["chat", "embed"]);
    let one = get(&gw.url("/v1/models/embed"), Some("sk-weir-team-a")).await;
    assert_eq!(one.json()["id"], "embed");
    let denied = get(&gw.url("/v1/models/chat"), Some("sk-weir-team-a")).await;
    assert_eq!(denied.status, 403);
    assert_eq!(get(&gw.url("/v1/models"), None).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_the_request_but_never_bodies_or_keys() {
    let up = MockUpstream::start().await;
    let extra = r#"
[[keys]]
name = "team-a"
key = "sk-weir-team-a-secret"
"#;
    let gw = start(&config(&up, extra));
    let r = post_json(
        &gw.url("/v1/chat/completions"),
        &chat_body("my very private prompt"),
        Some("sk-weir-team-a-secret"),
    )
    .await;
    assert_eq!(r.status, 200);
    let id = r.header("x-weir-request-id").unwrap().to_string();
    let line = gw.wait_for_log(&id, Duration::from_secs(5));
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["key"], "team-a");
    assert_eq!(v["model"], "chat");
    assert_eq!(v["provider"], "up/gpt-4o-mini");
    assert_eq!(v["status"], 200);
    assert_eq!(v["input_tokens"], 11);
    assert!(v["latency_ms"].as_f64().unwrap() > 0.0);
    let all = gw.logs().join("\n");
    for secret in [
        "sk-weir-team-a-secret",
        UPSTREAM_KEY,
        "my very private prompt",
        "Hello from upstream",
    ] {
        assert!(!all.contains(secret), "logs contain {secret:?}");
    }
}
