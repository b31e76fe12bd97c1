//! Hot swaps: replacing policies (and, on SIGHUP, the whole config) on a
//! live gateway without failing or mixing a request.
//!
//! Every trigger ends in the same protocol: compile off the request path
//! (on a blocking thread), type-check against the world, instantiate with
//! production limits and smoke-call, then publish a new immutable
//! [`Snapshot`] with one atomic pointer swap. Requests hold the snapshot
//! they started with until their last chunk, so in-flight streams finish on
//! the version they began with and the old version is freed with its last
//! request. Reloads are serialized; bytes whose SHA-256 (and settings) did
//! not change are never swapped and keep their generation.
//!
//! Triggers:
//! - a policy file changing on disk: its folder is watched (inotify), so
//!   atomic-rename writes by editors and deploy tools are seen; events are
//!   debounced for [`DEBOUNCE`] and each changed file is reloaded on its own;
//! - `POST /admin/policies/reload`: every policy from disk, all or nothing;
//! - `PUT /admin/policies/{name}`: the body is validated, written to the
//!   policy's path (so a restart keeps it and the watcher sees the same
//!   digest), then swapped in;
//! - `SIGHUP`: the config file and every policy, all or nothing; a config
//!   that fails validation keeps the running one and logs why.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge, histogram};
use notify::{RecursiveMode, Watcher as _};
use serde_json::{Value, json};
use tracing::{error, info, warn};

use super::policies::{LoadFailure, PolicyEntry, load_all, load_one};
use super::{ConfigState, Gateway, Snapshot};
use crate::config::{Config, ConfigErrors, PolicyKind};
use crate::policy::LoadError;

/// Quiet time after the last file event before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// The largest component `PUT` accepts.
pub const MAX_UPLOAD_BYTES: usize = 128 << 20;

/// The file watcher and the folders it watches.
#[derive(Default)]
pub struct Watcher {
    inner: Option<notify::RecommendedWatcher>,
    dirs: HashSet<PathBuf>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("dirs", &self.dirs).finish()
    }
}

/// Record a policy's generation in metrics.
pub fn record_generation(entry: &PolicyEntry) {
    gauge!("weir_policy_generation", "policy" => entry.config.name.clone())
        .set(entry.generation as f64);
}

fn record_reload(name: &str, ok: bool, since: Instant) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!("weir_policy_reloads_total", "policy" => name.to_string(), "outcome" => outcome)
        .increment(1);
    if ok {
        histogram!("weir_policy_reload_seconds", "policy" => name.to_string())
            .record(since.elapsed().as_secs_f64());
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

impl Gateway {
    fn publish(&self, config: Arc<ConfigState>, policies: super::policies::PolicySet) {
        self.snapshot.store(Arc::new(Snapshot {
            config,
            policies: Arc::new(policies),
        }));
    }

    fn set_last_error(&self, name: &str, error: Option<String>) {
        let mut errors = self.last_errors.lock();
        match error {
            Some(e) => errors.insert(name.to_string(), e),
            None => errors.remove(name),
        };
    }

    /// `GET /admin/policies`.
    pub fn policy_listing(&self) -> Value {
        let snap = self.snapshot();
        let errors = self.last_errors.lock();
        let list: Vec<Value> = snap
            .policies
            .order
            .iter()
            .filter_map(|name| snap.policies.entries.get(name))
            .map(|e| {
                // What only guardrails have; `null` for routers and pricing.
                let guardrail = e.config.kind == PolicyKind::Guardrail;
                json!({
                    "name": e.config.name,
                    "kind": e.config.kind.to_string(),
                    "digest": e.policy.digest,
                    "generation": e.generation,
                    "loaded_at": rfc3339(e.policy.loaded_at),
                    "source": e.path.display().to_string(),
                    "last_error": errors.get(&e.config.name),
                    "hooks": guardrail.then(|| e.policy.hooks.names()),
                    "stateless": guardrail.then_some(e.policy.stateless),
                    "reuse_instances": guardrail.then_some(e.policy.limits.reuse),
                })
            })
            .collect();
        Value::Array(list)
    }

    /// Reload one policy from its file (the watcher's trigger). Unchanged
    /// bytes do nothing; a failure keeps the running version.
    pub async fn reload_policy_file(&self, name: &str, trigger: Instant) {
        let _serial = self.reload_lock.lock().await;
        let snap = self.snapshot();
        let Some(current) = snap.policies.entries.get(name) else {
            return;
        };
        let bytes = match tokio::fs::read(&current.path).await {
            Ok(b) => b,
            // Mid-rename or deleted: the next event (or a reload) settles it.
            Err(e) => {
                warn!(policy = name, error = %e, "changed policy file is not readable; keeping the running version");
                return;
            }
        };
        let config = current.config.clone();
        match load_one(
            &self.runtime,
            &config,
            current.path.clone(),
            bytes,
            Some(current),
        )
        .await
        {
            Ok(None) => {}
            Ok(Some(entry)) => {
                info!(
                    policy = name,
                    generation = entry.generation,
                    trigger = "file",
                    "policy swapped"
                );
                record_generation(&entry);
                record_reload(name, true, trigger);
                self.set_last_error(name, None);
                let set = snap.policies.with(&snap.config.config, entry);
                self.publish(snap.config.clone(), set);
            }
            Err(e) => {
                error!(policy = name, error = %e, "policy reload failed; the running version keeps serving");
                record_reload(name, false, trigger);
                self.set_last_error(name, Some(e.to_string()));
            }
        }
    }

    /// `POST /admin/policies/reload`: every policy from disk, all or nothing.
    pub async fn reload_all_policies(&self) -> Result<Vec<String>, Vec<LoadFailure>> {
        let trigger = Instant::now();
        let _serial = self.reload_lock.lock().await;
        let snap = self.snapshot();
        let result = load_all(&self.runtime, &snap.config.config, Some(&snap.policies)).await;
        self.finish_bulk(snap.config.clone(), result, trigger, "admin")
    }

    fn finish_bulk(
        &self,
        config: Arc<ConfigState>,
        result: Result<(super::policies::PolicySet, Vec<String>), Vec<LoadFailure>>,
        trigger: Instant,
        source: &'static str,
    ) -> Result<Vec<String>, Vec<LoadFailure>> {
        match result {
            Ok((set, changed)) => {
                for name in &changed {
                    if let Some(entry) = set.entries.get(name) {
                        info!(policy = %name, generation = entry.generation, trigger = source, "policy swapped");
                        record_generation(entry);
                    }
                    record_reload(name, true, trigger);
                    self.set_last_error(name, None);
                }
                self.publish(config, set);
                Ok(changed)
            }
            Err(failures) => {
                for f in &failures {
                    error!(policy = %f.name, error = %f.error, trigger = source, "policy reload failed; nothing was swapped");
                    record_reload(&f.name, false, trigger);
                    self.set_last_error(&f.name, Some(f.error.to_string()));
                }
                Err(failures)
            }
        }
    }

    /// `PUT /admin/policies/{name}`: validate, write to the policy's path,
    /// swap in. `Ok(None)` = the same bytes are already live.
    pub async fn put_policy(&self, name: &str, bytes: Vec<u8>) -> Result<Option<u64>, PutError> {
        let trigger = Instant::now();
        let _serial = self.reload_lock.lock().await;
        let snap = self.snapshot();
        let current = snap.policies.entries.get(name).ok_or(PutError::Unknown)?;
        let config = current.config.clone();
        let path = current.path.clone();
        let entry = match load_one(
            &self.runtime,
            &config,
            path.clone(),
            bytes.clone(),
            Some(current),
        )
        .await
        {
            Ok(None) => return Ok(None),
            Ok(Some(entry)) => entry,
            Err(e) => {
                error!(policy = name, error = %e, trigger = "upload", "uploaded policy rejected; the running version keeps serving");
                record_reload(name, false, trigger);
                self.set_last_error(name, Some(e.to_string()));
                return Err(PutError::Invalid(e));
            }
        };
        write_atomically(&path, &bytes)
            .await
            .map_err(|e| PutError::Write(format!("{}: {e}", path.display())))?;
        let generation = entry.generation;
        info!(
            policy = name,
            generation,
            trigger = "upload",
            "policy swapped"
        );
        record_generation(&entry);
        record_reload(name, true, trigger);
        self.set_last_error(name, None);
        let set = snap.policies.with(&snap.config.config, entry);
        self.publish(snap.config.clone(), set);
        Ok(Some(generation))
    }

    /// SIGHUP: reload the config file and every policy it names, all or
    /// nothing. Listener addresses cannot change without a restart.
    pub async fn reload_config(self: &Arc<Self>) -> Result<(), String> {
        let trigger = Instant::now();
        let _serial = self.reload_lock.lock().await;
        let snap = self.snapshot();
        let Some(source) = snap.config.config.source.clone() else {
            return Err("the embedded default has no file to reload".into());
        };
        let config = Config::load(&source).map_err(|e: ConfigErrors| e.to_string())?;
        let old = &snap.config.config.server;
        if config.server.listen != old.listen || config.server.admin_listen != old.admin_listen {
            warn!("listener addresses changed in the config; they take effect at the next restart");
        }
        let result = load_all(&self.runtime, &config, Some(&snap.policies)).await;
        let state = Arc::new(ConfigState::new(config, &self.health));
        self.finish_bulk(state, result, trigger, "sighup")
            .map_err(|failures| {
                failures
                    .iter()
                    .map(|f| format!("policies[{}] `{}`: {}", f.index, f.name, f.error))
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
        drop(_serial);
        self.watch_policy_dirs();
        Ok(())
    }

    /// Watch the folder of every configured policy (new ones after SIGHUP).
    pub fn watch_policy_dirs(&self) {
        let snap = self.snapshot();
        let mut guard = self.watcher.lock();
        let Watcher { inner, dirs } = &mut *guard;
        let Some(inner) = inner.as_mut() else {
            return;
        };
        for entry in snap.policies.entries.values() {
            let Some(dir) = canonical_dir(&entry.path) else {
                continue;
            };
            if !dirs.contains(&dir) {
                match inner.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        dirs.insert(dir);
                    }
                    Err(e) => warn!(dir = %dir.display(), error = %e, "cannot watch policy folder"),
                }
            }
        }
    }
}

/// Why a `PUT` failed.
#[derive(Debug)]
pub enum PutError {
    /// No policy of that name is configured.
    Unknown,
    /// The component was rejected.
    Invalid(LoadError),
    /// It validated but could not be written to the policy's path.
    Write(String),
}

fn canonical_dir(path: &Path) -> Option<PathBuf> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.canonicalize().ok()
}

fn canonical_file(path: &Path) -> Option<PathBuf> {
    Some(canonical_dir(path)?.join(path.file_name()?))
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.weir-upload-{:x}",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default(),
        fastrand::u64(..)
    ));
    tokio::fs::write(&tmp, bytes).await?;
    if let Err(e) = tokio::fs::rename(&tmp, path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    Ok(())
}

/// Start watching policy files; changed files are reloaded one by one.
pub fn spawn_watcher(gw: &Arc<Gateway>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    });
    match watcher {
        Ok(w) => gw.watcher.lock().inner = Some(w),
        Err(e) => {
            warn!(error = %e, "cannot watch policy files; use the admin API or SIGHUP to reload");
            return;
        }
    }
    gw.watch_policy_dirs();
    let weak = Arc::downgrade(gw);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let trigger = Instant::now();
            let mut changed = HashSet::from([first]);
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(path)) => {
                        changed.insert(path);
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let Some(gw) = weak.upgrade() else { return };
            let snap = gw.snapshot();
            let names: Vec<String> = snap
                .policies
                .entries
                .values()
                .filter(|e| canonical_file(&e.path).is_some_and(|p| changed.contains(&p)))
                .map(|e| e.config.name.clone())
                .collect();
            let by_name: HashMap<String, ()> = names.iter().map(|n| (n.clone(), ())).collect();
            for name in by_name.keys() {
                gw.reload_policy_file(name, trigger).await;
            }
        }
    });
}

/// On SIGHUP, reload the config; failures keep the running one.
pub fn spawn_sighup(gw: &Arc<Gateway>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler");
        return;
    };
    let weak = Arc::downgrade(gw);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(gw) = weak.upgrade() else { return };
            info!("SIGHUP received: reloading the config and policies");
            match gw.reload_config().await {
                Ok(()) => info!("configuration reloaded"),
                Err(e) => {
                    error!(error = %e, "configuration reload failed; the running configuration keeps serving")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_491_740_123);
        assert_eq!(rfc3339(t), "2026-11-24T03:42:20.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
