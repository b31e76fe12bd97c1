//! Prometheus metrics for the admin listener's `/metrics`.
//!
//! Recording goes through the `metrics` facade; the Prometheus exporter
//! renders on scrape. All metric names live here so dashboards have one
//! reference.
//!
//! A `counter!`/`histogram!` call builds its key (a `String` per label) and
//! looks it up in the recorder's registry on every update, 0.3–0.5 µs each;
//! a served request makes six. The series every served request updates are
//! kept in [`Series`] maps found by borrowed label values instead (a hash
//! and a read lock). Only served requests' series go there: their labels
//! are configured names (models, providers, keys), so the maps stay small.

use std::sync::LazyLock;
use std::time::Duration;

use hashbrown::{Equivalent, HashMap};
use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;
use rustc_hash::FxBuildHasher;

/// Label values of a cached series: two strings and a number.
#[derive(Hash, PartialEq, Eq)]
struct Labels {
    a: Box<str>,
    b: Box<str>,
    n: u32,
}

/// [`Labels`] borrowed, for lookups (hashes the same: same fields, same order).
#[derive(Hash)]
struct LabelsRef<'a> {
    a: &'a str,
    b: &'a str,
    n: u32,
}

impl Equivalent<Labels> for LabelsRef<'_> {
    fn equivalent(&self, key: &Labels) -> bool {
        self.n == key.n && *key.a == *self.a && *key.b == *self.b
    }
}

/// Handles of one metric's series by label values.
struct Series<H>(LazyLock<RwLock<HashMap<Labels, H, FxBuildHasher>>>);

impl<H: Clone> Series<H> {
    const fn new() -> Self {
        Series(LazyLock::new(|| {
            RwLock::new(HashMap::with_hasher(FxBuildHasher))
        }))
    }

    /// Update the series `(a, b, n)`, registering it with `make` the first time.
    fn with(&self, a: &str, b: &str, n: u32, make: impl FnOnce() -> H, update: impl FnOnce(&H)) {
        let key = LabelsRef { a, b, n };
        if let Some(handle) = self.0.read().get(&key) {
            return update(handle);
        }
        let handle = make();
        update(&handle);
        self.0.write().insert(
            Labels {
                a: a.into(),
                b: b.into(),
                n,
            },
            handle,
        );
    }
}

/// Served requests by (route, model, status).
static REQUESTS: Series<Counter> = Series::new();
/// Served requests' duration by (route, model).
static REQUEST_DURATION: Series<Histogram> = Series::new();
/// Successful upstream attempts and their duration by (provider, model).
static UPSTREAM_OK: Series<(Counter, Histogram)> = Series::new();
/// Tokens by (key, model, direction 0 = input / 1 = output).
static TOKENS: Series<Counter> = Series::new();
/// Cost by (key, model).
static COST: Series<Counter> = Series::new();

/// Latency buckets in seconds: 0.5 ms … 120 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Install the global recorder; returns the handle `/metrics` renders from.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    Ok(handle)
}

/// A client request finished (for streams: when the stream ended).
pub fn request_finished(route: &'static str, model: &str, status: u16, elapsed: Duration) {
    if status < 400 {
        REQUESTS.with(
            route,
            model,
            u32::from(status),
            || request_counter(route, model, status),
            |c| c.increment(1),
        );
        REQUEST_DURATION.with(
            route,
            model,
            0,
            || request_histogram(route, model),
            |h| h.record(elapsed.as_secs_f64()),
        );
        return;
    }
    request_counter(route, model, status).increment(1);
    request_histogram(route, model).record(elapsed.as_secs_f64());
}

fn request_counter(route: &'static str, model: &str, status: u16) -> Counter {
    let labels = [
        ("route", route.to_string()),
        ("model", model.to_string()),
        ("status", status.to_string()),
    ];
    counter!("weir_requests_total", &labels)
}

fn request_histogram(route: &'static str, model: &str) -> Histogram {
    histogram!(
        "weir_request_duration_seconds",
        "route" => route,
        "model" => model.to_string()
    )
}

/// Time from request start to the first streamed event sent to the client.
pub fn time_to_first_token(model: &str, elapsed: Duration) {
    histogram!("weir_time_to_first_token_seconds", "model" => model.to_string())
        .record(elapsed.as_secs_f64());
}

/// One attempt at one upstream target; `outcome` is `ok` or a failure reason.
pub fn upstream_attempt(provider: &str, model: &str, outcome: &'static str, elapsed: Duration) {
    if outcome == "ok" {
        UPSTREAM_OK.with(
            provider,
            model,
            0,
            || {
                (
                    upstream_counter(provider, model, outcome),
                    upstream_histogram(provider, model),
                )
            },
            |(c, h)| {
                c.increment(1);
                h.record(elapsed.as_secs_f64());
            },
        );
        return;
    }
    upstream_counter(provider, model, outcome).increment(1);
    counter!(
        "weir_upstream_errors_total",
        "provider" => provider.to_string(),
        "reason" => outcome
    )
    .increment(1);
    upstream_histogram(provider, model).record(elapsed.as_secs_f64());
}

fn upstream_counter(provider: &str, model: &str, outcome: &'static str) -> Counter {
    counter!(
        "weir_upstream_requests_total",
        "provider" => provider.to_string(),
        "model" => model.to_string(),
        "outcome" => outcome
    )
}

fn upstream_histogram(provider: &str, model: &str) -> Histogram {
    histogram!(
        "weir_upstream_duration_seconds",
        "provider" => provider.to_string(),
        "model" => model.to_string()
    )
}

/// A request moved on to its next target.
pub fn failover(model: &str) {
    counter!("weir_failovers_total", "model" => model.to_string()).increment(1);
}

/// A stream ended early: upstream fault or client gone.
pub fn stream_aborted(model: &str, reason: &'static str) {
    counter!(
        "weir_streams_aborted_total",
        "model" => model.to_string(),
        "reason" => reason
    )
    .increment(1);
}

/// Tokens a request used, by key and model.
pub fn tokens(key: &str, model: &str, input: u64, output: u64) {
    for (i, (direction, n)) in [("input", input), ("output", output)]
        .into_iter()
        .enumerate()
    {
        TOKENS.with(
            key,
            model,
            i as u32,
            || {
                counter!(
                    "weir_tokens_total",
                    "key" => key.to_string(),
                    "model" => model.to_string(),
                    "direction" => direction
                )
            },
            |c| c.increment(n),
        );
    }
}

/// Cost of a request in micro-USD, by key and model.
pub fn cost(key: &str, model: &str, micro_usd: u64) {
    COST.with(
        key,
        model,
        0,
        || counter!("weir_cost_micro_usd_total", "key" => key.to_string(), "model" => model.to_string()),
        |c| c.increment(micro_usd),
    );
}

/// Requests in flight on the client listener.
pub fn in_flight(delta: f64) {
    gauge!("weir_requests_in_flight").increment(delta);
}

/// A target's circuit breaker opened.
pub fn circuit_opened(target: &str) {
    counter!("weir_circuit_opened_total", "target" => target.to_string()).increment(1);
}
