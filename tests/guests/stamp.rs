// Shared source of the `stamp-v1` and `stamp-v2` test guardrails, included
// by each with its own `VERSION`. A request's user messages get a `[vN] `
// prefix and every response delta a `<vN>` prefix, so a test can tell which
// version handled a request and whether one response ever mixed versions.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "guardrail-policy",
});

use exports::weir::policy::guardrail::{ChunkVerdict, Guest, GuestResponseGuard, RequestVerdict};
use weir::policy::types::{ChatRequest, RequestInfo, Role};

struct Stamp;

impl Guest for Stamp {
    type ResponseGuard = Guard;

    fn on_request(_info: RequestInfo, req: ChatRequest) -> Result<RequestVerdict, String> {
        let mut messages = req.messages;
        for m in &mut messages {
            if m.role == Role::User {
                m.content = format!("[{VERSION}] {}", m.content);
            }
        }
        Ok(RequestVerdict::Rewrite(messages))
    }
}

struct Guard;

impl GuestResponseGuard for Guard {
    fn new(_info: RequestInfo) -> Self {
        Guard
    }

    fn on_chunk(&self, _index: u32, text: String) -> Result<ChunkVerdict, String> {
        Ok(ChunkVerdict::Replace(format!("<{VERSION}>{text}")))
    }

    fn on_end(&self, _index: u32, _held: String, _full: String) -> Result<ChunkVerdict, String> {
        Ok(ChunkVerdict::Pass)
    }
}

export!(Stamp);
