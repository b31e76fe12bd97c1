//! A hand-written multi-keyword matcher: case-insensitive, on word
//! boundaries, any run of whitespace in a term matching any run in the text.
//!
//! Terms are folded to lowercase once when the config is read; the text is
//! walked once, and a term is only tried where its first character occurs
//! (an ASCII bitmap answers that), so a 1 KB text against dozens of terms
//! costs a few microseconds and building the matcher costs nothing worth
//! measuring — unlike compiling the terms into a regex, which the gateway
//! would pay on every request (it instantiates per request).
//!
//! For streaming it also answers where a term might still be forming at the
//! end of a text (`"proj"` before `"ect falcon"`), so that tail can be held.

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
    /// First characters of the terms: ASCII as a bitmap, the rest listed.
    first_ascii: u128,
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
                keywords.first_ascii |= 1 << (first as u32);
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
        Ok(keywords)
    }

    /// Whether there are no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    fn may_start(&self, c: char) -> bool {
        if c.is_ascii() {
            self.first_ascii & (1 << (c as u32)) != 0
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
        // A byte loop: ASCII (nearly every byte of a prompt) needs no UTF-8
        // decoding, and only a word start whose first letter begins some
        // term (or any position, for terms like "@admin") is tried.
        let b = text.as_bytes();
        let mut prev_word = after_word;
        let mut at = 0;
        while at < b.len() {
            let (c, len) = if b[at] < 0x80 {
                (char::from(b[at].to_ascii_lowercase()), 1)
            } else {
                let c = text[at..].chars().next().unwrap_or_default();
                (fold(c), c.len_utf8())
            };
            if (!prev_word || self.starts_mid_word)
                && self.may_start(c)
                && let Some((end, term)) = self.longest_at(text, at, prev_word, final_text)
            {
                hits.push(Hit {
                    start: at,
                    end,
                    term,
                });
                prev_word = text[..end].chars().next_back().is_some_and(is_word);
                at = end;
                continue;
            }
            prev_word = is_word(c);
            at += len;
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
        self.terms
            .iter()
            .enumerate()
            .filter(|(_, term)| !prev_word || !term.word_start)
            .filter_map(|(index, term)| {
                let end = start + match_term(&text[start..], term)?;
                let word_ok = match text[end..].chars().next() {
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
        let mut prev_word = match text[..from].chars().next_back() {
            Some(c) => is_word(c),
            None => after_word,
        };
        for (offset, c) in text[from..].char_indices() {
            let at = from + offset;
            let c = fold(c);
            if (!prev_word || self.starts_mid_word)
                && self.may_start(c)
                && self
                    .terms
                    .iter()
                    .filter(|term| !prev_word || !term.word_start)
                    .any(|term| prefix_until_end(&text[at..], term))
            {
                return at;
            }
            prev_word = is_word(c);
        }
        text.len()
    }
}

/// If `term` matches at the start of `text`, the length of the match.
fn match_term(text: &str, term: &Term) -> Option<usize> {
    let mut chars = text.char_indices().peekable();
    for piece in &term.pieces {
        let (_, c) = chars.next()?;
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
                while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            }
        }
    }
    Some(chars.peek().map_or(text.len(), |(i, _)| *i))
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
