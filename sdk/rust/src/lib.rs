//! Write policies for the weir AI gateway in Rust.
//!
//! A policy is a WebAssembly component exporting one world of the WIT package
//! `weir:policy@0.1.0` (`wit/policy.wit`): a **guardrail** that allows,
//! denies or rewrites requests and passes, changes, holds or blocks streamed
//! response text; a **router** that orders a model's targets; or a
//! **pricing** policy that prices token usage. This crate wraps the
//! `wit-bindgen` bindings so a policy is a type, a trait impl with the hooks it
//! needs, and one export line:
//!
//! | world | trait | export |
//! |---|---|---|
//! | `guardrail-policy` | [`Guardrail`] | [`export_guardrail!`] |
//! | `router-policy` | [`Router`] | [`export_router!`] |
//! | `pricing-policy` | [`Pricing`] | [`export_pricing!`] |
//!
//! Every policy also gets [`config`] (its `config` table from the gateway's
//! config file, parsed with serde), [`log`], [`now_ms`] and a private
//! key-value store, [`kv`].
//!
//! # A guardrail
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "codename-guard"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! weir-policy = { path = "../../sdk/rust" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs` — refuse requests that mention a codename, and mask it in
//! responses even when it arrives split across streamed deltas:
//!
//! ```no_run
//! use serde::Deserialize;
//! use weir_policy::prelude::*;
//!
//! /// `config = { codename = "falcon", mask = "[project]" }`
//! #[derive(Deserialize)]
//! #[serde(default)]
//! struct Config {
//!     codename: String,
//!     mask: String,
//! }
//!
//! impl Default for Config {
//!     fn default() -> Self {
//!         Self { codename: "falcon".into(), mask: "[project]".into() }
//!     }
//! }
//!
//! /// One response's state: the parsed config.
//! #[derive(Default)]
//! struct CodenameGuard {
//!     config: Option<Config>,
//! }
//!
//! impl Guardrail for CodenameGuard {
//!     fn on_request(_info: RequestInfo, req: ChatRequest) -> Result<RequestVerdict> {
//!         let config: Config = weir_policy::config()?;
//!         if req.messages.iter().any(|m| m.content.contains(&config.codename)) {
//!             log(Level::Info, "codename in request");
//!             return Ok(RequestVerdict::deny("the request mentions an internal codename"));
//!         }
//!         Ok(RequestVerdict::Allow)
//!     }
//!
//!     fn on_chunk(&mut self, _index: u32, text: String) -> Result<ChunkVerdict> {
//!         if self.config.is_none() {
//!             self.config = Some(weir_policy::config()?);
//!         }
//!         let Some(config) = &self.config else { return Ok(ChunkVerdict::Pass) };
//!         let masked = text.replace(&config.codename, &config.mask);
//!         // Hold the longest tail that could still grow into the codename
//!         // ("fal" + "con"); release the rest now.
//!         let hold = (1..config.codename.len())
//!             .rev()
//!             .find(|&n| config.codename.get(..n).is_some_and(|head| masked.ends_with(head)))
//!             .unwrap_or(0);
//!         let (release, held) = masked.split_at(masked.len() - hold);
//!         Ok(match (hold, masked == text) {
//!             (0, true) => ChunkVerdict::Pass,
//!             (0, false) => ChunkVerdict::Replace(masked),
//!             _ => ChunkVerdict::partial(release, held),
//!         })
//!     }
//!
//!     // `on_end` keeps its default, `Pass`: a held "fal" at the very end is
//!     // not the codename, so it is released as is.
//! }
//!
//! weir_policy::export_guardrail!(CodenameGuard);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (weir's `./dev.sh` uses `--profile policy`: LTO, smaller and faster to load): for that
//! target a `cdylib` already is a component, ready for the gateway's
//! `[[policies]] path`. In this repository `policies/build.sh` builds every
//! policy into `target/policies/<folder>.wasm`.
//!
//! # Starting fast
//!
//! The gateway instantiates a policy for every request, so what a policy
//! does before its first useful instruction is paid per request:
//!
//! - Declare the guardrail stateless if it keeps nothing of a request once
//!   the response is over: [`Guardrail::stateless`] returning `true` lets
//!   the gateway serve up to 1000 requests of one virtual key with one
//!   instance, which skips the per-request start-up altogether (the three
//!   example guardrails do; a fresh instance costs a Rust guest about
//!   10–15 µs per request, a Python or JavaScript one far more).
//! - Say which hooks you need: a guardrail that only judges requests
//!   overrides [`Guardrail::hooks`] to return [`Hooks::REQUESTS`], and the
//!   gateway frees its instance once the request is allowed and streams the
//!   response past it (no call per streamed delta).
//! - Compile nothing you can avoid (a regex set costs tens of microseconds
//!   to build); scan with hand-written code where you can, sixteen bytes
//!   at a time with [`lanes`] (WebAssembly SIMD) to find where to look.
//! - Parse the config once per instance, not once per hook: keep it in a
//!   `thread_local!` `OnceCell` (the example policies do).
//! - Give the component room to allocate without `memory.grow`, which costs
//!   about as much as the rest of a small call. Rust's defaults (1 MiB of
//!   stack, initial memory just covering stack and data) leave a few KiB of
//!   heap; a `build.rs` that links with more initial memory fixes that
//!   (untouched pages cost nothing):
//!
//! ```no_run
//! // The body of build.rs's `fn main()`:
//! if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
//!     println!("cargo::rustc-link-arg=-zstack-size=262144");
//!     println!("cargo::rustc-link-arg=--initial-memory=2097152");
//! }
//! ```
//!
//! - Import nothing you don't use. Rust's standard library reaches
//!   `wasi:cli` and `wasi:io` (19 functions) for its print and panic
//!   machinery even in a policy that never prints, and wasmtime sets up
//!   every import on each instantiation. The SDK answers those inside the
//!   component, so a policy built with it imports only `weir:policy`:
//!   `println!` and `eprintln!` lines go to the gateway's log through
//!   [`log`] (info and warn; so does a panic's message), the environment is
//!   empty, stdin is closed. The SDK's `wasi-stdio` feature imports the
//!   real interfaces instead (the gateway's locked-down WASI).
//!
//! # Testing natively
//!
//! Off `wasm32` the host functions read stand-ins from [`testing`], and
//! [`testing::ResponseSim`] drives a guard the way the gateway does, so a
//! policy's behaviour — split deltas included — is a plain `cargo test`.
//!
//! # Rules of the sandbox
//!
//! Every request gets a fresh instance (unless the operator opts into
//! bounded reuse); each hook call has a CPU deadline and the instance a
//! memory cap. A panic traps, and a trap or an `Err` is handled per the
//! operator's `on_error` (deny or allow). Startup counts: the gateway
//! instantiates per request, so avoid heavy static initialisation (compile
//! no regexes you don't need).

#![deny(missing_docs)]

#[doc(hidden)]
pub mod bindings;
mod guardrail;
mod host;
pub mod kv;
pub mod lanes;
mod pricing;
mod router;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
#[cfg(all(
    target_arch = "wasm32",
    target_os = "wasi",
    target_env = "p2",
    not(feature = "wasi-stdio")
))]
mod wasi_stdio;

pub use bindings::guardrail::weir::policy::types::{
    ChatRequest, Message, PolicyError, Rejection, RequestInfo, Role, ToolCall, ToolDefinition,
    Usage,
};
pub use guardrail::{ChunkVerdict, Guardrail, Hooks, Partial, RequestVerdict};
pub use host::{Level, config, config_json, log, now_ms};
pub use pricing::{Phase, Pricing};
pub use router::{Candidate, Router};

/// A hook's result: the error is the WIT's `policy-error`, a message the
/// gateway logs before applying the operator's `on_error`.
pub type Result<T, E = PolicyError> = core::result::Result<T, E>;

/// Everything a policy usually needs: `use weir_policy::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Candidate, ChatRequest, ChunkVerdict, Guardrail, Hooks, Level, Message, Partial, Phase,
        Pricing, Rejection, RequestInfo, RequestVerdict, Result, Role, Router, ToolCall,
        ToolDefinition, Usage, log,
    };
}

/// Used by the export macros; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings;
    pub use crate::guardrail::{GuardrailExport, ResponseGuardExport};
    pub use crate::pricing::PricingExport;
    pub use crate::router::RouterExport;
}
