//! The policy's key-value store: private to the policy, shared by all its
//! instances and, with a shared state backend, by every gateway process.
//!
//! One hook call may make at most 256 store operations; keys are at most 512
//! bytes, values at most 64 KiB. On `wasm32` these call the gateway; in
//! native tests they use an in-memory map (see [`testing`](crate::testing)).

#[cfg(target_arch = "wasm32")]
use crate::bindings::guardrail::weir::policy::kv as imp;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::kv as imp;

/// The value of `key`, if it exists and has not expired.
pub fn get(key: &str) -> Option<Vec<u8>> {
    imp::get(key)
}

/// Set `key` to `value`; with `ttl_ms` it expires after that many
/// milliseconds.
pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) {
    imp::set(key, value, ttl_ms);
}

/// Remove `key` (nothing happens if it is absent).
pub fn delete(key: &str) {
    imp::delete(key);
}

/// Atomically add `delta` to the counter `key`, creating it at 0, and return
/// the new value. `ttl_ms` applies when the counter is created, which makes
/// fixed-window counters one call: `increment("rpm:team-a", 1, Some(60_000))`.
pub fn increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
    imp::increment(key, delta, ttl_ms)
}
