//! The gateway's loaded policies: an immutable set, replaced whole.
//!
//! A request takes the current [`PolicySet`] when it starts and keeps that
//! `Arc` until its last chunk, so a swap never changes a request in flight
//! and an old version is freed when its last request ends. Each model's
//! guardrail chain (global guardrails in config order, then the model's) is
//! resolved when a set is built, not per request.
//!
//! Building a set from a config is all or nothing ([`load_all`]): every
//! policy whose bytes (SHA-256) and settings are unchanged is carried over
//! as is — same `Arc`, same generation — and every other one is compiled,
//! type-checked and smoke-tested; if any fails, nothing changes and every
//! failure is reported.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use crate::config::{Config, PolicyConfig, PolicyKind};
use crate::policy::{LoadError, Policy, PolicyRuntime, digest};

/// One loaded policy and how it got there.
#[derive(Debug, Clone)]
pub struct PolicyEntry {
    pub policy: Arc<Policy>,
    /// 1 when first loaded, +1 per swap.
    pub generation: u64,
    /// The `[[policies]]` entry it was loaded with.
    pub config: PolicyConfig,
    /// Its file, resolved against the config's folder.
    pub path: PathBuf,
}

/// Every loaded policy and each model's guardrail chain.
#[derive(Debug, Default)]
pub struct PolicySet {
    pub entries: HashMap<String, PolicyEntry>,
    /// Config order, for listings.
    pub order: Vec<String>,
    chains: HashMap<String, Vec<Arc<Policy>>>,
    routers: HashMap<String, Arc<Policy>>,
    pricers: HashMap<String, Arc<Policy>>,
}

impl PolicySet {
    /// The router policy of `model`, if it has one.
    pub fn router(&self, model: &str) -> Option<&Arc<Policy>> {
        self.routers.get(model)
    }

    /// The pricing policy of `model`, if it has one.
    pub fn pricer(&self, model: &str) -> Option<&Arc<Policy>> {
        self.pricers.get(model)
    }

    /// The guardrails that run for `model`, in order.
    pub fn guardrails(&self, model: &str) -> &[Arc<Policy>] {
        self.chains.get(model).map_or(&[], Vec::as_slice)
    }

    /// Resolve each model's chain from the entries.
    pub fn new(config: &Config, entries: HashMap<String, PolicyEntry>) -> PolicySet {
        let global: Vec<Arc<Policy>> = config
            .policies
            .iter()
            .filter(|p| p.global && p.kind == PolicyKind::Guardrail)
            .filter_map(|p| entries.get(&p.name).map(|e| e.policy.clone()))
            .collect();
        let chains = config
            .models
            .iter()
            .map(|m| {
                let mut chain = global.clone();
                chain.extend(
                    m.guardrails
                        .iter()
                        .filter_map(|g| entries.get(g).map(|e| e.policy.clone())),
                );
                (m.name.clone(), chain)
            })
            .collect();
        let routers = config
            .models
            .iter()
            .filter_map(|m| {
                let router = entries.get(m.router.as_ref()?)?;
                Some((m.name.clone(), router.policy.clone()))
            })
            .collect();
        let pricers = config
            .models
            .iter()
            .filter_map(|m| {
                let pricer = entries.get(m.pricing.as_ref()?)?;
                Some((m.name.clone(), pricer.policy.clone()))
            })
            .collect();
        PolicySet {
            order: config.policies.iter().map(|p| p.name.clone()).collect(),
            entries,
            chains,
            routers,
            pricers,
        }
    }

    /// This set with one entry replaced.
    pub fn with(&self, config: &Config, entry: PolicyEntry) -> PolicySet {
        let mut entries = self.entries.clone();
        entries.insert(entry.config.name.clone(), entry);
        PolicySet::new(config, entries)
    }
}

/// A policy that failed to load.
#[derive(Debug)]
pub struct LoadFailure {
    pub name: String,
    /// Its index in `[[policies]]`, for config-style error keys.
    pub index: usize,
    pub path: PathBuf,
    pub error: LoadError,
}

/// Load one policy's `bytes` as the next generation of `current` (if any);
/// `None` when `current` already has exactly these bytes and settings.
pub async fn load_one(
    runtime: &Arc<PolicyRuntime>,
    config: &PolicyConfig,
    path: PathBuf,
    bytes: Vec<u8>,
    current: Option<&PolicyEntry>,
) -> Result<Option<PolicyEntry>, LoadError> {
    if let Some(cur) = current
        && cur.policy.digest == digest(&bytes)
        && cur.config == *config
    {
        return Ok(None);
    }
    let started = Instant::now();
    let policy = runtime.load(config, &path, bytes).await?;
    let generation = current.map_or(1, |c| c.generation + 1);
    info!(
        policy = %config.name,
        kind = %config.kind,
        digest = %policy.digest,
        generation,
        source = ?policy.compiled,
        load_ms = started.elapsed().as_secs_f64() * 1000.0,
        "policy loaded"
    );
    Ok(Some(PolicyEntry {
        policy,
        generation,
        config: config.clone(),
        path,
    }))
}

/// Build the set for `config`, carrying over what `current` already has
/// unchanged. All or nothing. Returns the set and the names that changed.
pub async fn load_all(
    runtime: &Arc<PolicyRuntime>,
    config: &Config,
    current: Option<&PolicySet>,
) -> Result<(PolicySet, Vec<String>), Vec<LoadFailure>> {
    let mut entries = HashMap::new();
    let mut changed = Vec::new();
    let mut failures = Vec::new();
    for (index, p) in config.policies.iter().enumerate() {
        let path = config.policy_path(p);
        let existing = current.and_then(|c| c.entries.get(&p.name));
        let loaded = match tokio::fs::read(&path).await {
            Ok(bytes) => load_one(runtime, p, path.clone(), bytes, existing).await,
            Err(error) => Err(LoadError::Read {
                path: path.clone(),
                error,
            }),
        };
        match (loaded, existing) {
            (Ok(Some(entry)), _) => {
                changed.push(p.name.clone());
                entries.insert(p.name.clone(), entry);
            }
            (Ok(None), Some(existing)) => {
                entries.insert(p.name.clone(), existing.clone());
            }
            (Ok(None), None) => {}
            (Err(error), _) => failures.push(LoadFailure {
                name: p.name.clone(),
                index,
                path,
                error,
            }),
        }
    }
    if failures.is_empty() {
        Ok((PolicySet::new(config, entries), changed))
    } else {
        Err(failures)
    }
}
