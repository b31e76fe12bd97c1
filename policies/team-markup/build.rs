//! Link settings for the WebAssembly component (nothing happens natively).
//!
//! The gateway instantiates a policy per request, so a `memory.grow` during
//! a call is paid on every request — about as much as the rest of the call.
//! Rust's defaults (a 1 MiB stack, initial memory just covering stack and
//! data) leave a few KiB of heap, less than one request needs. A 256 KiB
//! stack and 2 MiB of initial memory leave ~1.7 MiB of heap that is never
//! grown; pages that are not touched cost nothing.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo::rustc-link-arg=-zstack-size=262144");
        println!("cargo::rustc-link-arg=--initial-memory=2097152");
    }
}
