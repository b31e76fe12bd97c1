//! `cheapest-healthy`: a router that tries healthy targets first, cheapest
//! first for this request, and unhealthy ones (open circuit, cooling down
//! after a 429) last.
//!
//! The cost of a request at a target is estimated from the request itself:
//! input tokens ≈ the messages' text length / 4 (the usual BPE ratio for
//! English), output tokens = `max_tokens`, or `default_output_tokens` when
//! the client set none, priced with the target's input and output prices.
//! Ties keep the configured order.
//!
//! Config (every key optional):
//!
//! ```toml
//! config = { default_output_tokens = 256, skip_unhealthy = false }
//! ```
//!
//! - `default_output_tokens` (256): output assumed when `max_tokens` is unset.
//! - `skip_unhealthy` (false): leave unhealthy targets out instead of
//!   trying them last.

use serde::Deserialize;
use weir_policy::prelude::*;

/// The policy's `config` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Output tokens assumed when the request sets no `max_tokens`.
    pub default_output_tokens: u64,
    /// Drop unhealthy targets rather than putting them last.
    pub skip_unhealthy: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_output_tokens: 256,
            skip_unhealthy: false,
        }
    }
}

/// Estimated input tokens of a request.
pub fn input_tokens(req: &ChatRequest) -> u64 {
    let chars: usize = req.messages.iter().map(|m| m.content.len()).sum();
    (chars as u64).div_ceil(4)
}

/// The order to try `candidates` in for `req`.
pub fn order(config: &Config, req: &ChatRequest, candidates: &[Candidate]) -> Vec<u32> {
    let input = u128::from(input_tokens(req));
    let output = u128::from(
        req.max_tokens
            .map_or(config.default_output_tokens, u64::from),
    );
    let cost = |c: &Candidate| {
        input * u128::from(c.input_micro_usd_per_mtok)
            + output * u128::from(c.output_micro_usd_per_mtok)
    };
    let mut order: Vec<u32> = (0..candidates.len() as u32)
        .filter(|&i| !config.skip_unhealthy || candidates[i as usize].healthy)
        .collect();
    order.sort_by_key(|&i| {
        let c = &candidates[i as usize];
        (!c.healthy, cost(c))
    });
    order
}

/// The router.
pub struct CheapestHealthy;

impl Router for CheapestHealthy {
    fn route(_info: RequestInfo, req: ChatRequest, candidates: Vec<Candidate>) -> Result<Vec<u32>> {
        let config: Config = weir_policy::config()?;
        Ok(order(&config, &req, &candidates))
    }
}

weir_policy::export_router!(CheapestHealthy);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_policy::testing::user_request;

    fn candidate(name: &str, healthy: bool, input: u64, output: u64) -> Candidate {
        Candidate {
            provider: name.into(),
            model: name.into(),
            healthy,
            latency_ewma_us: 0,
            ttft_ewma_us: 0,
            error_rate_permille: 0,
            in_flight: 0,
            input_micro_usd_per_mtok: input,
            output_micro_usd_per_mtok: output,
        }
    }

    #[test]
    fn healthy_and_cheapest_first() {
        let candidates = [
            candidate("pricey", true, 2_500_000, 10_000_000),
            candidate("cheap-but-down", false, 100_000, 400_000),
            candidate("cheap", true, 150_000, 600_000),
        ];
        let order = order(&Config::default(), &user_request("hello"), &candidates);
        assert_eq!(order, vec![2, 0, 1]);
        let skip = Config {
            skip_unhealthy: true,
            ..Config::default()
        };
        assert_eq!(
            super::order(&skip, &user_request("hello"), &candidates),
            vec![2, 0]
        );
    }

    #[test]
    fn output_heavy_requests_weigh_output_prices() {
        // Cheap input, pricey output vs the reverse.
        let candidates = [
            candidate("cheap-in", true, 100_000, 8_000_000),
            candidate("cheap-out", true, 3_000_000, 1_000_000),
        ];
        let mut long_answer = user_request("hi");
        long_answer.max_tokens = Some(4000);
        assert_eq!(
            order(&Config::default(), &long_answer, &candidates),
            vec![1, 0]
        );
        let long_prompt = user_request(&"x".repeat(40_000));
        let mut short = long_prompt.clone();
        short.max_tokens = Some(1);
        assert_eq!(order(&Config::default(), &short, &candidates), vec![0, 1]);
    }
}
