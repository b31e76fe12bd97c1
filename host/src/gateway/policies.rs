//! The gateway's loaded policies: an immutable set, built all at once.
//!
//! A request takes the current [`PolicySet`] when it starts and keeps that
//! `Arc` until its last chunk, so whatever replaces the set later never
//! changes a request in flight. Each model's guardrail chain (global
//! guardrails in config order, then the model's) is resolved here once,
//! not per request.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::info;

use crate::config::{Config, ConfigError, PolicyKind};
use crate::policy::{Policy, PolicyRuntime};

/// Every loaded policy and each model's guardrail chain.
#[derive(Debug, Default)]
pub struct PolicySet {
    pub by_name: HashMap<String, Arc<Policy>>,
    /// Config order, for listings.
    pub order: Vec<String>,
    chains: HashMap<String, Vec<Arc<Policy>>>,
}

impl PolicySet {
    /// The guardrails that run for `model`, in order.
    pub fn guardrails(&self, model: &str) -> &[Arc<Policy>] {
        self.chains.get(model).map_or(&[], Vec::as_slice)
    }

    /// Resolve each model's chain from the loaded policies.
    pub fn new(config: &Config, by_name: HashMap<String, Arc<Policy>>) -> PolicySet {
        let global: Vec<Arc<Policy>> = config
            .policies
            .iter()
            .filter(|p| p.global && p.kind == PolicyKind::Guardrail)
            .filter_map(|p| by_name.get(&p.name).cloned())
            .collect();
        let chains = config
            .models
            .iter()
            .map(|m| {
                let mut chain = global.clone();
                chain.extend(m.guardrails.iter().filter_map(|g| by_name.get(g).cloned()));
                (m.name.clone(), chain)
            })
            .collect();
        PolicySet {
            order: config.policies.iter().map(|p| p.name.clone()).collect(),
            by_name,
            chains,
        }
    }
}

/// Load every configured policy; all or nothing. Errors name the policy's
/// config key.
pub async fn load_all(
    runtime: &Arc<PolicyRuntime>,
    config: &Config,
) -> Result<PolicySet, Vec<ConfigError>> {
    let mut loaded = HashMap::new();
    let mut errors = Vec::new();
    for (i, p) in config.policies.iter().enumerate() {
        let path = config.policy_path(p);
        match runtime.load_file(p, &path).await {
            Ok(policy) => {
                info!(
                    policy = %p.name,
                    kind = %p.kind,
                    digest = %policy.digest,
                    source = ?policy.compiled,
                    load_ms = policy.load_time.as_secs_f64() * 1000.0,
                    "policy loaded"
                );
                loaded.insert(p.name.clone(), policy);
            }
            Err(e) => errors.push(ConfigError {
                key: format!("policies[{i}].path"),
                reason: format!("{}: {e}", path.display()),
            }),
        }
    }
    if errors.is_empty() {
        Ok(PolicySet::new(config, loaded))
    } else {
        Err(errors)
    }
}
