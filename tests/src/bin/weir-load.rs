//! Load generator for `bench/run.sh`.
//!
//! `weir-load NAME=BASE_URL[@PID,PID…][#KEY] …` runs, against every target
//! in the same process and run (with `KEY` as the bearer token, default
//! `sk-bench-key-0001`):
//!
//! - sequential non-streamed and streamed requests on one keep-alive
//!   connection (latency: p50 / p99; streams: time to the first `data:`
//!   event), and
//! - concurrent non-streamed and streamed load (throughput), with the CPU
//!   time the target's processes used per request read from `/proc`,
//!
//! then prints a markdown table, each proxy's added latency measured against
//! the `direct` target, and a second one splitting each proxy's CPU time
//! into user and system time. Requests carry a 1 KB prompt: a system
//! message that is the same on every request (~600 bytes, as a
//! deployment's system prompt is) and a user message that is new on every
//! one (~300 bytes), so caches of repeated text see what they would see in
//! production.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use weir_testkit::client::{HttpClient, client};
use weir_testkit::gateway::{cpu_times, rss_kib};

struct Target {
    name: String,
    base: String,
    pids: Vec<u32>,
    key: String,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Distinct request bodies, cycled through.
const BODIES: usize = 4096;

fn bodies(stream: bool) -> Arc<Vec<Bytes>> {
    let system = "You are the operations team's assistant. Answer in plain English, \
        briefly, and say so when you are not sure. "
        .repeat(6);
    let user = "summarize the following text in one sentence, keeping the numbers. ";
    let bodies = (0..BODIES)
        .map(|i| {
            let user = format!("Request {i}: {}", user.repeat(5));
            Bytes::from(
                json!({
                    "model": "chat",
                    "stream": stream,
                    "messages": [
                        {"role": "system", "content": &system[..600]},
                        {"role": "user", "content": &user[..300]},
                    ],
                })
                .to_string(),
            )
        })
        .collect();
    Arc::new(bodies)
}

fn request(base: &str, key: &str, body: &Bytes) -> Request<Full<Bytes>> {
    Request::post(format!("{base}/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(body.clone()))
        .unwrap()
}

/// One request; returns (time to first data byte, total).
async fn one(client: &HttpClient, base: &str, key: &str, body: &Bytes) -> (Duration, Duration) {
    let start = Instant::now();
    let response = client.request(request(base, key, body)).await.unwrap();
    assert!(
        response.status().is_success(),
        "{base}: {}",
        response.status()
    );
    let mut body = response.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data()
            && first.is_none()
            && !data.is_empty()
        {
            first = Some(start.elapsed());
        }
    }
    (first.unwrap_or_else(|| start.elapsed()), start.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Sequential {
    ttfb_p50: Duration,
    ttfb_p99: Duration,
    total_p50: Duration,
    total_p99: Duration,
}

async fn sequential(target: &Target, stream: bool, n: usize) -> Sequential {
    let (base, key) = (&target.base, &target.key);
    let client = client();
    let bodies = bodies(stream);
    for i in 0..n / 10 {
        one(&client, base, key, &bodies[i % BODIES]).await;
    }
    let mut ttfb = Vec::with_capacity(n);
    let mut total = Vec::with_capacity(n);
    for i in 0..n {
        let (f, t) = one(&client, base, key, &bodies[(n / 10 + i) % BODIES]).await;
        ttfb.push(f);
        total.push(t);
    }
    ttfb.sort();
    total.sort();
    Sequential {
        ttfb_p50: percentile(&ttfb, 0.5),
        ttfb_p99: percentile(&ttfb, 0.99),
        total_p50: percentile(&total, 0.5),
        total_p99: percentile(&total, 0.99),
    }
}

struct Concurrent {
    rps: f64,
    /// The target's CPU time per request, user and system, in µs.
    cpu_us_per_req: Option<(f64, f64)>,
}

/// The CPU time `pids` used so far, user and system.
fn cpu_of(pids: &[u32]) -> (Duration, Duration) {
    pids.iter()
        .map(|p| cpu_times(*p))
        .fold((Duration::ZERO, Duration::ZERO), |(u, s), (pu, ps)| {
            (u + pu, s + ps)
        })
}

async fn concurrent(target: &Target, stream: bool, n: usize, concurrency: usize) -> Concurrent {
    let client = client();
    let bodies = bodies(stream);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu_before = cpu_of(&target.pids);
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let bodies = bodies.clone();
            let base = target.base.clone();
            let key = target.key.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    one(&client, &base, &key, &bodies[i % BODIES]).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = start.elapsed();
    let cpu_after = cpu_of(&target.pids);
    let per_req =
        |after: Duration, before: Duration| (after - before).as_secs_f64() * 1e6 / n.max(1) as f64;
    Concurrent {
        rps: n as f64 / elapsed.as_secs_f64(),
        cpu_us_per_req: (!target.pids.is_empty()).then(|| {
            (
                per_req(cpu_after.0, cpu_before.0),
                per_req(cpu_after.1, cpu_before.1),
            )
        }),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let targets: Vec<Target> = std::env::args()
        .skip(1)
        .map(|arg| {
            let (name, rest) = arg.split_once('=').expect("NAME=URL[@PIDS][#KEY]");
            let (rest, key) = rest.split_once('#').unwrap_or((rest, "sk-bench-key-0001"));
            let (base, pids) = rest.split_once('@').unwrap_or((rest, ""));
            Target {
                name: name.into(),
                base: base.into(),
                pids: pids.split(',').filter_map(|p| p.parse().ok()).collect(),
                key: key.into(),
            }
        })
        .collect();
    let seq_n = env_usize("BENCH_SEQUENTIAL", 3000);
    let conc_n = env_usize("BENCH_CONCURRENT", 20000);
    let concurrency = env_usize("BENCH_CONCURRENCY", 16);
    // For profiling one kind of request: `plain` or `stream` (default both).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let (plain_n, stream_n) = match only.as_str() {
        "plain" => (conc_n, 0),
        "stream" => (0, conc_n / 4),
        _ => (conc_n, conc_n / 4),
    };

    let mut rows = Vec::new();
    for t in &targets {
        eprintln!("benchmarking {} ({})", t.name, t.base);
        let plain = sequential(t, false, seq_n).await;
        let streamed = sequential(t, true, seq_n).await;
        let plain_load = concurrent(t, false, plain_n, concurrency).await;
        let stream_load = concurrent(t, true, stream_n, concurrency).await;
        let rss: u64 = t.pids.iter().map(|p| rss_kib(*p)).sum();
        rows.push((
            t.name.clone(),
            plain,
            streamed,
            plain_load,
            stream_load,
            rss,
        ));
    }
    let direct = rows
        .iter()
        .find(|r| r.0 == "direct")
        .map(|r| (r.1.total_p50, r.2.ttfb_p50));
    println!(
        "| target | p50 ms | p99 ms | added p50 ms | stream TTFB p50 ms | p99 ms | added TTFB ms | req/s | stream req/s | CPU µs/req | CPU µs/stream | RSS MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, plain, streamed, pl, sl, rss) in &rows {
        let added = |a: Duration, b: Duration| {
            format!("{:+.3}", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
        };
        let (added_p50, added_ttfb) = match direct {
            Some((p, f)) => (added(plain.total_p50, p), added(streamed.ttfb_p50, f)),
            None => ("-".into(), "-".into()),
        };
        let cpu = |c: Option<(f64, f64)>| c.map_or("-".into(), |(u, s)| format!("{:.1}", u + s));
        println!(
            "| {name} | {} | {} | {added_p50} | {} | {} | {added_ttfb} | {:.0} | {:.0} | {} | {} | {} |",
            ms(plain.total_p50),
            ms(plain.total_p99),
            ms(streamed.ttfb_p50),
            ms(streamed.ttfb_p99),
            pl.rps,
            sl.rps,
            cpu(pl.cpu_us_per_req),
            cpu(sl.cpu_us_per_req),
            if *rss > 0 {
                format!("{:.1}", *rss as f64 / 1024.0)
            } else {
                "-".into()
            },
        );
    }
    // Where each proxy's CPU goes: its own code (user) or the kernel's
    // (system: syscalls, the loopback path, waking the peer, page resets).
    println!();
    println!("| target | user µs/req | system µs/req | user µs/stream | system µs/stream |");
    println!("|---|---|---|---|---|");
    let split = |c: Option<(f64, f64)>| {
        c.map_or(["-".into(), "-".into()], |(u, s)| {
            [format!("{u:.1}"), format!("{s:.1}")]
        })
    };
    for (name, _, _, pl, sl, _) in &rows {
        if pl.cpu_us_per_req.is_none() && sl.cpu_us_per_req.is_none() {
            continue;
        }
        let ([pu, ps], [su, ss]) = (split(pl.cpu_us_per_req), split(sl.cpu_us_per_req));
        println!("| {name} | {pu} | {ps} | {su} | {ss} |");
    }
}
