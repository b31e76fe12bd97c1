//! `team-markup`: a pricing policy that charges each team (virtual key)
//! the provider's price plus its own markup, with cheaper input tokens past
//! volume thresholds in long prompts.
//!
//! Config (every key optional, but a model needs a price from `models` or
//! `default`):
//!
//! ```toml
//! [[policies]]
//! name = "team-markup"
//! kind = "pricing"
//! path = "target/policies/team-markup.wasm"
//! config = {
//!   models = { "gpt-4o-mini" = { input_per_mtok = 0.15, output_per_mtok = 0.60, cached_input_per_mtok = 0.075 } },
//!   default = { input_per_mtok = 1.0, output_per_mtok = 3.0 },
//!   markups = { "team-a" = 0.2, "research" = -0.1 },
//!   default_markup = 0.0,
//!   tiers = [{ above_input_tokens = 100000, discount = 0.25 }],
//! }
//! ```
//!
//! - `models`: USD per million tokens by the provider's model name; the
//!   longest name that prefixes the model at a word boundary wins
//!   (`gpt-4o-mini-2024-07-18` uses `gpt-4o-mini`). Cached input defaults
//!   to the input price.
//! - `default`: the price of models not in `models`. Without it, such a
//!   model is an error (the gateway handles it per `on_error`) — and so is
//!   the made-up model of the gateway's smoke call when it loads the
//!   policy, which then refuses to load: set `default`.
//! - `markups`: by key name, a fraction added to the price (0.2 = +20 %,
//!   −0.1 = 10 % off, at least −1). `default_markup` (0) for other keys and
//!   for an open gateway.
//! - `tiers`: input tokens at positions past `above_input_tokens` in one
//!   request are charged `1 − discount` of their price; the highest tier
//!   reached applies to each token.
//!
//! The formula, for input `I` tokens of which the first `C` are cached
//! (prompt caches hold a prefix), output `O` tokens:
//!
//! ```text
//! cost = round((1 + markup) × (Σ_{t < I} price(t) × (1 − discount(t)) + O × output))
//! price(t) = cached_input if t < C, else input; discount(t) = the tier of position t
//! ```
//!
//! in micro-USD, rounded to the nearest (halves up). Prices are held as
//! integer pico-USD per token and fractions as parts per million, so the
//! arithmetic is exact (`u128`) up to the one rounding. The estimate phase
//! applies the same formula to the gateway's estimated usage.

use std::collections::BTreeMap;

use serde::Deserialize;
use weir_policy::prelude::*;

/// USD per million tokens, as in weir.toml's `price = { … }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
    /// Defaults to the input price.
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
}

/// Input tokens past `above_input_tokens` cost `1 − discount`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub above_input_tokens: u64,
    pub discount: f64,
}

/// The policy's `config` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub models: BTreeMap<String, Price>,
    pub default: Option<Price>,
    pub markups: BTreeMap<String, f64>,
    pub default_markup: f64,
    pub tiers: Vec<Tier>,
}

/// Parts per million in one.
const PPM: u128 = 1_000_000;
/// Pico-USD in one micro-USD.
const PICO_PER_MICRO: u128 = 1_000_000;

/// A price in pico-USD per token (1 USD per Mtok = 1 µUSD per token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
}

/// Token usage, as the gateway reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
}

fn pico(usd_per_mtok: f64, what: &str) -> Result<u64> {
    if !(usd_per_mtok.is_finite() && (0.0..=1_000_000.0).contains(&usd_per_mtok)) {
        return Err(format!(
            "invalid config: {what} must be between 0 and 1000000 USD per million tokens, not {usd_per_mtok}"
        ));
    }
    Ok((usd_per_mtok * 1e6).round() as u64)
}

fn ppm(fraction: f64, min: f64, max: f64, what: &str) -> Result<i64> {
    if !(fraction.is_finite() && (min..=max).contains(&fraction)) {
        return Err(format!(
            "invalid config: {what} must be between {min} and {max}, not {fraction}"
        ));
    }
    Ok((fraction * 1e6).round() as i64)
}

impl Price {
    fn rates(&self, what: &str) -> Result<Rates> {
        let input = pico(self.input_per_mtok, &format!("{what}.input_per_mtok"))?;
        Ok(Rates {
            input,
            output: pico(self.output_per_mtok, &format!("{what}.output_per_mtok"))?,
            cached_input: match self.cached_input_per_mtok {
                Some(p) => pico(p, &format!("{what}.cached_input_per_mtok"))?,
                None => input,
            },
        })
    }
}

impl Config {
    /// The price of `model`: the longest entry of `models` that prefixes it
    /// at a word boundary, else `default`.
    pub fn rates(&self, model: &str) -> Result<Rates> {
        let found = self
            .models
            .iter()
            .filter(|(name, _)| {
                model
                    .strip_prefix(name.as_str())
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric()))
            })
            .max_by_key(|(name, _)| name.len());
        match (found, &self.default) {
            (Some((name, price)), _) => price.rates(&format!("models.\"{name}\"")),
            (None, Some(price)) => price.rates("default"),
            (None, None) => Err(format!(
                "no price for model `{model}`: add it to `models` or set `default`"
            )),
        }
    }

    /// The key's price factor in parts per million (1_200_000 for +20 %).
    pub fn factor_ppm(&self, key_name: Option<&str>) -> Result<u128> {
        let (markup, what) = match key_name.and_then(|k| self.markups.get(k).map(|m| (k, *m))) {
            Some((key, markup)) => (markup, format!("markups.\"{key}\"")),
            None => (self.default_markup, "default_markup".to_string()),
        };
        let markup = ppm(markup, -1.0, 1000.0, &what)?;
        Ok((PPM as i64 + markup) as u128)
    }

    /// Tiers as (threshold, 1 − discount in ppm), sorted by threshold.
    pub fn tiers(&self) -> Result<Vec<(u64, u128)>> {
        let mut tiers = self
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let discount = ppm(t.discount, 0.0, 1.0, &format!("tiers[{i}].discount"))?;
                Ok((t.above_input_tokens, PPM - discount as u128))
            })
            .collect::<Result<Vec<_>>>()?;
        tiers.sort_by_key(|t| t.0);
        Ok(tiers)
    }

    /// Every price, markup and tier is valid (checked on every call, so a
    /// bad config fails the gateway's smoke call at load, whatever model
    /// and key it uses).
    pub fn check(&self) -> Result<()> {
        for (name, price) in &self.models {
            price.rates(&format!("models.\"{name}\""))?;
        }
        if let Some(price) = &self.default {
            price.rates("default")?;
        }
        for key in self.markups.keys() {
            self.factor_ppm(Some(key))?;
        }
        self.factor_ppm(None)?;
        self.tiers().map(drop)
    }

    /// The cost of `tokens` on `model` for `key_name`, in micro-USD.
    pub fn price(&self, key_name: Option<&str>, model: &str, tokens: Tokens) -> Result<u64> {
        self.check()?;
        let rates = self.rates(model)?;
        let factor = self.factor_ppm(key_name)?;
        let tiers = self.tiers()?;
        Ok(cost(&rates, factor, &tiers, tokens))
    }
}

/// The formula in the module docs, exact until the final rounding.
pub fn cost(rates: &Rates, factor_ppm: u128, tiers: &[(u64, u128)], tokens: Tokens) -> u64 {
    let cached = tokens.cached_input.min(tokens.input);
    // Input positions [0, cached) at the cached price, [cached, input) at
    // the input price; each split further at the tier thresholds.
    // Units: pico-USD × ppm.
    let mut sum = segment(0, cached, rates.cached_input, tiers)
        + segment(cached, tokens.input, rates.input, tiers)
        + u128::from(tokens.output) * u128::from(rates.output) * PPM;
    sum *= factor_ppm;
    let unit = PICO_PER_MICRO * PPM * PPM;
    let micro = (sum + unit / 2) / unit;
    u64::try_from(micro).unwrap_or(u64::MAX)
}

/// Tokens at positions [from, to) at `rate` pico-USD each, with the tier
/// discounts, in pico-USD × ppm.
fn segment(from: u64, to: u64, rate: u64, tiers: &[(u64, u128)]) -> u128 {
    let mut total = 0;
    let mut start = from;
    let mut factor = PPM;
    // Boundaries: every tier threshold inside [from, to), then `to`.
    let mut bounds = tiers.iter().peekable();
    while start < to {
        while let Some(&&(above, f)) = bounds.peek() {
            if above <= start {
                factor = f;
                bounds.next();
            } else {
                break;
            }
        }
        let end = bounds.peek().map_or(to, |&&(above, _)| above.min(to));
        total += u128::from(end - start) * u128::from(rate) * factor;
        start = end;
    }
    total
}

/// The pricing policy.
pub struct TeamMarkup;

impl Pricing for TeamMarkup {
    fn price(
        info: RequestInfo,
        _phase: Phase,
        _provider: String,
        model: String,
        usage: Usage,
    ) -> Result<u64> {
        let config: Config = weir_policy::config()?;
        config.price(
            info.key_name.as_deref(),
            &model,
            Tokens {
                input: usage.input_tokens,
                output: usage.output_tokens,
                cached_input: usage.cached_input_tokens,
            },
        )
    }
}

weir_policy::export_pricing!(TeamMarkup);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_policy::testing;

    fn config(json: &str) -> Config {
        serde_json::from_str(json).unwrap()
    }

    fn tokens(input: u64, cached_input: u64, output: u64) -> Tokens {
        Tokens {
            input,
            output,
            cached_input,
        }
    }

    const MINI: &str = r#"{
        "models": {
            "gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.60, "cached_input_per_mtok": 0.075},
            "gpt-4o": {"input_per_mtok": 2.50, "output_per_mtok": 10.00}
        },
        "markups": {"team-a": 0.2, "research": -0.1}
    }"#;

    #[test]
    fn base_price_and_team_markups() {
        let c = config(MINI);
        // 1000 × 0.15 + 500 × 0.60 = 150 + 300 µUSD.
        assert_eq!(c.price(None, "gpt-4o-mini", tokens(1000, 0, 500)), Ok(450));
        assert_eq!(
            c.price(Some("team-b"), "gpt-4o-mini", tokens(1000, 0, 500)),
            Ok(450)
        );
        assert_eq!(
            c.price(Some("team-a"), "gpt-4o-mini", tokens(1000, 0, 500)),
            Ok(540)
        );
        assert_eq!(
            c.price(Some("research"), "gpt-4o-mini", tokens(1000, 0, 500)),
            Ok(405)
        );
        // 1M input + 1M output on gpt-4o: $12.50, +20 % = $15.
        assert_eq!(
            c.price(Some("team-a"), "gpt-4o", tokens(1_000_000, 0, 1_000_000)),
            Ok(15_000_000)
        );
    }

    #[test]
    fn cached_input_is_the_prompt_prefix_at_the_cached_price() {
        let c = config(MINI);
        // 6000 × 0.15 + 4000 × 0.075 + 1000 × 0.60 = 900 + 300 + 600.
        assert_eq!(
            c.price(None, "gpt-4o-mini", tokens(10_000, 4000, 1000)),
            Ok(1800)
        );
        assert_eq!(
            c.price(Some("team-a"), "gpt-4o-mini", tokens(10_000, 4000, 1000)),
            Ok(2160)
        );
        // No cached price: cached tokens cost the input price.
        assert_eq!(c.price(None, "gpt-4o", tokens(1000, 1000, 0)), Ok(2500));
        // More cached than input is capped at the input.
        assert_eq!(c.price(None, "gpt-4o-mini", tokens(100, 500, 0)), Ok(8));
    }

    #[test]
    fn rounds_to_the_nearest_micro_usd_halves_up() {
        let c = config(MINI);
        assert_eq!(c.price(None, "gpt-4o-mini", tokens(3, 0, 0)), Ok(0)); // 0.45
        assert_eq!(c.price(None, "gpt-4o-mini", tokens(4, 0, 0)), Ok(1)); // 0.60
        assert_eq!(
            c.price(Some("team-a"), "gpt-4o-mini", tokens(5, 0, 0)),
            Ok(1)
        ); // 0.9
        let half = config(r#"{"default": {"input_per_mtok": 0.5, "output_per_mtok": 2.5}}"#);
        assert_eq!(half.price(None, "x", tokens(1, 0, 0)), Ok(1)); // 0.5
        assert_eq!(half.price(None, "x", tokens(0, 0, 1)), Ok(3)); // 2.5
        assert_eq!(half.price(None, "x", tokens(0, 0, 0)), Ok(0));
    }

    #[test]
    fn volume_tiers_discount_input_past_each_threshold() {
        let c = config(
            r#"{
            "default": {"input_per_mtok": 2.0, "output_per_mtok": 8.0, "cached_input_per_mtok": 1.0},
            "tiers": [{"above_input_tokens": 1000, "discount": 0.5}]
        }"#,
        );
        // 1000 × 2 + 2000 × 2 × 0.5 = 4000; output is never discounted.
        assert_eq!(c.price(None, "m", tokens(3000, 0, 0)), Ok(4000));
        assert_eq!(c.price(None, "m", tokens(3000, 0, 100)), Ok(4800));
        // Cached prefix 1500: 1000 × 1 + 500 × 1 × 0.5 + 1500 × 2 × 0.5.
        assert_eq!(c.price(None, "m", tokens(3000, 1500, 0)), Ok(2750));
        // Under the threshold nothing changes.
        assert_eq!(c.price(None, "m", tokens(1000, 0, 0)), Ok(2000));
        let two = config(
            r#"{
            "default": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
            "markups": {"t": 0.1},
            "tiers": [{"above_input_tokens": 2000, "discount": 0.5}, {"above_input_tokens": 1000, "discount": 0.2}]
        }"#,
        );
        // 1000 × 1 + 1000 × 0.8 + 1000 × 0.5 = 2300, + 10 % = 2530.
        assert_eq!(two.price(None, "m", tokens(3000, 0, 0)), Ok(2300));
        assert_eq!(two.price(Some("t"), "m", tokens(3000, 0, 0)), Ok(2530));
    }

    #[test]
    fn models_match_the_longest_prefix_then_the_default() {
        let c = config(MINI);
        let rates = |m: &str| c.rates(m).map(|r| r.input);
        assert_eq!(rates("gpt-4o-mini-2024-07-18"), Ok(150_000));
        assert_eq!(rates("gpt-4o-2024-08-06"), Ok(2_500_000));
        assert!(
            rates("gpt-4omni")
                .unwrap_err()
                .contains("no price for model `gpt-4omni`")
        );
        let with_default = config(r#"{"default": {"input_per_mtok": 1.0}}"#);
        assert_eq!(
            with_default.price(None, "anything", tokens(1000, 0, 1000)),
            Ok(1000)
        );
    }

    #[test]
    fn large_usage_does_not_overflow() {
        let c = config(
            r#"{"default": {"input_per_mtok": 150.0, "output_per_mtok": 600.0}, "default_markup": 1000.0}"#,
        );
        // 1e9 × 150 + 1e9 × 600 µUSD, × 1001.
        assert_eq!(
            c.price(None, "o1-pro", tokens(1_000_000_000, 0, 1_000_000_000)),
            Ok(750_750_000_000_000)
        );
    }

    #[test]
    fn bad_config_is_an_error() {
        let err = |json: &str| {
            config(json)
                .price(Some("k"), "m", tokens(1, 0, 1))
                .unwrap_err()
        };
        assert!(err(r#"{"default": {"input_per_mtok": -1.0}}"#).contains("default.input_per_mtok"));
        assert!(
            err(r#"{"default": {"input_per_mtok": 1.0}, "markups": {"k": -2.0}}"#)
                .contains("markups.\"k\"")
        );
        assert!(
            err(r#"{"default": {"input_per_mtok": 1.0}, "tiers": [{"above_input_tokens": 0, "discount": 1.5}]}"#)
                .contains("tiers[0].discount")
        );
        assert!(serde_json::from_str::<Config>(r#"{"markup": {}}"#).is_err());
        // Any bad entry fails every call, not only calls that use it.
        let c = config(
            r#"{"default": {"input_per_mtok": 1.0}, "models": {"other": {"output_per_mtok": -3.0}}, "markups": {"z": -5.0}}"#,
        );
        let e = c.price(None, "m", tokens(1, 0, 1)).unwrap_err();
        assert!(e.contains("models.\"other\".output_per_mtok"), "{e}");
    }

    #[test]
    fn the_export_reads_its_config_and_prices_both_phases_alike() {
        testing::reset();
        testing::set_config(MINI);
        let mut info = testing::request_info();
        info.key_name = Some("team-a".into());
        let usage = Usage {
            input_tokens: 1000,
            output_tokens: 500,
            cached_input_tokens: 0,
            reasoning_tokens: 200,
        };
        for phase in [Phase::Estimate, Phase::Actual] {
            let cost = TeamMarkup::price(
                info.clone(),
                phase,
                "openai".into(),
                "gpt-4o-mini".into(),
                usage,
            );
            assert_eq!(cost, Ok(540));
        }
        testing::set_config("{\"nope\": 1}");
        let err = TeamMarkup::price(
            info,
            Phase::Actual,
            "openai".into(),
            "gpt-4o-mini".into(),
            usage,
        );
        assert!(err.unwrap_err().starts_with("invalid config"));
    }
}
