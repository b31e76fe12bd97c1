//! Hot-swap and start-up timings for `bench/reload.sh`.
//!
//! `weir-reload-bench WEIR_BINARY POLICY_DIR` measures, for each example
//! policy, the time from `PUT /admin/policies/{name}` to the new version
//! being live (the PUT answers after the swap is published): once with an
//! empty precompiled cache (Cranelift compiles), once from the cache. Then
//! the time from spawning `weir serve` to listening with 5 policies, with a
//! cold and a warm cache. Prints markdown tables.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::Method;
use weir_testkit::client::send;
use weir_testkit::gateway::Gateway;

const EXAMPLES: [&str; 4] = ["allow-all", "pii-redact", "prompt-injection", "blocklist"];

fn config(policies: &[(&str, &Path)]) -> String {
    let mut cfg = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[state]\nbackend = \"memory\"\n\
         [[providers]]\nname = \"mock\"\nkind = \"mock\"\n[[models]]\nname = \"mock\"\ntargets = [{ provider = \"mock\", model = \"mock\" }]\n",
    );
    for (name, path) in policies {
        cfg.push_str(&format!(
            "[[policies]]\nname = \"{name}\"\nkind = \"guardrail\"\npath = \"{}\"\nglobal = true\n",
            path.display()
        ));
    }
    cfg
}

fn start(bin: &Path, cfg: &str, dir: &Path, cache: &Path) -> (Gateway, Duration) {
    let started = Instant::now();
    let gw = Gateway::builder(bin, cfg)
        .dir(dir)
        .env("WEIR_CACHE_DIR", cache.to_str().unwrap())
        .env("RUST_LOG", "warn,weir::server=info")
        .start();
    (gw, started.elapsed())
}

async fn put(gw: &Gateway, bytes: Vec<u8>) -> Duration {
    let started = Instant::now();
    let r = send(
        Method::PUT,
        &gw.admin_url("/admin/policies/slot"),
        &[],
        bytes,
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["swapped"], true);
    elapsed
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(args.next().expect("WEIR_BINARY"))
        .canonicalize()
        .expect("the weir binary");
    let policy_dir = PathBuf::from(args.next().expect("POLICY_DIR"))
        .canonicalize()
        .expect("the policy folder");
    let example = |name: &str| policy_dir.join(format!("{name}.wasm"));
    let bytes = |name: &str| std::fs::read(example(name)).unwrap();

    // Swaps: one slot, starting as a copy of allow-all, then each example.
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let slot = dir.path().join("slot.wasm");
    std::fs::copy(example("allow-all"), &slot).unwrap();
    let (gw, _) = start(&bin, &config(&[("slot", &slot)]), dir.path(), cache.path());
    let mut cold = Vec::new();
    for name in &EXAMPLES[1..] {
        cold.push((name, put(&gw, bytes(name)).await));
    }
    // Every example is compiled now: swapping back to each is a cache hit.
    let mut warm = Vec::new();
    put(&gw, bytes("allow-all")).await;
    for name in &EXAMPLES[1..] {
        warm.push(put(&gw, bytes(name)).await);
        put(&gw, bytes("allow-all")).await;
    }
    let allow_warm = put(&gw, bytes("pii-redact")).await;
    let allow_again = {
        let d = put(&gw, bytes("allow-all")).await;
        d.min(allow_warm)
    };
    drop(gw);
    println!("| policy | size | trigger → live, compiling | trigger → live, cached |");
    println!("|---|---|---|---|");
    println!(
        "| allow-all | {} B | (loaded at start) | {} ms |",
        bytes("allow-all").len(),
        ms(allow_again)
    );
    for ((name, c), w) in cold.iter().zip(&warm) {
        println!(
            "| {name} | {} B | {} ms | {} ms |",
            bytes(name).len(),
            ms(*c),
            ms(*w)
        );
    }

    // Start-up with 5 policies: the four examples and a second allow-all.
    let five: Vec<(&str, PathBuf)> = vec![
        ("allow-all", example("allow-all")),
        ("pii-redact", example("pii-redact")),
        ("prompt-injection", example("prompt-injection")),
        ("blocklist", example("blocklist")),
        ("allow-all-2", example("allow-all")),
    ];
    let refs: Vec<(&str, &Path)> = five.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (gw, cold_start) = start(&bin, &config(&refs), dir.path(), cache.path());
    drop(gw);
    let mut warm_starts = Vec::new();
    for _ in 0..5 {
        let (gw, t) = start(&bin, &config(&refs), dir.path(), cache.path());
        warm_starts.push(t);
        drop(gw);
    }
    warm_starts.sort();
    println!();
    println!("| start-up with 5 policies (spawn → listening) | ms |");
    println!("|---|---|");
    println!("| empty cache (compiles) | {} |", ms(cold_start));
    println!("| warm cache (median of 5) | {} |", ms(warm_starts[2]));
}
