//! Redaction of streamed text: release what is safe, hold the tail that might
//! still become an entity.
//!
//! Each call gets the held tail followed by the newest delta. Everything up
//! to the start of the *trailing candidate* is released (redacted); the
//! candidate is held. The candidate is the last token — any word could be
//! the start of an email (`"jo"` + `"hn@example.com"`) — extended back over
//! single spaces while the groups still read as the start of a spaced number
//! (`"+1 415 "`, `"4111 1111 "`) or IBAN (`"GB82 WEST "`), or the unfinished
//! header of a PEM private key (`"-----BEGIN RSA "`). So the hold is one word
//! in ordinary prose, a few dozen bytes at most around a number, and the
//! latency it adds is that of the last word.
//!
//! A PEM private key block can be kilobytes long, more than a gateway lets a
//! policy hold; once its header is complete the placeholder is released and
//! the choice enters a state that drops text until the `-----END … PRIVATE
//! KEY-----` line, holding only what might be the start of that line. A
//! token longer than [`MAX_HOLD`] (a huge base64 blob, say) is released with
//! whatever it contains redacted.

use crate::detect::{self, Entity, EntitySet, Match};

/// The most this scanner holds, in bytes, outside a PEM block. Longer than
/// any entity it looks for (emails are at most 254 bytes; the longest keys,
/// `sk-proj-…`, are about 170).
pub const MAX_HOLD: usize = 256;

/// What to do with one offered text.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Send this now (already redacted).
    pub release: String,
    /// Hold this (raw) until the next delta.
    pub hold: String,
    /// Entities found in what was released.
    pub found: EntitySet,
}

/// The redaction state of one choice.
#[derive(Debug, Default)]
pub struct ChoiceStream {
    /// Inside a PEM private key block: drop text until its END line.
    in_pem: bool,
}

impl ChoiceStream {
    /// Split `text` (held tail + newest delta) into what to release now,
    /// redacted, and what to hold.
    pub fn offer(&mut self, text: &str, enabled: EntitySet) -> Step {
        let mut step = Step::default();
        let mut rest = text;
        loop {
            if self.in_pem {
                match detect::find_pem_end(rest.as_bytes(), 0) {
                    Some(end) => {
                        self.in_pem = false;
                        rest = &rest[end..];
                    }
                    None => {
                        step.hold = rest[pem_end_prefix_start(rest)..].to_owned();
                        return step;
                    }
                }
            }
            let candidates = detect::candidates(rest, enabled);
            let cut = hold_start(rest, &candidates);
            let matches = detect::settle(candidates);
            if let Some(open) = matches.iter().find(|m| m.open && m.range.start < cut) {
                // A private key header: release up to it, then drop the body.
                let before: Vec<Match> = matches
                    .iter()
                    .filter(|m| m.range.end <= open.range.start)
                    .cloned()
                    .collect();
                push_redacted(&mut step, &rest[..open.range.start], &before);
                step.release.push_str(Entity::Secret.placeholder());
                step.found = step.found.with(Entity::Secret);
                self.in_pem = true;
                rest = &rest[open.range.end..];
                continue;
            }
            let released: Vec<Match> = matches
                .iter()
                .filter(|m| m.range.end <= cut)
                .cloned()
                .collect();
            push_redacted(&mut step, &rest[..cut], &released);
            step.hold = rest[cut..].to_owned();
            return step;
        }
    }

    /// The choice ended with `held` still held: redact it as a complete text.
    pub fn finish(&mut self, held: &str, enabled: EntitySet) -> (String, EntitySet) {
        if std::mem::take(&mut self.in_pem) {
            return (String::new(), EntitySet::default());
        }
        detect::redact(held, enabled)
    }
}

fn push_redacted(step: &mut Step, text: &str, matches: &[Match]) {
    for m in matches {
        step.found = step.found.with(m.entity);
    }
    if matches.is_empty() {
        step.release.push_str(text);
    } else if step.release.is_empty() {
        step.release = detect::redact_matches(text, matches);
    } else {
        step.release
            .push_str(&detect::redact_matches(text, matches));
    }
}

/// Bytes that can be part of an entity's token.
fn is_token(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '@' | '.' | '_' | '%' | '+' | '-' | '(' | ')')
}

/// Start of the run of token characters ending at `end`.
fn token_start(text: &str, end: usize) -> usize {
    let mut start = end;
    for (idx, c) in text[..end].char_indices().rev() {
        if !is_token(c) {
            break;
        }
        start = idx;
    }
    start
}

/// Where the held tail of `text` starts (`text.len()` if nothing needs
/// holding). `matches` are the detectors' candidates in `text`, overlaps
/// included; none may straddle the cut.
pub fn hold_start(text: &str, matches: &[Match]) -> usize {
    let b = text.as_bytes();
    let mut cut = token_start(text, text.len());
    // Extend back over "group␠" groups to the earliest one where the suffix
    // may be a spaced number or IBAN. Not stopping at the first group that
    // isn't: "WEST 1234 5" is no IBAN, but "GB82 WEST 1234 5" may be.
    let mut p = cut;
    for _ in 0..16 {
        // A group further back than SPACED_MAX from the end starts a
        // suffix too long to be viable, and so does every group before it.
        if p < 2 || b[p - 1] != b' ' || !is_token_byte(b[p - 2]) || b.len() - p > SPACED_MAX {
            break;
        }
        let group = token_start(text, p - 1);
        // The entity may start inside the group, after any punctuation:
        // "(+1 415", "mail-GB82 WEST".
        let viable = (group..p - 1)
            .filter(|&s| s == group || !b[s - 1].is_ascii_alphanumeric())
            .any(|s| viable_number(&b[s..]) || viable_iban(&b[s..]));
        if viable {
            cut = group;
        }
        p = group;
    }
    if let Some(pem) = pem_header_prefix_start(text) {
        cut = cut.min(pem);
    }
    // Never cut through an entity; one that reaches the end may still grow.
    loop {
        let straddling = matches
            .iter()
            .find(|m| m.range.start < cut && (cut < m.range.end || m.range.end == b.len()));
        match straddling {
            Some(m) if !m.open => cut = m.range.start,
            _ => break,
        }
    }
    if b.len() - cut > MAX_HOLD {
        return b.len();
    }
    cut
}

fn is_token_byte(c: u8) -> bool {
    c >= 0x80 || c.is_ascii_alphanumeric() || b"@._%+-()".contains(&c)
}

/// The longest spaced number or IBAN the scanner holds for: 19 card digits
/// or 34 IBAN characters with their spaces, plus room for trailing groups.
const SPACED_MAX: usize = 64;

/// Could `s` (which spans at least one space) start with a spaced card or
/// phone number: `+`, `(` or a digit first, then digits with single
/// separators. The detectors take the longest valid *prefix* of such a run,
/// so how many digits follow doesn't matter, only that the run is live.
fn viable_number(s: &[u8]) -> bool {
    if s.len() > SPACED_MAX {
        return false;
    }
    let first_ok = matches!(s.first(), Some(b'+' | b'(' | b'0'..=b'9'));
    let mut prev_sep = false;
    for (n, &c) in s.iter().enumerate() {
        match c {
            b'0'..=b'9' | b'(' | b')' => prev_sep = false,
            b'+' if n == 0 || (n == 1 && s[0] == b'(') => {}
            b' ' | b'-' | b'.' => {
                if prev_sep {
                    return false;
                }
                prev_sep = true;
            }
            _ => return false,
        }
    }
    first_ok
}

/// Could `s` start with a spaced IBAN: two capital letters and two digits,
/// then groups of capitals and digits.
fn viable_iban(s: &[u8]) -> bool {
    // Called for every trailing group of every streamed delta, so it
    // doesn't collect the characters into a vector, and checks the cheap
    // conditions first.
    if s.len() > SPACED_MAX {
        return false;
    }
    let mut chars = s.iter().filter(|c| **c != b' ');
    let head_ok = chars.clone().take(4).enumerate().all(|(n, c)| {
        if n < 2 {
            c.is_ascii_uppercase()
        } else {
            c.is_ascii_digit()
        }
    });
    head_ok
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && s.get(4).is_none_or(|c| *c == b' ')
        && !s.windows(2).any(|w| w == b"  ")
}

/// If `text` ends inside an unfinished PEM private key header
/// (`-----BEGIN RSA PRI`), where that header starts.
fn pem_header_prefix_start(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let from = b.len().saturating_sub(80);
    let start = (from..b.len())
        .rev()
        .find(|&i| b[i] == b'-' && b[i..].starts_with(b"-----BEGIN "))?;
    let label = &b[start + 11..];
    let unfinished = label
        .iter()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b' ' || *c == b'-')
        && !label.windows(5).any(|w| w == b"-----");
    unfinished.then_some(start)
}

/// Inside a PEM block: where the last run of dashes starts if it may begin
/// the block's `-----END … PRIVATE KEY-----` line, else the end of `text`.
fn pem_end_prefix_start(text: &str) -> usize {
    let b = text.as_bytes();
    let from = b.len().saturating_sub(80);
    let marker = b"-----END ";
    (from..b.len())
        .find(|&i| {
            let tail = &b[i..];
            let n = tail.len().min(marker.len());
            b[i] == b'-'
                && (i == 0 || b[i - 1] != b'-')
                && tail[..n] == marker[..n]
                && tail[n..].iter().all(|c| {
                    c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b' ' || *c == b'-'
                })
        })
        .unwrap_or(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `deltas` through one choice as the gateway would; return what the
    /// client sees and the largest hold.
    fn run(deltas: &[&str]) -> (String, usize) {
        let mut choice = ChoiceStream::default();
        let (mut out, mut held, mut max_held) = (String::new(), String::new(), 0);
        for delta in deltas {
            let text = std::mem::take(&mut held) + delta;
            let step = choice.offer(&text, EntitySet::all());
            out.push_str(&step.release);
            held = step.hold;
            max_held = max_held.max(held.len());
        }
        out.push_str(&choice.finish(&held, EntitySet::all()).0);
        (out, max_held)
    }

    /// Every way of cutting `text` into two and three deltas yields `want`.
    fn all_splits(text: &str, want: &str) {
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|i| text.is_char_boundary(*i))
            .collect();
        for &i in &cuts {
            assert_eq!(run(&[&text[..i], &text[i..]]).0, want, "split at {i}");
            for &j in cuts.iter().filter(|j| **j >= i) {
                let got = run(&[&text[..i], &text[i..j], &text[j..]]).0;
                assert_eq!(got, want, "split at {i}, {j}");
            }
        }
    }

    #[test]
    fn email_split_across_deltas_never_leaks() {
        assert_eq!(run(&["jo", "hn@example.com"]).0, "[REDACTED_EMAIL]");
        assert_eq!(
            run(&["Write to jo", "hn@exam", "ple.com", " today."]).0,
            "Write to [REDACTED_EMAIL] today."
        );
        all_splits("mail jürgen@example.de now", "mail [REDACTED_EMAIL] now");
    }

    #[test]
    fn every_split_of_every_entity() {
        all_splits("call +1 415 555 0100 now", "call [REDACTED_PHONE] now");
        all_splits("call (415) 555-0100.", "call [REDACTED_PHONE].");
        all_splits("tel +44 20 7946 0958", "tel [REDACTED_PHONE]");
        all_splits(
            "card 4111 1111 1111 1111 ok",
            "card [REDACTED_CREDIT_CARD] ok",
        );
        all_splits("ssn 123-45-6789 ok", "ssn [REDACTED_SSN] ok");
        all_splits(
            "iban GB82 WEST 1234 5698 7654 32 ok",
            "iban [REDACTED_IBAN] ok",
        );
        all_splits("ip 192.168.0.1", "ip [REDACTED_IPV4]");
        all_splits(
            "key sk-proj-abcdefghijklmnopqrstuvwxyz012345 ok",
            "key [REDACTED_SECRET] ok",
        );
        all_splits("id AKIAIOSFODNN7EXAMPLE.", "id [REDACTED_SECRET].");
    }

    #[test]
    fn pem_block_split_across_deltas() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1c7+9z5Pad7OejecsQ0bu3aozN3tihPmljnnudb9G3HECdnH\n-----END RSA PRIVATE KEY-----";
        all_splits(
            &format!("Here:\n{key}\nDone."),
            "Here:\n[REDACTED_SECRET]\nDone.",
        );
        // Unterminated: everything after the header is dropped.
        assert_eq!(
            run(&["x -----BEGIN PRIVATE ", "KEY-----\nMIIE", "pAIBAAK"]).0,
            "x [REDACTED_SECRET]"
        );
    }

    #[test]
    fn prose_passes_with_one_word_held() {
        let mut choice = ChoiceStream::default();
        let step = choice.offer("Hello there, wor", EntitySet::all());
        assert_eq!(step.release, "Hello there, ");
        assert_eq!(step.hold, "wor");
        let step = choice.offer("world. ", EntitySet::all());
        assert_eq!(step.release, "world. ");
        assert_eq!(step.hold, "");
    }

    #[test]
    fn holds_stay_short() {
        let (out, max_held) = run(&["The total is 4111 1111 ", "1111 1111 and more text"]);
        assert_eq!(out, "The total is [REDACTED_CREDIT_CARD] and more text");
        assert!(max_held <= 25, "{max_held}");
        let long = "x".repeat(1000);
        let (out, max_held) = run(&[&long[..500], &long[500..]]);
        assert_eq!(out, long);
        assert!(max_held <= MAX_HOLD);
    }

    #[test]
    fn trailing_entity_is_redacted_at_the_end() {
        assert_eq!(
            run(&["reach me at a@b.co"]).0,
            "reach me at [REDACTED_EMAIL]"
        );
        assert_eq!(run(&["+1 415 555 01", "00"]).0, "[REDACTED_PHONE]");
    }

    mod prop {
        use proptest::prelude::*;

        use super::run;
        use crate::detect::{self, EntitySet};

        const PIECES: &[&str] = &[
            "john.doe@example.com",
            "jürgen@example.de",
            "+1 415 555 0100",
            "(415) 555-0100",
            "+44 20 7946 0958",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "123-45-6789",
            "GB82 WEST 1234 5698 7654 32",
            "DE89370400440532013000",
            "192.168.10.1",
            "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg+/x=\n-----END EC PRIVATE KEY-----",
            "-----BEGIN CERTIFICATE-----",
            "Hello",
            "world",
            "call",
            "me",
            "at",
            "42",
            "2024",
            "DE",
            "+",
            "(",
            ")",
            "-",
            "é",
            "🙂",
        ];
        const GLUE: &[&str] = &[
            " ", ", ", ". ", "\n", ": ", " (", ") ", "  ", "", "-", "@", ".",
        ];

        fn text() -> impl Strategy<Value = String> {
            prop::collection::vec((0..PIECES.len(), 0..GLUE.len()), 1..8).prop_map(|parts| {
                parts
                    .into_iter()
                    .map(|(p, g)| format!("{}{}", PIECES[p], GLUE[g]))
                    .collect()
            })
        }

        proptest! {
            /// However the text is cut into deltas, the client sees exactly
            /// what redacting the whole text at once gives.
            #[test]
            fn streaming_equals_redacting_the_whole(
                text in text(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            ) {
                let mut points: Vec<usize> = cuts
                    .iter()
                    .map(|c| c.index(text.len() + 1))
                    .filter(|i| text.is_char_boundary(*i))
                    .collect();
                points.sort_unstable();
                let mut deltas = Vec::new();
                let mut at = 0;
                for p in points {
                    deltas.push(&text[at..p]);
                    at = p;
                }
                deltas.push(&text[at..]);
                let (streamed, _) = run(&deltas);
                let (whole, _) = detect::redact(&text, EntitySet::all());
                prop_assert_eq!(streamed, whole);
            }
        }
    }
}
