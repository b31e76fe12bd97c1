//! The per-request cost of accounting with each state backend: one
//! `reserve` (a key with request and token limits and a budget) plus one
//! `record` (settle + usage), as the request path does them.
//! `cargo bench -p weir --bench ledger`; the redis case starts a
//! `redis-server` on a free port when the binary is installed.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use weir::auth::VirtualKey;
use weir::config::BudgetPeriod;
use weir::state::memory::MemoryLedger;
use weir::state::redis::RedisLedger;
use weir::state::sqlite::SqliteLedger;
use weir::state::{Actual, Ask, Ledger};

fn ask() -> Ask {
    Ask {
        key: Arc::new(VirtualKey {
            name: "bench".into(),
            models: None,
            tokens_per_minute: Some(u64::MAX / 4),
            requests_per_minute: Some(u64::MAX / 4),
            budget_micro_usd: Some(u64::MAX / 4),
            budget_period: BudgetPeriod::Monthly,
            model_limits: Default::default(),
        }),
        model: "chat".into(),
        tokens: 1200,
        cost_micro_usd: 700,
    }
}

fn run(c: &mut Criterion, name: &str, rt: &tokio::runtime::Runtime, ledger: Arc<dyn Ledger>) {
    let ask = ask();
    let actual = Actual {
        input_tokens: 250,
        output_tokens: 80,
        cached_input_tokens: 0,
        cost_micro_usd: 85,
    };
    c.bench_function(&format!("reserve_and_record/{name}"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let r = ledger.reserve(&ask).await.expect("fits");
                    ledger.record("bench", "chat", Some(r), Some(actual)).await;
                }
                start.elapsed()
            })
        })
    });
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    run(c, "memory", &rt, Arc::new(MemoryLedger::default()));
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteLedger::open(&dir.path().join("bench.db")).unwrap();
    run(c, "sqlite", &rt, Arc::new(sqlite));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Ok(mut redis) = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server is not installed: skipping the redis case");
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let ledger = rt.block_on(async {
        for _ in 0..100 {
            if let Ok(l) = RedisLedger::connect(&url).await {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    });
    if let Some(ledger) = ledger {
        run(c, "redis", &rt, Arc::new(ledger));
    }
    let _ = redis.kill();
    let _ = redis.wait();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
