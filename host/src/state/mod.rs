//! Usage, spend and limit counters (SPEC §3 `[state]`), behind one trait.
//!
//! Every request with a limited key *reserves* before it is sent — one
//! request, its estimated tokens (prompt + `max_tokens`), its estimated cost
//! — in the key's sliding one-minute windows (and the key-and-model windows
//! of per-model limits) and against its budget for the current period; it is
//! refused when the reservation does not fit in what is left. When the
//! request ends it *records*: the reservation is settled to the provider's
//! reported usage and the per-key, per-model usage ledger grows. So
//! concurrent requests cannot overshoot a limit by more than one request's
//! estimate, and streamed and non-streamed requests count the same.
//!
//! Backends:
//! - [`memory`]: everything in this process, lost on restart;
//! - [`sqlite`] (the default): the same counters in memory, with spend and
//!   usage written behind to a SQLite file (batched every 50 ms, flushed at
//!   shutdown) and read back at start, so they survive a restart; one
//!   process per file;
//! - [`redis`]: every reservation and settlement is one Lua script on a
//!   Redis server, so several gateway processes share limits and spend
//!   atomically.
//!
//! Money is integer micro-USD; time is Unix seconds (Redis's clock for the
//! redis backend, so processes agree).

pub mod memory;
pub mod redis;
pub mod sqlite;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::auth::VirtualKey;
use crate::config::{BudgetPeriod, Config, StateBackend};
use crate::error::GatewayError;
use crate::limits::RateInfo;
use crate::policy::KvStore;

/// What a request asks to reserve.
#[derive(Debug, Clone)]
pub struct Ask {
    pub key: Arc<VirtualKey>,
    /// The model name the client asked for.
    pub model: String,
    pub tokens: u64,
    pub cost_micro_usd: u64,
}

/// A request's hold on its key's windows and budget.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub key: String,
    pub model: String,
    /// The second the windows were charged in.
    pub second: u64,
    /// Window names charged (the key's, and the key-and-model one).
    pub windows: Vec<String>,
    pub tokens: u64,
    pub cost_micro_usd: u64,
    /// The budget period charged, e.g. `total`, `2026-11-24`, `2026-11`.
    pub period: Option<String>,
    /// The key's standing right after reserving.
    pub info: RateInfo,
}

/// What a request really used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Actual {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cost_micro_usd: u64,
}

/// One row of `/admin/usage`: totals for a key and model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub micro_usd: u64,
}

impl UsageTotals {
    /// Add one request.
    pub fn add(&mut self, a: &Actual) {
        self.requests += 1;
        self.input_tokens += a.input_tokens;
        self.output_tokens += a.output_tokens;
        self.cached_input_tokens += a.cached_input_tokens;
        self.micro_usd += a.cost_micro_usd;
    }

    /// Sum of two rows.
    pub fn plus(&self, o: &UsageTotals) -> UsageTotals {
        UsageTotals {
            requests: self.requests + o.requests,
            input_tokens: self.input_tokens + o.input_tokens,
            output_tokens: self.output_tokens + o.output_tokens,
            cached_input_tokens: self.cached_input_tokens + o.cached_input_tokens,
            micro_usd: self.micro_usd + o.micro_usd,
        }
    }
}

/// The key name usage of an open gateway is recorded under.
pub const ANONYMOUS: &str = "anonymous";

/// A usage and limits store.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// Reserve `ask`, or refuse it (429 `rate_limit_exceeded` /
    /// `insufficient_quota`).
    async fn reserve(&self, ask: &Ask) -> Result<Reservation, GatewayError>;
    /// A request ended: settle its reservation (if any) to `actual` and add
    /// `actual` to the usage of `key` (or [`ANONYMOUS`]) and `model`. With
    /// `actual = None` nothing was served: the reservation is released and
    /// no usage is recorded.
    async fn record(
        &self,
        key: &str,
        model: &str,
        reservation: Option<Reservation>,
        actual: Option<Actual>,
    );
    /// Usage per key and model: `(key, model, totals)`.
    async fn usage(&self) -> Vec<(String, String, UsageTotals)>;
    /// The store behind policies' `weir:policy/kv`.
    fn kv(&self) -> Arc<dyn KvStore>;
    /// Write out anything buffered (called at shutdown).
    async fn flush(&self) {}
}

/// The budget period `period` covers at Unix second `now`.
pub fn period_key(period: BudgetPeriod, now: u64) -> String {
    match period {
        BudgetPeriod::Total => "total".into(),
        BudgetPeriod::Daily => civil(now).0,
        BudgetPeriod::Monthly => civil(now).1,
    }
}

/// (`YYYY-MM-DD`, `YYYY-MM`) of a Unix second, UTC.
fn civil(now: u64) -> (String, String) {
    let days = (now / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{year:04}-{month:02}"),
    )
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The windows a request charges: the key's own, and its per-model one.
pub fn windows(key: &VirtualKey, model: &str) -> Vec<(String, Option<u64>, Option<u64>)> {
    let mut out = Vec::with_capacity(2);
    if key.tokens_per_minute.is_some() || key.requests_per_minute.is_some() {
        out.push((
            key.name.clone(),
            key.tokens_per_minute,
            key.requests_per_minute,
        ));
    }
    if let Some((tpm, rpm)) = key.model_limits.get(model) {
        out.push((format!("{}\u{1f}{model}", key.name), *tpm, *rpm));
    }
    out
}

/// The error for a window that is full.
pub fn rate_limited(
    key: &str,
    model: Option<&str>,
    what: &str,
    limit: u64,
    retry_after: Duration,
) -> GatewayError {
    let scope = match model {
        Some(m) => format!("key `{key}` on model `{m}`"),
        None => format!("key `{key}`"),
    };
    GatewayError::RateLimited {
        message: format!("rate limit reached for {scope}: {limit} {what} per minute"),
        retry_after,
    }
}

/// The error for a spent budget.
pub fn quota_spent(key: &str, spent: u64, budget: u64, period: &str) -> GatewayError {
    let scope = if period == "total" {
        String::new()
    } else {
        format!(" for {period}")
    };
    GatewayError::InsufficientQuota(format!(
        "the budget of key `{key}`{scope} is spent: ${:.6} of ${:.6} used",
        spent as f64 / 1e6,
        budget as f64 / 1e6
    ))
}

/// Open the configured backend.
pub async fn open(config: &Config) -> anyhow::Result<Arc<dyn Ledger>> {
    Ok(match config.state.backend {
        StateBackend::Memory => Arc::new(memory::MemoryLedger::default()),
        StateBackend::Sqlite => Arc::new(sqlite::SqliteLedger::open(
            &config.base_dir.join(&config.state.path),
        )?),
        StateBackend::Redis => Arc::new(
            redis::RedisLedger::connect(config.state.url.as_deref().unwrap_or_default()).await?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        // 2026-11-24T03:42:20Z
        let t = 1_795_491_740;
        assert_eq!(period_key(BudgetPeriod::Total, t), "total");
        assert_eq!(period_key(BudgetPeriod::Daily, t), "2026-11-24");
        assert_eq!(period_key(BudgetPeriod::Monthly, t), "2026-11");
        assert_eq!(period_key(BudgetPeriod::Daily, 951_782_400), "2000-02-29");
    }
}
