//! What a policy instance's store holds, and the host side of its imports:
//! `weir:policy/host` (log, config, clock), `weir:policy/kv`, and a
//! locked-down WASI whose stdout and stderr go to the gateway's log.
//!
//! Every import call is counted against a per-hook budget so a guest cannot
//! turn one hook call into unbounded host work (log floods, store scans).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::guardrail::weir::policy::{host, kv, types};
use super::engine::{Ticker, Ticking};
use super::kv::KvStore;

/// Log messages a hook call may write; more are dropped.
const MAX_LOGS_PER_CALL: u32 = 64;
/// Longest log message kept.
const MAX_LOG_BYTES: usize = 4096;
/// Key-value operations a hook call may make; more trap.
const MAX_KV_OPS_PER_CALL: u32 = 256;
const MAX_KEY_BYTES: usize = 512;
const MAX_VALUE_BYTES: usize = 64 << 10;

/// What every instance of one loaded policy shares.
#[derive(Debug)]
pub struct PolicyMeta {
    pub name: Arc<str>,
    /// The policy's `config` table as JSON.
    pub config_json: String,
    pub memory_bytes: usize,
    pub kv: Arc<dyn KvStore>,
}

/// One instance's store data.
pub struct PolicyState {
    pub(super) meta: Arc<PolicyMeta>,
    request_id: Arc<str>,
    /// The request id the guest's stdout and stderr log with, shared with
    /// their streams (an instance reused for a later request logs its id);
    /// made with the WASI context.
    stdio_request: Option<Arc<Mutex<Arc<str>>>>,
    /// Built on the guest's first WASI call: most guests make none on a
    /// request, and building one per store cost ~0.5 µs of each instance.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(super) limits: StoreLimits,
    logs: u32,
    kv_ops: u32,
    /// The epoch ticker, run by [`arm`] for each guest call.
    ticker: Arc<Ticker>,
}

impl PolicyState {
    /// The request this (reused or stocked) instance serves from now on.
    pub fn serve(&mut self, request_id: Arc<str>) {
        if let Some(cell) = &self.stdio_request {
            *cell.lock() = request_id.clone();
        }
        self.request_id = request_id;
    }

    /// Fresh state for one instance of `meta`, serving `request_id`.
    pub(super) fn new(meta: Arc<PolicyMeta>, request_id: Arc<str>, ticker: Arc<Ticker>) -> Self {
        let limits = StoreLimitsBuilder::new()
            .memory_size(meta.memory_bytes)
            .table_elements(1 << 20)
            .instances(64)
            .tables(64)
            .memories(8)
            .trap_on_grow_failure(true)
            .build();
        PolicyState {
            meta,
            request_id,
            stdio_request: None,
            wasi: None,
            table: ResourceTable::new(),
            limits,
            logs: 0,
            kv_ops: 0,
            ticker,
        }
    }

    /// The store's resource limiter.
    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }

    fn kv_key(&mut self, key: &str) -> wasmtime::Result<String> {
        self.kv_ops += 1;
        if self.kv_ops > MAX_KV_OPS_PER_CALL {
            return Err(wasmtime::format_err!(
                "policy made more than {MAX_KV_OPS_PER_CALL} key-value operations in one call"
            ));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(wasmtime::format_err!(
                "key-value key longer than {MAX_KEY_BYTES} bytes"
            ));
        }
        Ok(format!("{}\u{1f}{key}", self.meta.name))
    }
}

/// Ready `store` for one guest call (an instantiation, a hook, a
/// resource drop): its deadline `ticks` epoch ticks away, fresh per-call
/// budgets, and the epoch ticker running until the returned guard drops —
/// hold it across the call.
pub fn arm(store: &mut Store<PolicyState>, ticks: u64) -> Ticking {
    store.set_epoch_deadline(ticks);
    let state = store.data_mut();
    state.logs = 0;
    state.kv_ops = 0;
    state.ticker.start()
}

/// The locked-down WASI a guest gets: no preopens, environment, sockets
/// or name lookups; stdout and stderr go to the log.
fn locked_down_wasi(policy: &Arc<str>, request_id: &Arc<Mutex<Arc<str>>>) -> WasiCtx {
    let out = LogOutput {
        policy: policy.clone(),
        request_id: request_id.clone(),
        stream: "stdout",
    };
    let err = LogOutput {
        stream: "stderr",
        ..out.clone()
    };
    let mut wasi = WasiCtx::builder();
    wasi.stdout(out)
        .stderr(err)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    wasi.build()
}

impl WasiView for PolicyState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (policy, request_id) = (&self.meta.name, &self.request_id);
        let stdio = &mut self.stdio_request;
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| {
                let cell = stdio.insert(Arc::new(Mutex::new(request_id.clone())));
                locked_down_wasi(policy, cell)
            }),
            table: &mut self.table,
        }
    }
}

impl types::Host for PolicyState {}

impl host::Host for PolicyState {
    fn log(&mut self, level: host::Level, message: String) -> wasmtime::Result<()> {
        self.logs += 1;
        if self.logs > MAX_LOGS_PER_CALL {
            return Ok(());
        }
        let message = truncate(&message, MAX_LOG_BYTES);
        let (policy, request_id) = (&*self.meta.name, &*self.request_id);
        match level {
            host::Level::Trace => tracing::trace!(policy, request_id, "{message}"),
            host::Level::Debug => tracing::debug!(policy, request_id, "{message}"),
            host::Level::Info => tracing::info!(policy, request_id, "{message}"),
            host::Level::Warn => tracing::warn!(policy, request_id, "{message}"),
            host::Level::Error => tracing::error!(policy, request_id, "{message}"),
        }
        Ok(())
    }

    fn config(&mut self) -> wasmtime::Result<String> {
        Ok(self.meta.config_json.clone())
    }

    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64))
    }
}

impl kv::Host for PolicyState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let key = self.kv_key(&key)?;
        Ok(self.meta.kv.get(&key).await)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<()> {
        let key = self.kv_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(wasmtime::format_err!(
                "key-value value larger than {MAX_VALUE_BYTES} bytes"
            ));
        }
        self.meta
            .kv
            .set(&key, value, ttl_ms.map(Duration::from_millis))
            .await;
        Ok(())
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        let key = self.kv_key(&key)?;
        self.meta.kv.delete(&key).await;
        Ok(())
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<i64> {
        let key = self.kv_key(&key)?;
        Ok(self
            .meta
            .kv
            .increment(&key, delta, ttl_ms.map(Duration::from_millis))
            .await)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// A guest's stdout or stderr: each line becomes a log event.
#[derive(Clone)]
struct LogOutput {
    policy: Arc<str>,
    request_id: Arc<Mutex<Arc<str>>>,
    stream: &'static str,
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(LogStream {
            out: self.clone(),
            line: Vec::new(),
            lines: 0,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

/// Lines a stream logs before it goes quiet (the guest may write on).
const MAX_STDIO_LINES: u32 = 256;

struct LogStream {
    out: LogOutput,
    line: Vec<u8>,
    lines: u32,
}

impl LogStream {
    fn emit(&mut self) {
        self.lines += 1;
        if self.lines <= MAX_STDIO_LINES {
            let text = String::from_utf8_lossy(&self.line);
            let request_id = self.out.request_id.lock().clone();
            tracing::info!(
                policy = &*self.out.policy,
                request_id = &*request_id,
                stream = self.out.stream,
                "{}",
                truncate(text.trim_end(), MAX_LOG_BYTES)
            );
        }
        self.line.clear();
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

impl wasmtime_wasi::p2::OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        for &b in bytes.iter() {
            if b == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LOG_BYTES {
                self.line.push(b);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl wasmtime_wasi::p2::Pollable for LogStream {
    async fn ready(&mut self) {}
}
