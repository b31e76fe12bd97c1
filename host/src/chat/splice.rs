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

/// `json` with the top-level members named in `members` set to the given
/// values (JSON text): replaced where present, added at the front where
/// absent. `None` if `json` is not a plain object this scanner can splice.
pub fn with_members(json: &[u8], members: &[(&str, &[u8])]) -> Option<Vec<u8>> {
    let object = scan_object(json, members)?;
    let extra: usize = members.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(json.len() + extra);
    out.extend_from_slice(json.get(..=object.open)?);
    let missing: Vec<&(&str, &[u8])> = members
        .iter()
        .zip(&object.found)
        .filter(|(_, at)| at.is_none())
        .map(|(member, _)| member)
        .collect();
    for (i, (key, value)) in missing.iter().enumerate() {
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value);
        if i + 1 < missing.len() || object.members > 0 {
            out.push(b',');
        }
    }
    let mut replaced: Vec<(&Range<usize>, &[u8])> = object
        .found
        .iter()
        .zip(members)
        .filter_map(|(at, (_, value))| Some((at.as_ref()?, *value)))
        .collect();
    replaced.sort_by_key(|(at, _)| at.start);
    let mut from = object.open + 1;
    for (at, value) in replaced {
        out.extend_from_slice(json.get(from..at.start)?);
        out.extend_from_slice(value);
        from = at.end;
    }
    out.extend_from_slice(json.get(from..)?);
    Some(out)
}

/// What [`scan_object`] found.
struct Object {
    /// Index of the opening `{`.
    open: usize,
    /// Per wanted key, the byte range of its value.
    found: Vec<Option<Range<usize>>>,
    /// How many members the object has.
    members: usize,
}

fn scan_object(json: &[u8], wanted: &[(&str, &[u8])]) -> Option<Object> {
    let open = skip_ws(json, 0);
    if json.get(open) != Some(&b'{') {
        return None;
    }
    let mut found = vec![None; wanted.len()];
    let mut members = 0;
    let mut at = skip_ws(json, open + 1);
    if json.get(at) == Some(&b'}') {
        return Some(Object {
            open,
            found,
            members,
        });
    }
    loop {
        let (key_end, escaped) = string_end(json, at)?;
        if escaped {
            return None;
        }
        let key = json.get(at + 1..key_end - 1)?;
        at = skip_ws(json, key_end);
        if json.get(at) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(json, at + 1);
        let value_end = value_end(json, value_start)?;
        members += 1;
        for (slot, (name, _)) in found.iter_mut().zip(wanted) {
            if key == name.as_bytes() {
                if slot.is_some() {
                    return None;
                }
                *slot = Some(value_start..value_end);
            }
        }
        at = skip_ws(json, value_end);
        match json.get(at) {
            Some(b',') => at = skip_ws(json, at + 1),
            Some(b'}') => {
                return Some(Object {
                    open,
                    found,
                    members,
                });
            }
            _ => return None,
        }
    }
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
    use super::with_members;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn spliced(json: &str, members: &[(&str, &str)]) -> Option<Value> {
        let members: Vec<(&str, &[u8])> = members.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let out = with_members(json.as_bytes(), &members)?;
        Some(serde_json::from_slice(&out).expect("the splice is valid JSON"))
    }

    #[test]
    fn replaces_and_adds_members_keeping_the_rest() {
        let body = r#"{ "model" : "chat", "messages": [{"role": "user", "content": "a \"quoted\" {model} [x]"}], "n": 1.50, "stream": true }"#;
        let out = spliced(
            body,
            &[
                ("model", r#""gpt-4o-mini""#),
                ("stream_options", r#"{"include_usage":true}"#),
            ],
        )
        .unwrap();
        assert_eq!(out["model"], "gpt-4o-mini");
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        assert_eq!(out["messages"][0]["content"], "a \"quoted\" {model} [x]");
        assert_eq!(out["stream"], true);
        // The client's bytes stay as sent.
        let raw = with_members(body.as_bytes(), &[("model", br#""m""#)]).unwrap();
        assert!(String::from_utf8(raw).unwrap().contains(r#""n": 1.50"#));
        assert_eq!(
            spliced("{}", &[("model", "\"m\""), ("x", "1")]).unwrap(),
            json!({"model": "m", "x": 1})
        );
        assert_eq!(
            spliced(
                r#"{"stream_options": null, "model": "a"}"#,
                &[("stream_options", "{}")]
            )
            .unwrap(),
            json!({"stream_options": {}, "model": "a"})
        );
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
            assert_eq!(spliced(body, &[("model", "\"m\"")]), None, "{body}");
        }
        // An escaped key that is not wanted is still not trusted.
        assert_eq!(
            spliced(r#"{"a\"b": 1, "model": "x"}"#, &[("model", "1")]),
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
        /// Splicing the bytes gives what editing the parsed tree gives, for
        /// any object, pretty-printed or not.
        #[test]
        fn splicing_matches_editing_the_tree(
            object in prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..6),
            pretty in any::<bool>(),
            model in "[ -~\u{e9}]{0,10}",
        ) {
            let tree = Value::Object(object.into_iter().collect());
            let text = if pretty {
                serde_json::to_string_pretty(&tree).unwrap()
            } else {
                serde_json::to_string(&tree).unwrap()
            };
            let model_json = serde_json::to_string(&model).unwrap();
            let out = spliced(&text, &[("model", &model_json), ("stream_options", "{\"include_usage\":true}")])
                .expect("serde_json's own output splices");
            // (Parsed from the same text: serde_json's float parsing does
            // not round-trip every f64.)
            let mut expected: Value = serde_json::from_str(&text).unwrap();
            expected["model"] = Value::String(model);
            expected["stream_options"] = json!({"include_usage": true});
            prop_assert_eq!(out, expected);
        }
    }
}
