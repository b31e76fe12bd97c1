//! Process and connection lifecycle: drain on SIGTERM, slow clients,
//! concurrency, probes, metrics and the admin token.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_testkit::client::{self, get, post_json};
use weir_testkit::upstream::{Chat, MockUpstream, Reply};

use crate::support::{chat_body, config, gateway, start, stream_body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_streams_then_exits_0() {
    let up = MockUpstream::start().await;
    let pieces: Vec<String> = (0..10).map(|i| format!("p{i} ")).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    up.set_default(Reply::Chat(
        Chat::text(&refs).delay(Duration::from_millis(100)),
    ));
    let mut gw = start(&config(&up, ""));
    let mut reader =
        client::open_stream(&gw.url("/v1/chat/completions"), &stream_body("x"), None).await;
    let mut text = String::new();
    // Wait for the first content chunk: the stream is in flight.
    while text.is_empty() {
        let e = reader.next_event().await.unwrap();
        let v: Value = serde_json::from_str(&e).unwrap();
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    gw.signal("TERM");
    gw.wait_for_log("draining", Duration::from_secs(5));
    // New connections are refused while the stream drains.
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err(),
        "the listener must be closed once draining"
    );
    let rest = reader.collect().await;
    assert!(
        rest.done(),
        "the in-flight stream completes: {:?}",
        rest.events
    );
    text.push_str(&rest.text());
    assert_eq!(text, pieces.concat());
    let status = gw.wait_exit(Duration::from_secs(10)).expect("weir exits");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drain_is_bounded_by_the_grace_period() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::StallAfter(Chat::default(), 1));
    let cfg = config(&up, "").replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:0\"\nshutdown_grace_ms = 300",
    );
    let mut gw = start(&cfg);
    let mut reader =
        client::open_stream(&gw.url("/v1/chat/completions"), &stream_body("x"), None).await;
    reader.next_event().await.unwrap();
    gw.signal("TERM");
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("weir exits after the grace period");
    assert_eq!(status.code(), Some(0));
    gw.wait_for_log("grace period over", Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_send_headers_too_slowly_are_cut_off() {
    let up = MockUpstream::start().await;
    let cfg = config(&up, "").replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:0\"\nheader_read_timeout_ms = 300",
    );
    let gw = start(&cfg);
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // A well-behaved client is served meanwhile.
    let ok = post_json(&gw.url("/v1/chat/completions"), &chat_body("x"), None).await;
    assert_eq!(ok.status, 200);
    // The slow one is disconnected (EOF, possibly after a 408) by the server.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    let closed = match read {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Err(_) => false,
    };
    assert!(closed, "the slow client was not cut off");
    let head = String::from_utf8_lossy(&buf);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 408"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_get_exactly_their_own_content() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(Chat::echo(6).delay(Duration::from_millis(5))));
    let gw = start(&config(&up, ""));
    let url = gw.url("/v1/chat/completions");
    let http = client::client();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let url = url.clone();
            let http = http.clone();
            tokio::spawn(async move {
                let prompt = format!("client {i} says hello {}", "x".repeat(i % 17));
                let s = client::open_stream_with(&http, &url, &stream_body(&prompt), None)
                    .await
                    .collect()
                    .await;
                (prompt, s)
            })
        })
        .collect();
    for task in tasks {
        let (prompt, s) = task.await.unwrap();
        assert_eq!(s.status, 200);
        assert!(s.done(), "{prompt}: {:?}", s.events);
        assert_eq!(s.text(), format!("echo: {prompt}"));
    }
    assert_eq!(up.received().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_metrics_and_the_admin_token() {
    let up = MockUpstream::start().await;
    let cfg = config(&up, "").replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:0\"\nadmin_token_env = \"WEIR_TEST_ADMIN_TOKEN\"",
    );
    let gw = gateway(&cfg)
        .env("WEIR_TEST_ADMIN_TOKEN", "admin-secret-token")
        .start();
    for base in [gw.url(""), gw.admin_url("")] {
        for probe in ["/healthz", "/readyz"] {
            let r = get(&format!("{base}{probe}"), None).await;
            assert_eq!(r.status, 200, "{base}{probe}");
        }
    }
    assert_eq!(
        post_json(&gw.url("/v1/chat/completions"), &chat_body("x"), None)
            .await
            .status,
        200
    );
    up.push(Reply::status(400));
    assert_eq!(
        post_json(&gw.url("/v1/chat/completions"), &chat_body("x"), None)
            .await
            .status,
        400
    );

    let denied = get(&gw.admin_url("/metrics"), None).await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.error_code(), "invalid_admin_token");
    assert_eq!(
        get(&gw.admin_url("/metrics"), Some("wrong")).await.status,
        401
    );
    let metrics = get(&gw.admin_url("/metrics"), Some("admin-secret-token")).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for needle in [
        "weir_requests_total{route=\"chat\",model=\"chat\",status=\"200\"} 1",
        "weir_requests_total{route=\"chat\",model=\"chat\",status=\"400\"} 1",
        "weir_request_duration_seconds_bucket{route=\"chat\",model=\"chat\",le=\"0.005\"}",
        "weir_upstream_requests_total{provider=\"up\",model=\"gpt-4o-mini\",outcome=\"ok\"} 1",
        "weir_tokens_total{key=\"anonymous\",model=\"chat\",direction=\"input\"} 11",
        "weir_tokens_total{key=\"anonymous\",model=\"chat\",direction=\"output\"} 3",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // The admin API is not served on the client listener.
    assert_eq!(get(&gw.url("/metrics"), None).await.status, 404);
}
