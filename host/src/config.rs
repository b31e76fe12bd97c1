//! The configuration file (SPEC §3): parsing, defaults and validation.
//!
//! A bad config never starts a half-working gateway, and a user fixing one
//! should see every problem at once, not one per run. So the file is first
//! parsed as plain TOML (a syntax error is the one thing that stops early),
//! then each section — and each element of each array — is deserialized on
//! its own, collecting errors with their `section[i].field` path, and finally
//! cross-references (targets → providers, keys → models, models → policies)
//! and the environment (provider keys) are checked.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The embedded default: the built-in mock provider, state in memory.
pub const EMBEDDED_DEFAULT: &str = r#"
[server]
listen = "127.0.0.1:4000"
admin_listen = "127.0.0.1:4001"

[state]
backend = "memory"

[[providers]]
name = "mock"
kind = "mock"
chunks = 12
chunk_delay_ms = 40

[[models]]
name = "mock"
targets = [{ provider = "mock", model = "mock" }]
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }
"#;

/// Guardrails the embedded default applies when they are built, with config.
const BUNDLED_GUARDRAILS: &[(&str, &str)] = &[
    ("pii-redact", "{ action = \"redact\" }"),
    ("prompt-injection", "{}"),
];

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `providers[1].base_url`.
    pub key: String,
    pub reason: String,
}

/// Every problem found in a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    /// The file, as given on the command line (or `<embedded default>`).
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{}: {n} configuration error{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            if e.key.is_empty() {
                write!(f, "\n  {}: {}", self.file, e.reason)?;
            } else {
                write!(f, "\n  {}: {}: {}", self.file, e.key, e.reason)?;
            }
        }
        Ok(())
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; `None` for the embedded default.
    pub source: Option<PathBuf>,
    /// The folder relative paths (sqlite, policies) are resolved against.
    pub base_dir: PathBuf,
    pub server: ServerConfig,
    pub state: StateConfig,
    pub pricing: PricingConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    pub keys: Vec<KeyConfig>,
    pub policies: Vec<PolicyConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub admin_listen: String,
    pub admin_token_env: Option<String>,
    pub max_body_bytes: usize,
    pub header_read_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    /// Policy instances alive at once (the wasm instance pool's size).
    pub policy_instances: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:4000".into(),
            admin_listen: "127.0.0.1:4001".into(),
            admin_token_env: None,
            max_body_bytes: 4 << 20,
            header_read_timeout_ms: 10_000,
            shutdown_grace_ms: 30_000,
            policy_instances: 1000,
        }
    }
}

impl ServerConfig {
    /// The client listener's address (validated at load).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 4000)))
    }

    /// The admin listener's address (validated at load).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 4001)))
    }
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub backend: StateBackend,
    pub path: PathBuf,
    pub url: Option<String>,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackend::Sqlite,
            path: "weir.db".into(),
            url: None,
        }
    }
}

/// `[pricing]`: where prices come from when a model sets none.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// A price file (the format of `pricing/prices.toml`) whose entries
    /// add to and override the shipped table; relative to the config's
    /// folder.
    pub file: Option<PathBuf>,
}

/// Where usage, spend and limit counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    Memory,
    Sqlite,
    Redis,
}

/// Wire formats weir speaks upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Gemini,
    AzureOpenai,
    Mock,
}

impl ProviderKind {
    fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            ProviderKind::AzureOpenai | ProviderKind::Mock => None,
        }
    }
}

/// `[[providers]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
    /// `mock` only: how many chunks a streamed answer has.
    #[serde(default)]
    pub chunks: Option<u32>,
    /// `mock` only: delay before each streamed chunk.
    #[serde(default)]
    pub chunk_delay_ms: Option<u64>,
    /// `azure-openai` only: the `api-version` query parameter
    /// ([`DEFAULT_AZURE_API_VERSION`] when not set).
    #[serde(default)]
    pub api_version: Option<String>,
}

/// The Azure OpenAI `api-version` used when a provider sets none: the
/// current GA data-plane version.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

fn default_timeout_ms() -> u64 {
    60_000
}

/// One entry of a model's `targets`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub provider: String,
    pub model: String,
    /// `strategy = "weighted"`: relative share of first attempts.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// This target's price, when it differs from the model's.
    #[serde(default)]
    pub price: Option<PriceConfig>,
}

fn default_weight() -> f64 {
    1.0
}

/// How a model orders its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Config order.
    #[default]
    Failover,
    /// A random order biased by `weight`.
    Weighted,
    /// Lowest recent latency (time to first token for streams) first.
    LeastLatency,
}

/// When a target's circuit breaker opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// Error rate over the last 10 s that opens it…
    pub error_rate: f64,
    /// …once at least this many attempts were made in that window.
    pub min_requests: u32,
    /// How long it stays open before a half-open probe.
    pub cooldown_ms: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            failures: 5,
            error_rate: 0.5,
            min_requests: 20,
            cooldown_ms: 30_000,
        }
    }
}

/// `price = { … }`, USD per million tokens.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
    /// Defaults to the input price.
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
}

/// `[[models]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub router: Option<String>,
    #[serde(default)]
    pub guardrails: Vec<String>,
    #[serde(default)]
    pub price: Option<PriceConfig>,
    /// A pricing policy's name: it prices this model's requests (estimates
    /// for budgets, and the actual usage); on failure, `price` applies.
    #[serde(default)]
    pub pricing: Option<String>,
    /// Used for reservations when a request has no `max_tokens`.
    #[serde(default = "default_max_output_tokens")]
    pub max_output_tokens: u64,
    /// How targets are ordered (ignored when `router` is set).
    #[serde(default)]
    pub strategy: Strategy,
    /// Attempts per request across targets and retry rounds (default: one
    /// per target).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Backoff before a retry round: doubles per round, capped, ±50% jitter.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    #[serde(default = "default_retry_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
    /// No new attempt starts after this long.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    #[serde(default)]
    pub circuit: CircuitConfig,
}

fn default_retry_backoff_ms() -> u64 {
    100
}

fn default_retry_max_backoff_ms() -> u64 {
    2_000
}

fn default_deadline_ms() -> u64 {
    120_000
}

fn default_max_output_tokens() -> u64 {
    4096
}

/// `[[keys]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub key_sha256: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// The period a budget covers (default: total).
    #[serde(default)]
    pub budget_period: BudgetPeriod,
    /// Per-model limits, on top of the key's own.
    #[serde(default)]
    pub limits: Vec<ModelLimit>,
}

/// How long a budget lasts before it starts again (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    #[default]
    Total,
    Daily,
    Monthly,
}

/// `limits = [{ model = "chat", tokens_per_minute = 1000 }]` in a key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimit {
    pub model: String,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
}

/// Policy kinds, one WIT world each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    Guardrail,
    Router,
    Pricing,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::Guardrail => "guardrail",
            PolicyKind::Router => "router",
            PolicyKind::Pricing => "pricing",
        })
    }
}

/// What a failing policy means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed.
    #[default]
    Deny,
    /// Fail open: skip the policy.
    Allow,
}

/// `[[policies]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    pub kind: PolicyKind,
    pub path: PathBuf,
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub global: bool,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default = "default_policy_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_policy_memory_mb")]
    pub memory_mb: u64,
    /// Guardrails: the most response text one may hold per choice.
    #[serde(default = "default_max_hold_bytes")]
    pub max_hold_bytes: usize,
    /// Serve up to this many requests of one virtual key with one instance
    /// (0 = a fresh instance per request). Unset: 1000 for a guardrail that
    /// declares itself stateless, else 0. Only for policies that keep no
    /// request data between calls; see docs/policies.md.
    #[serde(default)]
    pub reuse_instances: Option<u32>,
}

fn default_max_hold_bytes() -> usize {
    16 << 10
}

fn default_policy_timeout_ms() -> u64 {
    10
}

fn default_policy_memory_mb() -> u64 {
    32
}

impl Config {
    /// Load and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                key: String::new(),
                reason: format!("cannot read the file: {e}"),
            }],
        })?;
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let mut config = Self::parse(&text, &file, base_dir)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// The embedded default; with `bundled`, the folder of the bundled
    /// policies, its guardrails apply to every model.
    pub fn embedded(bundled: Option<&Path>) -> Result<Config, ConfigErrors> {
        let mut text = EMBEDDED_DEFAULT.to_string();
        if let Some(dir) = bundled {
            for (name, config) in BUNDLED_GUARDRAILS {
                let path = dir.join(format!("{name}.wasm"));
                if path.is_file() {
                    text.push_str(&format!(
                        "\n[[policies]]\nname = \"{name}\"\nkind = \"guardrail\"\npath = {}\nglobal = true\nconfig = {config}\n",
                        toml::Value::String(path.display().to_string())
                    ));
                }
            }
        }
        Self::parse(&text, "<embedded default>", PathBuf::from("."))
    }

    /// Parse and validate config text; `file` labels errors.
    pub fn parse(text: &str, file: &str, base_dir: PathBuf) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let fail = |errors: Vec<ConfigError>| ConfigErrors {
            file: file.to_string(),
            errors,
        };
        let mut table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                let reason = match e.span() {
                    Some(span) => {
                        let (line, col) = line_col(text, span.start);
                        format!(
                            "TOML syntax error at line {line}, column {col}: {}",
                            e.message()
                        )
                    }
                    None => e.message().to_string(),
                };
                return Err(fail(vec![ConfigError {
                    key: String::new(),
                    reason,
                }]));
            }
        };
        let server = section(&mut table, "server", &mut errors).unwrap_or_default();
        let state = section(&mut table, "state", &mut errors).unwrap_or_default();
        let pricing = section(&mut table, "pricing", &mut errors).unwrap_or_default();
        let providers = array(&mut table, "providers", &mut errors);
        let models = array(&mut table, "models", &mut errors);
        let keys = array(&mut table, "keys", &mut errors);
        let policies = array(&mut table, "policies", &mut errors);
        for unknown in table.keys() {
            errors.push(ConfigError {
                key: unknown.clone(),
                reason: "unknown section; expected one of server, state, pricing, providers, models, keys, policies".into(),
            });
        }
        let config = Config {
            source: None,
            base_dir,
            server,
            state,
            pricing,
            providers,
            models,
            keys,
            policies,
        };
        config.validate(&mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(fail(errors))
        }
    }

    fn validate(&self, errors: &mut Vec<ConfigError>) {
        let mut err = |key: String, reason: String| errors.push(ConfigError { key, reason });

        for (key, addr) in [
            ("server.listen", &self.server.listen),
            ("server.admin_listen", &self.server.admin_listen),
        ] {
            if addr.parse::<SocketAddr>().is_err() {
                err(
                    key.into(),
                    format!("`{addr}` is not an address like 127.0.0.1:4000"),
                );
            }
        }
        if self.server.listen == self.server.admin_listen && !self.server.listen.ends_with(":0") {
            err(
                "server.admin_listen".into(),
                "must differ from server.listen".into(),
            );
        }
        if let Some(var) = &self.server.admin_token_env
            && std::env::var(var).map_or(true, |v| v.is_empty())
        {
            err(
                "server.admin_token_env".into(),
                format!("environment variable `{var}` is not set"),
            );
        }
        if self.server.policy_instances == 0 {
            err(
                "server.policy_instances".into(),
                "must be greater than 0".into(),
            );
        }
        if self.server.max_body_bytes == 0 {
            err(
                "server.max_body_bytes".into(),
                "must be greater than 0".into(),
            );
        }
        if self.state.backend == StateBackend::Redis && self.state.url.is_none() {
            err("state.url".into(), "the redis backend needs a `url`".into());
        }
        if let Some(path) = self.pricing_file()
            && let Err(e) = crate::pricing::PriceTable::with_file(&path)
        {
            err("pricing.file".into(), e.to_string());
        }

        let mut provider_names = HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = |field: &str| format!("providers[{i}].{field}");
            if p.name.is_empty() {
                err(at("name"), "must not be empty".into());
            } else if !provider_names.insert(p.name.as_str()) {
                err(at("name"), format!("duplicate provider name `{}`", p.name));
            }
            if p.kind != ProviderKind::Mock {
                match p.base_url.as_deref().or(p.kind.default_base_url()) {
                    None if p.kind == ProviderKind::AzureOpenai => err(
                        at("base_url"),
                        "is required for kind = \"azure-openai\": the resource endpoint, e.g. https://NAME.openai.azure.com".into(),
                    ),
                    None => err(at("base_url"), "is required for this kind".into()),
                    Some(url) => {
                        if let Err(reason) = check_base_url(url) {
                            err(at("base_url"), reason);
                        } else if p.kind == ProviderKind::Anthropic
                            && url.trim_end_matches('/').ends_with("/v1")
                        {
                            err(
                                at("base_url"),
                                format!("`{url}` must not end in /v1 for kind = \"anthropic\" (weir adds /v1/messages), e.g. https://api.anthropic.com"),
                            );
                        }
                    }
                }
                if p.chunks.is_some() || p.chunk_delay_ms.is_some() {
                    err(
                        at("chunks"),
                        "`chunks` and `chunk_delay_ms` only apply to kind = \"mock\"".into(),
                    );
                }
            }
            if let Some(var) = &p.api_key_env
                && std::env::var(var).map_or(true, |v| v.is_empty())
            {
                err(
                    at("api_key_env"),
                    format!("environment variable `{var}` is not set"),
                );
            }
            if p.timeout_ms == 0 {
                err(at("timeout_ms"), "must be greater than 0".into());
            }
            if p.stream_idle_timeout_ms == 0 {
                err(
                    at("stream_idle_timeout_ms"),
                    "must be greater than 0".into(),
                );
            }
            if p.chunks == Some(0) {
                err(at("chunks"), "must be at least 1".into());
            }
            if let Some(version) = &p.api_version {
                if p.kind != ProviderKind::AzureOpenai {
                    err(
                        at("api_version"),
                        "only applies to kind = \"azure-openai\"".into(),
                    );
                } else if version.is_empty()
                    || !version
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                {
                    err(
                        at("api_version"),
                        format!(
                            "`{version}` is not an API version like \"{DEFAULT_AZURE_API_VERSION}\""
                        ),
                    );
                }
            }
        }

        let policy_kinds: HashMap<&str, PolicyKind> = self
            .policies
            .iter()
            .map(|p| (p.name.as_str(), p.kind))
            .collect();
        let mut model_names = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let at = |field: &str| format!("models[{i}].{field}");
            if m.name.is_empty() {
                err(at("name"), "must not be empty".into());
            } else if !model_names.insert(m.name.as_str()) {
                err(at("name"), format!("duplicate model name `{}`", m.name));
            }
            if m.targets.is_empty() {
                err(at("targets"), "needs at least one target".into());
            }
            for (j, t) in m.targets.iter().enumerate() {
                if !provider_names.contains(t.provider.as_str()) {
                    err(
                        format!("models[{i}].targets[{j}].provider"),
                        format!("no provider named `{}`", t.provider),
                    );
                }
                if t.model.is_empty() {
                    err(
                        format!("models[{i}].targets[{j}].model"),
                        "must not be empty".into(),
                    );
                }
            }
            if let Some(pricing) = &m.pricing {
                check_policy_ref(
                    &policy_kinds,
                    pricing,
                    PolicyKind::Pricing,
                    at("pricing"),
                    &mut err,
                );
            }
            if let Some(router) = &m.router {
                check_policy_ref(
                    &policy_kinds,
                    router,
                    PolicyKind::Router,
                    at("router"),
                    &mut err,
                );
            }
            for (j, g) in m.guardrails.iter().enumerate() {
                check_policy_ref(
                    &policy_kinds,
                    g,
                    PolicyKind::Guardrail,
                    format!("models[{i}].guardrails[{j}]"),
                    &mut err,
                );
            }
            if let Some(price) = &m.price {
                let prices = [
                    ("input_per_mtok", Some(price.input_per_mtok)),
                    ("output_per_mtok", Some(price.output_per_mtok)),
                    ("cached_input_per_mtok", price.cached_input_per_mtok),
                ];
                for (field, value) in prices {
                    if let Some(v) = value
                        && !(v.is_finite() && v >= 0.0)
                    {
                        err(
                            at(&format!("price.{field}")),
                            "must be a non-negative number".into(),
                        );
                    }
                }
            }
            if m.max_output_tokens == 0 {
                err(at("max_output_tokens"), "must be greater than 0".into());
            }
            if m.max_attempts == Some(0) {
                err(at("max_attempts"), "must be at least 1".into());
            }
            if m.deadline_ms == 0 {
                err(at("deadline_ms"), "must be greater than 0".into());
            }
            if m.circuit.failures == 0 || !(0.0..=1.0).contains(&m.circuit.error_rate) {
                err(
                    at("circuit"),
                    "`failures` must be at least 1 and `error_rate` between 0 and 1".into(),
                );
            }
            for (j, t) in m.targets.iter().enumerate() {
                if !(t.weight.is_finite() && t.weight > 0.0) {
                    err(
                        format!("models[{i}].targets[{j}].weight"),
                        "must be a positive number".into(),
                    );
                }
            }
        }

        let mut key_names = HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            let at = |field: &str| format!("keys[{i}].{field}");
            if k.name.is_empty() {
                err(at("name"), "must not be empty".into());
            } else if !key_names.insert(k.name.as_str()) {
                err(at("name"), format!("duplicate key name `{}`", k.name));
            }
            match (&k.key, &k.key_sha256) {
                (Some(_), Some(_)) => err(at("key"), "set `key` or `key_sha256`, not both".into()),
                (None, None) => err(at("key"), "one of `key` or `key_sha256` is required".into()),
                (Some(key), None) if key.len() < 8 => {
                    err(at("key"), "must be at least 8 characters".into())
                }
                (None, Some(hex))
                    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) =>
                {
                    err(at("key_sha256"), "must be 64 hexadecimal characters".into())
                }
                _ => {}
            }
            for (j, model) in k.models.iter().flatten().enumerate() {
                if !model_names.contains(model.as_str()) {
                    err(
                        format!("keys[{i}].models[{j}]"),
                        format!("no model named `{model}`"),
                    );
                }
            }
            if k.tokens_per_minute == Some(0) {
                err(at("tokens_per_minute"), "must be greater than 0".into());
            }
            if k.requests_per_minute == Some(0) {
                err(at("requests_per_minute"), "must be greater than 0".into());
            }
            for (j, l) in k.limits.iter().enumerate() {
                if !model_names.contains(l.model.as_str()) {
                    err(
                        format!("keys[{i}].limits[{j}].model"),
                        format!("no model named `{}`", l.model),
                    );
                }
                if l.tokens_per_minute == Some(0) || l.requests_per_minute == Some(0) {
                    err(
                        format!("keys[{i}].limits[{j}]"),
                        "limits must be greater than 0".into(),
                    );
                }
            }
            if let Some(b) = k.budget_usd
                && !(b.is_finite() && b >= 0.0)
            {
                err(at("budget_usd"), "must be a non-negative number".into());
            }
        }

        let mut policy_names = HashSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            let at = |field: &str| format!("policies[{i}].{field}");
            if p.name.is_empty() {
                err(at("name"), "must not be empty".into());
            } else if !policy_names.insert(p.name.as_str()) {
                err(at("name"), format!("duplicate policy name `{}`", p.name));
            }
            if p.global && p.kind != PolicyKind::Guardrail {
                err(at("global"), "only guardrails can be global".into());
            }
            if p.timeout_ms == 0 {
                err(at("timeout_ms"), "must be greater than 0".into());
            }
            if p.reuse_instances.is_some_and(|n| n > 0) && p.kind != PolicyKind::Guardrail {
                err(
                    at("reuse_instances"),
                    "only guardrail instances can be reused".into(),
                );
            }
            if p.max_hold_bytes == 0 {
                err(at("max_hold_bytes"), "must be greater than 0".into());
            }
            if p.memory_mb == 0 || p.memory_mb > 512 {
                err(at("memory_mb"), "must be between 1 and 512".into());
            }
        }
    }

    /// Apply command-line listener overrides, re-validating them.
    pub fn with_listeners(
        mut self,
        listen: Option<String>,
        admin_listen: Option<String>,
    ) -> Result<Config, ConfigErrors> {
        if listen.is_none() && admin_listen.is_none() {
            return Ok(self);
        }
        if let Some(l) = listen {
            self.server.listen = l;
        }
        if let Some(a) = admin_listen {
            self.server.admin_listen = a;
        }
        let mut errors = Vec::new();
        self.validate(&mut errors);
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(ConfigErrors {
                file: "--listen/--admin-listen".into(),
                errors,
            })
        }
    }

    /// `[pricing] file`, resolved against the config file's folder.
    pub fn pricing_file(&self) -> Option<PathBuf> {
        self.pricing.file.as_ref().map(|f| self.base_dir.join(f))
    }

    /// A policy's path, resolved against the config file's folder.
    pub fn policy_path(&self, policy: &PolicyConfig) -> PathBuf {
        self.base_dir.join(&policy.path)
    }

    /// A provider's base URL, its kind's default when not set.
    pub fn base_url(provider: &ProviderConfig) -> Option<&str> {
        provider
            .base_url
            .as_deref()
            .or(provider.kind.default_base_url())
    }
}

fn check_policy_ref(
    kinds: &HashMap<&str, PolicyKind>,
    name: &str,
    want: PolicyKind,
    key: String,
    err: &mut impl FnMut(String, String),
) {
    match kinds.get(name) {
        None => err(key, format!("no policy named `{name}`")),
        Some(kind) if *kind != want => {
            err(key, format!("policy `{name}` is a {kind}, not a {want}"))
        }
        Some(_) => {}
    }
}

fn check_base_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    }
    if uri.host().is_none() {
        return Err(format!("`{url}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` must not have a query string"));
    }
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn section<T: DeserializeOwned>(
    table: &mut toml::Table,
    name: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let value = table.remove(name)?;
    deserialize(value, name, errors)
}

fn array<T: DeserializeOwned>(
    table: &mut toml::Table,
    name: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<T> {
    match table.remove(name) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| deserialize(item, &format!("{name}[{i}]"), errors))
            .collect(),
        Some(_) => {
            errors.push(ConfigError {
                key: name.into(),
                reason: format!("must be an array of tables ([[{name}]])"),
            });
            Vec::new()
        }
    }
}

fn deserialize<T: DeserializeOwned>(
    value: toml::Value,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let key = if path == "." || path.is_empty() {
                at.to_string()
            } else {
                format!("{at}.{path}")
            };
            errors.push(ConfigError {
                key,
                reason: e.into_inner().to_string().trim().to_string(),
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        Config::parse(text, "t.toml", PathBuf::from("."))
            .err()
            .map(|e| e.errors)
            .unwrap_or_default()
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded(None).unwrap();
        assert_eq!(c.models[0].name, "mock");
        assert_eq!(c.state.backend, StateBackend::Memory);
    }

    #[test]
    fn every_error_is_listed_with_its_key() {
        let errs = errors(
            r#"
            [server]
            listen = "nowhere"
            [[providers]]
            name = "a"
            kind = "openai"
            base_url = "ftp://x"
            [[providers]]
            name = "b"
            kind = "nope"
            [[models]]
            name = "m"
            targets = [{ provider = "zzz", model = "x" }]
            [[keys]]
            name = "k"
            models = ["other"]
            [[keys]]
            name = "k2"
            key = "sk-long-enough"
            bogus = 1
            "#,
        );
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"server.listen"), "{errs:?}");
        assert!(keys.contains(&"providers[0].base_url"), "{errs:?}");
        assert!(keys.contains(&"providers[1].kind"), "{errs:?}");
        assert!(keys.contains(&"models[0].targets[0].provider"), "{errs:?}");
        assert!(keys.contains(&"keys[0].key"), "{errs:?}");
        assert!(keys.contains(&"keys[0].models[0]"), "{errs:?}");
        assert!(keys.iter().any(|k| k.starts_with("keys[1]")), "{errs:?}");
    }

    #[test]
    fn pricing_file_is_checked_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let parse = |text: &str| Config::parse(text, "t.toml", dir.path().to_path_buf());
        let c = parse("").unwrap();
        assert!(c.pricing.file.is_none());
        let errs = parse("[pricing]\nfile = \"prices.toml\"\n")
            .unwrap_err()
            .errors;
        assert_eq!(errs[0].key, "pricing.file");
        assert!(errs[0].reason.contains("cannot read"), "{errs:?}");
        std::fs::write(
            dir.path().join("prices.toml"),
            "[models]\n\"x\" = { input = 1 }\n",
        )
        .unwrap();
        let errs = parse("[pricing]\nfile = \"prices.toml\"\n")
            .unwrap_err()
            .errors;
        assert_eq!(errs[0].key, "pricing.file");
        assert!(errs[0].reason.contains("models.\"x\""), "{errs:?}");
        std::fs::write(
            dir.path().join("prices.toml"),
            "[models]\n\"x\" = { input_per_mtok = 1.0, output_per_mtok = 2.0 }\n",
        )
        .unwrap();
        let c = parse("[pricing]\nfile = \"prices.toml\"\n").unwrap();
        assert_eq!(c.pricing_file(), Some(dir.path().join("prices.toml")));
        let errs = parse("[pricing]\npath = \"x\"\n").unwrap_err().errors;
        assert!(errs[0].key.starts_with("pricing"), "{errs:?}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let errs = errors("[server]\nlisten = \n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].reason.contains("line 2"), "{errs:?}");
    }
}
