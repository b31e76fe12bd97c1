//! The default price table: list prices of popular models, shipped in the
//! repository (`pricing/prices.toml`, compiled in) and overridable with a
//! file of the same format named by `[pricing] file`.
//!
//! It fills in prices the config leaves out: an explicit `price` on a model
//! or target wins, then the table, then the model is free (and the gateway
//! warns at start). Lookups take the longest key that prefixes the model
//! name at a word boundary, so dated and tagged variants
//! (`gpt-4o-2024-08-06`, `claude-3-5-haiku-latest`) find their base entry.
//! The table is small (about 45 entries) and looked up when a config is
//! loaded, never per request.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{Config, PriceConfig};

/// The table shipped with weir.
pub const DEFAULT_PRICES: &str = include_str!("../../pricing/prices.toml");

/// Why a price file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PriceTableError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{file}: {reason}")]
    Invalid { file: String, reason: String },
}

/// The file's shape: `[models]` of `"name" = { input_per_mtok, … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(default)]
    models: toml::Table,
}

/// Prices by model name.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    /// Lower-case names, longest first (the first prefix match is the
    /// longest).
    entries: Vec<(String, PriceConfig)>,
}

impl PriceTable {
    /// The table shipped with weir.
    pub fn embedded() -> PriceTable {
        let mut table = PriceTable::default();
        match parse(DEFAULT_PRICES, "pricing/prices.toml") {
            Ok(entries) => table.merge(entries),
            // A test keeps the shipped file valid; a broken build still
            // starts, with every price from the config.
            Err(error) => tracing::error!(%error, "the default price table is invalid"),
        }
        table
    }

    /// The shipped table with `path`'s entries added; a name in both takes
    /// `path`'s prices.
    pub fn with_file(path: &Path) -> Result<PriceTable, PriceTableError> {
        let text = std::fs::read_to_string(path).map_err(|error| PriceTableError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let entries = parse(&text, &path.display().to_string())?;
        let mut table = PriceTable::embedded();
        table.merge(entries);
        Ok(table)
    }

    /// The table a config asks for: the shipped one, plus `[pricing] file`
    /// (resolved against the config's folder) if set.
    pub fn for_config(config: &Config) -> Result<PriceTable, PriceTableError> {
        match config.pricing_file() {
            Some(path) => PriceTable::with_file(&path),
            None => Ok(PriceTable::embedded()),
        }
    }

    /// The price of a provider's model name, if the table knows it.
    pub fn lookup(&self, model: &str) -> Option<PriceConfig> {
        let lower = model.to_ascii_lowercase();
        let name = lower.rsplit('/').next().unwrap_or_default();
        self.entries
            .iter()
            .find(|(key, _)| {
                name.strip_prefix(key.as_str())
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric()))
            })
            .map(|(_, price)| *price)
    }

    /// How many models the table prices.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn merge(&mut self, entries: Vec<(String, PriceConfig)>) {
        for (name, price) in entries {
            match self.entries.iter_mut().find(|(key, _)| *key == name) {
                Some(entry) => entry.1 = price,
                None => self.entries.push((name, price)),
            }
        }
        self.entries
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    }
}

/// Parse and check a price file: every entry a `price` table with finite,
/// non-negative numbers. Errors name the entry and field.
fn parse(text: &str, file: &str) -> Result<Vec<(String, PriceConfig)>, PriceTableError> {
    let invalid = |reason: String| PriceTableError::Invalid {
        file: file.to_string(),
        reason,
    };
    let doc: PriceFile = toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
    let mut entries = Vec::with_capacity(doc.models.len());
    for (name, value) in doc.models {
        let at = format!("models.\"{name}\"");
        let price: PriceConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." {
                at.clone()
            } else {
                format!("{at}.{path}")
            };
            invalid(format!("{key}: {}", e.into_inner().to_string().trim()))
        })?;
        for (field, value) in [
            ("input_per_mtok", Some(price.input_per_mtok)),
            ("output_per_mtok", Some(price.output_per_mtok)),
            ("cached_input_per_mtok", price.cached_input_per_mtok),
        ] {
            if let Some(v) = value
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(invalid(format!(
                    "{at}.{field}: must be a non-negative number of USD per million tokens, not {v}"
                )));
            }
        }
        let key = name.to_ascii_lowercase();
        if key.is_empty() || key.contains('/') {
            return Err(invalid(format!(
                "{at}: a model name, without a provider path"
            )));
        }
        entries.push((key, price));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(table: &PriceTable, model: &str) -> Option<(f64, f64, Option<f64>)> {
        table
            .lookup(model)
            .map(|p| (p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok))
    }

    #[test]
    fn the_shipped_table_parses_and_covers_popular_models() {
        parse(DEFAULT_PRICES, "prices.toml").unwrap();
        let t = PriceTable::embedded();
        assert!(t.len() >= 40, "{}", t.len());
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "gpt-5",
            "o1",
            "o3-mini",
            "o4-mini",
            "gpt-3.5-turbo",
            "text-embedding-3-small",
            "text-embedding-3-large",
            "claude-3-5-haiku-latest",
            "claude-3-5-sonnet-20241022",
            "claude-3-7-sonnet-20250219",
            "claude-sonnet-4-20250514",
            "claude-opus-4-20250514",
            "gemini-1.5-flash",
            "gemini-1.5-pro",
            "gemini-2.0-flash",
            "gemini-2.5-flash",
            "gemini-2.5-pro",
        ] {
            assert!(t.lookup(model).is_some(), "{model}");
        }
    }

    #[test]
    fn lookups_take_the_longest_prefix_at_a_word_boundary() {
        let t = PriceTable::embedded();
        assert_eq!(price(&t, "gpt-4o"), Some((2.5, 10.0, Some(1.25))));
        assert_eq!(
            price(&t, "gpt-4o-2024-08-06"),
            Some((2.5, 10.0, Some(1.25)))
        );
        assert_eq!(price(&t, "gpt-4o-2024-05-13"), Some((5.0, 15.0, None)));
        assert_eq!(
            price(&t, "gpt-4o-mini-2024-07-18"),
            Some((0.15, 0.6, Some(0.075)))
        );
        assert_eq!(price(&t, "GPT-4o-mini"), price(&t, "gpt-4o-mini"));
        assert_eq!(
            price(&t, "openai/gpt-4.1-nano"),
            Some((0.1, 0.4, Some(0.025)))
        );
        assert_eq!(price(&t, "gpt-4-0613"), Some((30.0, 60.0, None)));
        assert_eq!(
            price(&t, "gpt-4-turbo-2024-04-09"),
            Some((10.0, 30.0, None))
        );
        assert_eq!(
            price(&t, "o3-mini-2025-01-31"),
            Some((1.1, 4.4, Some(0.55)))
        );
        assert_eq!(price(&t, "o3"), Some((2.0, 8.0, Some(0.5))));
        assert_eq!(
            price(&t, "claude-3-5-haiku-20241022"),
            Some((0.8, 4.0, Some(0.08)))
        );
        assert_eq!(
            price(&t, "claude-opus-4-1-20250805"),
            Some((15.0, 75.0, Some(1.5)))
        );
        assert_eq!(
            price(&t, "claude-opus-4-5-20251101"),
            Some((5.0, 25.0, Some(0.5)))
        );
        assert_eq!(
            price(&t, "models/gemini-2.0-flash-001"),
            Some((0.1, 0.4, Some(0.025)))
        );
        assert_eq!(
            price(&t, "gemini-2.5-flash-lite"),
            Some((0.1, 0.4, Some(0.025)))
        );
        // A prefix must end at a word boundary.
        assert_eq!(price(&t, "gpt-4x"), None);
        assert_eq!(price(&t, "o1x"), None);
        assert_eq!(price(&t, "llama-3.1-8b"), None);
        assert_eq!(price(&t, "mock"), None);
    }

    #[test]
    fn an_override_file_adds_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.toml");
        std::fs::write(
            &path,
            r#"
            [models]
            "gpt-4o" = { input_per_mtok = 2.0, output_per_mtok = 8.0 }
            "my-finetune" = { input_per_mtok = 0.3, output_per_mtok = 1.2, cached_input_per_mtok = 0.15 }
            "#,
        )
        .unwrap();
        let t = PriceTable::with_file(&path).unwrap();
        assert_eq!(price(&t, "gpt-4o-2024-11-20"), Some((2.0, 8.0, None)));
        assert_eq!(price(&t, "my-finetune-v2"), Some((0.3, 1.2, Some(0.15))));
        assert_eq!(price(&t, "gpt-4o-mini"), Some((0.15, 0.6, Some(0.075))));
        assert_eq!(t.len(), PriceTable::embedded().len() + 1);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = |text: &str| parse(text, "p.toml").unwrap_err().to_string();
        assert!(err("[models\n").contains("p.toml"), "{}", err("[models\n"));
        let e = err(r#"[models]
            "x" = { input_per_mtok = -1.0, output_per_mtok = 1.0 }"#);
        assert!(
            e.contains("models.\"x\".input_per_mtok") && e.contains("non-negative"),
            "{e}"
        );
        let e = err(r#"[models]
            "x" = { input = 1.0 }"#);
        assert!(e.contains("models.\"x\"") && e.contains("input"), "{e}");
        let e = err(r#"[models]
            "x" = { input_per_mtok = "cheap" }"#);
        assert!(e.contains("models.\"x\".input_per_mtok"), "{e}");
        let e = err("[prices]\n");
        assert!(e.contains("prices"), "{e}");
        let e = err(r#"[models]
            "openai/x" = { input_per_mtok = 1.0 }"#);
        assert!(e.contains("without a provider path"), "{e}");
        let missing = PriceTable::with_file(Path::new("/nonexistent/prices.toml")).unwrap_err();
        assert!(matches!(missing, PriceTableError::Read { .. }), "{missing}");
    }
}
