//! Upstream connections: kept alive across requests, whole and streamed, in
//! every wire format; a connection the upstream closed while idle is
//! replaced without the client noticing; a stream the client abandons closes
//! its upstream connection, so the provider stops generating. Over TLS,
//! HTTP/2 is negotiated and one connection carries every request; the
//! upstream's certificate must chain to a trusted root (`SSL_CERT_FILE`
//! adds roots). The stream idle limit bounds each gap between reads, not
//! the whole stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weir_testkit::client::{self, post_json};
use weir_testkit::upstream::{Chat, MockUpstream, Reply, TEST_CA};

use crate::support::{SERVER, chat_body, config, gateway, start, stream_body};

/// Model `chat` on one target of `kind` at `base_url`.
fn one_target(kind: &str, base_url: &str, model: &str) -> String {
    format!(
        r#"{SERVER}
[[providers]]
name = "p"
kind = "{kind}"
base_url = "{base_url}"
api_key_env = "WEIR_TEST_UPSTREAM_KEY"
timeout_ms = 5000

[[models]]
name = "chat"
targets = [{{ provider = "p", model = "{model}" }}]
"#
    )
}

/// Alternate whole and streamed answers through `gw`; every one complete.
async fn whole_and_streamed(gw: &weir_testkit::gateway::Gateway, rounds: usize) {
    let url = gw.url("/v1/chat/completions");
    for _ in 0..rounds {
        let r = post_json(&url, &chat_body("hi"), None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let s = client::stream(&url, &stream_body("hi"), None).await;
        assert_eq!(s.status, 200, "{}", s.raw);
        assert!(s.done(), "{}", s.raw);
        assert_eq!(s.text(), "one two", "{}", s.raw);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_and_streamed_answers_reuse_one_upstream_connection() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(Chat::text(&["one ", "two"])));
    let gw = start(&config(&up, ""));
    whole_and_streamed(&gw, 4).await;
    let connections: Vec<u64> = up.received().iter().map(|r| r.connection).collect();
    assert_eq!(connections, vec![1; 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_and_gemini_streams_keep_their_connection_too() {
    for (up, model) in [
        (MockUpstream::anthropic().await, "claude-3-5-haiku-latest"),
        (MockUpstream::gemini().await, "gemini-2.0-flash"),
    ] {
        up.set_default(Reply::Chat(Chat::text(&["one ", "two"])));
        let kind = if model.starts_with("claude") {
            "anthropic"
        } else {
            "gemini"
        };
        let gw = gateway(&one_target(kind, &up.base_url(), model)).start();
        whole_and_streamed(&gw, 3).await;
        let connections: Vec<u64> = up.received().iter().map(|r| r.connection).collect();
        assert_eq!(connections, vec![1; 6], "{kind}");
    }
}

/// A completion as an upstream writes it, with its length.
const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"fresh"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

/// An upstream that answers one request on each connection, keep-alive as
/// far as the client can tell, then closes the connection without a word
/// (as servers close idle keep-alive connections). Returns its address,
/// the connections it accepted, and a receiver told of each close.
async fn closing_upstream() -> (
    std::net::SocketAddr,
    Arc<AtomicU64>,
    tokio::sync::mpsc::UnboundedReceiver<u64>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let (closed_tx, closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                // Headers, then as many body bytes as Content-Length says.
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let body_start = loop {
                    let read = socket.read(&mut buf).await.unwrap();
                    assert!(read > 0, "the gateway closed before a whole request");
                    request.extend_from_slice(&buf[..read]);
                    if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&request[..body_start]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while request.len() < body_start + length {
                    let read = socket.read(&mut buf).await.unwrap();
                    assert!(read > 0, "the gateway closed before a whole request");
                    request.extend_from_slice(&buf[..read]);
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{COMPLETION}",
                    COMPLETION.len()
                );
                socket.write_all(response.as_bytes()).await.unwrap();
                drop(socket);
                let _ = closed_tx.send(n);
            });
        }
    });
    (addr, accepted, closed_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
    let (addr, accepted, mut closed) = closing_upstream().await;
    let gw = start(&one_target(
        "openai",
        &format!("http://{addr}/v1"),
        "gpt-4o-mini",
    ));
    let url = gw.url("/v1/chat/completions");
    for round in 1..=3 {
        let r = post_json(&url, &chat_body("hi"), None).await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert_eq!(r.json()["choices"][0]["message"]["content"], "fresh");
        // The upstream has closed the connection before the next request.
        assert_eq!(closed.recv().await, Some(round));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_abandons_closes_its_upstream_connection() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::Chat(
        Chat::numbered("w", 200).delay(Duration::from_millis(20)),
    ));
    let gw = start(&config(&up, ""));
    let mut reader =
        client::open_stream(&gw.url("/v1/chat/completions"), &stream_body("hi"), None).await;
    assert_eq!(reader.status, 200);
    assert!(reader.next_event().await.is_some());
    assert_eq!(up.open_connections(), 1);
    drop(reader);
    // The mock notices at its next write (every 20 ms); the rest of the
    // answer would take 4 s.
    let deadline = Instant::now() + Duration::from_secs(2);
    while up.open_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_is_reached_over_http2_on_one_shared_connection() {
    let up = MockUpstream::start_tls().await;
    up.set_default(Reply::Chat(Chat::text(&["one ", "two"])));
    let gw = gateway(&config(&up, ""))
        .env("SSL_CERT_FILE", TEST_CA)
        .start();
    whole_and_streamed(&gw, 2).await;
    // Concurrent streams share the connection (HTTP/2 streams).
    let url = gw.url("/v1/chat/completions");
    let body = stream_body("hi");
    let streams =
        futures_util::future::join_all((0..8).map(|_| client::stream(&url, &body, None))).await;
    for s in streams {
        assert!(s.done(), "{}", s.raw);
        assert_eq!(s.text(), "one two");
    }
    let received = up.received();
    assert_eq!(received.len(), 12);
    for r in &received {
        assert_eq!(r.version, http::Version::HTTP_2);
        assert_eq!(r.connection, 1);
        assert_eq!(r.body["model"], "gpt-4o-mini");
    }
    assert_eq!(up.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_from_an_untrusted_ca_is_refused() {
    let up = MockUpstream::start_tls().await;
    let gw = start(&config(&up, ""));
    let r = post_json(&gw.url("/v1/chat/completions"), &chat_body("hi"), None).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code(), "upstream_error");
    assert!(up.received().is_empty());
}

#[test]
fn an_unreadable_ssl_cert_file_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weir.toml"), SERVER).unwrap();
    std::fs::write(dir.path().join("not-pem.txt"), "hello").unwrap();
    for file in ["missing.pem", "not-pem.txt"] {
        let mut child = std::process::Command::new(crate::support::bin())
            .args(["serve", "--config", "weir.toml"])
            .current_dir(dir.path())
            .env("SSL_CERT_FILE", dir.path().join(file))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("weir kept running with SSL_CERT_FILE={file}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("SSL_CERT_FILE") && stderr.contains(file),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_body_ends_late_hands_on_its_connection_or_is_left_behind() {
    let up = MockUpstream::start().await;
    // The body's end 20 ms after `[DONE]`: the next request reads it and
    // takes the connection. Three seconds after: the client's stream is not
    // held up for it, and the next request gives up waiting (200 ms) and
    // opens another connection.
    up.push(Reply::Chat(
        Chat::text(&["a"]).end_after(Duration::from_millis(20)),
    ));
    up.push(Reply::Chat(Chat::text(&["b"])));
    up.push(Reply::Chat(
        Chat::text(&["c"]).end_after(Duration::from_secs(3)),
    ));
    up.push(Reply::Chat(Chat::text(&["d"])));
    let gw = start(&config(&up, ""));
    let url = gw.url("/v1/chat/completions");
    for text in ["a", "b", "c", "d"] {
        let began = Instant::now();
        let s = client::stream(&url, &stream_body("hi"), None).await;
        assert!(s.done(), "{}", s.raw);
        assert_eq!(s.text(), text);
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "stream {text} took {:?}",
            began.elapsed()
        );
    }
    let connections: Vec<u64> = up.received().iter().map(|r| r.connection).collect();
    assert_eq!(connections, vec![1, 1, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_limit_bounds_each_gap_not_the_whole_stream() {
    let up = MockUpstream::start().await;
    // Eight chunks 200 ms apart: 1.6 s in all, well past a 1 s idle limit
    // that each gap stays under.
    let pieces = ["a", "b", "c", "d", "e", "f", "g", "h"];
    up.push(Reply::Chat(
        Chat::text(&pieces).delay(Duration::from_millis(200)),
    ));
    let config = config(&up, "").replace(
        "stream_idle_timeout_ms = 2000",
        "stream_idle_timeout_ms = 1000",
    );
    assert!(config.contains("stream_idle_timeout_ms = 1000"));
    let gw = start(&config);
    let url = gw.url("/v1/chat/completions");
    let began = Instant::now();
    let s = client::stream(&url, &stream_body("hi"), None).await;
    assert!(s.done(), "{}", s.raw);
    assert_eq!(s.text(), pieces.concat());
    assert!(began.elapsed() >= Duration::from_millis(1400));
    // A gap longer than the limit still ends the stream.
    up.push(Reply::StallAfter(Chat::text(&["x", "y"]), 1));
    let began = Instant::now();
    let s = client::stream(&url, &stream_body("hi"), None).await;
    assert!(!s.done(), "{}", s.raw);
    assert_eq!(
        s.error().unwrap()["error"]["code"],
        "upstream_timeout",
        "{}",
        s.raw
    );
    assert!(began.elapsed() >= Duration::from_millis(1000));
}
