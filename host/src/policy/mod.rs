//! The policy runtime: loads WebAssembly components that implement the
//! `weir:policy` worlds and runs them for requests.
//!
//! This module is the only code that touches wasmtime (STYLE: "one narrow
//! wrapper owns wasmtime"). The gateway sees [`PolicyRuntime::load`], which
//! turns a file into an immutable, type-checked, smoke-tested [`Policy`], and
//! [`GuardChain`], the per-request state of a model's guardrails. It never
//! sees a `Store`.
//!
//! Cost model (numbers from `cargo bench --bench policy`): compiling happens
//! once per digest (and is cached on disk); `instantiate_pre` once per load;
//! a request pays a fresh store + instance per guardrail (pooled memory, so
//! tens of microseconds for a Rust guest) — or, for a guardrail that
//! declares itself stateless or whose config sets `reuse_instances`, takes
//! an idle instance that served the same virtual key — and one call per
//! hook; a streamed chunk pays one call per guardrail on a live instance.

mod bindings;
mod engine;
mod exports;
mod guardrail;
pub mod inspect;
mod kv;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use sha2::{Digest, Sha256};
use tracing::info;
use wasmtime::component::{Component, ComponentExportIndex, ResourceAny};

use crate::config::{OnError, PolicyConfig, PolicyKind};

use bindings::guardrail::weir::policy::types as wit;
use bindings::pricing::PricingPolicyPre;
use bindings::router::RouterPolicyPre;
pub use engine::{CompileSource, EngineOptions, PolicyEngine, default_cache_dir};
use exports::GuardrailPre;
pub use guardrail::{GuardChain, RequestContext, Stop};
pub use kv::{KvStore, MemoryKv};
use state::PolicyMeta;

/// Why a component could not be loaded. The old version (if any) keeps
/// serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("not a WebAssembly file")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build it for wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("the component does not compile: {0}")]
    Compile(String),
    #[error("the component does not implement the `{world}` world: {detail}")]
    WrongWorld { world: &'static str, detail: String },
    #[error("the smoke call failed: {0}")]
    Smoke(String),
    #[error(
        "reuse_instances is unsafe for this component: {0}; remove reuse_instances (fresh instances are safe)"
    )]
    UnsafeReuse(String),
}

impl LoadError {
    /// A label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Read { .. } => "read",
            LoadError::NotWasm => "not_wasm",
            LoadError::CoreModule => "core_module",
            LoadError::Compile(_) => "compile",
            LoadError::WrongWorld { .. } => "wrong_world",
            LoadError::Smoke(_) => "smoke",
            LoadError::UnsafeReuse(_) => "unsafe_reuse",
        }
    }
}

/// Which guardrail hooks the gateway calls for a policy: all of them,
/// unless the component exports `weir:policy/guardrail-hooks` and says
/// otherwise (asked once per load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    /// `on-request` is called.
    pub requests: bool,
    /// A response guard is made and every response's text goes through it.
    pub responses: bool,
}

impl Hooks {
    /// Every hook: what a policy gets that does not say.
    pub const ALL: Hooks = Hooks {
        requests: true,
        responses: true,
    };

    /// The hooks' names, for listings: `["requests", "responses"]`.
    pub fn names(self) -> Vec<&'static str> {
        [(self.requests, "requests"), (self.responses, "responses")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect()
    }
}

/// The functions of a component's `guardrail-hooks` export it has (both
/// optional: components built before `stateless` existed export `needs`
/// alone).
#[derive(Default)]
struct HooksExport {
    needs: Option<ComponentExportIndex>,
    stateless: Option<ComponentExportIndex>,
}

impl HooksExport {
    fn of(component: &Component) -> Self {
        let Some(interface) = component.get_export_index(None, bindings::hooks::INTERFACE) else {
            return Self::default();
        };
        Self {
            needs: component.get_export_index(Some(&interface), "needs"),
            stateless: component.get_export_index(Some(&interface), "stateless"),
        }
    }
}

/// What a guardrail said about itself at load (`guardrail-hooks`).
#[derive(Debug, Clone, Copy)]
struct Declared {
    hooks: Hooks,
    stateless: bool,
}

/// Requests one instance of a guardrail that declares itself stateless
/// serves when its config does not say (`reuse_instances` unset).
pub const STATELESS_REUSE: u32 = 1000;

/// How many requests one instance serves (0: a fresh one per request): the
/// operator's `reuse_instances` if set; else [`STATELESS_REUSE`] for a
/// guardrail that declared itself stateless and is safe to reuse (`hazard`
/// is [`reuse_hazard`]'s answer), else 0.
fn reuse_bound(configured: Option<u32>, stateless: bool, hazard: Option<&str>) -> u32 {
    match configured {
        Some(n) => n,
        None if stateless && hazard.is_none() => STATELESS_REUSE,
        None => 0,
    }
}

/// A policy's limits and failure handling from its config.
#[derive(Debug, Clone)]
pub struct Limits {
    pub on_error: OnError,
    /// Deadline per hook call, in epoch ticks.
    pub ticks: u64,
    pub timeout_ms: u64,
    pub max_hold_bytes: usize,
    /// Requests one instance may serve (0: a fresh instance per request).
    pub reuse: u32,
}

enum Pre {
    Guardrail(GuardrailPre<state::PolicyState>),
    Router(RouterPolicyPre<state::PolicyState>),
    Pricing(PricingPolicyPre<state::PolicyState>),
}

/// Pre-created metric handles (no label hashing on the hot path).
struct PolicyMetrics {
    instantiate: Histogram,
    request_calls: Counter,
    request_time: Histogram,
    chunk_calls: Counter,
    chunk_time: Histogram,
    end_calls: Counter,
    end_time: Histogram,
    denials: Counter,
    /// Fresh instances ready (`guardrail::FRESH_STOCK` at most).
    ready: Gauge,
}

impl PolicyMetrics {
    fn new(name: &str) -> Self {
        let call = |hook: &'static str| counter!("weir_policy_calls_total", "policy" => name.to_string(), "hook" => hook);
        let time = |hook: &'static str| histogram!("weir_policy_call_duration_seconds", "policy" => name.to_string(), "hook" => hook);
        PolicyMetrics {
            instantiate: time("instantiate"),
            request_calls: call("on_request"),
            request_time: time("on_request"),
            chunk_calls: call("on_chunk"),
            chunk_time: time("on_chunk"),
            end_calls: call("on_end"),
            end_time: time("on_end"),
            denials: counter!("weir_policy_denials_total", "policy" => name.to_string()),
            ready: gauge!("weir_policy_instances_ready", "policy" => name.to_string()),
        }
    }
}

/// A loaded, validated policy: immutable; a reload makes a new one.
pub struct Policy {
    pub name: String,
    pub kind: PolicyKind,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    pub source: PathBuf,
    pub loaded_at: SystemTime,
    pub limits: Limits,
    /// How the component was obtained, and how long loading took.
    pub compiled: CompileSource,
    pub load_time: Duration,
    /// The guardrail hooks called (`Hooks::ALL` for routers and pricing).
    pub hooks: Hooks,
    /// The guardrail declared itself stateless (`guardrail-hooks.stateless`).
    pub stateless: bool,
    meta: Arc<PolicyMeta>,
    pre: Pre,
    metrics: PolicyMetrics,
    /// Idle instances kept for reuse (only with `reuse_instances`).
    idle: parking_lot::Mutex<Vec<guardrail::Idle>>,
    /// Fresh instances made ahead of requests (only without it).
    stock: parking_lot::Mutex<guardrail::Stock>,
    /// Set when making one failed: requests instantiate their own (and
    /// report why) from then on.
    no_stock: AtomicBool,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Loads policies and owns the engine.
#[derive(Debug)]
pub struct PolicyRuntime {
    engine: PolicyEngine,
    kv: Arc<dyn KvStore>,
}

impl PolicyRuntime {
    /// Build the engine.
    pub fn new(options: &EngineOptions, kv: Arc<dyn KvStore>) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(PolicyRuntime {
            engine: PolicyEngine::new(options)?,
            kv,
        }))
    }

    /// The engine (for `weir policy` tooling).
    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }

    /// Read `path` and load it as `config` says.
    pub async fn load_file(
        self: &Arc<Self>,
        config: &PolicyConfig,
        path: &Path,
    ) -> Result<Arc<Policy>, LoadError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|error| LoadError::Read {
                path: path.to_path_buf(),
                error,
            })?;
        self.load(config, path, bytes).await
    }

    /// Compile (or fetch from the cache), type-check against the policy's
    /// world, and make a smoke call with production limits.
    pub async fn load(
        self: &Arc<Self>,
        config: &PolicyConfig,
        source: &Path,
        bytes: Vec<u8>,
    ) -> Result<Arc<Policy>, LoadError> {
        let started = Instant::now();
        check_header(&bytes)?;
        // Read only where instances may be reused (it walks the component).
        let hazard = (config.kind == PolicyKind::Guardrail && config.reuse_instances != Some(0))
            .then(|| reuse_hazard(&bytes))
            .flatten();
        if let (Some(1..), Some(reason)) = (config.reuse_instances, &hazard) {
            return Err(LoadError::UnsafeReuse(reason.clone()));
        }
        let digest = digest(&bytes);
        let this = self.clone();
        let hex = digest.trim_start_matches("sha256:").to_string();
        let (component, compiled) =
            tokio::task::spawn_blocking(move || this.engine.compile(&bytes, &hex))
                .await
                .map_err(|e| LoadError::Compile(e.to_string()))?
                .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let instance_pre = self
            .engine
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld {
                world: world_name(config.kind),
                detail: format!("{e:#}"),
            })?;
        let wrong = |e: wasmtime::Error| LoadError::WrongWorld {
            world: world_name(config.kind),
            detail: format!("{e:#}"),
        };
        let pre = match config.kind {
            PolicyKind::Guardrail => {
                Pre::Guardrail(GuardrailPre::new(instance_pre).map_err(wrong)?)
            }
            PolicyKind::Router => Pre::Router(RouterPolicyPre::new(instance_pre).map_err(wrong)?),
            PolicyKind::Pricing => {
                Pre::Pricing(PricingPolicyPre::new(instance_pre).map_err(wrong)?)
            }
        };
        let hooks = match config.kind {
            PolicyKind::Guardrail => HooksExport::of(&component),
            PolicyKind::Router | PolicyKind::Pricing => HooksExport::default(),
        };
        let config_json = serde_json::to_string(&config.config).unwrap_or_else(|_| "{}".into());
        let policy = Policy {
            name: config.name.clone(),
            kind: config.kind,
            digest,
            source: source.to_path_buf(),
            loaded_at: SystemTime::now(),
            limits: Limits {
                on_error: config.on_error,
                ticks: PolicyEngine::ticks(config.timeout_ms),
                timeout_ms: config.timeout_ms,
                max_hold_bytes: config.max_hold_bytes,
                // Set once the smoke call has asked whether it is stateless.
                reuse: 0,
            },
            compiled,
            load_time: Duration::ZERO,
            hooks: Hooks::ALL,
            stateless: false,
            meta: Arc::new(PolicyMeta {
                name: config.name.as_str().into(),
                config_json,
                memory_bytes: (config.memory_mb as usize) << 20,
                kv: self.kv.clone(),
            }),
            pre,
            metrics: PolicyMetrics::new(&config.name),
            idle: parking_lot::Mutex::new(Vec::new()),
            stock: parking_lot::Mutex::new(guardrail::Stock::default()),
            no_stock: AtomicBool::new(false),
        };
        let mut policy = policy;
        let declared = self.smoke(&policy, &hooks).await?;
        policy.hooks = declared.hooks;
        policy.stateless = declared.stateless;
        policy.limits.reuse = reuse_bound(
            config.reuse_instances,
            declared.stateless,
            hazard.as_deref(),
        );
        if declared.stateless && policy.limits.reuse == 0 {
            let why = match &hazard {
                Some(reason) if config.reuse_instances.is_none() => reason.as_str(),
                _ => "reuse_instances = 0 in its config",
            };
            info!(policy = %policy.name, reason = why, "the guardrail declares itself stateless; fresh instances anyway");
        }
        policy.load_time = started.elapsed();
        Ok(Arc::new(policy))
    }

    /// Call the policy once on a synthetic request with its production
    /// limits; any trap, timeout or policy error rejects the load. A
    /// guardrail is first asked which hooks it needs and whether it is
    /// stateless (the `guardrail-hooks` functions it exports, in `hooks`),
    /// and only the hooks it needs are called; the answers are returned. A
    /// guardrail export of the wrong type (found on this first instance) is
    /// a wrong world.
    async fn smoke(
        self: &Arc<Self>,
        policy: &Policy,
        hooks: &HooksExport,
    ) -> Result<Declared, LoadError> {
        let info = wit::RequestInfo {
            request_id: "weir-smoke-test".into(),
            key_name: None,
            model: "weir-smoke-test".into(),
            streaming: true,
            metadata: Vec::new(),
        };
        let req = wit::ChatRequest {
            messages: vec![wit::Message {
                role: wit::Role::User,
                content: "Hello! This is weir checking that the policy loads.".into(),
                tool_calls: Vec::new(),
                tool_call_id: None,
            }],
            tools: Vec::new(),
            max_tokens: Some(16),
        };
        let mut store = self
            .engine
            .store(policy.meta.clone(), "weir-smoke-test".into());
        // The smoke call looks for traps and errors; its deadline is at least
        // a second so a busy machine (deadlines are wall-clock) does not
        // reject a good policy at load.
        let ticks = policy.limits.ticks.max(PolicyEngine::ticks(1000));
        // The smoke test's calls follow each other: one guard for all.
        let _ticking = state::arm(&mut store, ticks);
        let err = |e: wasmtime::Error| LoadError::Smoke(guardrail::describe_failure(&e).1);
        let wrong = |detail: String| LoadError::WrongWorld {
            world: world_name(policy.kind),
            detail,
        };
        match &policy.pre {
            Pre::Guardrail(pre) => {
                let g = pre.instantiate_async(&mut store).await.map_err(|e| match e
                    .downcast_ref::<exports::Mistyped>(
                ) {
                    Some(mistyped) => wrong(mistyped.to_string()),
                    None => err(e),
                })?;
                let instance = g.instance();
                let needs = match &hooks.needs {
                    None => Hooks::ALL,
                    Some(index) => {
                        let hooks = instance
                            .get_typed_func::<(), (bindings::hooks::Hooks,)>(&mut store, index)
                            .map_err(|e| {
                                wrong(format!("guardrail-hooks.needs has the wrong type: {e:#}"))
                            })?;
                        store.set_epoch_deadline(ticks);
                        let (flags,) = hooks.call_async(&mut store, ()).await.map_err(err)?;
                        Hooks {
                            requests: flags.contains(bindings::hooks::Hooks::REQUESTS),
                            responses: flags.contains(bindings::hooks::Hooks::RESPONSES),
                        }
                    }
                };
                let stateless = match &hooks.stateless {
                    None => false,
                    Some(index) => {
                        let stateless = instance
                            .get_typed_func::<(), (bool,)>(&mut store, index)
                            .map_err(|e| {
                            wrong(format!(
                                "guardrail-hooks.stateless has the wrong type: {e:#}"
                            ))
                        })?;
                        store.set_epoch_deadline(ticks);
                        stateless.call_async(&mut store, ()).await.map_err(err)?.0
                    }
                };
                let declared = Declared {
                    hooks: needs,
                    stateless,
                };
                let flow = async {
                    if declared.hooks.requests {
                        store.set_epoch_deadline(ticks);
                        g.call_on_request(&mut store, &info, &req)
                            .await?
                            .map_err(wasmtime::Error::msg)?;
                    }
                    if !declared.hooks.responses {
                        return Ok(());
                    }
                    store.set_epoch_deadline(ticks);
                    let guard: ResourceAny = g.call_constructor(&mut store, &info).await?;
                    store.set_epoch_deadline(ticks);
                    let text = "Hello from the model.";
                    g.call_on_chunk(&mut store, guard, 0, text)
                        .await?
                        .map_err(wasmtime::Error::msg)?;
                    store.set_epoch_deadline(ticks);
                    g.call_on_end(&mut store, guard, 0, "", text)
                        .await?
                        .map_err(wasmtime::Error::msg)?;
                    Ok::<_, wasmtime::Error>(())
                };
                flow.await.map_err(err)?;
                Ok(declared)
            }
            Pre::Router(pre) => {
                let b = pre.instantiate_async(&mut store).await.map_err(err)?;
                store.set_epoch_deadline(ticks);
                let candidates = vec![smoke_candidate("a"), smoke_candidate("b")];
                let order = b
                    .weir_policy_router()
                    .call_route(&mut store, &info, &req, &candidates)
                    .await
                    .map_err(err)?
                    .map_err(LoadError::Smoke)?;
                if order.iter().any(|i| *i as usize >= candidates.len()) {
                    return Err(LoadError::Smoke(format!(
                        "route returned an out-of-range index: {order:?}"
                    )));
                }
                Ok(Declared {
                    hooks: Hooks::ALL,
                    stateless: false,
                })
            }
            Pre::Pricing(pre) => {
                let b = pre.instantiate_async(&mut store).await.map_err(err)?;
                store.set_epoch_deadline(ticks);
                let usage = wit::Usage {
                    input_tokens: 1000,
                    output_tokens: 100,
                    cached_input_tokens: 0,
                    reasoning_tokens: 0,
                };
                b.weir_policy_pricing()
                    .call_price(
                        &mut store,
                        &info,
                        bindings::pricing::exports::weir::policy::pricing::Phase::Actual,
                        "weir-smoke-test",
                        "weir-smoke-test",
                        usage,
                    )
                    .await
                    .map_err(err)?
                    .map_err(LoadError::Smoke)?;
                Ok(Declared {
                    hooks: Hooks::ALL,
                    stateless: false,
                })
            }
        }
    }
}

/// A target as a router policy sees it.
#[derive(Debug, Clone)]
pub struct RouteCandidate {
    pub provider: String,
    pub model: String,
    pub healthy: bool,
    pub latency_ewma_us: u64,
    pub ttft_ewma_us: u64,
    pub error_rate_permille: u32,
    pub in_flight: u32,
    pub input_micro_usd_per_mtok: u64,
    pub output_micro_usd_per_mtok: u64,
}

impl PolicyRuntime {
    /// Ask a router policy for the order to try `candidates` in: indexes,
    /// each at most once, all in range. Any failure is an `Err` with the
    /// reason; the caller falls back to the configured order.
    pub async fn route(
        &self,
        policy: &Policy,
        ctx: &RequestContext,
        chat: &crate::chat::ChatRequest,
        candidates: &[RouteCandidate],
    ) -> Result<Vec<usize>, String> {
        let Pre::Router(pre) = &policy.pre else {
            return Err(format!("policy `{}` is not a router", policy.name));
        };
        let _permit = self
            .engine
            .try_permit()
            .ok_or("the policy instance pool is full")?;
        let started = Instant::now();
        let mut store = self
            .engine
            .store(policy.meta.clone(), ctx.request_id.as_str().into());
        // One guard for the instantiation and the call that follows it.
        let _ticking = state::arm(&mut store, policy.limits.ticks);
        let err = |e: wasmtime::Error| guardrail::describe_failure(&e).1;
        let bindings = pre.instantiate_async(&mut store).await.map_err(err)?;
        store.set_epoch_deadline(policy.limits.ticks);
        let info = ctx.info();
        let wit_candidates: Vec<_> = candidates
            .iter()
            .map(
                |c| bindings::router::exports::weir::policy::router::Candidate {
                    provider: c.provider.clone(),
                    model: c.model.clone(),
                    healthy: c.healthy,
                    latency_ewma_us: c.latency_ewma_us,
                    ttft_ewma_us: c.ttft_ewma_us,
                    error_rate_permille: c.error_rate_permille,
                    in_flight: c.in_flight,
                    input_micro_usd_per_mtok: c.input_micro_usd_per_mtok,
                    output_micro_usd_per_mtok: c.output_micro_usd_per_mtok,
                },
            )
            .collect();
        let result = bindings
            .weir_policy_router()
            .call_route(&mut store, &info, &guardrail::to_wit(chat), &wit_candidates)
            .await;
        counter!("weir_policy_calls_total", "policy" => policy.name.clone(), "hook" => "route")
            .increment(1);
        histogram!("weir_policy_call_duration_seconds", "policy" => policy.name.clone(), "hook" => "route")
            .record(started.elapsed().as_secs_f64());
        let order = result.map_err(err)??;
        let mut seen = vec![false; candidates.len()];
        let mut out = Vec::with_capacity(order.len());
        for i in order {
            let i = i as usize;
            if i >= candidates.len() || std::mem::replace(&mut seen[i], true) {
                return Err(format!("route returned an invalid or repeated index {i}"));
            }
            out.push(i);
        }
        Ok(out)
    }
}

/// Whether a pricing call prices an estimate before sending or what the
/// provider reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PricePhase {
    /// Estimated usage, for a budget check before the request is sent.
    Estimate,
    /// The provider's reported usage: the result is what is charged.
    Actual,
}

/// Token usage as a pricing policy sees it. Cached input tokens are a
/// subset of `input_tokens`, reasoning tokens a subset of `output_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub reasoning_tokens: u64,
}

impl PolicyRuntime {
    /// Ask a pricing policy what `usage` on `provider`/`model` (the
    /// provider's model name) costs, in micro-USD. Any failure (trap,
    /// timeout, the policy's own error, a full instance pool) is an `Err`
    /// with the reason; the caller decides what to charge then.
    pub async fn price(
        &self,
        policy: &Policy,
        ctx: &RequestContext,
        phase: PricePhase,
        provider: &str,
        model: &str,
        usage: &PolicyUsage,
    ) -> Result<u64, String> {
        let Pre::Pricing(pre) = &policy.pre else {
            return Err(format!("policy `{}` is not a pricing policy", policy.name));
        };
        let _permit = self
            .engine
            .try_permit()
            .ok_or("the policy instance pool is full")?;
        let started = Instant::now();
        let mut store = self
            .engine
            .store(policy.meta.clone(), ctx.request_id.as_str().into());
        // One guard for the instantiation and the call that follows it.
        let _ticking = state::arm(&mut store, policy.limits.ticks);
        let err = |e: wasmtime::Error| guardrail::describe_failure(&e).1;
        let bindings = pre.instantiate_async(&mut store).await.map_err(err)?;
        store.set_epoch_deadline(policy.limits.ticks);
        let info = ctx.info();
        let result = bindings
            .weir_policy_pricing()
            .call_price(
                &mut store,
                &info,
                wit_phase(phase),
                provider,
                model,
                wit::Usage {
                    input_tokens: usage.input_tokens,
                    output_tokens: usage.output_tokens,
                    cached_input_tokens: usage.cached_input_tokens,
                    reasoning_tokens: usage.reasoning_tokens,
                },
            )
            .await;
        counter!("weir_policy_calls_total", "policy" => policy.name.clone(), "hook" => "price")
            .increment(1);
        histogram!("weir_policy_call_duration_seconds", "policy" => policy.name.clone(), "hook" => "price")
            .record(started.elapsed().as_secs_f64());
        result.map_err(err)?
    }
}

fn wit_phase(phase: PricePhase) -> bindings::pricing::exports::weir::policy::pricing::Phase {
    use bindings::pricing::exports::weir::policy::pricing::Phase;
    match phase {
        PricePhase::Estimate => Phase::Estimate,
        PricePhase::Actual => Phase::Actual,
    }
}

fn smoke_candidate(name: &str) -> bindings::router::exports::weir::policy::router::Candidate {
    bindings::router::exports::weir::policy::router::Candidate {
        provider: name.into(),
        model: name.into(),
        healthy: true,
        latency_ewma_us: 1000,
        ttft_ewma_us: 500,
        error_rate_permille: 0,
        in_flight: 0,
        input_micro_usd_per_mtok: 150_000,
        output_micro_usd_per_mtok: 600_000,
    }
}

/// The WIT world a policy kind must implement.
pub fn world_name(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Guardrail => "weir:policy/guardrail-policy",
        PolicyKind::Router => "weir:policy/router-policy",
        PolicyKind::Pricing => "weir:policy/pricing-policy",
    }
}

/// Reject what is obviously not a component before compiling.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(LoadError::CoreModule),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        _ => Err(LoadError::NotWasm),
    }
}

/// Why reusing one instance of this component for several requests is
/// unsafe, if it is. Go guests (Go, TinyGo) trap on a reused instance when
/// their garbage collector runs while the host copies arguments in, so they
/// get fresh instances only. A Go guest is recognised by the `producers`
/// section (`language: Go`, `processed-by: Go cmd/compile`, `TinyGo`,
/// `wit-bindgen-go`) or Go's `go:buildid` section, in the component or any
/// module nested in it.
pub fn reuse_hazard(bytes: &[u8]) -> Option<String> {
    use wasmparser::{KnownCustom, Parser, Payload};
    let go = |what: String| {
        Some(format!(
            "it was built with Go ({what}), whose garbage collector can trap in a reused instance"
        ))
    };
    for payload in Parser::new(0).parse_all(bytes) {
        // A malformed component is the compiler's to report.
        let Ok(Payload::CustomSection(section)) = payload else {
            continue;
        };
        if section.name() == "go:buildid" {
            return go("a go:buildid section".into());
        }
        let KnownCustom::Producers(fields) = section.as_known() else {
            continue;
        };
        for field in fields.into_iter().flatten() {
            for value in field.values.into_iter().flatten() {
                let name = value.name;
                let is_go = match field.name {
                    "language" => name.eq_ignore_ascii_case("go"),
                    "processed-by" => {
                        name.eq_ignore_ascii_case("go")
                            || name.eq_ignore_ascii_case("tinygo")
                            || name.eq_ignore_ascii_case("wit-bindgen-go")
                            || name.starts_with("Go ")
                    }
                    _ => false,
                };
                if is_go {
                    return go(format!("producers: {} {name}", field.name));
                }
            }
        }
    }
    None
}

/// The guest's rejection as the gateway reports it.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub code: String,
    pub message: String,
}

impl From<wit::Rejection> for Rejection {
    fn from(r: wit::Rejection) -> Self {
        Rejection {
            code: r.code,
            message: r.message,
        }
    }
}

#[cfg(test)]
mod price_tests {
    use super::*;
    use bindings::pricing::exports::weir::policy::pricing::Phase;

    #[test]
    fn phases_map_to_the_wit_enum() {
        assert!(matches!(wit_phase(PricePhase::Estimate), Phase::Estimate));
        assert!(matches!(wit_phase(PricePhase::Actual), Phase::Actual));
        assert_eq!(PolicyUsage::default().input_tokens, 0);
    }
}

#[cfg(test)]
mod reuse_bound_tests {
    use super::{STATELESS_REUSE, reuse_bound};

    #[test]
    fn the_operator_decides_else_a_stateless_declaration_else_fresh() {
        let go = Some("built with Go");
        // The operator's number wins, declared or not (a Go guest with a
        // number never loads: `LoadError::UnsafeReuse`).
        assert_eq!(reuse_bound(Some(0), true, None), 0);
        assert_eq!(reuse_bound(Some(7), true, None), 7);
        assert_eq!(reuse_bound(Some(7), false, None), 7);
        // Unset: a stateless declaration gets the default bound, unless
        // the component is unsafe to reuse.
        assert_eq!(reuse_bound(None, true, None), STATELESS_REUSE);
        assert_eq!(reuse_bound(None, true, go), 0);
        assert_eq!(reuse_bound(None, false, None), 0);
    }
}

#[cfg(test)]
mod reuse_hazard_tests {
    use super::reuse_hazard;

    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn name(s: &str, out: &mut Vec<u8>) {
        leb(s.len(), out);
        out.extend_from_slice(s.as_bytes());
    }

    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len(), out);
        out.extend_from_slice(body);
    }

    fn custom(section_name: &str, data: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        name(section_name, &mut body);
        body.extend_from_slice(data);
        let mut out = Vec::new();
        section(0, &body, &mut out);
        out
    }

    /// A producers section: (field, [(name, version)]).
    fn producers(fields: &[(&str, &[(&str, &str)])]) -> Vec<u8> {
        let mut data = Vec::new();
        leb(fields.len(), &mut data);
        for (field, values) in fields {
            name(field, &mut data);
            leb(values.len(), &mut data);
            for (value, version) in *values {
                name(value, &mut data);
                name(version, &mut data);
            }
        }
        custom("producers", &data)
    }

    /// A component holding one core module with `module_custom` inside,
    /// followed by `component_custom` at the component level.
    fn component(module_custom: &[u8], component_custom: &[u8]) -> Vec<u8> {
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        module.extend_from_slice(module_custom);
        let mut out = b"\0asm\x0d\0\x01\0".to_vec();
        section(1, &module, &mut out);
        out.extend_from_slice(component_custom);
        out
    }

    #[test]
    fn go_guests_are_recognised_in_nested_modules_and_at_the_top() {
        let go = producers(&[
            ("language", &[("Go", "go1.27.3")]),
            ("processed-by", &[("Go cmd/compile", "go1.27.3")]),
        ]);
        let reason = reuse_hazard(&component(&go, &[])).expect("Go is unsafe");
        assert!(reason.contains("built with Go"), "{reason}");
        assert!(reason.contains("language Go"), "{reason}");

        let tinygo = producers(&[("processed-by", &[("TinyGo", "0.35.0")])]);
        assert!(reuse_hazard(&component(&[], &tinygo)).is_some());

        let build_id = custom("go:buildid", b"\xff Go build ID: \"abc\"");
        assert!(reuse_hazard(&component(&build_id, &[])).is_some());
    }

    #[test]
    fn other_guests_and_garbage_are_not_flagged() {
        let rust = producers(&[
            ("language", &[("Rust", "")]),
            (
                "processed-by",
                &[("rustc", "1.95.0"), ("wit-component", "0.240")],
            ),
        ]);
        assert_eq!(reuse_hazard(&component(&rust, &rust)), None);
        let python = producers(&[("processed-by", &[("componentize-py", "0.25.1")])]);
        assert_eq!(reuse_hazard(&component(&[], &python)), None);
        assert_eq!(reuse_hazard(b"not wasm at all"), None);
        assert_eq!(reuse_hazard(&component(&[], &[])), None);
    }
}
