//! The host capabilities every policy gets: its config, a clock and the log.
//!
//! On `wasm32` these call the gateway; anywhere else (a policy's native unit
//! tests) they read the stand-ins in [`testing`](crate::testing).

use serde::de::DeserializeOwned;

use crate::Result;

#[cfg(target_arch = "wasm32")]
use crate::bindings::guardrail::weir::policy::host as imp;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::host as imp;

pub use crate::bindings::guardrail::weir::policy::host::Level;

/// This policy's `config` table from the gateway's config file, parsed into
/// `T`. An absent table is `{}`, so give `T` `#[serde(default)]` fields.
///
/// The error (`"invalid config: …"`) is meant to be returned as is: the
/// gateway then handles the call as a failed policy, per `on_error`.
/// The JSON is the same for every call of one loaded policy; parse it once
/// per instance (a `std::sync::OnceLock`) if more than one hook needs it.
pub fn config<T: DeserializeOwned>() -> Result<T> {
    serde_json::from_str(&imp::config()).map_err(|err| format!("invalid config: {err}"))
}

/// This policy's `config` table as JSON text (`{}` when there is none).
pub fn config_json() -> String {
    imp::config()
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// Write to the gateway's log, tagged with the policy's name and the request
/// id. Messages over 4 KiB are truncated; one hook call may log at most 64
/// messages.
pub fn log(level: Level, message: &str) {
    imp::log(level, message);
}
