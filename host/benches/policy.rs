//! Policy runtime costs, per example guardrail, with the same runtime the
//! gateway uses (pooling allocator, epoch deadlines, async calls):
//!
//! - `on_request/<policy>`: a request's whole guardrail cost: a fresh store
//!   and instance, then `on-request` over a 1 KB prompt;
//! - `on_request_reused/<policy>`: the same with `reuse_instances` (a warm
//!   instance from the idle list, returned after the request; each serves
//!   [`REUSE`] requests);
//! - `on_chunk/<policy>`: one 20-byte streamed delta on a live instance;
//! - `chain/3-guardrails` (and `_reused`): what the gateway's guarded
//!   request pays in the policy runtime, for the chain of `bench/run.sh`
//!   (pii-redact, prompt-injection, blocklist): start, `on-request` over
//!   the 1 KB prompt, the response guards, the 160-byte answer as one chunk,
//!   `on-end`, finish; `chain_stream/3-guardrails` the same with the answer
//!   as 20 streamed deltas of 8 bytes.
//!
//! Before those, each policy's size and load time are printed: compiled
//! with Cranelift (an empty cache) and loaded from the precompiled cache,
//! both including the type check and the smoke call.
//!
//! `POLICY_BENCH_ONLY=pii-redact,blocklist` runs only those policies.
//!
//! Needs the built components: `./dev.sh policies` (Rust) and
//! `policies/build-other.sh` (Python, JavaScript, C, Go), then
//! `cargo bench -p weir --bench policy`. Missing ones are skipped;
//! `secrets-js-quickjs` is secrets-js built with the QuickJS backend by hand
//! (docs/languages.md).

#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use weir::chat::ChatRequest;
use weir::config::{OnError, PolicyConfig, PolicyKind};
use weir::policy::{EngineOptions, GuardChain, MemoryKv, Policy, PolicyRuntime, RequestContext};

const POLICIES: [(&str, &str); 9] = [
    ("allow-all", "{}"),
    ("pii-redact", "{}"),
    ("prompt-injection", "{}"),
    (
        "blocklist",
        r#"{"deny": ["project falcon"], "mask": ["darn", "heck"]}"#,
    ),
    (
        "topic-filter-py",
        r#"{"responses": true, "topics": {"investment-advice": {"stocks": 1.5, "stock tips": 2.0, "portfolio": 1.0}, "medical": {"diagnose": 1.0, "symptoms": 0.5, "prescription": 1.0}}}"#,
    ),
    ("secrets-js", "{}"),
    ("secrets-js-quickjs", "{}"),
    ("length-limit-c", r#"{"max_request_bytes": 65536}"#),
    ("length-limit-go", r#"{"max_request_bytes": 65536}"#),
];

fn prompt_1kb() -> ChatRequest {
    let sentence = "Please summarize the quarterly report for the operations team. ";
    let text: String = sentence.repeat(1024 / sentence.len() + 1)[..1024].to_string();
    let body = serde_json::json!({
        "model": "chat",
        "messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text}],
    });
    ChatRequest::parse(body.to_string().as_bytes()).expect("a valid request")
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/policies")
        .join(format!("{name}.wasm"))
}

/// `reuse_instances` of the `_reused` rows: each instance serves this many
/// requests, then a fresh one takes over, as a deployment would bound it.
/// Unbounded, secrets-js's instance (componentize-js) grows past its 32
/// MiB `memory_mb` after some tens of thousands of requests and traps.
const REUSE: u32 = 1000;

fn policy_config(name: &str, config: &str, reuse: u32) -> PolicyConfig {
    let path = path(name);
    PolicyConfig {
        name: name.into(),
        kind: PolicyKind::Guardrail,
        path: path.clone(),
        config: serde_json::from_str(config).expect("config"),
        global: true,
        on_error: OnError::Deny,
        timeout_ms: 100,
        memory_mb: 32,
        max_hold_bytes: 1 << 20,
        reuse_instances: Some(reuse),
    }
}

fn load(
    rt: &tokio::runtime::Runtime,
    runtime: &Arc<PolicyRuntime>,
    name: &str,
    config: &str,
    reuse: u32,
) -> Option<Arc<Policy>> {
    let path = path(name);
    if !path.is_file() {
        eprintln!(
            "skipping {name}: {} not built (./dev.sh policies, policies/build-other.sh)",
            path.display()
        );
        return None;
    }
    let loaded = rt.block_on(runtime.load_file(&policy_config(name, config, reuse), &path));
    if let (Err(err), true) = (&loaded, reuse > 0) {
        // Go guests refuse reuse_instances: no on_request_reused for them.
        eprintln!("skipping on_request_reused/{name}: {err}");
        return None;
    }
    Some(loaded.expect("the policy loads"))
}

/// Size, compile time and cache-load time (median of 3 each), printed.
fn report_load(rt: &tokio::runtime::Runtime, name: &str, config: &str) {
    let path = path(name);
    let Ok(meta) = std::fs::metadata(&path) else {
        return;
    };
    let mut compiled = Vec::new();
    let mut cached = Vec::new();
    for _ in 0..3 {
        let cache = tempfile::tempdir().expect("a temporary cache");
        let options = EngineOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            ..EngineOptions::default()
        };
        for times in [&mut compiled, &mut cached] {
            // A new engine each time: nothing kept in memory between loads.
            let runtime =
                PolicyRuntime::new(&options, Arc::new(MemoryKv::default())).expect("engine");
            let policy = rt
                .block_on(runtime.load_file(&policy_config(name, config, 0), &path))
                .expect("the policy loads");
            times.push(policy.load_time);
        }
    }
    compiled.sort();
    cached.sort();
    eprintln!(
        "load/{name}: {:.1} MB, compile + check + smoke {:.0} ms, from the cache {:.1} ms",
        meta.len() as f64 / 1e6,
        compiled[1].as_secs_f64() * 1e3,
        cached[1].as_secs_f64() * 1e3,
    );
}

fn ctx(streaming: bool) -> RequestContext {
    RequestContext {
        request_id: "bench".into(),
        key_name: Some("bench".into()),
        model: "chat".into(),
        streaming,
        metadata: Vec::new(),
    }
}

/// A current-thread tokio runtime and the gateway's policy runtime.
fn runtimes() -> (tokio::runtime::Runtime, Arc<PolicyRuntime>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let runtime = PolicyRuntime::new(&EngineOptions::default(), Arc::new(MemoryKv::default()))
        .expect("engine");
    (rt, runtime)
}

fn bench(c: &mut Criterion) {
    let (rt, runtime) = runtimes();
    let request = prompt_1kb();
    // `POLICY_BENCH_ONLY=allow-all,blocklist` limits the run (and the load
    // report) to those policies, for profiling one of them.
    let only = std::env::var("POLICY_BENCH_ONLY").ok();
    let selected = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|n| n == name))
    };
    for (name, config) in POLICIES.into_iter().filter(|(name, _)| selected(name)) {
        report_load(&rt, name, config);
        let Some(policy) = load(&rt, &runtime, name, config, 0) else {
            continue;
        };
        let policies = [policy];
        if let Some(reusable) = load(&rt, &runtime, name, config, REUSE) {
            let reusable = [reusable];
            c.bench_function(&format!("on_request_reused/{name}"), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            let mut chat = request.clone();
                            let mut chain = GuardChain::start(&runtime, &reusable, &ctx(false))
                                .await
                                .expect("start");
                            chain.on_request(&mut chat).await.expect("allowed");
                            chain.finish().await;
                            // Run what the request handed to tasks of its own
                            // (a request-only guard's retirement), as the
                            // gateway's runtime does between requests: left
                            // to pile up, they hold every slot of the pool.
                            tokio::task::yield_now().await;
                        }
                        start.elapsed()
                    })
                })
            });
        }
        c.bench_function(&format!("on_request/{name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut chat = request.clone();
                        let mut chain = GuardChain::start(&runtime, &policies, &ctx(false))
                            .await
                            .expect("start");
                        chain.on_request(&mut chat).await.expect("allowed");
                        drop(chain);
                        tokio::task::yield_now().await;
                    }
                    start.elapsed()
                })
            })
        });
        c.bench_function(&format!("on_chunk/{name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut chain = GuardChain::start(&runtime, &policies, &ctx(true))
                        .await
                        .expect("start");
                    chain.begin_response().await.expect("guard");
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let delta = format!("token{:04} and more ", i % 10_000);
                        let start = Instant::now();
                        let out = chain.on_chunk(0, delta).await.expect("pass");
                        total += start.elapsed();
                        std::hint::black_box(out);
                    }
                    total
                })
            })
        });
    }
}

/// The guarded request of `bench/run.sh`, through the policy runtime only.
fn bench_chain(c: &mut Criterion) {
    const CHAIN: [&str; 3] = ["pii-redact", "prompt-injection", "blocklist"];
    let (rt, runtime) = runtimes();
    let request = prompt_1kb();
    let deltas: Vec<String> = (0..20).map(|i| format!("word{i:03} ")).collect();
    let answer: String = deltas.concat();
    for (suffix, reuse) in [("", 0), ("_reused", REUSE)] {
        let chain: Option<Vec<Arc<Policy>>> = CHAIN
            .iter()
            .map(|name| {
                let config = POLICIES.iter().find(|(n, _)| n == name)?.1;
                load(&rt, &runtime, name, config, reuse)
            })
            .collect();
        let Some(chain) = chain else {
            return;
        };
        let run = |streamed: bool| {
            let (chain, request, deltas, answer) = (&chain, &request, &deltas, &answer);
            let runtime = &runtime;
            move || async move {
                let mut chat = request.clone();
                let mut guards = GuardChain::start(runtime, chain, &ctx(streamed))
                    .await
                    .expect("start");
                guards.on_request(&mut chat).await.expect("allowed");
                guards.begin_response().await.expect("guards");
                let mut out = String::new();
                if streamed {
                    for delta in deltas {
                        out += &guards.on_chunk(0, delta.clone()).await.expect("pass");
                    }
                } else {
                    out += &guards.on_chunk(0, answer.clone()).await.expect("pass");
                }
                out += &guards.on_end(0).await.expect("pass");
                guards.finish().await;
                std::hint::black_box(out);
            }
        };
        for (name, streamed) in [("chain", false), ("chain_stream", true)] {
            let once = run(streamed);
            c.bench_function(&format!("{name}/3-guardrails{suffix}"), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            once().await;
                            tokio::task::yield_now().await;
                        }
                        start.elapsed()
                    })
                })
            });
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = bench, bench_chain
}
criterion_main!(benches);
