//! weir: an AI gateway. One OpenAI-compatible endpoint in front of many model
//! providers, with policies as sandboxed WebAssembly components.
//!
//! The request path lives in [`gateway`]; providers translate at the edge in
//! [`providers`]; the normalized chat model is [`chat`].

// `unsafe` is allowed in exactly two places: the code wasmtime's `bindgen!`
// generates (`policy::bindings`) and loading a precompiled component from
// weir's own cache (`policy::engine`).
#![deny(unsafe_code)]

pub mod admin;
pub mod alloc;
pub mod auth;
pub mod chat;
pub mod cli;
pub mod config;
pub mod error;
pub mod gateway;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod pricing;
pub mod providers;
pub mod routing;
pub mod server;
pub mod sse;
pub mod state;
pub mod telemetry;
pub mod tokens;
