//! The per-policy key-value store behind the `weir:policy/kv` import.
//!
//! Keys are namespaced by policy name, so two policies never see each
//! other's data. [`KvStore`] is the seam to the gateway's state backend: the
//! in-memory store here serves one process; shared backends (sqlite, redis)
//! implement the same trait so counters hold across instances.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Storage for policy key-value data. Keys arrive already namespaced.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + std::fmt::Debug {
    /// The value, if present and not expired.
    async fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Store a value, optionally expiring.
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>);
    /// Remove a key.
    async fn delete(&self, key: &str);
    /// Atomically add `delta`, creating the counter at 0 (with `ttl`).
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> i64;
}

#[derive(Debug)]
enum Stored {
    Bytes(Vec<u8>),
    Counter(i64),
}

/// An in-process store with TTLs; expired keys are dropped lazily and by an
/// occasional sweep, so memory is bounded by live keys.
#[derive(Debug, Default)]
pub struct MemoryKv {
    entries: Mutex<HashMap<String, (Stored, Option<Instant>)>>,
}

impl MemoryKv {
    fn live(entry: &(Stored, Option<Instant>), now: Instant) -> bool {
        entry.1.is_none_or(|t| t > now)
    }

    fn sweep_sometimes(map: &mut HashMap<String, (Stored, Option<Instant>)>, now: Instant) {
        if map.len() > 1024 && fastrand::u8(..) == 0 {
            map.retain(|_, e| Self::live(e, now));
        }
    }
}

#[async_trait::async_trait]
impl KvStore for MemoryKv {
    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let map = self.entries.lock();
        match map.get(key) {
            Some(e @ (Stored::Bytes(b), _)) if Self::live(e, now) => Some(b.clone()),
            Some(e @ (Stored::Counter(n), _)) if Self::live(e, now) => {
                Some(n.to_string().into_bytes())
            }
            _ => None,
        }
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) {
        let now = Instant::now();
        let mut map = self.entries.lock();
        Self::sweep_sometimes(&mut map, now);
        map.insert(
            key.to_string(),
            (Stored::Bytes(value), ttl.map(|t| now + t)),
        );
    }

    async fn delete(&self, key: &str) {
        self.entries.lock().remove(key);
    }

    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        let now = Instant::now();
        let mut map = self.entries.lock();
        Self::sweep_sometimes(&mut map, now);
        let entry = map
            .entry(key.to_string())
            .or_insert((Stored::Counter(0), ttl.map(|t| now + t)));
        if !Self::live(entry, now) {
            *entry = (Stored::Counter(0), ttl.map(|t| now + t));
        }
        let current = match &entry.0 {
            Stored::Counter(n) => *n,
            Stored::Bytes(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        };
        let next = current.saturating_add(delta);
        entry.0 = Stored::Counter(next);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_values_and_expiry() {
        let kv = MemoryKv::default();
        assert_eq!(kv.increment("a", 2, None).await, 2);
        assert_eq!(kv.increment("a", -5, None).await, -3);
        assert_eq!(kv.get("a").await, Some(b"-3".to_vec()));
        kv.set("b", b"x".to_vec(), Some(Duration::ZERO)).await;
        assert_eq!(kv.get("b").await, None, "a zero TTL expires at once");
        assert_eq!(
            kv.increment("b", 1, None).await,
            1,
            "expired keys restart at 0"
        );
        kv.delete("a").await;
        assert_eq!(kv.get("a").await, None);
    }
}
