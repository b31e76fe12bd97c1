//! Failover across a model's targets, and failures after the first byte.

use serde_json::Value;
use weir_testkit::client::{self, post_json};
use weir_testkit::upstream::{Chat, MockUpstream, Reply};

use crate::support::{SERVER, chat_body, provider, start, stream_body};

/// Model `chat` with targets a then b; b answers normally.
async fn two_targets(timeout_ms: u64) -> (MockUpstream, MockUpstream, String) {
    let a = MockUpstream::start().await;
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
        provider("a", &a, timeout_ms),
        provider("b", &b, 2000)
    );
    (a, b, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failover_trigger_moves_to_the_next_target() {
    let (a, b, cfg) = two_targets(300).await;
    let gw = start(&cfg);
    let url = gw.url("/v1/chat/completions");
    let triggers = [
        ("500", Reply::status(500)),
        ("503", Reply::status(503)),
        ("429", Reply::status(429)),
        ("401", Reply::status(401)),
        ("hang", Reply::Hang),
        ("malformed", Reply::Malformed),
    ];
    for (name, reply) in triggers {
        for stream in [false, true] {
            a.push(reply.clone());
            let before = b.received().len();
            let (status, provider, text) = if stream {
                let s = client::stream(&url, &stream_body("x"), None).await;
                assert!(s.done(), "{name}: {:?}", s.events);
                (
                    s.status,
                    s.header("x-weir-provider").map(str::to_owned),
                    s.text(),
                )
            } else {
                let r = post_json(&url, &chat_body("x"), None).await;
                let text = r.json()["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                (
                    r.status,
                    r.header("x-weir-provider").map(str::to_owned),
                    text,
                )
            };
            assert_eq!(status, 200, "{name} stream={stream}");
            assert_eq!(provider.as_deref(), Some("b/model-b"), "{name}");
            assert_eq!(text, "from b", "{name}");
            assert_eq!(b.received().len(), before + 1, "{name}");
            assert_eq!(b.last().body["model"], "model-b");
        }
    }
    let metrics = client::get(&gw.admin_url("/metrics"), None).await.text();
    assert!(
        metrics.contains("weir_failovers_total{model=\"chat\"} 12"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"timeout\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_fails_over() {
    let b = MockUpstream::start().await;
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let cfg = format!(
        r#"{SERVER}
[[providers]]
name = "dead"
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
{}
[[models]]
name = "chat"
targets = [{{ provider = "dead", model = "m" }}, {{ provider = "b", model = "m" }}]
"#,
        provider("b", &b, 2000)
    );
    let gw = start(&cfg);
    let r = post_json(&gw.url("/v1/chat/completions"), &chat_body("x"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-weir-provider"), Some("b/m"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_after_the_first_byte_end_with_an_error_event_and_no_failover() {
    let (a, b, cfg) = two_targets(2000).await;
    let gw = start(&cfg);
    let url = gw.url("/v1/chat/completions");
    let chat = Chat::text(&["one ", "two ", "three"]);
    for reply in [
        Reply::DropAfter(chat.clone(), 2),
        Reply::ErrorEventAfter(chat.clone(), 2),
    ] {
        a.push(reply);
        let s = client::stream(&url, &stream_body("x"), None).await;
        assert_eq!(s.status, 200);
        assert_eq!(
            s.text(),
            "one two ",
            "text before the failure, once: {:?}",
            s.events
        );
        assert!(!s.done(), "no [DONE] after a failure: {:?}", s.events);
        let error: Value = s.error().expect("an error event");
        assert_eq!(error["error"]["code"], "upstream_error");
        assert!(error["error"]["message"].is_string());
        assert_eq!(error["error"]["type"], "upstream_error");
        assert!(b.received().is_empty(), "no failover after the first byte");
    }
    let metrics = client::get(&gw.admin_url("/metrics"), None).await.text();
    assert!(
        metrics.contains("weir_streams_aborted_total{model=\"chat\",reason=\"upstream\"} 2"),
        "{metrics}"
    );
}
