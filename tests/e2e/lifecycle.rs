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
    let gw = with_header_timeout_300ms(&up);
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

/// A gateway whose header-read timeout is 300 ms, in front of `up`.
fn with_header_timeout_300ms(up: &MockUpstream) -> weir_testkit::gateway::Gateway {
    start(&config(up, "").replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:0\"\nheader_read_timeout_ms = 300",
    ))
}

/// Write one HTTP/1.1 request with a JSON body on `conn`.
async fn send_raw(conn: &mut tokio::net::TcpStream, body: &Value) {
    let body = body.to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(format!("{head}{body}").as_bytes())
        .await
        .unwrap();
}

/// Read one whole response (content-length or chunked) from `conn`.
async fn read_raw(conn: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let head = text[..head_end].to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|n| n.trim().parse::<usize>().unwrap());
            match length {
                Some(n) if buf.len() >= head_end + 4 + n => return text,
                None if text.ends_with("\r\n0\r\n\r\n") => return text,
                _ => {}
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("the response arrives")
            .unwrap();
        assert!(n > 0, "connection closed mid-response: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_spares_requests_in_flight_and_closes_idle_connections() {
    let up = MockUpstream::start().await;
    // A stream of 8 chunks 100 ms apart: in flight well past the timeout.
    up.push(Reply::Chat(
        Chat::numbered("p", 8).delay(Duration::from_millis(100)),
    ));
    let gw = with_header_timeout_300ms(&up);
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    send_raw(&mut conn, &stream_body("long")).await;
    let stream = read_raw(&mut conn).await;
    assert!(stream.starts_with("HTTP/1.1 200"), "{stream}");
    assert!(
        stream.contains("p7 ") && stream.contains("data: [DONE]"),
        "{stream}"
    );
    // The connection is kept alive for the next request…
    send_raw(&mut conn, &chat_body("next")).await;
    let next = read_raw(&mut conn).await;
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
    // …and closed once it has had none for the timeout.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "an idle connection stays open: {closed:?}"
    );
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
        "{rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_are_not_closed_for_idling_between_requests() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let up = MockUpstream::start().await;
    let gw = with_header_timeout_300ms(&up);
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let models = |sender: &mut hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>| {
        let request = http::Request::get(gw.url("/v1/models"))
            .body(Empty::new())
            .unwrap();
        sender.send_request(request)
    };
    let first = models(&mut sender).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.version(), http::Version::HTTP_2);
    first.into_body().collect().await.unwrap();
    // Idle for longer than the header-read timeout: an HTTP/1.1
    // connection is closed by then (the test above); HTTP/2 keeps its own
    // connection management.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let second = models(&mut sender)
        .await
        .expect("the connection is still open");
    assert_eq!(second.status(), 200);
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
