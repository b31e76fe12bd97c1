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
    c.is_alphanumeric() || c == '_'
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
        if self.terms.is_empty() {
            return Vec::new();
        }
        let chars: Vec<(usize, char)> = text.char_indices().map(|(i, c)| (i, fold(c))).collect();
        let mut hits = Vec::new();
        let mut at = 0;
        while at < chars.len() {
            let (start, c) = chars[at];
            let boundary = if at == 0 {
                !after_word
            } else {
                !is_word(chars[at - 1].1)
            };
            let best = if self.may_start(c) {
                self.terms
                    .iter()
                    .enumerate()
                    .filter(|(_, term)| boundary || !term.word_start)
                    .filter_map(|(index, term)| {
                        let end = match_term(&chars, at, term)?;
                        let end_byte = chars.get(end).map_or(text.len(), |(i, _)| *i);
                        let word_ok = match chars.get(end) {
                            Some((_, next)) => !term.word_end || !is_word(*next),
                            None => final_text || !term.word_end,
                        };
                        word_ok.then_some((end, end_byte, index))
                    })
                    .max_by_key(|(end, _, index)| (*end, usize::MAX - index))
            } else {
                None
            };
            match best {
                Some((end, end_byte, term)) => {
                    hits.push(Hit {
                        start,
                        end: end_byte,
                        term,
                    });
                    at = end;
                }
                None => at += 1,
            }
        }
        hits
    }

    /// Where the earliest term that may still be forming at the end of
    /// `text` starts: a proper prefix of a term, or a whole term that must
    /// end a word and ends the text. `text.len()` if none. `after_word` as
    /// for [`Keywords::find`].
    pub fn pending_start(&self, text: &str, after_word: bool) -> usize {
        if self.terms.is_empty() {
            return text.len();
        }
        let chars: Vec<(usize, char)> = text.char_indices().map(|(i, c)| (i, fold(c))).collect();
        // A term's pieces match at least one character each; a space run may
        // be longer, so look back a little further than the longest term.
        let from = chars.len().saturating_sub(self.longest * 4 + 8);
        for at in from..chars.len() {
            let boundary = if at == 0 {
                !after_word
            } else {
                !is_word(chars[at - 1].1)
            };
            if !self.may_start(chars[at].1) {
                continue;
            }
            let pending = self
                .terms
                .iter()
                .filter(|term| boundary || !term.word_start)
                .any(|term| prefix_until_end(&chars, at, term));
            if pending {
                return chars[at].0;
            }
        }
        text.len()
    }
}

/// If `term` matches `chars` from `at`, the index one past the match.
fn match_term(chars: &[(usize, char)], at: usize, term: &Term) -> Option<usize> {
    let mut i = at;
    for piece in &term.pieces {
        match piece {
            Piece::Char(c) => {
                if chars.get(i)?.1 != *c {
                    return None;
                }
                i += 1;
            }
            Piece::Space => {
                if !chars.get(i)?.1.is_whitespace() {
                    return None;
                }
                while chars.get(i).is_some_and(|(_, c)| c.is_whitespace()) {
                    i += 1;
                }
            }
        }
    }
    Some(i)
}

/// Whether `chars[at..]`, all of it, may be the start of a match of `term`:
/// a proper prefix, or the whole term when it must end a word (the next
/// character decides), or text ending in a space run the term continues.
fn prefix_until_end(chars: &[(usize, char)], at: usize, term: &Term) -> bool {
    let mut i = at;
    for (n, piece) in term.pieces.iter().enumerate() {
        if i == chars.len() {
            return true;
        }
        match piece {
            Piece::Char(c) => {
                if chars[i].1 != *c {
                    return false;
                }
                i += 1;
            }
            Piece::Space => {
                if !chars[i].1.is_whitespace() {
                    return false;
                }
                while i < chars.len() && chars[i].1.is_whitespace() {
                    i += 1;
                }
                if i == chars.len() && n + 1 < term.pieces.len() {
                    return true;
                }
            }
        }
    }
    i == chars.len() && term.word_end
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
