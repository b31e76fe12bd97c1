//! A guardrail built with the Rust SDK (`weir-policy`) that writes to
//! stdout and stderr, or panics, when the last message asks it to. With the
//! SDK's in-component stdio such a component imports no WASI at all; the
//! tests check that its output and its panic messages still reach the
//! gateway's log, with the request's id.
//!
//! - `SDK:print` — a line on stdout, one on stderr written in pieces,
//!   then allow;
//! - `SDK:panic` — panic (the request gets the policy's `on_error`);
//! - anything else — allow.

use weir_policy::prelude::*;

#[derive(Default)]
pub struct SdkStdio;

impl Guardrail for SdkStdio {
    fn on_request(_info: RequestInfo, req: ChatRequest) -> Result<RequestVerdict> {
        let last = req.messages.last().map_or("", |m| m.content.as_str());
        if last.contains("SDK:print") {
            println!("sdk guardrail says hello on stdout");
            // Two writes (stderr is unbuffered), one line logged.
            eprint!("sdk guardrail says hello");
            eprintln!(" on stderr");
        } else if last.contains("SDK:panic") {
            panic!("sdk guardrail panics on purpose");
        }
        Ok(RequestVerdict::Allow)
    }
}

weir_policy::export_guardrail!(SdkStdio);
