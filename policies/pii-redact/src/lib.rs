//! `pii-redact`: a guardrail that keeps personal data and secrets out of
//! prompts and responses.
//!
//! It finds emails, phone numbers, credit-card numbers (Luhn-checked), US
//! SSNs, IBANs (mod-97-checked), IPv4 addresses and secrets (OpenAI `sk-…`
//! keys, AWS `AKIA…`/`ASIA…` key ids, GitHub tokens, PEM private key blocks)
//! with hand-written scanners ([`detect`]), and either replaces each with a
//! placeholder such as `[REDACTED_EMAIL]` or refuses:
//!
//! | | `action = "redact"` (default) | `action = "deny"` |
//! |---|---|---|
//! | request | `rewrite` with every message redacted | `deny`: "request contains sensitive data: email, phone" |
//! | response | redacted as it streams, entities split across deltas included ([`stream`]) | `block`: "response contains sensitive data: …" |
//!
//! Config (every key optional):
//!
//! ```toml
//! config = { action = "redact", ipv4 = false }
//! ```
//!
//! - `action`: `"redact"` or `"deny"`.
//! - `email`, `phone`, `credit_card`, `ssn`, `iban`, `ipv4`, `secret`:
//!   `false` turns that entity off (all on by default).
//! - `requests`, `responses`: `false` skips that direction (both on).
//!
//! Unknown keys are an error, so a typo fails loudly instead of silently
//! turning nothing off.

pub mod detect;
pub mod stream;

use std::cell::OnceCell;

use serde::Deserialize;
use weir_policy::prelude::*;

use detect::{Entity, EntitySet};
use stream::ChoiceStream;

/// What to do with sensitive data.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Replace it with a placeholder.
    #[default]
    Redact,
    /// Refuse the request; stop the response.
    Deny,
}

/// The policy's `config` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Redact or refuse.
    pub action: Action,
    /// Look for emails.
    pub email: bool,
    /// Look for phone numbers.
    pub phone: bool,
    /// Look for credit-card numbers.
    pub credit_card: bool,
    /// Look for US social security numbers.
    pub ssn: bool,
    /// Look for IBANs.
    pub iban: bool,
    /// Look for IPv4 addresses.
    pub ipv4: bool,
    /// Look for API keys, tokens and private keys.
    #[serde(alias = "secrets")]
    pub secret: bool,
    /// Check requests.
    pub requests: bool,
    /// Check responses.
    pub responses: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            action: Action::Redact,
            email: true,
            phone: true,
            credit_card: true,
            ssn: true,
            iban: true,
            ipv4: true,
            secret: true,
            requests: true,
            responses: true,
        }
    }
}

impl Config {
    /// The entities switched on.
    pub fn enabled(&self) -> EntitySet {
        [
            (Entity::Email, self.email),
            (Entity::Phone, self.phone),
            (Entity::CreditCard, self.credit_card),
            (Entity::Ssn, self.ssn),
            (Entity::Iban, self.iban),
            (Entity::Ipv4, self.ipv4),
            (Entity::Secret, self.secret),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .fold(EntitySet::default(), |set, (entity, _)| set.with(entity))
    }
}

thread_local! {
    /// The config, parsed once per instance (per test thread natively).
    static CONFIG: OnceCell<Result<Config>> = const { OnceCell::new() };
}

fn config() -> Result<Config> {
    CONFIG.with(|cell| cell.get_or_init(weir_policy::config).clone())
}

/// The request's verdict under `config`.
pub fn check_request(config: &Config, req: ChatRequest) -> RequestVerdict {
    let enabled = config.enabled();
    if !config.requests || enabled.is_empty() {
        return RequestVerdict::Allow;
    }
    let mut messages = req.messages;
    let mut found = EntitySet::default();
    for message in &mut messages {
        found = found.union(redact_in_place(
            &mut message.content,
            enabled,
            config.action,
        ));
        for call in &mut message.tool_calls {
            found = found.union(redact_in_place(&mut call.arguments, enabled, config.action));
        }
    }
    if found.is_empty() {
        return RequestVerdict::Allow;
    }
    match config.action {
        Action::Deny => RequestVerdict::deny(format!(
            "request contains sensitive data: {}",
            found.names()
        )),
        Action::Redact => {
            log(
                Level::Info,
                &format!("redacted {} in the request", found.names()),
            );
            RequestVerdict::Rewrite(messages)
        }
    }
}

/// Scan `text`; in redact mode, redact it.
fn redact_in_place(text: &mut String, enabled: EntitySet, action: Action) -> EntitySet {
    match action {
        Action::Deny => detect::scan(text, enabled),
        Action::Redact => {
            let matches = detect::find(text, enabled);
            if matches.is_empty() {
                return EntitySet::default();
            }
            let (redacted, found) = detect::redact_found(text, matches);
            *text = redacted;
            found
        }
    }
}

fn blocked(found: EntitySet) -> ChunkVerdict {
    ChunkVerdict::block(format!(
        "response contains sensitive data: {}",
        found.names()
    ))
}

/// The state of one response: a scanner per choice.
#[derive(Debug, Default)]
pub struct PiiRedact {
    choices: Vec<(u32, ChoiceStream)>,
}

impl PiiRedact {
    fn choice(&mut self, index: u32) -> &mut ChoiceStream {
        let at = match self.choices.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                self.choices.push((index, ChoiceStream::default()));
                self.choices.len() - 1
            }
        };
        &mut self.choices[at].1
    }

    /// The verdict on `text` (held tail + newest delta) for choice `index`.
    pub fn chunk(&mut self, config: &Config, index: u32, text: String) -> ChunkVerdict {
        let enabled = config.enabled();
        if !config.responses || enabled.is_empty() {
            return ChunkVerdict::Pass;
        }
        let step = self.choice(index).offer(&text, enabled);
        if config.action == Action::Deny && !step.found.is_empty() {
            return blocked(step.found);
        }
        match (step.release.as_str(), step.hold.as_str()) {
            (release, "") if release == text => ChunkVerdict::Pass,
            (_, "") => ChunkVerdict::Replace(step.release),
            ("", hold) if hold == text => ChunkVerdict::Hold,
            _ => ChunkVerdict::Partial(Partial {
                release: step.release,
                hold: step.hold,
            }),
        }
    }

    /// The verdict at the end of choice `index`, with `held` still held.
    pub fn end(&mut self, config: &Config, index: u32, held: String) -> ChunkVerdict {
        let enabled = config.enabled();
        if !config.responses || enabled.is_empty() {
            return ChunkVerdict::Pass;
        }
        let (redacted, found) = self.choice(index).finish(&held, enabled);
        if config.action == Action::Deny && !found.is_empty() {
            return blocked(found);
        }
        if redacted == held {
            ChunkVerdict::Pass
        } else {
            ChunkVerdict::Replace(redacted)
        }
    }
}

impl Guardrail for PiiRedact {
    /// Only the directions the config checks (with no entity switched on,
    /// none): `responses = false` makes it request-only, so streamed text
    /// skips it.
    fn hooks() -> Hooks {
        // A bad config is reported by the hooks themselves (per on_error).
        let Ok(config) = config() else {
            return Hooks::all();
        };
        let checks = !config.enabled().is_empty();
        let mut hooks = Hooks::empty();
        hooks.set(Hooks::REQUESTS, checks && config.requests);
        hooks.set(Hooks::RESPONSES, checks && config.responses);
        hooks
    }

    /// Nothing of a request outlives its response (statics hold only the
    /// parsed config), so one instance may serve many requests.
    fn stateless() -> bool {
        true
    }

    fn on_request(_info: RequestInfo, req: ChatRequest) -> Result<RequestVerdict> {
        Ok(check_request(&config()?, req))
    }

    fn on_chunk(&mut self, index: u32, text: String) -> Result<ChunkVerdict> {
        Ok(self.chunk(&config()?, index, text))
    }

    fn on_end(&mut self, index: u32, held: String, _full: String) -> Result<ChunkVerdict> {
        Ok(self.end(&config()?, index, held))
    }
}

weir_policy::export_guardrail!(PiiRedact);

#[cfg(test)]
mod tests {
    use weir_policy::testing::{self, chat, request_info, stream, user_request};

    use super::*;

    fn with_config(json: &str) {
        testing::set_config(json);
    }

    #[test]
    fn hooks_follow_the_directions_and_entities_switched_on() {
        let cases = [
            ("{}", Hooks::all()),
            (r#"{"responses": false}"#, Hooks::REQUESTS),
            (r#"{"requests": false}"#, Hooks::RESPONSES),
            (
                r#"{"email": false, "phone": false, "credit_card": false, "ssn": false, "iban": false, "ipv4": false, "secret": false}"#,
                Hooks::empty(),
            ),
            // A bad config fails in the hooks, so they are all kept.
            (r#"{"action": "shred"}"#, Hooks::all()),
        ];
        for (config, hooks) in cases {
            // The config is cached per thread, as per instance in the gateway.
            let config = config.to_string();
            let got = std::thread::spawn(move || {
                with_config(&config);
                PiiRedact::hooks()
            })
            .join()
            .unwrap();
            assert_eq!(got, hooks);
        }
    }

    #[test]
    fn redacts_requests_by_default() {
        let req = chat(vec![
            Message::new(Role::System, "You are helpful."),
            Message::new(
                Role::User,
                "I'm jane@example.com, card 4111 1111 1111 1111.",
            ),
        ]);
        let verdict = PiiRedact::on_request(request_info(), req).unwrap();
        let RequestVerdict::Rewrite(messages) = verdict else {
            panic!("expected a rewrite, got {verdict:?}");
        };
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].content, "You are helpful.");
        assert_eq!(
            messages[1].content,
            "I'm [REDACTED_EMAIL], card [REDACTED_CREDIT_CARD]."
        );
        assert_eq!(testing::take_logs().len(), 1);
    }

    #[test]
    fn clean_requests_are_allowed() {
        let verdict = PiiRedact::on_request(request_info(), user_request("What is 2 + 2?"));
        assert_eq!(verdict, Ok(RequestVerdict::Allow));
    }

    #[test]
    fn deny_names_the_entities_without_values() {
        with_config(r#"{"action": "deny"}"#);
        let verdict = PiiRedact::on_request(
            request_info(),
            user_request("call +1 415 555 0100 or mail a@b.co, key AKIAIOSFODNN7EXAMPLE"),
        )
        .unwrap();
        assert_eq!(
            verdict,
            RequestVerdict::deny("request contains sensitive data: email, phone, secret")
        );
    }

    #[test]
    fn entities_can_be_switched_off() {
        with_config(r#"{"email": false, "ipv4": false}"#);
        let verdict = PiiRedact::on_request(
            request_info(),
            user_request("a@b.co at 10.0.0.1, SSN 123-45-6789"),
        )
        .unwrap();
        let RequestVerdict::Rewrite(messages) = verdict else {
            panic!("expected a rewrite, got {verdict:?}");
        };
        assert_eq!(
            messages[0].content,
            "a@b.co at 10.0.0.1, SSN [REDACTED_SSN]"
        );
    }

    #[test]
    fn bad_config_is_a_policy_error() {
        with_config(r#"{"emial": false}"#);
        let err = PiiRedact::on_request(request_info(), user_request("hi")).unwrap_err();
        assert!(
            err.starts_with("invalid config: unknown field `emial`"),
            "{err}"
        );
        with_config(r#"{"action": "shout"}"#);
        // The config is parsed once per instance (thread, here): still the first error.
        assert!(PiiRedact::on_request(request_info(), user_request("hi")).is_err());
    }

    #[test]
    fn tool_call_arguments_are_redacted_too() {
        let mut message = Message::new(Role::Assistant, "");
        message.tool_calls.push(ToolCall {
            id: "call_1".into(),
            name: "lookup".into(),
            arguments: r#"{"email":"jane@example.com"}"#.into(),
        });
        let verdict = PiiRedact::on_request(request_info(), chat(vec![message])).unwrap();
        let RequestVerdict::Rewrite(messages) = verdict else {
            panic!("expected a rewrite, got {verdict:?}");
        };
        assert_eq!(
            messages[0].tool_calls[0].arguments,
            r#"{"email":"[REDACTED_EMAIL]"}"#
        );
    }

    #[test]
    fn streamed_email_split_across_deltas() {
        let outcome =
            stream::<PiiRedact>(&["Contact jo", "hn@example.com", " for details."]).unwrap();
        assert_eq!(outcome.released, "Contact [REDACTED_EMAIL] for details.");
        assert!(outcome.max_held <= 24, "{}", outcome.max_held);
    }

    #[test]
    fn verdicts_for_each_shape_of_chunk() {
        let config = Config::default();
        let mut guard = PiiRedact::default();
        assert_eq!(
            guard.chunk(&config, 0, "Hello.\n".into()),
            ChunkVerdict::Pass
        );
        assert_eq!(guard.chunk(&config, 0, "jo".into()), ChunkVerdict::Hold);
        assert_eq!(
            guard.chunk(&config, 0, "john@example.com is ".into()),
            ChunkVerdict::Replace("[REDACTED_EMAIL] is ".into())
        );
        assert_eq!(
            guard.chunk(&config, 0, "mine, call +1 415".into()),
            ChunkVerdict::partial("mine, call ", "+1 415")
        );
        assert_eq!(
            guard.end(&config, 0, "+1 415 555 0100".into()),
            ChunkVerdict::Replace("[REDACTED_PHONE]".into())
        );
        assert_eq!(guard.end(&config, 1, "ok".into()), ChunkVerdict::Pass);
    }

    #[test]
    fn choices_are_scanned_separately() {
        let mut sim = testing::ResponseSim::<PiiRedact>::new(request_info());
        sim.chunk(0, "a: jo").unwrap();
        sim.chunk(1, "b: 4111 1111").unwrap();
        sim.chunk(0, "hn@example.com").unwrap();
        sim.chunk(1, " 1111 1111").unwrap();
        sim.end(0).unwrap();
        sim.end(1).unwrap();
        assert_eq!(sim.released(0), "a: [REDACTED_EMAIL]");
        assert_eq!(sim.released(1), "b: [REDACTED_CREDIT_CARD]");
    }

    #[test]
    fn deny_blocks_responses() {
        with_config(r#"{"action": "deny"}"#);
        let outcome = stream::<PiiRedact>(&["Sure: ", "123-45-", "6789", " is it"]).unwrap();
        assert_eq!(outcome.released, "Sure: ");
        assert_eq!(
            outcome.blocked,
            Some(Rejection::new("response contains sensitive data: ssn"))
        );
        // An entity still held at the end blocks too.
        let outcome = stream::<PiiRedact>(&["mail a@b.co"]).unwrap();
        assert_eq!(outcome.released, "mail ");
        assert!(outcome.blocked.is_some());
    }

    #[test]
    fn directions_can_be_switched_off() {
        with_config(r#"{"responses": false}"#);
        let outcome = stream::<PiiRedact>(&["mail a@b.co"]).unwrap();
        assert_eq!(outcome.released, "mail a@b.co");
        let verdict = PiiRedact::on_request(request_info(), user_request("mail a@b.co")).unwrap();
        assert!(matches!(verdict, RequestVerdict::Rewrite(_)));
    }
}
