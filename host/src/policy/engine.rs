//! The one place that configures wasmtime.
//!
//! One [`Engine`] for the process: Cranelift, epoch interruption (a 1 ms
//! ticker thread; a hook's `timeout_ms` becomes a deadline in ticks, which
//! costs far less guest time than fuel; the thread ticks only while guest
//! code may run — while a hook call is under way or one began within the
//! last tick — and sleeps otherwise, so neither an idle gateway nor one
//! whose guarded requests wait on their providers is woken a thousand
//! times a second), and the pooling allocator so a
//! per-request instance reuses pre-mapped memory slots instead of paying for
//! mmap/munmap. If the pool cannot reserve its address space (a tight
//! `ulimit -v`, say) the engine falls back to on-demand allocation and says
//! so in the log. A semaphore sized like the pool sits in front of it: a
//! request that finds it full is refused at once (503), never queued into a
//! failing allocation.
//!
//! Components are compiled once per digest and cached precompiled on disk,
//! keyed by the component's SHA-256 and the engine's compatibility hash, so a
//! restart or a reload of unchanged bytes skips Cranelift entirely.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use super::bindings;
use super::state::{PolicyMeta, PolicyState};

/// Epoch ticks per millisecond of deadline.
const TICK: Duration = Duration::from_millis(1);

/// Pool slots beyond `server.policy_instances` for instances that serve no
/// request: fresh ones made ahead of requests (the guardrails' stock,
/// `guardrail::FRESH_STOCK` per policy) and ones whose response is done
/// but whose store is still being freed. Neither takes a request's place
/// in the budget.
pub const SPARE_SLOTS: u32 = 32;

/// Pool slots for idle instances kept for reuse (`reuse_instances`, or a
/// guardrail that declares itself stateless), so they never take a
/// request's place in the budget either: a request that takes one takes a
/// slot of the budget for it, and an instance done with its request is
/// freed instead of kept while these are all taken. No more than
/// `server.policy_instances`: more instances than that never serve at
/// once, so more could never all be needed again.
pub const IDLE_SLOTS: u32 = 64;

/// Engine settings from the gateway's config.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Policy instances that may be alive at once (the pool's size).
    pub instances: u32,
    /// The largest linear memory any policy may have, in MiB.
    pub max_memory_mb: u64,
    /// Where precompiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            instances: 1000,
            max_memory_mb: 512,
            cache_dir: default_cache_dir(),
        }
    }
}

/// `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir`, else `~/.cache/weir`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("weir"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("weir"))
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Compiled with Cranelift just now.
    Compiled,
    /// Loaded from the precompiled cache.
    Cache,
}

/// The configured engine, its linker and its instance budget.
pub struct PolicyEngine {
    engine: Engine,
    linker: Linker<PolicyState>,
    permits: Arc<Semaphore>,
    /// Slots for instances that serve no request ([`SPARE_SLOTS`]).
    spare_permits: Arc<Semaphore>,
    /// Slots for idle instances kept for reuse ([`IDLE_SLOTS`]).
    idle_permits: Arc<Semaphore>,
    cache_dir: Option<PathBuf>,
    compat: String,
    pooled: bool,
    ticker: Arc<Ticker>,
}

/// The epoch ticker's switch. It ticks while a guest call runs
/// (`running > 0`) or another began within the last tick, and otherwise
/// parks until the next call starts: calls that follow each other closely
/// (a loaded gateway) keep it ticking without a wake-up each, a request
/// waiting on its provider between calls costs no ticks, and a burst of
/// short calls (a streamed chunk through the guardrails) costs one wake-up
/// from the first of them and one a tick later.
#[derive(Default)]
pub(super) struct Ticker {
    /// Guest calls under way.
    running: AtomicUsize,
    /// A call began since the ticker last looked.
    began: AtomicBool,
    /// The ticker is parked (or about to be): the next call wakes it.
    parked: AtomicBool,
    thread: OnceLock<Thread>,
}

/// Held across one guest call: keeps the epoch ticker ticking.
pub struct Ticking(Arc<Ticker>);

impl Ticker {
    pub(super) fn start(self: &Arc<Ticker>) -> Ticking {
        // Paired with the ticker's store of `parked` then load of
        // `running` (all SeqCst): either it sees this call and stays up,
        // or this call sees it parked and wakes it.
        self.running.fetch_add(1, Ordering::SeqCst);
        self.began.store(true, Ordering::Relaxed);
        if self.parked.load(Ordering::SeqCst)
            && self.parked.swap(false, Ordering::SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        Ticking(self.clone())
    }

    /// Nothing to tick for: no call running, none begun since last asked.
    fn quiet(&self) -> bool {
        self.running.load(Ordering::SeqCst) == 0 && !self.began.swap(false, Ordering::Relaxed)
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("pooled", &self.pooled)
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // Guests run on fibers (their WASI imports are async); 512 KiB stacks
    // are plenty for policy code and keep the pool's footprint small.
    config.max_wasm_stack(384 << 10);
    config.async_stack_size(512 << 10);
    // Profiling guest code (docs/policies.md): name every compiled function
    // in /tmp/perf-<pid>.map.
    if std::env::var_os("WEIR_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config
}

impl PolicyEngine {
    /// Build the engine: pooled if the address space allows, else on demand.
    pub fn new(options: &EngineOptions) -> anyhow::Result<PolicyEngine> {
        let max_memory = (options.max_memory_mb as usize) << 20;
        let idle_slots = IDLE_SLOTS.min(options.instances);
        let slots = options.instances + SPARE_SLOTS + idle_slots;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 4)
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            .total_stacks(slots)
            .max_memory_size(max_memory)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(4 << 20)
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .table_elements(1 << 20)
            .max_unused_warm_slots(64)
            // Reset a freed instance's memory by rewriting only the pages it
            // touched (PAGEMAP_SCAN, Linux 6.7+) instead of madvise: no TLB
            // shootdowns across the worker threads and no page faults when
            // the slot is reused. Measured: fresh instance + on-request for
            // the Rust example guardrails dropped by about half.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(64 << 10);
        let mut pooled = base_config();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        pooled.memory_reservation(max_memory as u64);
        pooled.memory_guard_size(64 << 10);
        let (engine, is_pooled) = match Engine::new(&pooled) {
            Ok(engine) => (engine, true),
            Err(e) => {
                warn!(error = %e, "the policy instance pool cannot reserve its memory; falling back to on-demand allocation");
                (Engine::new(&base_config())?, false)
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::guardrail::GuardrailPolicy::add_to_linker::<
            _,
            wasmtime::component::HasSelf<PolicyState>,
        >(&mut linker, |s| s)?;
        let ticker = Arc::new(Ticker::default());
        spawn_epoch_ticker(&engine, &ticker);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());
        info!(
            pooled = is_pooled,
            instances = options.instances,
            "policy engine ready"
        );
        Ok(PolicyEngine {
            engine,
            linker,
            permits: Arc::new(Semaphore::new(options.instances as usize)),
            spare_permits: Arc::new(Semaphore::new(SPARE_SLOTS as usize)),
            idle_permits: Arc::new(Semaphore::new(idle_slots as usize)),
            cache_dir: options.cache_dir.clone(),
            compat,
            pooled: is_pooled,
            ticker,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker with every import a policy may use.
    pub fn linker(&self) -> &Linker<PolicyState> {
        &self.linker
    }

    /// Compile `bytes` (whose SHA-256 is `digest`), or load it from the cache.
    pub fn compile(
        &self,
        bytes: &[u8],
        digest: &str,
    ) -> anyhow::Result<(Component, CompileSource)> {
        let Some(dir) = &self.cache_dir else {
            return Ok((
                Component::from_binary(&self.engine, bytes)?,
                CompileSource::Compiled,
            ));
        };
        let path = dir.join(format!("{digest}-{}.cwasm", self.compat));
        if path.exists() {
            match self.load_cached(&path) {
                Ok(component) => return Ok((component, CompileSource::Cache)),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "discarding an unreadable precompiled component");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let component = Component::from_binary(&self.engine, bytes)?;
        if let Err(e) = write_cache(dir, &path, &component) {
            debug!(error = %e, "cannot write the precompiled cache");
        }
        Ok((component, CompileSource::Compiled))
    }

    /// Load a precompiled component from weir's cache.
    #[allow(unsafe_code)]
    fn load_cached(&self, path: &Path) -> anyhow::Result<Component> {
        // SAFETY: `Component::deserialize_file` trusts its input to be
        // wasmtime's own output. This file is in weir's cache directory, was
        // written by `write_cache` below from `Component::serialize`, and its
        // name carries the source's SHA-256 and this engine's compatibility
        // hash; wasmtime still checks the header and engine settings.
        Ok(unsafe { Component::deserialize_file(&self.engine, path)? })
    }

    /// A store for one instance of `meta`, with its limits and a deadline
    /// that starts disarmed.
    pub fn store(&self, meta: Arc<PolicyMeta>, request_id: Arc<str>) -> Store<PolicyState> {
        let state = PolicyState::new(meta, request_id, self.ticker.clone());
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s.limiter());
        store.epoch_deadline_trap();
        store.set_epoch_deadline(u64::MAX / 2);
        store
    }

    /// A slot in the instance budget, or `None` when the pool is full.
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// A slot for an instance that serves no request (made ahead of one,
    /// or being freed after one), or `None` when the spare slots are all
    /// taken.
    pub fn try_spare_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.spare_permits.clone().try_acquire_owned().ok()
    }

    /// A slot for an idle instance kept for reuse, or `None` when the idle
    /// slots are all taken.
    pub fn try_idle_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.idle_permits.clone().try_acquire_owned().ok()
    }

    /// Epoch ticks for a deadline of `ms` milliseconds (at least one tick,
    /// plus one for the tick already under way).
    pub fn ticks(ms: u64) -> u64 {
        ms.max(1) + 1
    }

    /// Does the engine use the pooling allocator?
    pub fn pooled(&self) -> bool {
        self.pooled
    }
}

fn write_cache(dir: &Path, path: &Path, component: &Component) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize()?;
    let tmp = dir.join(format!(
        ".tmp-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn spawn_epoch_ticker(engine: &Engine, ticker: &Arc<Ticker>) {
    let weak = engine.weak();
    let switch = Arc::downgrade(ticker);
    let spawned = std::thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            // Recorded before this thread first parks.
            if let Some(ticker) = switch.upgrade() {
                let _ = ticker.thread.set(std::thread::current());
            }
            loop {
                std::thread::sleep(TICK);
                let Some(engine) = weak.upgrade() else {
                    return;
                };
                engine.increment_epoch();
                drop(engine);
                let Some(ticker) = switch.upgrade() else {
                    return;
                };
                if !ticker.quiet() {
                    continue;
                }
                ticker.parked.store(true, Ordering::SeqCst);
                // Until the next call (`Ticker::start` clears `parked`),
                // looking every second whether the engine is gone.
                while ticker.running.load(Ordering::SeqCst) == 0
                    && ticker.parked.load(Ordering::SeqCst)
                {
                    std::thread::park_timeout(Duration::from_secs(1));
                    if weak.upgrade().is_none() {
                        return;
                    }
                }
                ticker.parked.store(false, Ordering::SeqCst);
                // The call that woke it is seen by `running` a tick from
                // now if it is still under way; one that is over by then
                // (nearly all are) needs no tick at all.
                ticker.began.store(false, Ordering::Relaxed);
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the epoch ticker: policy deadlines will not fire");
    }
}
