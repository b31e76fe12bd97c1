//! Per-key request and token rate limits and budgets (SPEC §8).
//!
//! Every request reserves up front — one request, its estimated tokens and
//! its estimated cost — and settles on the provider's reported usage when it
//! ends, so concurrent requests cannot overshoot a limit by more than one
//! request's estimate. Windows slide over the last 60 seconds in one-second
//! buckets: exact to a second, 60 counters per key, and a check is a sum over
//! at most 60 small structs under a mutex held for well under a microsecond.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use parking_lot::Mutex;

use crate::auth::VirtualKey;
use crate::error::GatewayError;

const WINDOW_SECS: u64 = 60;

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    second: u64,
    requests: u64,
    tokens: u64,
}

#[derive(Debug)]
struct KeyState {
    buckets: [Bucket; WINDOW_SECS as usize],
    spent_micro_usd: u64,
    reserved_micro_usd: u64,
}

impl Default for KeyState {
    fn default() -> Self {
        KeyState {
            buckets: [Bucket::default(); WINDOW_SECS as usize],
            spent_micro_usd: 0,
            reserved_micro_usd: 0,
        }
    }
}

impl KeyState {
    fn live(&self, now: u64) -> impl Iterator<Item = &Bucket> {
        self.buckets
            .iter()
            .filter(move |b| b.second + WINDOW_SECS > now && (b.requests > 0 || b.tokens > 0))
    }

    fn bucket(&mut self, now: u64) -> &mut Bucket {
        let b = &mut self.buckets[(now % WINDOW_SECS) as usize];
        if b.second != now {
            *b = Bucket {
                second: now,
                ..Bucket::default()
            };
        }
        b
    }

    /// When enough of the window has slid out for `need` more to fit under
    /// `limit`, with `used` counted by `of`.
    fn wait_for(&self, now: u64, used: u64, need: u64, limit: u64, of: fn(&Bucket) -> u64) -> u64 {
        let mut live: Vec<&Bucket> = self.live(now).collect();
        live.sort_by_key(|b| b.second);
        let mut freed = 0;
        for b in live {
            freed += of(b);
            if used - freed + need <= limit {
                return b.second + WINDOW_SECS - now;
            }
        }
        WINDOW_SECS
    }
}

/// What a key has left, for `x-ratelimit-*` headers.
#[derive(Debug, Clone, Default)]
pub struct RateInfo {
    pub requests: Option<(u64, u64, Duration)>,
    pub tokens: Option<(u64, u64, Duration)>,
}

impl RateInfo {
    /// OpenAI's `x-ratelimit-*` headers.
    pub fn headers(&self) -> Vec<(&'static str, HeaderValue)> {
        let mut out = Vec::new();
        if let Some((limit, remaining, reset)) = self.requests {
            out.push(("x-ratelimit-limit-requests", HeaderValue::from(limit)));
            out.push((
                "x-ratelimit-remaining-requests",
                HeaderValue::from(remaining),
            ));
            if let Ok(v) = HeaderValue::from_str(&openai_duration(reset)) {
                out.push(("x-ratelimit-reset-requests", v));
            }
        }
        if let Some((limit, remaining, reset)) = self.tokens {
            out.push(("x-ratelimit-limit-tokens", HeaderValue::from(limit)));
            out.push(("x-ratelimit-remaining-tokens", HeaderValue::from(remaining)));
            if let Ok(v) = HeaderValue::from_str(&openai_duration(reset)) {
                out.push(("x-ratelimit-reset-tokens", v));
            }
        }
        out
    }
}

/// A request's hold on its key's limits, settled when the request ends.
#[derive(Debug)]
pub struct Reservation {
    key: Arc<VirtualKey>,
    second: u64,
    tokens: u64,
    cost_micro_usd: u64,
    /// The key's standing right after this reservation.
    pub info: RateInfo,
}

/// The limiter for every key.
#[derive(Debug)]
pub struct Limiter {
    start: Instant,
    keys: Mutex<HashMap<String, KeyState>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            start: Instant::now(),
            keys: Mutex::default(),
        }
    }
}

impl Limiter {
    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// Reserve one request, `tokens` and `cost_micro_usd` for `key`, or say
    /// why it does not fit. Keys without limits or budget reserve nothing.
    pub fn reserve(
        &self,
        key: &Arc<VirtualKey>,
        tokens: u64,
        cost_micro_usd: u64,
    ) -> Result<Option<Reservation>, GatewayError> {
        if key.requests_per_minute.is_none()
            && key.tokens_per_minute.is_none()
            && key.budget_micro_usd.is_none()
        {
            return Ok(None);
        }
        let now = self.now();
        let mut keys = self.keys.lock();
        let state = keys.entry(key.name.clone()).or_default();
        let (used_requests, used_tokens) = state
            .live(now)
            .fold((0, 0), |(r, t), b| (r + b.requests, t + b.tokens));

        if let Some(limit) = key.requests_per_minute
            && used_requests + 1 > limit
        {
            let wait = state.wait_for(now, used_requests, 1, limit, |b| b.requests);
            return Err(GatewayError::RateLimited {
                message: format!(
                    "rate limit reached for key `{}`: {limit} requests per minute",
                    key.name
                ),
                retry_after: Duration::from_secs(wait),
            });
        }
        if let Some(limit) = key.tokens_per_minute
            && used_tokens + tokens > limit
        {
            let wait = if tokens > limit {
                WINDOW_SECS
            } else {
                state.wait_for(now, used_tokens, tokens, limit, |b| b.tokens)
            };
            return Err(GatewayError::RateLimited {
                message: format!(
                    "rate limit reached for key `{}`: {limit} tokens per minute, this request needs an estimated {tokens}",
                    key.name
                ),
                retry_after: Duration::from_secs(wait),
            });
        }
        if let Some(budget) = key.budget_micro_usd
            && state.spent_micro_usd + state.reserved_micro_usd + cost_micro_usd > budget
        {
            return Err(GatewayError::InsufficientQuota(format!(
                "the budget of key `{}` is spent: ${:.6} of ${:.6} used",
                key.name,
                state.spent_micro_usd as f64 / 1e6,
                budget as f64 / 1e6
            )));
        }

        let bucket = state.bucket(now);
        bucket.requests += 1;
        bucket.tokens += tokens;
        state.reserved_micro_usd += cost_micro_usd;
        let reset = state
            .live(now)
            .map(|b| b.second + WINDOW_SECS - now)
            .max()
            .unwrap_or(0);
        let reset = Duration::from_secs(reset);
        let info = RateInfo {
            requests: key
                .requests_per_minute
                .map(|l| (l, l.saturating_sub(used_requests + 1), reset)),
            tokens: key
                .tokens_per_minute
                .map(|l| (l, l.saturating_sub(used_tokens + tokens), reset)),
        };
        Ok(Some(Reservation {
            key: key.clone(),
            second: now,
            tokens,
            cost_micro_usd,
            info,
        }))
    }

    /// Replace a reservation's estimates with what the request really used.
    pub fn settle(&self, reservation: Reservation, tokens: u64, cost_micro_usd: u64) {
        let now = self.now();
        let mut keys = self.keys.lock();
        let Some(state) = keys.get_mut(&reservation.key.name) else {
            return;
        };
        let b = &mut state.buckets[(reservation.second % WINDOW_SECS) as usize];
        if b.second == reservation.second && reservation.second + WINDOW_SECS > now {
            b.tokens = (b.tokens + tokens).saturating_sub(reservation.tokens);
        }
        state.reserved_micro_usd = state
            .reserved_micro_usd
            .saturating_sub(reservation.cost_micro_usd);
        state.spent_micro_usd += cost_micro_usd;
    }
}

/// OpenAI's duration format: `20ms`, `1s`, `6m0s`.
pub fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64().ceil() as u64;
    let mut s = String::new();
    if secs >= 3600 {
        let _ = write!(s, "{}h", secs / 3600);
    }
    if secs >= 60 {
        let _ = write!(s, "{}m", secs % 3600 / 60);
    }
    let _ = write!(s, "{}s", secs % 60);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: Option<u64>, tpm: Option<u64>, budget: Option<u64>) -> Arc<VirtualKey> {
        Arc::new(VirtualKey {
            name: "k".into(),
            models: None,
            tokens_per_minute: tpm,
            requests_per_minute: rpm,
            budget_micro_usd: budget,
        })
    }

    #[test]
    fn requests_per_minute() {
        let l = Limiter::default();
        let k = key(Some(2), None, None);
        let a = l.reserve(&k, 0, 0).unwrap().unwrap();
        assert_eq!(a.info.requests.unwrap().1, 1);
        l.reserve(&k, 0, 0).unwrap();
        let err = l.reserve(&k, 0, 0).unwrap_err();
        assert_eq!(err.code(), Some("rate_limit_exceeded"));
        assert_eq!(err.headers()[0].0, "retry-after");
    }

    #[test]
    fn tokens_settle_to_actual_usage() {
        let l = Limiter::default();
        let k = key(None, Some(100), None);
        let r = l.reserve(&k, 80, 0).unwrap().unwrap();
        assert!(l.reserve(&k, 30, 0).is_err());
        l.settle(r, 10, 0);
        let r2 = l.reserve(&k, 30, 0).unwrap().unwrap();
        assert_eq!(r2.info.tokens.unwrap().1, 60);
    }

    #[test]
    fn budget_counts_reserved_and_spent() {
        let l = Limiter::default();
        let k = key(None, None, Some(1000));
        let r = l.reserve(&k, 0, 600).unwrap().unwrap();
        assert_eq!(
            l.reserve(&k, 0, 600).unwrap_err().code(),
            Some("insufficient_quota")
        );
        l.settle(r, 0, 900);
        assert!(l.reserve(&k, 0, 101).is_err());
        assert!(l.reserve(&k, 0, 100).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_secs(1)), "1s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_millis(59_500)), "1m0s");
    }
}
