//! Prometheus metrics for the admin listener's `/metrics`.
//!
//! Recording goes through the `metrics` facade (a few hundred nanoseconds per
//! update, lock-free for existing series); the Prometheus exporter renders
//! on scrape. All metric names live here so dashboards have one reference.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
    let labels = [
        ("route", route.to_string()),
        ("model", model.to_string()),
        ("status", status.to_string()),
    ];
    counter!("weir_requests_total", &labels).increment(1);
    histogram!(
        "weir_request_duration_seconds",
        "route" => route,
        "model" => model.to_string()
    )
    .record(elapsed.as_secs_f64());
}

/// Time from request start to the first streamed event sent to the client.
pub fn time_to_first_token(model: &str, elapsed: Duration) {
    histogram!("weir_time_to_first_token_seconds", "model" => model.to_string())
        .record(elapsed.as_secs_f64());
}

/// One attempt at one upstream target; `outcome` is `ok` or a failure reason.
pub fn upstream_attempt(provider: &str, model: &str, outcome: &'static str, elapsed: Duration) {
    counter!(
        "weir_upstream_requests_total",
        "provider" => provider.to_string(),
        "model" => model.to_string(),
        "outcome" => outcome
    )
    .increment(1);
    if outcome != "ok" {
        counter!(
            "weir_upstream_errors_total",
            "provider" => provider.to_string(),
            "reason" => outcome
        )
        .increment(1);
    }
    histogram!(
        "weir_upstream_duration_seconds",
        "provider" => provider.to_string(),
        "model" => model.to_string()
    )
    .record(elapsed.as_secs_f64());
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
    for (direction, n) in [("input", input), ("output", output)] {
        counter!(
            "weir_tokens_total",
            "key" => key.to_string(),
            "model" => model.to_string(),
            "direction" => direction
        )
        .increment(n);
    }
}

/// Cost of a request in micro-USD, by key and model.
pub fn cost(key: &str, model: &str, micro_usd: u64) {
    counter!("weir_cost_micro_usd_total", "key" => key.to_string(), "model" => model.to_string())
        .increment(micro_usd);
}

/// Requests in flight on the client listener.
pub fn in_flight(delta: f64) {
    gauge!("weir_requests_in_flight").increment(delta);
}

/// A target's circuit breaker opened.
pub fn circuit_opened(target: &str) {
    counter!("weir_circuit_opened_total", "target" => target.to_string()).increment(1);
}
