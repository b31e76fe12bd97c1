//! A standalone mock OpenAI upstream for benchmarks and demos.
//!
//! `weir-mock-upstream [ADDR] [CHUNKS] [DELAY_MS]`: answers every chat
//! completion with CHUNKS content chunks (default 20) of 8 bytes, streamed
//! when asked, DELAY_MS apart (default 0: at once, as fast as possible; a
//! real model's tokens arrive some 10–50 ms apart), and never records
//! requests.

#![allow(clippy::expect_used)]

use weir_testkit::upstream::{Chat, MockUpstream, Reply};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18000".into());
    let chunks: usize = args.next().and_then(|c| c.parse().ok()).unwrap_or(20);
    let delay: u64 = args.next().and_then(|d| d.parse().ok()).unwrap_or(0);
    let pieces: Vec<String> = (0..chunks).map(|i| format!("tok{i:04} ")).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let up = MockUpstream::start_on(addr.parse().expect("an address like 127.0.0.1:18000")).await;
    up.stop_recording();
    let chat = Chat::text(&refs).usage(250, chunks as u64);
    let chat = match delay {
        0 => chat,
        ms => chat.delay(std::time::Duration::from_millis(ms)),
    };
    up.set_default(Reply::Chat(chat));
    eprintln!("mock upstream on http://{}/v1", up.addr);
    std::future::pending::<()>().await;
}
