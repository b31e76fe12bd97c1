//! Which target serves a request, and what happens when one fails.
//!
//! A request's plan is an order of the model's targets: the config order
//! (`failover`), a weight-biased random order (`weighted`), lowest recent
//! latency first (`least-latency`, time to first token for streams), or
//! whatever a router policy returns for the request and the live figures
//! (a router that fails falls back to the config order). Targets whose
//! circuit is open or that are cooling down after a 429 go to the back; if
//! nothing else is left they are still tried, since a last attempt beats an
//! immediate 502.
//!
//! The gateway walks the plan, one attempt per target, until one answers or
//! the model's `max_attempts` (default: one per target) or `deadline_ms` is
//! used up; when a round ends with attempts left, it waits
//! `retry_backoff_ms · 2^(round-1)`, capped at `retry_max_backoff_ms`, with
//! ±50 % jitter, and starts over.

pub mod health;

use std::time::{Duration, Instant};

use crate::config::Strategy;
use health::{Figures, TargetHealth};

/// A target as the planner sees it.
pub struct Candidate<'a> {
    pub weight: f64,
    pub health: &'a TargetHealth,
}

/// Order `candidates` by `strategy`; returns indexes.
pub fn order(
    strategy: Strategy,
    candidates: &[Candidate<'_>],
    streaming: bool,
    now: Instant,
) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..candidates.len()).collect();
    match strategy {
        Strategy::Failover => {}
        Strategy::Weighted => {
            // Efraimidis–Spirakis: sort by u^(1/w), largest first.
            let keys: Vec<f64> = candidates
                .iter()
                .map(|c| fastrand::f64().powf(1.0 / c.weight.max(f64::MIN_POSITIVE)))
                .collect();
            idx.sort_by(|a, b| keys[*b].total_cmp(&keys[*a]));
        }
        Strategy::LeastLatency => {
            let latency = |f: &Figures| {
                let (first, second) = if streaming {
                    (f.ttft_ewma_us, f.latency_ewma_us)
                } else {
                    (f.latency_ewma_us, f.ttft_ewma_us)
                };
                // Unknown (0) sorts first, so new targets get measured.
                if first > 0 { first } else { second }
            };
            let figures: Vec<Figures> = candidates.iter().map(|c| c.health.figures(now)).collect();
            idx.sort_by_key(|i| latency(&figures[*i]));
        }
    }
    idx
}

/// The wait before retry round `round` (1-based).
pub fn backoff(round: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << round.saturating_sub(1).min(16));
    let capped = exp.min(cap);
    capped.mul_f64(0.5 + fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CircuitConfig;
    use health::Outcome;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_millis(1000);
        for _ in 0..100 {
            let b1 = backoff(1, base, cap);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(150));
            let b3 = backoff(3, base, cap);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(600));
            let b9 = backoff(9, base, cap);
            assert!(b9 <= Duration::from_millis(1500), "capped (plus jitter)");
        }
    }

    #[test]
    fn least_latency_prefers_fast_and_unknown() {
        let reg = health::HealthRegistry::default();
        let (a, b, c) = (reg.get("a"), reg.get("b"), reg.get("c"));
        let now = Instant::now();
        let cfg = CircuitConfig::default();
        let ok = |ms| Outcome::Ok {
            latency: Duration::from_millis(ms),
            streaming: false,
        };
        a.record(ok(50), &cfg, now);
        b.record(ok(5), &cfg, now);
        let cands = [
            Candidate {
                weight: 1.0,
                health: &a,
            },
            Candidate {
                weight: 1.0,
                health: &b,
            },
            Candidate {
                weight: 1.0,
                health: &c,
            },
        ];
        assert_eq!(
            order(Strategy::LeastLatency, &cands, false, now),
            vec![2, 1, 0]
        );
        assert_eq!(order(Strategy::Failover, &cands, false, now), vec![0, 1, 2]);
    }

    #[test]
    fn weighted_order_follows_weights() {
        let reg = health::HealthRegistry::default();
        let (a, b) = (reg.get("a"), reg.get("b"));
        let cands = [
            Candidate {
                weight: 9.0,
                health: &a,
            },
            Candidate {
                weight: 1.0,
                health: &b,
            },
        ];
        let now = Instant::now();
        let firsts = (0..2000)
            .filter(|_| order(Strategy::Weighted, &cands, false, now)[0] == 0)
            .count();
        assert!((1650..=1950).contains(&firsts), "{firsts} of 2000 ≈ 90%");
    }
}
