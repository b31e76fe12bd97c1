//! The in-process ledger: windows, spend and usage in one mutex-guarded
//! map. The `memory` backend as is, and the live half of the `sqlite` one.

use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::{
    Actual, Ask, Ledger, Reservation, UsageTotals, period_key, quota_spent, rate_limited, unix_now,
    windows,
};
use crate::error::GatewayError;
use crate::limits::{Full, RateInfo, Window};
use crate::policy::{KvStore, MemoryKv};

#[derive(Debug, Default)]
struct Inner {
    windows: FxHashMap<String, Window>,
    /// (key, period) → micro-USD spent.
    spent: FxHashMap<(String, String), u64>,
    /// (key, period) → micro-USD reserved by requests in flight.
    reserved: FxHashMap<(String, String), u64>,
    /// (key, model) → totals.
    usage: FxHashMap<(String, String), UsageTotals>,
}

/// Everything in this process.
#[derive(Debug)]
pub struct MemoryLedger {
    inner: Mutex<Inner>,
    kv: Arc<dyn KvStore>,
}

impl Default for MemoryLedger {
    fn default() -> Self {
        MemoryLedger::with_kv(Arc::new(MemoryKv::default()))
    }
}

impl MemoryLedger {
    /// A ledger whose policies' store is `kv`.
    pub fn with_kv(kv: Arc<dyn KvStore>) -> Self {
        MemoryLedger {
            inner: Mutex::default(),
            kv,
        }
    }

    /// Start from persisted spend and usage.
    pub fn preload(
        &self,
        spent: impl IntoIterator<Item = ((String, String), u64)>,
        usage: impl IntoIterator<Item = ((String, String), UsageTotals)>,
    ) {
        let mut inner = self.inner.lock();
        inner.spent.extend(spent);
        inner.usage.extend(usage);
    }

    /// Reserve at Unix second `now`.
    pub fn reserve_at(&self, ask: &Ask, now: u64) -> Result<Reservation, GatewayError> {
        let key = &ask.key;
        let wins = windows(key, &ask.model);
        let mut inner = self.inner.lock();
        for (name, tpm, rpm) in &wins {
            let window = inner.windows.entry(name.clone()).or_default();
            if let Err(full) = window.check(now, ask.tokens, *tpm, *rpm) {
                let model = (name != &key.name).then_some(ask.model.as_str());
                return Err(match full {
                    Full::Requests { limit, retry_after } => {
                        rate_limited(&key.name, model, "requests", limit, retry_after)
                    }
                    Full::Tokens { limit, retry_after } => rate_limited(
                        &key.name,
                        model,
                        &format!("tokens (this request needs an estimated {})", ask.tokens),
                        limit,
                        retry_after,
                    ),
                });
            }
        }
        let period = key
            .budget_micro_usd
            .map(|_| period_key(key.budget_period, now));
        if let (Some(budget), Some(period)) = (key.budget_micro_usd, &period) {
            let slot = (key.name.clone(), period.clone());
            let spent = inner.spent.get(&slot).copied().unwrap_or(0);
            let reserved = inner.reserved.get(&slot).copied().unwrap_or(0);
            if spent + reserved + ask.cost_micro_usd > budget {
                return Err(quota_spent(&key.name, spent, budget, period));
            }
            *inner.reserved.entry(slot).or_default() += ask.cost_micro_usd;
        }
        let mut info = RateInfo::default();
        for (name, tpm, rpm) in &wins {
            let window = inner.windows.entry(name.clone()).or_default();
            window.add(now, 1, ask.tokens);
            let standing = RateInfo::of(*tpm, *rpm, window.used(now), window.reset(now));
            // The key's own window speaks for the headers; a per-model one
            // only where the key has no limit of that kind.
            info.requests = info.requests.or(standing.requests);
            info.tokens = info.tokens.or(standing.tokens);
        }
        Ok(Reservation {
            key: key.name.clone(),
            model: ask.model.clone(),
            second: now,
            windows: wins.into_iter().map(|(name, ..)| name).collect(),
            tokens: ask.tokens,
            cost_micro_usd: ask.cost_micro_usd,
            period,
            info,
        })
    }

    /// Record at Unix second `now` (`None`: release, nothing served).
    pub fn record_at(
        &self,
        key: &str,
        model: &str,
        reservation: Option<&Reservation>,
        actual: Option<&Actual>,
        now: u64,
    ) {
        let released = Actual::default();
        let served = actual.is_some();
        let actual = actual.unwrap_or(&released);
        let mut inner = self.inner.lock();
        if let Some(r) = reservation {
            let tokens = actual.input_tokens + actual.output_tokens;
            for name in &r.windows {
                if let Some(w) = inner.windows.get_mut(name) {
                    w.settle(now, r.second, r.tokens, tokens);
                }
            }
            if let Some(period) = &r.period {
                let slot = (r.key.clone(), period.clone());
                if let Some(reserved) = inner.reserved.get_mut(&slot) {
                    *reserved = reserved.saturating_sub(r.cost_micro_usd);
                }
                *inner.spent.entry(slot).or_default() += actual.cost_micro_usd;
            }
        }
        if served {
            inner
                .usage
                .entry((key.to_string(), model.to_string()))
                .or_default()
                .add(actual);
        }
    }

    /// Usage rows.
    pub fn usage_rows(&self) -> Vec<(String, String, UsageTotals)> {
        self.inner
            .lock()
            .usage
            .iter()
            .map(|((k, m), t)| (k.clone(), m.clone(), t.clone()))
            .collect()
    }
}

#[async_trait::async_trait]
impl Ledger for MemoryLedger {
    async fn reserve(&self, ask: &Ask) -> Result<Reservation, GatewayError> {
        self.reserve_at(ask, unix_now())
    }

    async fn record(
        &self,
        key: &str,
        model: &str,
        reservation: Option<Reservation>,
        actual: Option<Actual>,
    ) {
        self.record_at(
            key,
            model,
            reservation.as_ref(),
            actual.as_ref(),
            unix_now(),
        );
    }

    async fn usage(&self) -> Vec<(String, String, UsageTotals)> {
        self.usage_rows()
    }

    fn kv(&self) -> Arc<dyn KvStore> {
        self.kv.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::VirtualKey;
    use crate::config::BudgetPeriod;

    fn key(rpm: Option<u64>, tpm: Option<u64>, budget: Option<u64>) -> Arc<VirtualKey> {
        Arc::new(VirtualKey {
            name: "k".into(),
            models: None,
            tokens_per_minute: tpm,
            requests_per_minute: rpm,
            budget_micro_usd: budget,
            budget_period: BudgetPeriod::Daily,
            model_limits: [("big".to_string(), (Some(50), None))]
                .into_iter()
                .collect(),
        })
    }

    fn ask(key: &Arc<VirtualKey>, model: &str, tokens: u64, cost: u64) -> Ask {
        Ask {
            key: key.clone(),
            model: model.into(),
            tokens,
            cost_micro_usd: cost,
        }
    }

    #[test]
    fn requests_per_minute_with_headers() {
        let l = MemoryLedger::default();
        let k = key(Some(2), None, None);
        let r = l.reserve_at(&ask(&k, "m", 0, 0), 100).unwrap();
        assert_eq!(r.info.requests.unwrap().1, 1);
        l.reserve_at(&ask(&k, "m", 0, 0), 100).unwrap();
        let err = l.reserve_at(&ask(&k, "m", 0, 0), 101).unwrap_err();
        assert_eq!(err.code(), Some("rate_limit_exceeded"));
        assert!(
            l.reserve_at(&ask(&k, "m", 0, 0), 160).is_ok(),
            "a minute later"
        );
    }

    #[test]
    fn per_model_limits_apply_only_to_that_model() {
        let l = MemoryLedger::default();
        let k = key(None, Some(1000), None);
        l.reserve_at(&ask(&k, "big", 40, 0), 100).unwrap();
        let err = l.reserve_at(&ask(&k, "big", 20, 0), 100).unwrap_err();
        assert!(err.to_string().contains("on model `big`"), "{err}");
        assert!(l.reserve_at(&ask(&k, "small", 500, 0), 100).is_ok());
    }

    #[test]
    fn budgets_count_reserved_and_spent_per_period() {
        let l = MemoryLedger::default();
        let k = key(None, None, Some(1000));
        let day1 = 1_795_491_740;
        let r = l.reserve_at(&ask(&k, "m", 0, 600), day1).unwrap();
        assert_eq!(
            l.reserve_at(&ask(&k, "m", 0, 600), day1)
                .unwrap_err()
                .code(),
            Some("insufficient_quota")
        );
        let actual = Actual {
            input_tokens: 10,
            output_tokens: 5,
            cached_input_tokens: 0,
            cost_micro_usd: 900,
        };
        l.record_at("k", "m", Some(&r), Some(&actual), day1);
        assert!(l.reserve_at(&ask(&k, "m", 0, 101), day1).is_err());
        assert!(l.reserve_at(&ask(&k, "m", 0, 100), day1).is_ok());
        assert!(
            l.reserve_at(&ask(&k, "m", 0, 900), day1 + 86_400).is_ok(),
            "a new day, a new budget"
        );
        let rows = l.usage_rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].2.micro_usd, 900);
        assert_eq!(rows[0].2.requests, 1);
    }
}
