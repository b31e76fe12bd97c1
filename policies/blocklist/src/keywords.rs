//! A hand-written multi-keyword matcher: case-insensitive, on word
//! boundaries, any run of whitespace in a term matching any run in the text.
//!
//! Terms are folded to lowercase once when the config is read, and building
//! the matcher costs nothing worth measuring — unlike compiling the terms
//! into a regex, which the gateway would pay on every request (it
//! instantiates per request).
//!
//! A term can only start where its first character is, so the text is not
//! walked a character at a time: [`Starts`] finds the next byte that may
//! begin a term (an ASCII first character in either case, or any non-ASCII
//! byte) sixteen bytes at a time — one SIMD load and, per first character,
//! an OR and a compare ([`Bytes16`]) — when the terms have at most
//! [`MAX_WIDE_FIRSTS`] distinct ASCII first characters, else with a table
//! lookup a byte. Only there are the word boundary (the character before,
//! one byte back in ASCII) and the terms checked, byte by byte while the
//! text is ASCII. For `deny = ["project falcon"], mask = ["darn", "heck"]`
//! over a 1 KB prompt that took request checking from about 13 µs to
//! about 3 µs in the `policy` benchmark (a character loop with a fold and
//! a bitmap test per character before).
//!
//! For streaming it also answers where a term might still be forming at the
//! end of a text (`"proj"` before `"ect falcon"`), so that tail can be held.

use weir_policy::lanes::{self, Bytes16, Lanes};

/// One piece of a term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// This character, case-folded.
    Char(char),
    /// One or more whitespace characters.
    Space,
}

/// A term, folded.
#[derive(Debug, Clone)]
struct Term {
    pieces: Vec<Piece>,
    /// The term starts with a word character, so it must start a word.
    word_start: bool,
    /// The term ends with a word character, so it must end a word.
    word_end: bool,
}

/// A set of keywords.
#[derive(Debug, Clone, Default)]
pub struct Keywords {
    terms: Vec<Term>,
    /// Where terms may start in a text, which knows the ASCII first
    /// characters of the terms; the others are listed here.
    starts: Starts,
    first_other: Vec<char>,
    /// The longest term, in characters.
    longest: usize,
    /// Some term doesn't start with a word character, so may start
    /// mid-word; if none does, only word starts are tried.
    starts_mid_word: bool,
}

/// Where a term matched: a byte range of the text, and which term (its
/// index in the list given to [`Keywords::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// First byte of the match.
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
    /// Index of the term.
    pub term: usize,
}

fn fold(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

fn is_word(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || c == '_'
    } else {
        c.is_alphanumeric()
    }
}

/// The character at byte `at` of `text` (a char boundary), folded, and its
/// length in bytes.
fn folded_at(text: &str, at: usize) -> Option<(char, usize)> {
    match *text.as_bytes().get(at)? {
        byte @ 0..0x80 => Some((char::from(byte.to_ascii_lowercase()), 1)),
        _ => {
            let c = text.get(at..)?.chars().next()?;
            Some((fold(c), c.len_utf8()))
        }
    }
}

/// Whether the character before byte `at` of `text` is a word character
/// (folded first, as [`Keywords::find`] sees it).
fn word_before(text: &str, at: usize) -> bool {
    match text.as_bytes().get(at.wrapping_sub(1)) {
        None => false,
        Some(&byte) if byte < 0x80 => is_word(char::from(byte)),
        Some(_) => text
            .get(..at)
            .and_then(|before| before.chars().next_back())
            .is_some_and(|c| is_word(fold(c))),
    }
}

/// Finds the bytes where a term may start: a byte whose folded character
/// is an ASCII first character of a term, or any non-ASCII byte (checked
/// in full where it is).
/// Which ASCII characters (folded) some term starts with.
#[derive(Debug, Clone)]
struct FirstAscii([bool; 128]);

impl Default for FirstAscii {
    fn default() -> Self {
        Self([false; 128])
    }
}

impl FirstAscii {
    fn contains(&self, byte: u8) -> bool {
        self.0.get(usize::from(byte)).copied().unwrap_or(false)
    }
}

#[derive(Debug, Clone, Default)]
struct Starts {
    /// Per ASCII first character, `(or, want)`: a byte `b` matches where
    /// `b | or == want` (`or` is `0x20` for a letter, so both cases match).
    wide: Vec<(u8, u8)>,
    /// The same as a table (wasm has no 128-bit shifts: a `u128` bitmap
    /// made building the matcher a few µs per instance), for
    /// [`Starts::next_by_table`] and [`Keywords::may_start`]. Not a table
    /// of all 256 bytes: building two of those was most of a fresh
    /// instance's blocklist work, ~12k wasm instructions per request.
    first_ascii: FirstAscii,
    /// No term starts with anything but a word character, so a first
    /// character right after an ASCII word character starts nothing and
    /// is not stopped at ("the" is no start for "heck").
    word_starts_only: bool,
    /// Tests: stop at every byte, the reference the skipping must match.
    #[cfg(test)]
    every_byte: bool,
}

/// The lanes of `p` that are ASCII word characters (`[0-9A-Za-z_]`).
fn word_lanes(p: Bytes16) -> Lanes {
    p.within(b'0', b'9') | p.within(b'A', b'Z') | p.within(b'a', b'z') | p.eq(b'_')
}

impl Starts {
    /// Terms may start with `c` (folded, ASCII).
    fn add(&mut self, c: u8) {
        if !self.first_ascii.contains(c) {
            self.first_ascii.0[usize::from(c)] = true;
            let or = if c.is_ascii_lowercase() { 0x20 } else { 0 };
            self.wide.push((or, c));
        }
    }

    /// The first byte at or after `from` where a term may start;
    /// `b.len()` if none.
    fn next(&self, b: &[u8], from: usize) -> usize {
        #[cfg(test)]
        if self.every_byte {
            return from.min(b.len());
        }
        match self.wide.len() {
            0 => self.next_wide::<0>(b, from),
            1 => self.next_wide::<1>(b, from),
            2 => self.next_wide::<2>(b, from),
            3 => self.next_wide::<3>(b, from),
            4 => self.next_wide::<4>(b, from),
            _ => self.next_by_table(b, from),
        }
    }

    /// [`Starts::next`] with `N` first characters, 16 bytes at a time
    /// (then 8, then one).
    fn next_wide<const N: usize>(&self, b: &[u8], from: usize) -> usize {
        let mut wide = [(0, 0); N];
        for (slot, first) in wide.iter_mut().zip(&self.wide) {
            *slot = *first;
        }
        // Where a term may start; lanes of 0 (past a half window) never do.
        let starts = |w: &lanes::Window<'_>| {
            let x = w.bytes();
            let mut firsts = Lanes::none();
            for (or, want) in wide {
                firsts = firsts | x.or(or).eq(want);
            }
            if self.word_starts_only && firsts.any() {
                firsts = firsts & !word_lanes(w.before());
            }
            // A non-ASCII byte is checked in full where it is.
            x.non_ascii() | firsts
        };
        match lanes::scan(b, from, starts) {
            Ok(at) => at,
            Err(rest) => self.next_by_table(b, rest),
        }
    }

    /// [`Starts::next`] a byte at a time.
    fn next_by_table(&self, b: &[u8], from: usize) -> usize {
        let rest = b.get(from..).unwrap_or_default();
        from + rest
            .iter()
            .enumerate()
            .position(|(n, &byte)| {
                byte >= 0x80
                    || (self.first_ascii.contains(byte.to_ascii_lowercase())
                        && !(self.word_starts_only
                            && (from + n)
                                .checked_sub(1)
                                .is_some_and(|j| b[j].is_ascii() && is_word(char::from(b[j])))))
            })
            .unwrap_or(rest.len())
    }
}

impl Keywords {
    /// A matcher for `terms`. Leading and trailing whitespace is ignored;
    /// a term that is empty after that is an error (its index is returned).
    pub fn new<S: AsRef<str>>(terms: &[S]) -> Result<Self, usize> {
        let mut keywords = Self::default();
        for (index, term) in terms.iter().enumerate() {
            let term = term.as_ref().trim();
            let Some(first) = term.chars().next() else {
                return Err(index);
            };
            let mut pieces: Vec<Piece> = Vec::with_capacity(term.len());
            for c in term.chars() {
                if c.is_whitespace() {
                    if pieces.last() != Some(&Piece::Space) {
                        pieces.push(Piece::Space);
                    }
                } else {
                    pieces.push(Piece::Char(fold(c)));
                }
            }
            let last = term.chars().next_back().unwrap_or(first);
            let first = fold(first);
            if first.is_ascii() {
                keywords.starts.add(first as u8);
            } else if !keywords.first_other.contains(&first) {
                keywords.first_other.push(first);
            }
            keywords.longest = keywords.longest.max(pieces.len());
            keywords.starts_mid_word |= !is_word(first);
            keywords.terms.push(Term {
                pieces,
                word_start: is_word(first),
                word_end: is_word(last),
            });
        }
        keywords.starts.word_starts_only = !keywords.starts_mid_word;
        Ok(keywords)
    }

    /// Whether there are no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    fn may_start(&self, c: char) -> bool {
        if c.is_ascii() {
            self.starts.first_ascii.contains(c as u8)
        } else {
            self.first_other.contains(&c)
        }
    }

    /// Every match in `text`, leftmost-longest, not overlapping. When
    /// `final_text` is false the text may continue, so a match at its very
    /// end that must end a word is left out (it is not confirmed yet).
    /// `after_word`: the text follows a word character, so its start is not
    /// a word boundary.
    pub fn find(&self, text: &str, final_text: bool, after_word: bool) -> Vec<Hit> {
        let mut hits = Vec::new();
        if self.terms.is_empty() {
            return hits;
        }
        // `prev_word`: the character before `at` is a word character.
        let mut prev_word = after_word;
        let mut at = 0;
        loop {
            // No term starts between `at` and `start`.
            let start = self.starts.next(text.as_bytes(), at);
            let Some((c, len)) = folded_at(text, start) else {
                break;
            };
            if start > at {
                prev_word = word_before(text, start);
            }
            if (!prev_word || self.starts_mid_word)
                && self.may_start(c)
                && let Some((end, term)) = self.longest_at(text, start, prev_word, final_text)
            {
                hits.push(Hit { start, end, term });
                prev_word = text
                    .get(..end)
                    .and_then(|hit| hit.chars().next_back())
                    .is_some_and(is_word);
                at = end;
                continue;
            }
            prev_word = is_word(c);
            at = start + len;
        }
        hits
    }

    /// The longest term matching at `start` (ties: the first listed).
    fn longest_at(
        &self,
        text: &str,
        start: usize,
        prev_word: bool,
        final_text: bool,
    ) -> Option<(usize, usize)> {
        let rest = text.get(start..)?;
        self.terms
            .iter()
            .enumerate()
            .filter(|(_, term)| !prev_word || !term.word_start)
            .filter_map(|(index, term)| {
                let end = start + match_term(rest, term)?;
                let word_ok = match text.get(end..).and_then(|after| after.chars().next()) {
                    Some(next) => !term.word_end || !is_word(next),
                    None => final_text || !term.word_end,
                };
                word_ok.then_some((end, index))
            })
            .max_by_key(|(end, index)| (*end, usize::MAX - index))
    }

    /// Where the earliest term that may still be forming at the end of
    /// `text` starts: a proper prefix of a term, or a whole term that must
    /// end a word and ends the text. `text.len()` if none. `after_word` as
    /// for [`Keywords::find`].
    pub fn pending_start(&self, text: &str, after_word: bool) -> usize {
        if self.terms.is_empty() {
            return text.len();
        }
        // A term's pieces match at least one character each; a space run may
        // be longer, so look back a little further than the longest term.
        let from = text
            .char_indices()
            .rev()
            .nth(self.longest * 4 + 8)
            .map_or(0, |(i, _)| i);
        let mut prev_word = if from == 0 {
            after_word
        } else {
            word_before(text, from)
        };
        let mut at = from;
        loop {
            let start = self.starts.next(text.as_bytes(), at);
            let Some((c, len)) = folded_at(text, start) else {
                return text.len();
            };
            if start > at {
                prev_word = word_before(text, start);
            }
            if (!prev_word || self.starts_mid_word)
                && self.may_start(c)
                && self
                    .terms
                    .iter()
                    .filter(|term| !prev_word || !term.word_start)
                    .any(|term| prefix_until_end(text.get(start..).unwrap_or_default(), term))
            {
                return start;
            }
            prev_word = is_word(c);
            at = start + len;
        }
    }
}

/// If `term` matches at the start of `text`, the length of the match. ASCII
/// is compared a byte at a time.
fn match_term(text: &str, term: &Term) -> Option<usize> {
    let b = text.as_bytes();
    let mut at = 0;
    for piece in &term.pieces {
        let (c, len) = match *b.get(at)? {
            byte @ 0..0x80 => (char::from(byte), 1),
            _ => {
                let c = text.get(at..)?.chars().next()?;
                (c, c.len_utf8())
            }
        };
        at += len;
        match piece {
            Piece::Char(want) => {
                if fold(c) != *want {
                    return None;
                }
            }
            Piece::Space => {
                if !c.is_whitespace() {
                    return None;
                }
                while let Some(c) = text.get(at..).and_then(|rest| rest.chars().next())
                    && c.is_whitespace()
                {
                    at += c.len_utf8();
                }
            }
        }
    }
    Some(at)
}

/// Whether all of `text` may be the start of a match of `term`: a proper
/// prefix, or the whole term when it must end a word (the next character
/// decides), or text ending in a space run the term continues.
fn prefix_until_end(text: &str, term: &Term) -> bool {
    let mut chars = text.chars().peekable();
    for (n, piece) in term.pieces.iter().enumerate() {
        let Some(c) = chars.next() else {
            return true;
        };
        match piece {
            Piece::Char(want) => {
                if fold(c) != *want {
                    return false;
                }
            }
            Piece::Space => {
                if !c.is_whitespace() {
                    return false;
                }
                while chars.next_if(|c| c.is_whitespace()).is_some() {}
                if chars.peek().is_none() && n + 1 < term.pieces.len() {
                    return true;
                }
            }
        }
    }
    chars.peek().is_none() && term.word_end
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Skipping to where a term may start finds what trying every
        /// byte finds, and so does the search for a term still forming.
        #[test]
        fn skipping_equals_trying_every_byte(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "project", "falcon", "Project  Falcon", "darn", "heck", "the", "check",
                    "hecks", "_heck", "dar", "x", "é", "Été", "ÉTÉ", " ", "\n", ".", "-", "_",
                    "c++", "9", "HD",
                ]),
                1..14,
            ),
            mid_word in proptest::bool::ANY,
            after_word in proptest::bool::ANY,
        ) {
            let text: String = parts.concat();
            let terms: &[&str] = if mid_word {
                &["project falcon", "darn", "heck", "++", "été"]
            } else {
                &["project falcon", "darn", "heck", "été", "d"]
            };
            let k = keywords(terms);
            let mut every = k.clone();
            every.starts.every_byte = true;
            for final_text in [false, true] {
                proptest::prop_assert_eq!(
                    k.find(&text, final_text, after_word),
                    every.find(&text, final_text, after_word)
                );
            }
            proptest::prop_assert_eq!(
                k.pending_start(&text, after_word),
                every.pending_start(&text, after_word)
            );
        }
    }

    fn keywords(terms: &[&str]) -> Keywords {
        Keywords::new(terms).unwrap_or_default()
    }

    fn found(k: &Keywords, text: &str) -> Vec<String> {
        k.find(text, true, false)
            .iter()
            .map(|h| text[h.start..h.end].to_owned())
            .collect()
    }

    #[test]
    fn case_insensitive_on_word_boundaries() {
        let k = keywords(&["falcon", "Project X"]);
        assert_eq!(
            found(&k, "FALCON, falconry, project   x and projectx; Falcon."),
            ["FALCON", "project   x", "Falcon"]
        );
    }

    #[test]
    fn unicode_terms_fold_case() {
        let k = keywords(&["Größe", "ÉTÉ"]);
        assert_eq!(found(&k, "die GRÖSSE? die größe! l'été"), ["größe", "été"]);
    }

    #[test]
    fn terms_with_punctuation_at_the_edges() {
        let k = keywords(&["c++", "@admin"]);
        assert_eq!(
            found(&k, "I like c++ and @admins? and @admin."),
            ["c++", "@admin"]
        );
    }

    #[test]
    fn longest_term_wins() {
        let k = keywords(&["new", "new york"]);
        assert_eq!(found(&k, "New York, new ideas"), ["New York", "new"]);
    }

    #[test]
    fn unconfirmed_word_end_is_not_reported() {
        let k = keywords(&["heck"]);
        assert!(k.find("oh heck", false, false).is_empty());
        assert_eq!(k.find("oh heck", true, false).len(), 1);
        assert_eq!(k.find("oh heck!", false, false).len(), 1);
    }

    #[test]
    fn pending_terms_at_the_end() {
        let k = keywords(&["project falcon", "heck"]);
        assert_eq!(k.pending_start("it is proj", false), 6);
        assert_eq!(k.pending_start("it is project ", false), 6);
        assert_eq!(k.pending_start("it is project fal", false), 6);
        assert_eq!(k.pending_start("oh he", false), 3);
        assert_eq!(k.pending_start("oh heck", false), 3);
        assert_eq!(k.pending_start("oh hecks", false), 8);
        assert_eq!(k.pending_start("the apex", false), 8);
        assert_eq!(
            k.pending_start("ahe", false),
            3,
            "'he' inside a word can't start a term"
        );
        assert_eq!(
            k.pending_start("he", true),
            2,
            "nor after a word released before"
        );
        assert!(k.find("heck", true, true).is_empty());
    }

    #[test]
    fn empty_terms_are_rejected() {
        assert_eq!(Keywords::new(&["ok", "  "]).err(), Some(1));
    }
}
