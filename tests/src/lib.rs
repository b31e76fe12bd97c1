//! Test and benchmark helpers for weir.
//!
//! - [`upstream`]: a scriptable mock provider that speaks OpenAI's,
//!   Anthropic's or Gemini's wire format exactly, faults included, and
//!   records what reached it.
//! - [`gateway`]: starts the real `weir` binary on a config, on free ports.
//! - [`client`]: a small HTTP/SSE client over real sockets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types
)]

pub mod client;
pub mod gateway;
pub mod redis;
pub mod upstream;
mod upstream_anthropic;
mod upstream_gemini;
