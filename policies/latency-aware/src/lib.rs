//! `latency-aware`: a router that tries healthy targets first, fastest
//! first, and unhealthy ones last.
//!
//! "Fastest" is the recent latency the gateway measured (an exponentially
//! weighted moving average): time to first token for streamed requests,
//! whole-response latency otherwise, the other one when a target has only
//! one of them. Recent errors and load make a target look slower:
//! `score = latency × (1 + error_penalty × error_rate) + in_flight × in_flight_penalty_us`.
//! A target with no measurement yet scores 0, so new targets get measured.
//! Ties keep the configured order.
//!
//! Config (every key optional):
//!
//! ```toml
//! config = { error_penalty = 4.0, in_flight_penalty_us = 0 }
//! ```

use serde::Deserialize;
use weir_policy::prelude::*;

/// The policy's `config` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How much an error rate of 100% multiplies latency by (plus one).
    pub error_penalty: f64,
    /// Microseconds added per request already in flight at the target.
    pub in_flight_penalty_us: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            error_penalty: 4.0,
            in_flight_penalty_us: 0,
        }
    }
}

/// A candidate's score in microseconds; lower is better.
pub fn score(config: &Config, c: &Candidate, streaming: bool) -> f64 {
    let (first, second) = if streaming {
        (c.ttft_ewma_us, c.latency_ewma_us)
    } else {
        (c.latency_ewma_us, c.ttft_ewma_us)
    };
    let latency = if first > 0 { first } else { second } as f64;
    let errors = f64::from(c.error_rate_permille) / 1000.0;
    latency * (1.0 + config.error_penalty * errors)
        + (u64::from(c.in_flight) * config.in_flight_penalty_us) as f64
}

/// The order to try `candidates` in.
pub fn order(config: &Config, streaming: bool, candidates: &[Candidate]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..candidates.len() as u32).collect();
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&candidates[a as usize], &candidates[b as usize]);
        (!ca.healthy)
            .cmp(&!cb.healthy)
            .then(score(config, ca, streaming).total_cmp(&score(config, cb, streaming)))
    });
    order
}

/// The router.
pub struct LatencyAware;

impl Router for LatencyAware {
    fn route(info: RequestInfo, _req: ChatRequest, candidates: Vec<Candidate>) -> Result<Vec<u32>> {
        let config: Config = weir_policy::config()?;
        Ok(order(&config, info.streaming, &candidates))
    }
}

weir_policy::export_router!(LatencyAware);

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(healthy: bool, latency_ms: u64, ttft_ms: u64, errors: u32) -> Candidate {
        Candidate {
            provider: "p".into(),
            model: "m".into(),
            healthy,
            latency_ewma_us: latency_ms * 1000,
            ttft_ewma_us: ttft_ms * 1000,
            error_rate_permille: errors,
            in_flight: 0,
            input_micro_usd_per_mtok: 0,
            output_micro_usd_per_mtok: 0,
        }
    }

    #[test]
    fn fastest_healthy_first() {
        let c = [
            candidate(true, 900, 300, 0),
            candidate(true, 400, 500, 0),
            candidate(false, 10, 10, 0),
        ];
        assert_eq!(order(&Config::default(), false, &c), vec![1, 0, 2]);
        assert_eq!(order(&Config::default(), true, &c), vec![0, 1, 2]);
    }

    #[test]
    fn errors_make_a_target_look_slower_and_unknown_goes_first() {
        let c = [
            candidate(true, 100, 0, 500),
            candidate(true, 250, 0, 0),
            candidate(true, 0, 0, 0),
        ];
        // 100 ms × (1 + 4 × 0.5) = 300 ms > 250 ms; unknown scores 0.
        assert_eq!(order(&Config::default(), false, &c), vec![2, 1, 0]);
    }
}
