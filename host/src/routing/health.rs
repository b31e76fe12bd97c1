//! Live health of each upstream target: a circuit breaker and the figures
//! routers see (EWMA latency and time to first token, error rate, in-flight
//! count).
//!
//! The breaker opens after `failures` consecutive failures, or when the
//! error rate over the last 10 seconds reaches `error_rate` with at least
//! `min_requests` attempts; while open the target is skipped; after
//! `cooldown_ms` one request is let through as a half-open probe, whose
//! outcome closes or re-opens it. A 429 with `retry-after` puts the target
//! in cooldown for that long without counting against its circuit (without
//! one, the request just fails over). Health is kept per `provider/model` label and survives config
//! reloads. The lock is held for a few arithmetic operations per attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::config::CircuitConfig;

/// Seconds in the error-rate window.
const WINDOW: usize = 10;
/// EWMA weight of the newest sample.
const ALPHA: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Circuit {
    Closed,
    Open {
        until: Instant,
    },
    /// After the cooldown: one probe at a time; a probe whose outcome never
    /// came back (the request was cancelled) is replaced after a cooldown.
    HalfOpen {
        probe: Option<Instant>,
    },
}

#[derive(Debug)]
struct State {
    circuit: Circuit,
    consecutive_failures: u32,
    /// Per second: (second, successes, failures).
    window: [(u64, u32, u32); WINDOW],
    latency_ewma_us: f64,
    ttft_ewma_us: f64,
    cooldown_until: Option<Instant>,
}

/// What an attempt at a target ended with, for its health.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Answered (or refused the caller: the target itself is fine).
    Ok { latency: Duration, streaming: bool },
    /// Throttled: cool down for this long; not a circuit failure.
    Throttled(Duration),
    /// Failed (connect, timeout, 5xx, malformed…).
    Failed,
}

/// The figures a router sees.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub healthy: bool,
    pub latency_ewma_us: u64,
    pub ttft_ewma_us: u64,
    pub error_rate_permille: u32,
    pub in_flight: u32,
}

/// One target's health.
#[derive(Debug)]
pub struct TargetHealth {
    pub label: String,
    start: Instant,
    state: Mutex<State>,
    in_flight: AtomicU32,
}

impl TargetHealth {
    fn new(label: &str) -> Self {
        TargetHealth {
            label: label.to_string(),
            start: Instant::now(),
            state: Mutex::new(State {
                circuit: Circuit::Closed,
                consecutive_failures: 0,
                window: [(0, 0, 0); WINDOW],
                latency_ewma_us: 0.0,
                ttft_ewma_us: 0.0,
                cooldown_until: None,
            }),
            in_flight: AtomicU32::new(0),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.duration_since(self.start).as_secs()
    }

    /// May a request try this target now? Ask right before attempting: a
    /// half-open circuit hands out its one probe slot here.
    pub fn admit(&self, now: Instant, circuit: &CircuitConfig) -> bool {
        let mut s = self.state.lock();
        if s.cooldown_until.is_some_and(|t| t > now) {
            return false;
        }
        let stale =
            |t: Instant| now.duration_since(t) >= Duration::from_millis(circuit.cooldown_ms);
        match s.circuit {
            Circuit::Closed => true,
            Circuit::Open { until } if now < until => false,
            Circuit::HalfOpen { probe: Some(t) } if !stale(t) => false,
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => {
                s.circuit = Circuit::HalfOpen { probe: Some(now) };
                true
            }
        }
    }

    /// Record an attempt's outcome; returns true when this opened the circuit.
    pub fn record(&self, outcome: Outcome, circuit: &CircuitConfig, now: Instant) -> bool {
        let sec = self.second(now);
        let mut s = self.state.lock();
        let slot = &mut s.window[(sec % WINDOW as u64) as usize];
        if slot.0 != sec {
            *slot = (sec, 0, 0);
        }
        match outcome {
            Outcome::Ok { latency, streaming } => {
                slot.1 += 1;
                s.consecutive_failures = 0;
                s.circuit = Circuit::Closed;
                let us = latency.as_micros() as f64;
                let ewma = if streaming {
                    &mut s.ttft_ewma_us
                } else {
                    &mut s.latency_ewma_us
                };
                *ewma = if *ewma == 0.0 {
                    us
                } else {
                    ALPHA * us + (1.0 - ALPHA) * *ewma
                };
                false
            }
            Outcome::Throttled(wait) => {
                s.cooldown_until = Some(now + wait);
                if let Circuit::HalfOpen { .. } = s.circuit {
                    s.circuit = Circuit::HalfOpen { probe: None };
                }
                false
            }
            Outcome::Failed => {
                slot.2 += 1;
                s.consecutive_failures += 1;
                let (ok, failed) = Self::window_counts(&s, sec);
                let total = ok + failed;
                let rate_trips = total >= circuit.min_requests
                    && f64::from(failed) / f64::from(total.max(1)) >= circuit.error_rate;
                let open = match s.circuit {
                    Circuit::HalfOpen { .. } => true,
                    Circuit::Closed => s.consecutive_failures >= circuit.failures || rate_trips,
                    Circuit::Open { .. } => false,
                };
                if open {
                    s.circuit = Circuit::Open {
                        until: now + Duration::from_millis(circuit.cooldown_ms),
                    };
                }
                open
            }
        }
    }

    fn window_counts(s: &State, sec: u64) -> (u32, u32) {
        s.window
            .iter()
            .filter(|(t, ..)| *t + WINDOW as u64 > sec)
            .fold((0, 0), |(ok, bad), (_, o, b)| (ok + o, bad + b))
    }

    /// Live figures for routers.
    pub fn figures(&self, now: Instant) -> Figures {
        let sec = self.second(now);
        let s = self.state.lock();
        let (ok, failed) = Self::window_counts(&s, sec);
        let healthy = match s.circuit {
            Circuit::Closed => true,
            Circuit::Open { until } => now >= until,
            Circuit::HalfOpen { .. } => true,
        } && s.cooldown_until.is_none_or(|t| t <= now);
        Figures {
            healthy,
            latency_ewma_us: s.latency_ewma_us as u64,
            ttft_ewma_us: s.ttft_ewma_us as u64,
            error_rate_permille: (failed * 1000).checked_div(ok + failed).unwrap_or(0),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }

    /// Is the circuit open right now?
    pub fn is_open(&self, now: Instant) -> bool {
        matches!(self.state.lock().circuit, Circuit::Open { until } if now < until)
    }

    /// Count a request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight at a target.
#[derive(Debug)]
pub struct InFlight(Arc<TargetHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Health of every target by label; entries live as long as the process.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    targets: Mutex<FxHashMap<String, Arc<TargetHealth>>>,
}

impl HealthRegistry {
    /// The health of `label`, created on first use.
    pub fn get(&self, label: &str) -> Arc<TargetHealth> {
        let mut map = self.targets.lock();
        map.entry(label.to_string())
            .or_insert_with(|| Arc::new(TargetHealth::new(label)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CircuitConfig {
        CircuitConfig {
            failures: 3,
            error_rate: 0.5,
            min_requests: 10,
            cooldown_ms: 1000,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_then_probes_and_recovers() {
        let h = TargetHealth::new("p/m");
        let t0 = Instant::now();
        assert!(!h.record(Outcome::Failed, &cfg(), t0));
        assert!(!h.record(Outcome::Failed, &cfg(), t0));
        assert!(
            h.record(Outcome::Failed, &cfg(), t0),
            "the third failure opens it"
        );
        assert!(
            !h.admit(t0 + Duration::from_millis(500), &cfg()),
            "open: skipped"
        );
        let later = t0 + Duration::from_millis(1001);
        assert!(h.admit(later, &cfg()), "after the cooldown: one probe");
        assert!(!h.admit(later, &cfg()), "only one probe at a time");
        assert!(
            h.record(Outcome::Failed, &cfg(), later),
            "a failed probe re-opens it"
        );
        let much_later = later + Duration::from_millis(1001);
        assert!(h.admit(much_later, &cfg()));
        h.record(
            Outcome::Ok {
                latency: Duration::from_millis(5),
                streaming: false,
            },
            &cfg(),
            much_later,
        );
        assert!(
            h.admit(much_later, &cfg()) && h.admit(much_later, &cfg()),
            "closed again"
        );
    }

    #[test]
    fn opens_on_error_rate_and_tracks_figures() {
        let h = TargetHealth::new("p/m");
        let t0 = Instant::now();
        let ok = Outcome::Ok {
            latency: Duration::from_millis(10),
            streaming: false,
        };
        let mut opened = false;
        for i in 0..12 {
            let outcome = if i % 2 == 0 { ok } else { Outcome::Failed };
            opened |= h.record(outcome, &cfg(), t0);
        }
        assert!(opened, "50% errors over 10+ requests opens the circuit");
        let f = h.figures(t0);
        assert!(!f.healthy);
        assert_eq!(f.error_rate_permille, 500);
        assert_eq!(f.latency_ewma_us, 10_000);
    }

    #[test]
    fn throttling_cools_down_without_opening() {
        let h = TargetHealth::new("p/m");
        let t0 = Instant::now();
        h.record(Outcome::Throttled(Duration::from_secs(2)), &cfg(), t0);
        assert!(!h.admit(t0 + Duration::from_secs(1), &cfg()));
        assert!(h.admit(t0 + Duration::from_secs(3), &cfg()));
        assert!(!h.is_open(t0));
    }
}
