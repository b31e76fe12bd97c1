//! `allow-all`: the smallest guardrail there is, and the template to copy.
//!
//! It allows every request and passes every response chunk unchanged, which
//! is exactly what [`Guardrail`]'s default hooks do, so the whole policy is a
//! type, an empty trait impl and one export line. To write your own, copy
//! this folder to `policies/<your-name>/`, rename the package in
//! `Cargo.toml`, and override the hooks you need:
//!
//! - `on_request(info, req)` — allow, deny, or rewrite the messages;
//! - `on_chunk(&mut self, index, text)` — pass, replace, hold, release part
//!   and hold the rest, or block streamed response text;
//! - `on_end(&mut self, index, held, full)` — the last word on a choice;
//! - `new_response(info)` — build the per-response state (default:
//!   `Default::default()`);
//! - `hooks()` — which hooks the gateway calls (default: all), and
//!   `stateless()` — `true` if nothing of a request stays in statics once
//!   its response is over, so one instance may serve many requests
//!   (default: `false`, a fresh instance per request).
//!
//! Read the config with `weir_policy::config::<YourConfig>()`, log with
//! `weir_policy::log`, keep counters in `weir_policy::kv`. Test natively with
//! `weir_policy::testing` (`cargo test -p <your-name>`), then build the
//! component with `policies/build.sh`. Keep `build.rs`: it links the
//! component with room to allocate, so no request pays for `memory.grow`.

use weir_policy::Guardrail;

/// The policy. A value of it is the state of one response; this one needs
/// none, so it is a unit struct.
#[derive(Default)]
pub struct AllowAll;

/// Every hook keeps its default: allow the request, pass the text.
impl Guardrail for AllowAll {}

// The one line that turns the type into the component's
// `weir:policy/guardrail` export.
weir_policy::export_guardrail!(AllowAll);

#[cfg(test)]
mod tests {
    use weir_policy::testing::{request_info, stream, user_request};
    use weir_policy::{Guardrail, RequestVerdict};

    use super::AllowAll;

    #[test]
    fn allows_requests() {
        let verdict = AllowAll::on_request(request_info(), user_request("hello"));
        assert_eq!(verdict, Ok(RequestVerdict::Allow));
    }

    #[test]
    fn passes_responses_unchanged() {
        let outcome = stream::<AllowAll>(&["hel", "lo ", "world"]).unwrap();
        assert_eq!(outcome.released, "hello world");
        assert_eq!(outcome.blocked, None);
        assert_eq!(outcome.max_held, 0);
    }
}
