//! Every row of SPEC §4's error table that the core owns, through the binary.
//! (`content_filter` and `policy_error` come with guardrails: see `policies`.)

use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_testkit::client::{self, HttpResponse, post_json, send};
use weir_testkit::upstream::{MockUpstream, Reply};

use crate::support::{SERVER, chat_body, config, provider, start};

fn assert_error(r: &HttpResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(v["error"]["type"].is_string(), "{v}");
    assert!(v["error"].get("param").is_some(), "{v}");
    assert!(r.header("x-weir-request-id").is_some());
    assert_eq!(r.header("content-type"), Some("application/json"));
}

const KEYS: &str = r#"
[[models]]
name = "other"
targets = [{ provider = "up", model = "gpt-4o" }]

[[keys]]
name = "team-a"
key = "sk-weir-team-a"
models = ["chat"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_name_the_field() {
    let up = MockUpstream::start().await;
    let gw = start(&config(&up, ""));
    let url = gw.url("/v1/chat/completions");
    let raw = send(Method::POST, &url, &[], b"{not json".to_vec()).await;
    assert_error(&raw, 400, "invalid_request");
    // The Content-Type is not enforced; the body must be JSON.
    let text_plain = send(
        Method::POST,
        &url,
        &[("content-type", "text/plain")],
        chat_body("hi").to_string().into_bytes(),
    )
    .await;
    assert_eq!(text_plain.status, 200);

    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (json!({"model": "chat"}), "messages"),
        (
            json!({"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}),
            "max_tokens",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": 1}),
            "stream",
        ),
    ];
    for (body, field) in cases {
        let r = post_json(&url, &body, None).await;
        assert_error(&r, 400, "invalid_request");
        let v = r.json();
        assert_eq!(v["error"]["param"], field, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
    }
    assert!(
        up.received().len() == 1,
        "invalid requests never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_models() {
    let up = MockUpstream::start().await;
    let gw = start(&config(&up, KEYS));
    let url = gw.url("/v1/chat/completions");
    assert_error(
        &post_json(&url, &chat_body("x"), None).await,
        401,
        "invalid_api_key",
    );
    assert_error(
        &post_json(&url, &chat_body("x"), Some("sk-wrong-key")).await,
        401,
        "invalid_api_key",
    );
    let via_header = send(
        Method::POST,
        &url,
        &[("x-api-key", "sk-weir-team-a")],
        chat_body("x").to_string().into_bytes(),
    )
    .await;
    assert_eq!(via_header.status, 200, "{}", via_header.text());

    let mut other = chat_body("x");
    other["model"] = json!("other");
    assert_error(
        &post_json(&url, &other, Some("sk-weir-team-a")).await,
        403,
        "model_not_allowed",
    );
    let mut missing = chat_body("x");
    missing["model"] = json!("gpt-nope");
    // Unknown is 404 even for a key restricted to other models.
    assert_error(
        &post_json(&url, &missing, Some("sk-weir-team-a")).await,
        404,
        "model_not_found",
    );
    assert_eq!(up.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_too_large_declared_or_chunked() {
    let up = MockUpstream::start().await;
    let cfg = config(&up, "").replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:0\"\nmax_body_bytes = 1024",
    );
    let gw = start(&cfg);
    let big = chat_body(&"x".repeat(2000));
    assert_error(
        &post_json(&gw.url("/v1/chat/completions"), &big, None).await,
        413,
        "body_too_large",
    );

    // Without a Content-Length: chunked transfer encoding over a raw socket.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let body = big.to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("body_too_large"), "{head}");
    assert!(up.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rate_limit() {
    let up = MockUpstream::start().await;
    let extra = r#"
[[keys]]
name = "team-a"
key = "sk-weir-team-a"
requests_per_minute = 2
tokens_per_minute = 100000
"#;
    let gw = start(&config(&up, extra));
    let url = gw.url("/v1/chat/completions");
    let first = post_json(&url, &chat_body("x"), Some("sk-weir-team-a")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(first.header("x-ratelimit-limit-tokens"), Some("100000"));
    assert!(first.header("x-ratelimit-remaining-tokens").is_some());
    assert!(
        first
            .header("x-ratelimit-reset-requests")
            .unwrap()
            .ends_with('s')
    );
    assert_eq!(
        post_json(&url, &chat_body("x"), Some("sk-weir-team-a"))
            .await
            .status,
        200
    );
    let third = post_json(&url, &chat_body("x"), Some("sk-weir-team-a")).await;
    assert_error(&third, 429, "rate_limit_exceeded");
    let retry: u64 = third.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(up.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rate_limit_reserves_max_tokens() {
    let up = MockUpstream::start().await;
    let extra = r#"
[[keys]]
name = "team-a"
key = "sk-weir-team-a"
tokens_per_minute = 100
"#;
    let gw = start(&config(&up, extra));
    let mut body = chat_body("x");
    body["max_tokens"] = json!(500);
    let r = post_json(
        &gw.url("/v1/chat/completions"),
        &body,
        Some("sk-weir-team-a"),
    )
    .await;
    assert_error(&r, 429, "rate_limit_exceeded");
    assert!(r.header("retry-after").is_some());
    body["max_tokens"] = json!(50);
    let ok = post_json(
        &gw.url("/v1/chat/completions"),
        &body,
        Some("sk-weir-team-a"),
    )
    .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_spent_is_insufficient_quota() {
    let up = MockUpstream::start().await;
    // Output costs 1000 µUSD per token; each answer uses 3 → 3000 µUSD;
    // each request reserves max_tokens 5 → 5000 µUSD; the budget is 10000.
    let cfg = config(&up, "").replace(
        "input_per_mtok = 0.15, output_per_mtok = 0.60",
        "input_per_mtok = 0.0, output_per_mtok = 1000.0",
    ) + r#"
[[keys]]
name = "team-a"
key = "sk-weir-team-a"
budget_usd = 0.01
"#;
    let gw = start(&cfg);
    let mut body = chat_body("x");
    body["max_tokens"] = json!(5);
    let url = gw.url("/v1/chat/completions");
    for _ in 0..2 {
        let r = post_json(&url, &body, Some("sk-weir-team-a")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-weir-cost-usd"), Some("0.003000"));
    }
    assert_error(
        &post_json(&url, &body, Some("sk-weir-team-a")).await,
        429,
        "insufficient_quota",
    );
    assert_eq!(up.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_failed_is_502_or_504() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    a.set_default(Reply::status(500));
    b.set_default(Reply::Hang);
    let cfg = format!(
        r#"{SERVER}
{}{}
[[models]]
name = "chat"
targets = [{{ provider = "a", model = "m" }}, {{ provider = "b", model = "m" }}]

[[models]]
name = "slow"
targets = [{{ provider = "b", model = "m" }}]
"#,
        provider("a", &a, 2000),
        provider("b", &b, 300)
    );
    let gw = start(&cfg);
    let url = gw.url("/v1/chat/completions");
    let r = post_json(&url, &chat_body("x"), None).await;
    assert_error(&r, 502, "upstream_error");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("a/m: HTTP 500") && msg.contains("b/m: timed out"),
        "{msg}"
    );

    let mut slow = chat_body("x");
    slow["model"] = json!("slow");
    assert_error(&post_json(&url, &slow, None).await, 504, "upstream_timeout");
    let mut slow_stream = slow.clone();
    slow_stream["stream"] = json!(true);
    let s = client::stream(&url, &slow_stream, None).await;
    assert_eq!(s.status, 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_client_errors_are_relayed_without_failover() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    a.set_default(Reply::status(400));
    let cfg = format!(
        r#"{SERVER}
{}{}
[[models]]
name = "chat"
targets = [{{ provider = "a", model = "m" }}, {{ provider = "b", model = "m" }}]
"#,
        provider("a", &a, 2000),
        provider("b", &b, 2000)
    );
    let gw = start(&cfg);
    let r = post_json(&gw.url("/v1/chat/completions"), &chat_body("x"), None).await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["message"], "Invalid value for 'temperature'");
    assert_eq!(v["error"]["code"], "invalid_value");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        b.received().is_empty(),
        "a 400 is the caller's problem: no failover"
    );

    // A provider that answers 404 in its own, non-OpenAI format.
    a.set_default(Reply::Raw {
        status: 404,
        content_type: "text/plain".into(),
        body: "no such deployment".into(),
    });
    let r = post_json(&gw.url("/v1/chat/completions"), &chat_body("x"), None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["message"], "no such deployment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods() {
    let up = MockUpstream::start().await;
    let gw = start(&config(&up, ""));
    let r = client::get(&gw.url("/v1/nope"), None).await;
    assert_error(&r, 404, "not_found");
    let r = client::get(&gw.url("/v1/chat/completions"), None).await;
    assert_error(&r, 405, "method_not_allowed");
}
