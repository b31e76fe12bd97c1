//! Black-box tests: the real `weir` binary, real sockets, mock upstreams
//! that speak the providers' wire formats. One test binary, a module per
//! topic (faster to build than one binary per file).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod accounting;
mod chat;
mod cli;
mod connections;
mod errors;
mod failover;
mod hotswap;
mod languages;
mod lifecycle;
mod policies;
mod providers;
mod routing;
mod sdk;
mod support;
