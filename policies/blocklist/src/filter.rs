//! The blocklist proper: `deny` and `mask` terms and regexes, applied to a
//! whole text (a request message, the end of a response) or to streamed
//! text, where a term split across deltas must still be caught.
//!
//! Streaming needs no state of its own: the gateway hands back what was
//! held. Each offered text is cut at the earliest of
//! - where a keyword may still be forming (`"proj"` before `"ect falcon"`),
//! - the start of any regex match that reaches the end of the text, and
//! - `regex_window` bytes before the end, when regexes are configured (a
//!   regex can't say whether a text's end is a prefix of a match, so the
//!   last bytes wait for more text),
//!
//! moved back so no match is cut in two. What comes before the cut is
//! released, masked; the rest is held.

use regex_lite::Regex;

use crate::keywords::Keywords;

/// A compiled blocklist.
#[derive(Debug, Default)]
pub struct Filter {
    /// Keywords that refuse the request / stop the response.
    pub deny: Keywords,
    /// Keywords replaced with `replacement`.
    pub mask: Keywords,
    /// Regexes that refuse the request / stop the response.
    pub deny_regex: Vec<Regex>,
    /// Regexes whose matches are replaced with `replacement`.
    pub mask_regex: Vec<Regex>,
    /// What masked text becomes.
    pub replacement: String,
    /// Bytes held at the end of streamed text while regexes are configured.
    pub regex_window: usize,
}

/// What to do with a text.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing matched.
    Clean,
    /// Mask terms matched: the masked text.
    Masked(String),
    /// A deny term matched.
    Denied,
}

/// What to do with one offered piece of streamed text.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A deny term matched.
    Denied,
    /// Release all of it as it is (the common case: no copy is made).
    Pass {
        /// Whether it ends with a word character: the `after_word` of the
        /// next call.
        ends_in_word: bool,
    },
    /// Release `release` (masked) now, hold `hold` (raw).
    Split {
        /// Release now.
        release: String,
        /// Hold until the next delta.
        hold: String,
        /// Whether `release` differs from the text it came from.
        masked: bool,
        /// Whether the raw text released ends with a word character: the
        /// `after_word` of the next call.
        ends_in_word: bool,
    },
}

impl Filter {
    /// Whether there is nothing to look for.
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty()
            && self.mask.is_empty()
            && self.deny_regex.is_empty()
            && self.mask_regex.is_empty()
    }

    fn has_regex(&self) -> bool {
        !self.deny_regex.is_empty() || !self.mask_regex.is_empty()
    }

    /// Judge a complete text. `after_word`: the text directly follows a
    /// word character (streamed text released before it), so it doesn't
    /// start on a word boundary.
    pub fn check(&self, text: &str, after_word: bool) -> Outcome {
        if !self.deny.find(text, true, after_word).is_empty()
            || self.deny_regex.iter().any(|re| re.is_match(text))
        {
            return Outcome::Denied;
        }
        let spans = self.mask_spans(text, true, after_word);
        if spans.is_empty() {
            Outcome::Clean
        } else {
            Outcome::Masked(self.apply(text, &spans))
        }
    }

    /// Judge streamed text: the held tail followed by the newest delta.
    /// `after_word` as for [`Filter::check`].
    pub fn offer(&self, text: &str, after_word: bool) -> Step {
        let denied_kw = !self.deny.find(text, false, after_word).is_empty();
        let mut cut = self
            .deny
            .pending_start(text, after_word)
            .min(self.mask.pending_start(text, after_word));
        if self.has_regex() {
            cut = cut.min(floor_char_boundary(
                text,
                text.len().saturating_sub(self.regex_window),
            ));
        }
        // A deny regex match that reaches the end may still grow or vanish
        // ("ACCT-12345" + "6"), so hold it; any other one is a match.
        let mut denied_re = false;
        for re in &self.deny_regex {
            for m in re.find_iter(text) {
                if m.end() == text.len() {
                    cut = cut.min(m.start());
                } else {
                    denied_re = true;
                }
            }
        }
        if denied_kw || denied_re {
            return Step::Denied;
        }
        // Never cut through a mask match.
        let spans = self.mask_spans(text, false, after_word);
        for (start, end) in spans.iter().rev() {
            if *start < cut && (cut < *end || *end == text.len()) {
                cut = *start;
            }
        }
        for re in &self.mask_regex {
            for m in re.find_iter(text) {
                if m.end() == text.len() || (m.start() < cut && cut < m.end()) {
                    cut = cut.min(m.start());
                }
            }
        }
        // Never cut inside a word either: the held text is matched again
        // without what came before, so "darned|heck" would become a match.
        let cut = word_floor(text, cut);
        let released: Vec<(usize, usize)> =
            spans.into_iter().filter(|(_, end)| *end <= cut).collect();
        if released.is_empty() && cut == text.len() {
            return Step::Pass {
                ends_in_word: match text.chars().next_back() {
                    Some(c) => c.is_alphanumeric() || c == '_',
                    None => after_word,
                },
            };
        }
        Step::Split {
            masked: !released.is_empty(),
            release: self.apply(&text[..cut], &released),
            hold: text[cut..].to_owned(),
            ends_in_word: match text[..cut].chars().next_back() {
                Some(c) => c.is_alphanumeric() || c == '_',
                None => after_word,
            },
        }
    }

    /// Byte ranges to mask, in order, not overlapping: keyword hits and
    /// regex matches (when the text may continue, not those reaching its end).
    fn mask_spans(&self, text: &str, final_text: bool, after_word: bool) -> Vec<(usize, usize)> {
        let mut spans: Vec<(usize, usize)> = self
            .mask
            .find(text, final_text, after_word)
            .into_iter()
            .map(|hit| (hit.start, hit.end))
            .collect();
        for re in &self.mask_regex {
            spans.extend(
                re.find_iter(text)
                    .filter(|m| !m.is_empty() && (final_text || m.end() < text.len()))
                    .map(|m| (m.start(), m.end())),
            );
        }
        spans.sort_by_key(|(start, end)| (*start, usize::MAX - end));
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                Some(last) if start < last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    fn apply(&self, text: &str, spans: &[(usize, usize)]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in spans {
            out.push_str(&text[at..*start]);
            out.push_str(&self.replacement);
            at = *end;
        }
        out.push_str(&text[at..]);
        out
    }
}

/// `cut`, or the start of the word it falls inside.
fn word_floor(text: &str, cut: usize) -> usize {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    if !text[cut..].starts_with(is_word) {
        return cut;
    }
    text[..cut]
        .char_indices()
        .rev()
        .take_while(|(_, c)| is_word(*c))
        .last()
        .map_or(cut, |(i, _)| i)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(deny: &[&str], mask: &[&str], deny_re: &[&str], mask_re: &[&str]) -> Filter {
        let regexes = |list: &[&str]| list.iter().filter_map(|r| Regex::new(r).ok()).collect();
        Filter {
            deny: Keywords::new(deny).unwrap_or_default(),
            mask: Keywords::new(mask).unwrap_or_default(),
            deny_regex: regexes(deny_re),
            mask_regex: regexes(mask_re),
            replacement: "***".into(),
            regex_window: 32,
        }
    }

    /// Feed `deltas` as the gateway would; `None` if denied.
    fn stream(f: &Filter, deltas: &[&str]) -> Option<String> {
        let (mut out, mut held, mut after_word) = (String::new(), String::new(), false);
        for delta in deltas {
            let text = std::mem::take(&mut held) + delta;
            match f.offer(&text, after_word) {
                Step::Denied => return None,
                Step::Pass { ends_in_word } => {
                    out.push_str(&text);
                    after_word = ends_in_word;
                }
                Step::Split {
                    release,
                    hold,
                    ends_in_word,
                    ..
                } => {
                    out.push_str(&release);
                    held = hold;
                    after_word = ends_in_word;
                }
            }
        }
        match f.check(&held, after_word) {
            Outcome::Denied => None,
            Outcome::Clean => Some(out + &held),
            Outcome::Masked(masked) => Some(out + &masked),
        }
    }

    fn every_split(f: &Filter, text: &str) -> Vec<Option<String>> {
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|i| text.is_char_boundary(*i))
            .collect();
        let mut outs = Vec::new();
        for &i in &cuts {
            for &j in cuts.iter().filter(|j| **j >= i) {
                outs.push(stream(f, &[&text[..i], &text[i..j], &text[j..]]));
            }
        }
        outs
    }

    #[test]
    fn whole_texts() {
        let f = filter(&["project falcon"], &["darn"], &[], &[]);
        assert_eq!(f.check("all good", false), Outcome::Clean);
        assert_eq!(f.check("Darn it", false), Outcome::Masked("*** it".into()));
        assert_eq!(f.check("about Project  Falcon", false), Outcome::Denied);
        assert_eq!(f.check("darned", false), Outcome::Clean);
    }

    #[test]
    fn masks_split_across_deltas() {
        let f = filter(&[], &["darn", "heck"], &[], &[]);
        for out in every_split(&f, "Oh darn, what the heck. Heckler!") {
            assert_eq!(out.as_deref(), Some("Oh ***, what the ***. Heckler!"));
        }
    }

    #[test]
    fn deny_split_across_deltas_blocks() {
        let f = filter(&["project falcon"], &[], &[], &[]);
        for out in every_split(&f, "the Project Falcon launch") {
            assert_eq!(out, None);
        }
        for out in every_split(&f, "the project falconry club") {
            assert_eq!(out.as_deref(), Some("the project falconry club"));
        }
    }

    #[test]
    fn regexes_split_across_deltas() {
        let f = filter(&[], &[], &[r"ACCT-\d{6}"], &[r"(?i)password:\s*\S+"]);
        for out in every_split(&f, "use Password: hunter2 now") {
            assert_eq!(out.as_deref(), Some("use *** now"));
        }
        for out in every_split(&f, "account ACCT-123456 is closed") {
            assert_eq!(out, None);
        }
    }

    #[test]
    fn holds_are_short_without_regexes() {
        let f = filter(&["project falcon"], &["darn"], &[], &[]);
        let step = f.offer("A long answer that ends with proj", false);
        assert_eq!(
            step,
            Step::Split {
                release: "A long answer that ends with ".into(),
                hold: "proj".into(),
                masked: false,
                ends_in_word: false,
            }
        );
        let step = f.offer("Nothing to see here", false);
        assert_eq!(step, Step::Pass { ends_in_word: true });
    }

    mod prop {
        use proptest::prelude::*;

        use super::{Outcome, filter, stream};

        const PIECES: &[&str] = &[
            "darn",
            "Darn",
            "darned",
            "heck",
            "HECK",
            "heckler",
            "project",
            "falcon",
            "Project  Falcon",
            "password:",
            "hunter2",
            "ACCT-123456",
            "ACCT-1234567",
            "c++",
            "é",
            "x",
            "",
        ];
        const GLUE: &[&str] = &[" ", ", ", ".", "\n", "", "  ", "-"];

        fn text() -> impl Strategy<Value = String> {
            prop::collection::vec((0..PIECES.len(), 0..GLUE.len()), 1..10).prop_map(|parts| {
                parts
                    .into_iter()
                    .map(|(p, g)| format!("{}{}", PIECES[p], GLUE[g]))
                    .collect()
            })
        }

        proptest! {
            /// However the text is cut into deltas, the client sees what
            /// checking the whole text at once gives.
            #[test]
            fn streaming_equals_checking_the_whole(
                text in text(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
                with_regex in any::<bool>(),
            ) {
                let f = if with_regex {
                    filter(&["project falcon"], &["darn", "heck", "c++"], &[r"ACCT-\d{6}\b"], &[r"(?i)password:\s*\S+"])
                } else {
                    filter(&["project falcon"], &["darn", "heck", "c++"], &[], &[])
                };
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
                let whole = match f.check(&text, false) {
                    Outcome::Denied => None,
                    Outcome::Clean => Some(text.clone()),
                    Outcome::Masked(masked) => Some(masked),
                };
                prop_assert_eq!(stream(&f, &deltas), whole);
            }
        }
    }
}
