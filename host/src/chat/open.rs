//! Structs that keep the JSON fields they do not know.
//!
//! Upstream chunks carry fields weir does not interpret (`logprobs`,
//! `system_fingerprint`, `refusal`, `reasoning_content`, …) that must reach the
//! client unchanged. `#[serde(flatten)]` would keep them but buffers every
//! object through serde's generic `Content` tree, which measured several
//! times slower on the streaming path. [`open_struct!`] instead generates a
//! map visitor that parses known fields straight into their types and keeps
//! unknown ones as raw JSON text ([`Extra`]), written back verbatim.

use std::fmt;

use serde::de::{DeserializeSeed, Visitor};
use serde_json::value::RawValue;

/// Unknown fields of an object, in arrival order, as raw JSON.
#[derive(Debug, Clone, Default)]
pub struct Extra(pub Vec<(String, Box<RawValue>)>);

impl Extra {
    /// The raw JSON of an unknown field.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }

    /// Add or replace a field.
    pub fn insert(&mut self, key: &str, value: &serde_json::Value) {
        let Ok(raw) = serde_json::value::to_raw_value(value) else {
            return;
        };
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = raw,
            None => self.0.push((key.to_string(), raw)),
        }
    }

    /// No unknown fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for Extra {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((a, x), (b, y))| a == b && x.get() == y.get())
    }
}

/// A key of a known field (the static name) or an unknown one.
pub enum Key {
    Known(&'static str),
    Other(String),
}

/// Reads an object key without allocating for known names.
pub struct KeySeed(pub &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match self.0.iter().find(|k| **k == v) {
            Some(k) => Key::Known(k),
            None => Key::Other(v.to_string()),
        })
    }
}

/// Define a struct whose unknown JSON fields are kept in `extra`.
///
/// Each field is `name: Type = "json_name" always|skip_none`: `skip_none`
/// fields (an `Option`) are left out of the output when `None`. Missing
/// fields take their `Default`.
macro_rules! open_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident : $ty:ty = $json:literal $mode:ident
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            /// Fields weir does not interpret, passed through verbatim.
            pub extra: $crate::chat::open::Extra,
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("an object (", stringify!($name), ")"))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        const NAMES: &[&str] = &[$($json),*];
                        let mut out = $name::default();
                        while let Some(key) = map.next_key_seed($crate::chat::open::KeySeed(NAMES))? {
                            match key {
                                $crate::chat::open::Key::Known(k) => match k {
                                    $( $json => out.$field = map.next_value::<Option<$ty>>()?.unwrap_or_default(), )*
                                    _ => { map.next_value::<serde::de::IgnoredAny>()?; }
                                },
                                $crate::chat::open::Key::Other(k) => {
                                    let raw: Box<serde_json::value::RawValue> = map.next_value()?;
                                    out.extra.0.push((k, raw));
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(V)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(None)?;
                $( open_struct!(@field map, self, $field, $json, $mode); )*
                for (k, v) in &self.extra.0 {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    };
    (@field $map:ident, $self:ident, $field:ident, $json:literal, always) => {
        $map.serialize_entry($json, &$self.$field)?;
    };
    (@field $map:ident, $self:ident, $field:ident, $json:literal, skip_none) => {
        if let Some(v) = &$self.$field {
            $map.serialize_entry($json, v)?;
        }
    };
}

pub(crate) use open_struct;
