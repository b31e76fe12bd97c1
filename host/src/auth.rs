//! Virtual keys: who is calling, and which models they may use.
//!
//! Keys are stored only as SHA-256 digests (a config may give `key` or
//! `key_sha256`); a presented key is hashed once and looked up, so lookup
//! cost does not depend on how many keys exist and no plaintext key is kept
//! in memory after load. With no `[[keys]]` at all the gateway is open.

use std::collections::HashSet;
use std::sync::Arc;

use http::HeaderMap;
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};

use crate::config::{BudgetPeriod, Config};
use crate::error::GatewayError;

/// A virtual key as the rest of the gateway sees it.
#[derive(Debug)]
pub struct VirtualKey {
    pub name: String,
    /// `None` = every model.
    pub models: Option<HashSet<String>>,
    pub tokens_per_minute: Option<u64>,
    pub requests_per_minute: Option<u64>,
    /// Integer micro-USD.
    pub budget_micro_usd: Option<u64>,
    pub budget_period: BudgetPeriod,
    /// Per-model (tokens, requests) per minute.
    pub model_limits: FxHashMap<String, (Option<u64>, Option<u64>)>,
}

impl VirtualKey {
    /// May this key use `model`?
    pub fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }

    /// Does anything need reserving for this key and model?
    pub fn limited(&self, model: &str) -> bool {
        self.tokens_per_minute.is_some()
            || self.requests_per_minute.is_some()
            || self.budget_micro_usd.is_some()
            || self.model_limits.contains_key(model)
    }
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The gateway has no keys configured.
    Anonymous,
    Key(Arc<VirtualKey>),
}

impl Caller {
    /// The key's name, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::Key(k) => Some(&k.name),
        }
    }

    /// The key, if any.
    pub fn key(&self) -> Option<&Arc<VirtualKey>> {
        match self {
            Caller::Anonymous => None,
            Caller::Key(k) => Some(k),
        }
    }

    /// May this caller use `model`?
    pub fn allows(&self, model: &str) -> bool {
        self.key().is_none_or(|k| k.allows(model))
    }
}

/// Every configured key by digest.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_digest: FxHashMap<[u8; 32], Arc<VirtualKey>>,
}

impl KeyStore {
    /// Build from a validated config.
    pub fn from_config(config: &Config) -> KeyStore {
        let by_digest = config
            .keys
            .iter()
            .filter_map(|k| {
                let digest = match (&k.key, &k.key_sha256) {
                    (Some(key), _) => sha256(key.as_bytes()),
                    (None, Some(hex_digest)) => {
                        let mut d = [0u8; 32];
                        hex::decode_to_slice(hex_digest, &mut d).ok()?;
                        d
                    }
                    (None, None) => return None,
                };
                let key = VirtualKey {
                    name: k.name.clone(),
                    models: k.models.as_ref().map(|m| m.iter().cloned().collect()),
                    tokens_per_minute: k.tokens_per_minute,
                    requests_per_minute: k.requests_per_minute,
                    budget_micro_usd: k.budget_usd.map(|usd| (usd * 1e6).round() as u64),
                    budget_period: k.budget_period,
                    model_limits: k
                        .limits
                        .iter()
                        .map(|l| {
                            (
                                l.model.clone(),
                                (l.tokens_per_minute, l.requests_per_minute),
                            )
                        })
                        .collect(),
                };
                Some((digest, Arc::new(key)))
            })
            .collect();
        KeyStore { by_digest }
    }

    /// No keys configured: every request is anonymous.
    pub fn is_open(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Identify the caller from `Authorization: Bearer …` or `x-api-key`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, GatewayError> {
        if self.is_open() {
            return Ok(Caller::Anonymous);
        }
        let presented = bearer(headers)
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(GatewayError::InvalidApiKey(
                "missing API key: send `Authorization: Bearer <key>`",
            ))?;
        self.by_digest
            .get(&sha256(presented.as_bytes()))
            .map(|k| Caller::Key(k.clone()))
            .ok_or(GatewayError::InvalidApiKey("the API key is not valid"))
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
