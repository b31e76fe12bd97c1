//! `blocklist`: a guardrail that refuses or masks configured terms, in
//! requests and in streamed responses.
//!
//! | list | request | response |
//! |---|---|---|
//! | `deny`, `deny_regex` | `deny`: "request contains a blocked term" | `block`: "response contains a blocked term" |
//! | `mask`, `mask_regex` | `rewrite` with each match replaced by `replacement` | the same, as it streams |
//!
//! Keywords match case-insensitively, on word boundaries ("heck" does not
//! match "heckler"), with any whitespace run in a term matching any run in
//! the text; they use a hand-written matcher ([`keywords`]). Regexes use
//! [`regex_lite`] syntax (add `(?i)` for case-insensitivity) and are only
//! compiled when configured. Terms split across streamed deltas are still
//! caught: the tail of the text where a term may be forming is held
//! ([`filter`]). The rejection never repeats the term; the gateway log gets
//! its list and index.
//!
//! Config (every key optional):
//!
//! ```toml
//! config = { deny = ["project falcon"], mask = ["darn", "heck"], deny_regex = ['ACCT-\d{6}'], mask_regex = ['(?i)password:\s*\S+'], replacement = "***" }
//! ```
//!
//! - `deny`, `mask`: keyword lists (default empty).
//! - `deny_regex`, `mask_regex`: regex lists (default empty).
//! - `replacement` (default `"***"`): what masked text becomes.
//! - `regex_window` (default `64`): while regexes are configured, how many
//!   trailing bytes of streamed text are held for a match that may still be
//!   forming; make it at least the longest text a regex should catch.
//! - `requests`, `responses` (default `true`): `false` skips that direction.

pub mod filter;
pub mod keywords;

use std::cell::OnceCell;

use regex_lite::Regex;
use serde::Deserialize;
use weir_policy::prelude::*;

use filter::{Filter, Outcome, Step};
use keywords::Keywords;

/// The policy's `config` table, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Keywords that refuse the request / stop the response.
    pub deny: Vec<String>,
    /// Keywords replaced with `replacement`.
    pub mask: Vec<String>,
    /// Regexes that refuse the request / stop the response.
    pub deny_regex: Vec<String>,
    /// Regexes whose matches are replaced with `replacement`.
    pub mask_regex: Vec<String>,
    /// What masked text becomes.
    pub replacement: String,
    /// Trailing bytes of streamed text held while regexes are configured.
    pub regex_window: usize,
    /// Check requests.
    pub requests: bool,
    /// Check responses.
    pub responses: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            deny: Vec::new(),
            mask: Vec::new(),
            deny_regex: Vec::new(),
            mask_regex: Vec::new(),
            replacement: "***".into(),
            regex_window: 64,
            requests: true,
            responses: true,
        }
    }
}

/// The compiled config.
#[derive(Debug, Default)]
pub struct Settings {
    filter: Filter,
    requests: bool,
    responses: bool,
}

impl Settings {
    /// Compile a config: keyword matchers and regexes.
    pub fn new(config: Config) -> Result<Self> {
        let keywords = |list: &[String], key: &str| {
            Keywords::new(list).map_err(|i| format!("invalid config: {key}[{i}] is empty"))
        };
        let regexes = |list: &[String], key: &str| {
            list.iter()
                .enumerate()
                .map(|(i, pattern)| {
                    Regex::new(pattern)
                        .map_err(|err| format!("invalid config: {key}[{i}] is not a regex: {err}"))
                })
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self {
            filter: Filter {
                deny: keywords(&config.deny, "deny")?,
                mask: keywords(&config.mask, "mask")?,
                deny_regex: regexes(&config.deny_regex, "deny_regex")?,
                mask_regex: regexes(&config.mask_regex, "mask_regex")?,
                replacement: config.replacement,
                regex_window: config.regex_window,
            },
            requests: config.requests,
            responses: config.responses,
        })
    }
}

thread_local! {
    /// The settings, compiled once per instance (per test thread natively).
    /// A `Regex` is not `Clone`-cheap, so hooks borrow it.
    static SETTINGS: OnceCell<Result<Settings>> = const { OnceCell::new() };
}

fn with_settings<T>(f: impl FnOnce(&Settings) -> T) -> Result<T> {
    SETTINGS.with(|cell| {
        let settings = cell.get_or_init(|| weir_policy::config::<Config>().and_then(Settings::new));
        match settings {
            Ok(settings) => Ok(f(settings)),
            Err(err) => Err(err.clone()),
        }
    })
}

/// The verdict on a request's messages.
pub fn check_request(settings: &Settings, req: ChatRequest) -> RequestVerdict {
    if !settings.requests || settings.filter.is_empty() {
        return RequestVerdict::Allow;
    }
    let mut messages = req.messages;
    let mut masked = false;
    for message in &mut messages {
        match settings.filter.check(&message.content, false) {
            Outcome::Clean => {}
            Outcome::Denied => {
                log(Level::Info, "request denied: a deny term matched");
                return RequestVerdict::deny("request contains a blocked term");
            }
            Outcome::Masked(text) => {
                message.content = text;
                masked = true;
            }
        }
    }
    if masked {
        RequestVerdict::Rewrite(messages)
    } else {
        RequestVerdict::Allow
    }
}

fn blocked() -> ChunkVerdict {
    log(Level::Info, "response blocked: a deny term matched");
    ChunkVerdict::block("response contains a blocked term")
}

/// The verdict on streamed `text` (held tail + newest delta); `after_word`
/// says whether the text released before it ended inside a word, and is
/// updated.
pub fn check_chunk(settings: &Settings, text: String, after_word: &mut bool) -> ChunkVerdict {
    if !settings.responses || settings.filter.is_empty() {
        return ChunkVerdict::Pass;
    }
    match settings.filter.offer(&text, *after_word) {
        Step::Denied => blocked(),
        Step::Pass { ends_in_word } => {
            *after_word = ends_in_word;
            ChunkVerdict::Pass
        }
        Step::Split {
            release,
            hold,
            masked,
            ends_in_word,
        } => {
            *after_word = ends_in_word;
            match (hold.is_empty(), release.is_empty()) {
                (true, _) if !masked => ChunkVerdict::Pass,
                (true, _) => ChunkVerdict::Replace(release),
                (false, true) => ChunkVerdict::Hold,
                (false, false) => ChunkVerdict::Partial(Partial { release, hold }),
            }
        }
    }
}

/// The verdict at the end of a choice with `held` still held.
pub fn check_end(settings: &Settings, held: &str, after_word: bool) -> ChunkVerdict {
    if !settings.responses || settings.filter.is_empty() {
        return ChunkVerdict::Pass;
    }
    match settings.filter.check(held, after_word) {
        Outcome::Clean => ChunkVerdict::Pass,
        Outcome::Masked(text) => ChunkVerdict::Replace(text),
        Outcome::Denied => blocked(),
    }
}

/// The state of one response: per choice, whether the text released so far
/// ends inside a word (then the next text doesn't start on a word boundary).
/// What may be a split term is held by the gateway and offered again.
#[derive(Debug, Default)]
pub struct Blocklist {
    after_word: Vec<(u32, bool)>,
}

impl Blocklist {
    fn after_word(&mut self, index: u32) -> &mut bool {
        let at = match self.after_word.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                self.after_word.push((index, false));
                self.after_word.len() - 1
            }
        };
        &mut self.after_word[at].1
    }
}

impl Guardrail for Blocklist {
    /// Only the directions the config checks (none with empty lists).
    fn hooks() -> Hooks {
        // A bad config is reported by the hooks themselves (per on_error).
        with_settings(|settings| {
            let checks = !settings.filter.is_empty();
            let mut hooks = Hooks::empty();
            hooks.set(Hooks::REQUESTS, checks && settings.requests);
            hooks.set(Hooks::RESPONSES, checks && settings.responses);
            hooks
        })
        .unwrap_or(Hooks::all())
    }

    /// Nothing of a request outlives its response (statics hold only the
    /// parsed config), so one instance may serve many requests.
    fn stateless() -> bool {
        true
    }

    fn on_request(_info: RequestInfo, req: ChatRequest) -> Result<RequestVerdict> {
        with_settings(|settings| check_request(settings, req))
    }

    fn on_chunk(&mut self, index: u32, text: String) -> Result<ChunkVerdict> {
        let after_word = self.after_word(index);
        with_settings(|settings| check_chunk(settings, text, after_word))
    }

    fn on_end(&mut self, index: u32, held: String, _full: String) -> Result<ChunkVerdict> {
        let after_word = *self.after_word(index);
        with_settings(|settings| check_end(settings, &held, after_word))
    }
}

weir_policy::export_guardrail!(Blocklist);

#[cfg(test)]
mod tests {
    use weir_policy::testing::{self, request_info, stream, user_request};

    use super::*;

    const CONFIG: &str = r#"{
        "deny": ["project falcon"],
        "mask": ["darn", "heck"],
        "deny_regex": ["ACCT-\\d{6}"],
        "mask_regex": ["(?i)password:\\s*\\S+"]
    }"#;

    fn request(text: &str) -> RequestVerdict {
        Blocklist::on_request(request_info(), user_request(text)).unwrap()
    }

    #[test]
    fn empty_config_allows_everything() {
        assert_eq!(request("project falcon"), RequestVerdict::Allow);
        let outcome = stream::<Blocklist>(&["da", "rn"]).unwrap();
        assert_eq!(outcome.released, "darn");
        assert_eq!(outcome.max_held, 0);
    }

    #[test]
    fn hooks_follow_the_lists_and_directions() {
        let cases = [
            (CONFIG, Hooks::all()),
            (r#"{"deny": ["x"], "responses": false}"#, Hooks::REQUESTS),
            (r#"{"mask": ["x"], "requests": false}"#, Hooks::RESPONSES),
            ("{}", Hooks::empty()),
            // A bad config fails in the hooks, so they are all kept.
            (r#"{"deny": [""]}"#, Hooks::all()),
        ];
        for (config, hooks) in cases {
            // The settings are cached per thread, as per instance in the
            // gateway.
            let got = std::thread::spawn(move || {
                testing::set_config(config);
                Blocklist::hooks()
            })
            .join()
            .unwrap();
            assert_eq!(got, hooks, "{config}");
        }
    }

    #[test]
    fn requests_are_denied_or_masked() {
        testing::set_config(CONFIG);
        assert_eq!(
            request("Status of Project Falcon?"),
            RequestVerdict::deny("request contains a blocked term")
        );
        assert_eq!(
            request("close ACCT-123456"),
            RequestVerdict::deny("request contains a blocked term")
        );
        let RequestVerdict::Rewrite(messages) = request("darn, my password: hunter2 leaked") else {
            panic!("expected a rewrite");
        };
        assert_eq!(messages[0].content, "***, my *** leaked");
        assert_eq!(request("all fine"), RequestVerdict::Allow);
    }

    #[test]
    fn responses_are_masked_as_they_stream() {
        testing::set_config(r#"{"mask": ["darn", "heck"], "replacement": "[masked]"}"#);
        let outcome = stream::<Blocklist>(&["Oh da", "rn it, what the he", "ck!"]).unwrap();
        assert_eq!(outcome.released, "Oh [masked] it, what the [masked]!");
        assert_eq!(outcome.blocked, None);
        assert!(outcome.max_held <= 4, "{}", outcome.max_held);
    }

    #[test]
    fn responses_are_blocked_even_when_split() {
        testing::set_config(CONFIG);
        let outcome = stream::<Blocklist>(&["The pro", "ject fal", "con launch"]).unwrap();
        // With regexes configured the last `regex_window` bytes wait.
        assert_eq!(outcome.released, "");
        assert_eq!(
            outcome.blocked,
            Some(Rejection::new("response contains a blocked term"))
        );
        let outcome = stream::<Blocklist>(&["acct ACCT-12", "3456 closed"]).unwrap();
        assert!(outcome.blocked.is_some());
    }

    #[test]
    fn keyword_holds_are_short() {
        testing::set_config(r#"{"deny": ["project falcon"]}"#);
        let outcome = stream::<Blocklist>(&["The pro", "ject fal", "con launch"]).unwrap();
        assert_eq!(outcome.released, "The ");
        assert_eq!(
            outcome.blocked,
            Some(Rejection::new("response contains a blocked term"))
        );
    }

    #[test]
    fn verdict_shapes() {
        let settings = Settings::new(Config {
            mask: vec!["darn".into()],
            ..Config::default()
        })
        .unwrap_or_default();
        let mut after_word = false;
        let mut chunk = |text: &str| check_chunk(&settings, text.into(), &mut after_word);
        assert_eq!(chunk("hello."), ChunkVerdict::Pass);
        assert_eq!(chunk("da"), ChunkVerdict::Hold);
        assert_eq!(chunk("darn!"), ChunkVerdict::Replace("***!".into()));
        assert_eq!(chunk("ok, dar"), ChunkVerdict::partial("ok, ", "dar"));
        assert_eq!(chunk("dar"), ChunkVerdict::Hold);
        // "still" + "darn": not a word on its own.
        assert_eq!(chunk("still"), ChunkVerdict::Pass);
        assert_eq!(chunk("darn "), ChunkVerdict::Pass);
        assert_eq!(check_end(&settings, "dar", false), ChunkVerdict::Pass);
        assert_eq!(
            check_end(&settings, "darn", false),
            ChunkVerdict::Replace("***".into())
        );
        assert_eq!(check_end(&settings, "darn", true), ChunkVerdict::Pass);
    }

    #[test]
    fn bad_config_is_a_policy_error() {
        for (config, error) in [
            (r#"{"deny_regex": ["("]}"#, "deny_regex[0] is not a regex"),
            (r#"{"mask": ["ok", " "]}"#, "mask[1] is empty"),
            (r#"{"masks": []}"#, "unknown field `masks`"),
        ] {
            let config = config.to_owned();
            let err = std::thread::spawn(move || {
                testing::set_config(config);
                with_settings(|_| ())
            })
            .join()
            .unwrap_or(Ok(()))
            .unwrap_err();
            assert!(err.contains(error), "{err}");
        }
    }
}
