//! Forwarding a client's JSON object as it was sent, with some top-level
//! members replaced or added, instead of re-serializing the parsed tree.
//!
//! Every request to an OpenAI-style upstream is the client's body with
//! `model` replaced (and, for streams, usage requested). Writing the parsed
//! `serde_json` tree back out costs about as much as parsing it — ~11k
//! instructions for a 1 KB prompt, most of them escaping its strings; one
//! pass over the bytes to find the members costs ~4k, and the upstream gets
//! the client's JSON byte for byte (number formatting, key order and all).
//!
//! The bytes are ones `serde_json` already accepted, so the scanner only
//! finds boundaries; it validates nothing. Anything it does not expect —
//! a key written with an escape, a key that appears twice, bytes that do
//! not look like an object — makes it give up (`None`), and the caller
//! re-serializes the tree.

use std::ops::Range;

/// What to do with a top-level member.
#[derive(Debug, Clone, Copy)]
pub enum Edit<'a> {
    /// Set its value to this JSON text: replaced where present, added at
    /// the front where absent.
    Set(&'a [u8]),
    /// Leave it out (nothing happens where absent).
    Remove,
    /// Leave it as it is (for a key scanned for before one edited).
    Keep,
}

/// `json` with its top-level members edited as `edits` say, every other
/// byte as it was. `None` if `json` is not a plain object this scanner can
/// splice.
pub fn with_members(json: &[u8], edits: &[(&str, Edit<'_>)]) -> Option<Vec<u8>> {
    Members::scan_by(json, edits.len(), |i| edits.get(i).map(|(key, _)| *key))?.edit(json, edits)
}

/// A top-level member: where its key's opening quote is, and its value.
#[derive(Debug, Clone)]
struct Member {
    key: usize,
    value: Range<usize>,
}

/// Where the members of one JSON object are, and which of them have the
/// keys it was scanned for: scan once, then read values and edit.
#[derive(Debug, Clone)]
pub struct Members {
    /// Index of the opening `{`.
    open: usize,
    members: Vec<Member>,
    /// Per key scanned for, the index of its member.
    found: Vec<Option<usize>>,
}

impl Members {
    /// Scan `json` (an object serde_json accepted) for `keys`. `None` if it
    /// is not a plain object this scanner can splice: a key with an escape,
    /// a key scanned for that appears twice, or a shape it does not expect.
    pub fn scan(json: &[u8], keys: &[&str]) -> Option<Members> {
        Self::scan_by(json, keys.len(), |i| keys.get(i).copied())
    }

    /// [`Members::scan`] for `n` keys named by `key`.
    fn scan_by<'k>(
        json: &[u8],
        n: usize,
        key: impl Fn(usize) -> Option<&'k str>,
    ) -> Option<Members> {
        let open = skip_ws(json, 0);
        if json.get(open) != Some(&b'{') {
            return None;
        }
        let mut object = Members {
            open,
            members: Vec::with_capacity(12),
            found: vec![None; n],
        };
        let mut at = skip_ws(json, open + 1);
        if json.get(at) == Some(&b'}') {
            return Some(object);
        }
        loop {
            let (key_end, escaped) = string_end(json, at)?;
            if escaped {
                return None;
            }
            let member_key = json.get(at + 1..key_end - 1)?;
            let key_start = at;
            at = skip_ws(json, key_end);
            if json.get(at) != Some(&b':') {
                return None;
            }
            let value_start = skip_ws(json, at + 1);
            let value_end = value_end(json, value_start)?;
            for (i, slot) in object.found.iter_mut().enumerate() {
                if key(i).is_some_and(|name| name.as_bytes() == member_key) {
                    if slot.is_some() {
                        return None;
                    }
                    *slot = Some(object.members.len());
                }
            }
            object.members.push(Member {
                key: key_start,
                value: value_start..value_end,
            });
            at = skip_ws(json, value_end);
            match json.get(at) {
                Some(b',') => at = skip_ws(json, at + 1),
                Some(b'}') => return Some(object),
                _ => return None,
            }
        }
    }

    /// The value (JSON text) of the `i`th key scanned for, if present.
    pub fn value<'j>(&self, json: &'j [u8], i: usize) -> Option<&'j [u8]> {
        json.get(self.range(i)?)
    }

    /// [`Members::value`] of text scanned as `json.as_bytes()`: a slice of
    /// the text, so it needs no second UTF-8 check.
    pub fn value_str<'j>(&self, json: &'j str, i: usize) -> Option<&'j str> {
        json.get(self.range(i)?)
    }

    /// Where the value of the `i`th key scanned for is, if present.
    pub fn range(&self, i: usize) -> Option<Range<usize>> {
        Some(self.members.get((*self.found.get(i)?)?)?.value.clone())
    }

    /// `json` with `edits` applied; their keys are the keys scanned for, in
    /// the same order (an edit may be left off the end).
    pub fn edit(&self, json: &[u8], edits: &[(&str, Edit<'_>)]) -> Option<Vec<u8>> {
        let members = &self.members;
        let edited = || edits.iter().zip(&self.found);
        // Member i: `None` to drop it, else its value's replacement (if any).
        let fate = |i: usize| -> Option<Option<&[u8]>> {
            match edited().find(|(_, found)| **found == Some(i)) {
                Some(((_, Edit::Remove), _)) => None,
                Some(((_, Edit::Set(value)), _)) => Some(Some(*value)),
                Some(((_, Edit::Keep), _)) | None => Some(None),
            }
        };
        let inserted = || {
            edited().filter_map(|((key, edit), found)| match (edit, found) {
                (Edit::Set(value), None) => Some((*key, *value)),
                _ => None,
            })
        };
        let removed = edited()
            .filter(|((_, edit), found)| matches!(edit, Edit::Remove) && found.is_some())
            .count();
        let any_kept = removed < members.len();
        let extra: usize = inserted().map(|(k, v)| k.len() + v.len() + 4).sum();
        let mut out = Runs::new(json, json.len() + extra);
        out.copy(0..self.open + 1)?;
        let count = inserted().count();
        for (n, (key, value)) in inserted().enumerate() {
            out.write(b"\"");
            out.write(key.as_bytes());
            out.write(b"\":");
            out.write(value);
            if n + 1 < count || any_kept {
                out.write(b",");
            }
        }
        let Some(first) = members.first() else {
            out.copy(self.open + 1..json.len())?;
            return Some(out.finish());
        };
        // Leading whitespace; each kept member after the separator that
        // followed the kept member before it; then whatever followed the
        // last. Untouched stretches are copied in one piece each.
        out.copy(self.open + 1..first.key)?;
        let mut previous: Option<usize> = None;
        for (i, member) in members.iter().enumerate() {
            let Some(replacement) = fate(i) else {
                continue;
            };
            if let Some(p) = previous {
                let next_key = members.get(p + 1)?.key;
                out.copy(members[p].value.end..next_key)?;
            }
            out.copy(member.key..member.value.start)?;
            match replacement {
                Some(value) => out.write(value),
                None => out.copy(member.value.clone())?,
            }
            previous = Some(i);
        }
        let last = members.last()?;
        out.copy(last.value.end..json.len())?;
        Some(out.finish())
    }
}

/// Output made of stretches of `json` and new bytes: a stretch that
/// continues the one before it extends it, so an edit that keeps most of
/// the members costs a few copies, not three per member (~1k instructions
/// per streamed chunk).
struct Runs<'j> {
    json: &'j [u8],
    out: Vec<u8>,
    pending: Range<usize>,
}

impl<'j> Runs<'j> {
    fn new(json: &'j [u8], capacity: usize) -> Runs<'j> {
        Runs {
            json,
            out: Vec::with_capacity(capacity),
            pending: 0..0,
        }
    }

    /// Append `json[range]`; `None` if it is out of bounds.
    fn copy(&mut self, range: Range<usize>) -> Option<()> {
        self.json.get(range.clone())?;
        if self.pending.end == range.start {
            self.pending.end = range.end;
        } else {
            self.flush();
            self.pending = range;
        }
        Some(())
    }

    fn write(&mut self, bytes: &[u8]) {
        self.flush();
        self.out.extend_from_slice(bytes);
    }

    fn flush(&mut self) {
        if let Some(stretch) = self.json.get(self.pending.clone()) {
            self.out.extend_from_slice(stretch);
        }
        self.pending = self.pending.end..self.pending.end;
    }

    fn finish(mut self) -> Vec<u8> {
        self.flush();
        self.out
    }
}

/// `json` with each range replaced by its bytes; the ranges ascending and
/// not overlapping (`None` otherwise).
pub fn replace(json: &[u8], edits: &[(Range<usize>, Vec<u8>)]) -> Option<Vec<u8>> {
    let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(json.len() + extra);
    let mut at = 0;
    for (range, bytes) in edits {
        out.extend_from_slice(json.get(at..range.start)?);
        out.extend_from_slice(bytes);
        at = range.end;
    }
    out.extend_from_slice(json.get(at..)?);
    Some(out)
}

fn skip_ws(json: &[u8], mut at: usize) -> usize {
    while matches!(json.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// `at` is a string's opening quote: the index just past its closing one,
/// and whether it contains an escape.
fn string_end(json: &[u8], at: usize) -> Option<(usize, bool)> {
    if json.get(at) != Some(&b'"') {
        return None;
    }
    let mut escaped = false;
    let mut i = at + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', json.get(i..)?)?;
        if json.get(i) == Some(&b'\\') {
            escaped = true;
            i += 2;
        } else {
            return Some((i + 1, escaped));
        }
    }
}

/// `at` starts a value: the index just past it.
fn value_end(json: &[u8], at: usize) -> Option<usize> {
    match json.get(at)? {
        b'"' => string_end(json, at).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match json.get(i)? {
                    b'"' => {
                        i = string_end(json, i)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let rest = json.get(at..)?;
            let len = rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len());
            (len > 0).then_some(at + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Edit, with_members};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn edits<'a>(members: &[(&'a str, Option<&'a str>)]) -> Vec<(&'a str, Edit<'a>)> {
        members
            .iter()
            .map(|(k, v)| (*k, v.map_or(Edit::Remove, |v| Edit::Set(v.as_bytes()))))
            .collect()
    }

    /// Each member set (or removed, for `None`), as text.
    fn spliced_text(json: &str, members: &[(&str, Option<&str>)]) -> Option<String> {
        let out = with_members(json.as_bytes(), &edits(members))?;
        Some(String::from_utf8(out).expect("UTF-8 in, UTF-8 out"))
    }

    /// The same, parsed.
    fn spliced(json: &str, members: &[(&str, Option<&str>)]) -> Option<Value> {
        let text = spliced_text(json, members)?;
        Some(serde_json::from_str(&text).expect("the splice is valid JSON"))
    }

    #[test]
    fn replaces_and_adds_members_keeping_the_rest() {
        let body = r#"{ "model" : "chat", "messages": [{"role": "user", "content": "a \"quoted\" {model} [x]"}], "n": 1.50, "stream": true }"#;
        let out = spliced(
            body,
            &[
                ("model", Some(r#""gpt-4o-mini""#)),
                ("stream_options", Some(r#"{"include_usage":true}"#)),
            ],
        )
        .unwrap();
        assert_eq!(out["model"], "gpt-4o-mini");
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        assert_eq!(out["messages"][0]["content"], "a \"quoted\" {model} [x]");
        assert_eq!(out["stream"], true);
        // The client's bytes stay as sent.
        assert_eq!(
            spliced_text(body, &[("model", Some(r#""m""#))]).unwrap(),
            body.replace(r#""chat""#, r#""m""#)
        );
        assert_eq!(
            spliced("{}", &[("model", Some("\"m\"")), ("x", Some("1"))]).unwrap(),
            json!({"model": "m", "x": 1})
        );
        assert_eq!(
            spliced(
                r#"{"stream_options": null, "model": "a"}"#,
                &[("stream_options", Some("{}"))]
            )
            .unwrap(),
            json!({"stream_options": {}, "model": "a"})
        );
    }

    #[test]
    fn removes_members_wherever_they_are() {
        let chunk = r#"{"id": "c", "model": "m", "usage": null}"#;
        assert_eq!(
            spliced_text(chunk, &[("model", Some("\"x\"")), ("usage", None)]).unwrap(),
            r#"{"id": "c", "model": "x"}"#
        );
        assert_eq!(
            spliced_text(chunk, &[("id", None)]).unwrap(),
            r#"{"model": "m", "usage": null}"#
        );
        assert_eq!(
            spliced_text(chunk, &[("model", None), ("usage", None)]).unwrap(),
            r#"{"id": "c"}"#
        );
        assert_eq!(
            spliced_text(chunk, &[("id", None), ("model", None), ("usage", None)]).unwrap(),
            "{}"
        );
        assert_eq!(
            spliced_text(r#"{"usage": 1}"#, &[("usage", None), ("model", Some("2"))]).unwrap(),
            r#"{"model":2}"#
        );
        assert_eq!(spliced_text(chunk, &[("absent", None)]).unwrap(), chunk);
    }

    #[test]
    fn gives_up_on_what_it_does_not_expect() {
        for body in [
            r#"{"model": "a", "model": "b"}"#,
            r#"{"mod\u0065l": "a"}"#,
            r#"["model"]"#,
            r#"{"model" "a"}"#,
            r#"{"model": "a""#,
            "",
        ] {
            assert_eq!(spliced(body, &[("model", Some("\"m\""))]), None, "{body}");
        }
        // An escaped key that is not wanted is still not trusted.
        assert_eq!(
            spliced(r#"{"a\"b": 1, "model": "x"}"#, &[("model", Some("1"))]),
            None
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[ -~\u{e9}\u{1F600}\\\\\"\n]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z{}\\[\\]\",:]{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Merging contiguous stretches changes nothing: any sequence of
        /// copies and writes gives the bytes their plain concatenation does,
        /// and an out-of-bounds copy is refused.
        #[test]
        fn runs_are_the_plain_concatenation(
            json in prop::collection::vec(any::<u8>(), 0..40),
            ops in prop::collection::vec(
                prop_oneof![
                    (0usize..45, 0usize..12).prop_map(|(start, len)| Err((start, len))),
                    prop::collection::vec(any::<u8>(), 0..4).prop_map(Ok),
                ],
                0..12,
            ),
        ) {
            let mut runs = super::Runs::new(&json, 0);
            let mut plain = Vec::new();
            for op in &ops {
                match op {
                    Ok(bytes) => {
                        runs.write(bytes);
                        plain.extend_from_slice(bytes);
                    }
                    Err((start, len)) => {
                        let range = *start..start + len;
                        let copied = runs.copy(range.clone());
                        prop_assert_eq!(copied.is_some(), range.end <= json.len());
                        if let Some(stretch) = json.get(range) {
                            plain.extend_from_slice(stretch);
                        }
                    }
                }
            }
            prop_assert_eq!(runs.finish(), plain);
        }

        /// Splicing the bytes gives what editing the parsed tree gives, for
        /// any object, pretty-printed or not, and any mix of edits.
        #[test]
        fn splicing_matches_editing_the_tree(
            object in prop::collection::btree_map("[a-e]{1,2}", json_value(), 0..6),
            pretty in any::<bool>(),
            sets in prop::collection::btree_map("[a-e]{1,2}", "[ -~\u{e9}]{0,10}", 0..3),
            removals in prop::collection::btree_set("[a-e]{1,2}", 0..3),
        ) {
            let tree = Value::Object(object.into_iter().collect());
            let text = if pretty {
                serde_json::to_string_pretty(&tree).unwrap()
            } else {
                serde_json::to_string(&tree).unwrap()
            };
            let set_json: Vec<(String, String)> = sets
                .iter()
                .filter(|(k, _)| !removals.contains(*k))
                .map(|(k, v)| (k.clone(), serde_json::to_string(v).unwrap()))
                .collect();
            let mut members: Vec<(&str, Option<&str>)> =
                set_json.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))).collect();
            members.extend(removals.iter().map(|k| (k.as_str(), None)));
            let out = spliced(&text, &members).expect("serde_json's own output splices");
            // (Parsed from the same text: serde_json's float parsing does
            // not round-trip every f64.)
            let mut expected: Value = serde_json::from_str(&text).unwrap();
            let map = expected.as_object_mut().unwrap();
            for (k, v) in &sets {
                if !removals.contains(k) {
                    map.insert(k.clone(), Value::String(v.clone()));
                }
            }
            for k in &removals {
                map.remove(k);
            }
            prop_assert_eq!(out, expected);
        }
    }
}
