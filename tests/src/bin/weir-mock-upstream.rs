//! A standalone mock OpenAI upstream for benchmarks and demos.
//!
//! `weir-mock-upstream [ADDR] [CHUNKS]`: answers every chat completion with
//! CHUNKS content chunks (default 20) of 8 bytes, streamed when asked, with
//! no delay, and never records requests.

#![allow(clippy::expect_used)]

use weir_testkit::upstream::{Chat, MockUpstream, Reply};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18000".into());
    let chunks: usize = args.next().and_then(|c| c.parse().ok()).unwrap_or(20);
    let pieces: Vec<String> = (0..chunks).map(|i| format!("tok{i:04} ")).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let up = MockUpstream::start_on(addr.parse().expect("an address like 127.0.0.1:18000")).await;
    up.stop_recording();
    up.set_default(Reply::Chat(Chat::text(&refs).usage(250, chunks as u64)));
    eprintln!("mock upstream on http://{}/v1", up.addr);
    std::future::pending::<()>().await;
}
