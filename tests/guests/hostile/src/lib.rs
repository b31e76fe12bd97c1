//! A guardrail that misbehaves when the text it sees asks it to, so the
//! gateway's handling of broken policies can be tested through the binary.
//! Behaves (allows, passes) on anything else, including the load-time smoke
//! call. Triggers, in a prompt or a response chunk:
//!
//! - `HOSTILE:loop`  — spin forever (CPU deadline)
//! - `HOSTILE:oom`   — allocate until the memory cap
//! - `HOSTILE:trap`  — hit `unreachable`
//! - `HOSTILE:huge`  — answer with 2 MiB of text (over the 1 MiB verdict limit)
//! - `HOSTILE:error` — return a policy error
//! - `HOSTILE:print` — write to stdout and stderr, then allow
//! - config `{ trap_always = true }` — trap in every `on-request`, the
//!   load-time smoke call included
//! - `HOSTILE:count` — rewrite the prompt to `count=N`, N this instance's
//!   `on-request` calls so far (shows whether instances are reused)
//! - request metadata `hostile = "trap-guard"` — trap in the
//!   `response-guard` constructor
//! - config `{ declare_stateless = true }` — declare itself stateless
//!   (`guardrail-hooks.stateless`), though `HOSTILE:count` shows it is not

wit_bindgen::generate!({
    path: "../../../wit",
    world: "guardrail-policy-with-hooks",
});

use exports::weir::policy::guardrail::{ChunkVerdict, Guest, GuestResponseGuard, RequestVerdict};
use exports::weir::policy::guardrail_hooks::{self, Hooks};
use weir::policy::types::{ChatRequest, Message, RequestInfo};

struct Hostile;

static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

enum Act {
    Fine,
    Huge,
    Error,
}

fn act(text: &str) -> Act {
    if text.contains("HOSTILE:loop") {
        let mut x: u64 = 1;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    if text.contains("HOSTILE:oom") {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
    if text.contains("HOSTILE:trap") {
        panic!("the hostile guardrail traps");
    }
    if text.contains("HOSTILE:print") {
        println!("hostile guardrail says hello on stdout");
        eprintln!("hostile guardrail says hello on stderr");
    }
    if text.contains("HOSTILE:huge") {
        return Act::Huge;
    }
    if text.contains("HOSTILE:error") {
        return Act::Error;
    }
    Act::Fine
}

fn huge() -> String {
    "x".repeat(2 << 20)
}

impl Guest for Hostile {
    type ResponseGuard = Guard;

    fn on_request(_info: RequestInfo, req: ChatRequest) -> Result<RequestVerdict, String> {
        if weir::policy::host::config().contains("trap_always") {
            panic!("configured to trap");
        }
        let text: String = req.messages.iter().map(|m| m.content.as_str()).collect();
        let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if text.contains("HOSTILE:count") {
            return Ok(RequestVerdict::Rewrite(vec![Message {
                content: format!("count={calls}"),
                ..req.messages[0].clone()
            }]));
        }
        match act(&text) {
            Act::Fine => Ok(RequestVerdict::Allow),
            Act::Error => Err("the hostile guardrail refuses to work".into()),
            Act::Huge => Ok(RequestVerdict::Rewrite(vec![Message {
                content: huge(),
                ..req.messages[0].clone()
            }])),
        }
    }
}

impl guardrail_hooks::Guest for Hostile {
    fn needs() -> Hooks {
        Hooks::all()
    }

    fn stateless() -> bool {
        weir::policy::host::config().contains("declare_stateless")
    }
}

struct Guard;

impl GuestResponseGuard for Guard {
    fn new(info: RequestInfo) -> Self {
        if info
            .metadata
            .iter()
            .any(|(k, v)| k == "hostile" && v == "trap-guard")
        {
            panic!("the hostile guardrail traps in its response guard");
        }
        Guard
    }

    fn on_chunk(&self, _index: u32, text: String) -> Result<ChunkVerdict, String> {
        match act(&text) {
            Act::Fine => Ok(ChunkVerdict::Pass),
            Act::Error => Err("the hostile guardrail refuses to work".into()),
            Act::Huge => Ok(ChunkVerdict::Replace(huge())),
        }
    }

    fn on_end(&self, _index: u32, _held: String, _full: String) -> Result<ChunkVerdict, String> {
        Ok(ChunkVerdict::Pass)
    }
}

export!(Hostile);
