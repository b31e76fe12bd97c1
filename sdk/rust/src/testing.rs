//! Run a policy natively, in `cargo test`: stand-ins for the host and a
//! simulation of how the gateway drives a response guard.
//!
//! Only compiled off `wasm32`. The host stand-ins are per thread (each test
//! runs on its own thread, so tests don't see each other's config or store):
//! [`set_config`] sets what [`config`](crate::config) returns (default `{}`),
//! [`set_now_ms`] pins the clock, [`take_logs`] returns what was logged, and
//! [`kv`](crate::kv) is an in-memory map that honours TTLs against that clock.
//!
//! [`ResponseSim`] feeds deltas to a [`Guardrail`] exactly as the gateway
//! does — held text comes back in front of the next delta, `partial` splits,
//! `on_end` gets what is still held and the whole text — and records what
//! would have reached the client.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use crate::{
    ChatRequest, ChunkVerdict, Guardrail, Level, Message, Rejection, RequestInfo, Result, Role,
};

#[derive(Default)]
struct Host {
    config: Option<String>,
    now_ms: Option<u64>,
    logs: Vec<(Level, String)>,
    kv: HashMap<String, (Vec<u8>, Option<u64>)>,
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

/// Make [`config`](crate::config) return `json` on this thread.
pub fn set_config(json: impl Into<String>) {
    HOST.with_borrow_mut(|host| host.config = Some(json.into()));
}

/// Pin [`now_ms`](crate::now_ms) on this thread (by default it is the
/// system clock).
pub fn set_now_ms(now_ms: u64) {
    HOST.with_borrow_mut(|host| host.now_ms = Some(now_ms));
}

/// Everything logged on this thread since the last call.
pub fn take_logs() -> Vec<(Level, String)> {
    HOST.with_borrow_mut(|host| std::mem::take(&mut host.logs))
}

/// Forget this thread's config, clock, logs and store.
pub fn reset() {
    HOST.with_borrow_mut(|host| *host = Host::default());
}

/// A request's info: request id `"req-test"`, no key, model `"test-model"`,
/// streaming, no metadata.
pub fn request_info() -> RequestInfo {
    RequestInfo {
        request_id: "req-test".to_owned(),
        key_name: None,
        model: "test-model".to_owned(),
        streaming: true,
        metadata: Vec::new(),
    }
}

/// A request with these messages, no tools and no `max_tokens`.
pub fn chat(messages: Vec<Message>) -> ChatRequest {
    ChatRequest {
        messages,
        tools: Vec::new(),
        max_tokens: None,
    }
}

/// A request with one user message.
pub fn user_request(content: &str) -> ChatRequest {
    chat(vec![Message::new(Role::User, content)])
}

pub(crate) mod host {
    use super::HOST;
    use crate::Level;

    pub(crate) fn config() -> String {
        HOST.with_borrow(|host| host.config.clone())
            .unwrap_or_else(|| "{}".to_owned())
    }

    pub(crate) fn now_ms() -> u64 {
        HOST.with_borrow(|host| host.now_ms).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| {
                    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
                })
        })
    }

    pub(crate) fn log(level: Level, message: &str) {
        HOST.with_borrow_mut(|host| host.logs.push((level, message.to_owned())));
    }
}

pub(crate) mod kv {
    use super::HOST;

    fn live(key: &str) -> Option<Vec<u8>> {
        let now = super::host::now_ms();
        HOST.with_borrow_mut(|host| match host.kv.get(key) {
            Some((_, Some(expires))) if *expires <= now => {
                host.kv.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        })
    }

    fn expiry(ttl_ms: Option<u64>) -> Option<u64> {
        ttl_ms.map(|ttl| super::host::now_ms().saturating_add(ttl))
    }

    pub(crate) fn get(key: &str) -> Option<Vec<u8>> {
        live(key)
    }

    pub(crate) fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) {
        let entry = (value.to_vec(), expiry(ttl_ms));
        HOST.with_borrow_mut(|host| host.kv.insert(key.to_owned(), entry));
    }

    pub(crate) fn delete(key: &str) {
        HOST.with_borrow_mut(|host| host.kv.remove(key));
    }

    pub(crate) fn increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
        let current = live(key);
        let (value, expires) = match current {
            Some(bytes) => {
                let value = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .unwrap_or(0);
                let expires = HOST.with_borrow(|host| host.kv.get(key).and_then(|(_, e)| *e));
                (value, expires)
            }
            None => (0, expiry(ttl_ms)),
        };
        let value = value.saturating_add(delta);
        HOST.with_borrow_mut(|host| {
            host.kv
                .insert(key.to_owned(), (value.to_string().into_bytes(), expires))
        });
        value
    }
}

/// What [`ResponseSim`] recorded for one choice.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChoiceSim {
    /// What reached the client so far.
    pub released: String,
    /// What the guard holds now.
    pub held: String,
    /// Every delta offered, concatenated (what `on_end` gets as `full`).
    pub full: String,
    /// The most bytes the guard held at once.
    pub max_held: usize,
    /// `on_end` was called.
    pub ended: bool,
}

/// One response driven through a [`Guardrail`] the way the gateway does it.
///
/// ```
/// use weir_policy::prelude::*;
/// use weir_policy::testing::{ResponseSim, request_info};
///
/// #[derive(Default)]
/// struct Upper;
/// impl Guardrail for Upper {
///     fn on_chunk(&mut self, _index: u32, text: String) -> Result<ChunkVerdict> {
///         Ok(ChunkVerdict::Replace(text.to_uppercase()))
///     }
/// }
///
/// let mut sim = ResponseSim::<Upper>::new(request_info());
/// sim.chunk(0, "hello, ").unwrap();
/// sim.chunk(0, "world").unwrap();
/// sim.end(0).unwrap();
/// assert_eq!(sim.released(0), "HELLO, WORLD");
/// ```
pub struct ResponseSim<T> {
    guard: T,
    choices: BTreeMap<u32, ChoiceSim>,
    blocked: Option<Rejection>,
}

impl<T: Guardrail> ResponseSim<T> {
    /// Start a response: calls [`Guardrail::new_response`].
    pub fn new(info: RequestInfo) -> Self {
        Self {
            guard: T::new_response(info),
            choices: BTreeMap::new(),
            blocked: None,
        }
    }

    /// Offer `delta` for choice `index` (after what is held). Once the
    /// response is blocked, deltas are dropped and the verdict is the block.
    pub fn chunk(&mut self, index: u32, delta: &str) -> Result<ChunkVerdict> {
        if let Some(rejection) = &self.blocked {
            return Ok(ChunkVerdict::Block(rejection.clone()));
        }
        let choice = self.choices.entry(index).or_default();
        choice.full.push_str(delta);
        let text = std::mem::take(&mut choice.held) + delta;
        let verdict = self.guard.on_chunk(index, text.clone())?;
        let choice = self.choices.entry(index).or_default();
        match &verdict {
            ChunkVerdict::Pass => choice.released.push_str(&text),
            ChunkVerdict::Replace(replacement) => choice.released.push_str(replacement),
            ChunkVerdict::Hold => choice.held = text,
            ChunkVerdict::Partial(partial) => {
                choice.released.push_str(&partial.release);
                choice.held.clone_from(&partial.hold);
            }
            ChunkVerdict::Block(rejection) => {
                choice.held.clear();
                self.blocked = Some(rejection.clone());
            }
        }
        choice.max_held = choice.max_held.max(choice.held.len());
        Ok(verdict)
    }

    /// End choice `index`: calls [`Guardrail::on_end`] with what is held and
    /// the whole text, and releases per its verdict.
    pub fn end(&mut self, index: u32) -> Result<ChunkVerdict> {
        if let Some(rejection) = &self.blocked {
            return Ok(ChunkVerdict::Block(rejection.clone()));
        }
        let choice = self.choices.entry(index).or_default();
        let held = std::mem::take(&mut choice.held);
        let full = choice.full.clone();
        let verdict = self.guard.on_end(index, held.clone(), full)?;
        let choice = self.choices.entry(index).or_default();
        choice.ended = true;
        match &verdict {
            ChunkVerdict::Pass | ChunkVerdict::Hold => choice.released.push_str(&held),
            ChunkVerdict::Replace(replacement) => choice.released.push_str(replacement),
            ChunkVerdict::Partial(partial) => {
                choice.released.push_str(&partial.release);
                choice.released.push_str(&partial.hold);
            }
            ChunkVerdict::Block(rejection) => self.blocked = Some(rejection.clone()),
        }
        Ok(verdict)
    }

    /// What reached the client for choice `index` so far.
    pub fn released(&self, index: u32) -> &str {
        self.choices
            .get(&index)
            .map_or("", |choice| choice.released.as_str())
    }

    /// Everything recorded for choice `index`.
    pub fn choice(&self, index: u32) -> Option<&ChoiceSim> {
        self.choices.get(&index)
    }

    /// The rejection, if the guard blocked the response.
    pub fn blocked(&self) -> Option<&Rejection> {
        self.blocked.as_ref()
    }

    /// The guard's state.
    pub fn guard(&self) -> &T {
        &self.guard
    }
}

/// What one simulated choice came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What reached the client.
    pub released: String,
    /// The rejection, if the guard blocked.
    pub blocked: Option<Rejection>,
    /// The most bytes the guard held at once.
    pub max_held: usize,
}

/// Stream `deltas` as choice 0 of one response through `T`, end it, and
/// say what the client would have seen.
pub fn stream<T: Guardrail>(deltas: &[&str]) -> Result<Outcome> {
    let mut sim = ResponseSim::<T>::new(request_info());
    for delta in deltas {
        sim.chunk(0, delta)?;
    }
    sim.end(0)?;
    Ok(Outcome {
        released: sim.released(0).to_owned(),
        blocked: sim.blocked().cloned(),
        max_held: sim.choice(0).map_or(0, |choice| choice.max_held),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkVerdict, Guardrail};

    /// Holds everything until a newline, then releases it uppercased.
    #[derive(Default)]
    struct Lines;

    impl Guardrail for Lines {
        fn on_chunk(&mut self, _index: u32, text: String) -> Result<ChunkVerdict> {
            Ok(match text.rfind('\n') {
                None => ChunkVerdict::Hold,
                Some(at) if at + 1 == text.len() => ChunkVerdict::Replace(text.to_uppercase()),
                Some(at) => ChunkVerdict::partial(text[..=at].to_uppercase(), &text[at + 1..]),
            })
        }

        fn on_end(&mut self, _index: u32, held: String, full: String) -> Result<ChunkVerdict> {
            if full.contains("stop") {
                return Ok(ChunkVerdict::block("stopped"));
            }
            Ok(ChunkVerdict::Replace(held.to_uppercase()))
        }
    }

    #[test]
    fn response_sim_follows_the_gateway() {
        let outcome = stream::<Lines>(&["ab", "c\nd", "e"]).unwrap();
        assert_eq!(outcome.released, "ABC\nDE");
        assert_eq!(outcome.max_held, 2);
        let outcome = stream::<Lines>(&["x\n", "please stop"]).unwrap();
        assert_eq!(outcome.released, "X\n");
        assert_eq!(outcome.blocked, Some(Rejection::new("stopped")));
    }

    #[test]
    fn host_stand_ins() {
        reset();
        assert_eq!(crate::config_json(), "{}");
        set_config(r#"{"limit": 3}"#);
        #[derive(serde::Deserialize)]
        struct Config {
            limit: u32,
        }
        assert_eq!(crate::config::<Config>().map(|c| c.limit), Ok(3));
        assert!(crate::config::<Vec<u8>>().is_err_and(|e| e.starts_with("invalid config: ")));

        set_now_ms(1_000);
        assert_eq!(crate::now_ms(), 1_000);
        crate::log(Level::Warn, "careful");
        assert_eq!(take_logs(), [(Level::Warn, "careful".to_owned())]);
        assert!(take_logs().is_empty());
    }

    #[test]
    fn kv_stand_in_honours_ttls() {
        reset();
        set_now_ms(0);
        assert_eq!(crate::kv::increment("n", 2, Some(100)), 2);
        assert_eq!(crate::kv::increment("n", 3, Some(999)), 5);
        crate::kv::set("k", b"v", None);
        assert_eq!(crate::kv::get("k").as_deref(), Some(&b"v"[..]));
        set_now_ms(100);
        assert_eq!(crate::kv::get("n"), None, "expired with the first TTL");
        assert_eq!(crate::kv::increment("n", 1, None), 1);
        crate::kv::delete("k");
        assert_eq!(crate::kv::get("k"), None);
    }
}
