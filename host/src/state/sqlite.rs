//! The default backend: live counters in memory, spend and usage persisted
//! to a SQLite file so they survive a restart.
//!
//! Persistence is write-behind: each recorded request sends its deltas to
//! a writer thread, which folds them together and commits one transaction
//! at most every [`BATCH`] (and at shutdown), so the request path never
//! waits for the disk — one channel send per request. At start the totals
//! are read back into memory. Rate-limit windows are one minute long and are
//! not persisted. One gateway process per file; several processes sharing
//! limits and spend want the `redis` backend.
//!
//! The policies' key-value store lives in the same file (table `kv`), on its
//! own connection, with each operation on a blocking thread.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use tracing::{error, warn};

use super::memory::MemoryLedger;
use super::{Actual, Ask, Ledger, Reservation, UsageTotals, unix_now};
use crate::error::GatewayError;
use crate::policy::KvStore;

/// The longest a recorded request waits before it is on disk.
pub const BATCH: Duration = Duration::from_millis(50);

enum Write {
    Usage(String, String, Actual),
    Spend(String, String, u64),
    Flush(mpsc::Sender<()>),
}

/// Memory + a SQLite file.
#[derive(Debug)]
pub struct SqliteLedger {
    mem: MemoryLedger,
    writes: Mutex<mpsc::Sender<Write>>,
}

fn connect(path: &Path) -> anyhow::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS usage (
             key TEXT NOT NULL, model TEXT NOT NULL,
             requests INTEGER NOT NULL, input_tokens INTEGER NOT NULL,
             output_tokens INTEGER NOT NULL, cached_input_tokens INTEGER NOT NULL,
             micro_usd INTEGER NOT NULL,
             PRIMARY KEY (key, model));
         CREATE TABLE IF NOT EXISTS spend (
             key TEXT NOT NULL, period TEXT NOT NULL, micro_usd INTEGER NOT NULL,
             PRIMARY KEY (key, period));
         CREATE TABLE IF NOT EXISTS kv (
             key TEXT PRIMARY KEY, value BLOB, counter INTEGER, expires_at_ms INTEGER);",
    )?;
    Ok(conn)
}

type Loaded = (
    Vec<((String, String), u64)>,
    Vec<((String, String), UsageTotals)>,
);

fn load(conn: &Connection) -> rusqlite::Result<Loaded> {
    let spent = conn
        .prepare("SELECT key, period, micro_usd FROM spend")?
        .query_map([], |r| {
            Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)? as u64))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let usage = conn
        .prepare("SELECT key, model, requests, input_tokens, output_tokens, cached_input_tokens, micro_usd FROM usage")?
        .query_map([], |r| {
            Ok((
                (r.get(0)?, r.get(1)?),
                UsageTotals {
                    requests: r.get::<_, i64>(2)? as u64,
                    input_tokens: r.get::<_, i64>(3)? as u64,
                    output_tokens: r.get::<_, i64>(4)? as u64,
                    cached_input_tokens: r.get::<_, i64>(5)? as u64,
                    micro_usd: r.get::<_, i64>(6)? as u64,
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok((spent, usage))
}

impl SqliteLedger {
    /// Open (or create) the file and read its totals back.
    pub fn open(path: &Path) -> anyhow::Result<SqliteLedger> {
        let conn = connect(path)?;
        let (spent, usage) = load(&conn)?;
        let kv = Arc::new(SqliteKv {
            conn: Arc::new(Mutex::new(connect(path)?)),
        });
        let mem = MemoryLedger::with_kv(kv);
        mem.preload(spent, usage);
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("weir-sqlite".into())
            .spawn(move || writer(conn, rx))?;
        Ok(SqliteLedger {
            mem,
            writes: Mutex::new(tx),
        })
    }

    fn send(&self, w: Write) {
        if self.writes.lock().send(w).is_err() {
            error!("the sqlite writer stopped; usage is no longer persisted");
        }
    }
}

/// Fold writes together and commit them in batches.
fn writer(mut conn: Connection, rx: mpsc::Receiver<Write>) {
    let mut usage: HashMap<(String, String), UsageTotals> = HashMap::new();
    let mut spend: HashMap<(String, String), u64> = HashMap::new();
    let mut acks: Vec<mpsc::Sender<()>> = Vec::new();
    let mut first_pending: Option<Instant> = None;
    loop {
        let wait = first_pending.map_or(Duration::from_secs(3600), |t| {
            BATCH.saturating_sub(t.elapsed())
        });
        let mut closed = false;
        match rx.recv_timeout(wait) {
            Ok(Write::Usage(k, m, a)) => {
                usage.entry((k, m)).or_default().add(&a);
                first_pending.get_or_insert_with(Instant::now);
            }
            Ok(Write::Spend(k, p, micro)) => {
                *spend.entry((k, p)).or_default() += micro;
                first_pending.get_or_insert_with(Instant::now);
            }
            Ok(Write::Flush(ack)) => acks.push(ack),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
        }
        let due = first_pending.is_some_and(|t| t.elapsed() >= BATCH);
        if due || !acks.is_empty() || closed {
            if !usage.is_empty() || !spend.is_empty() {
                if let Err(e) = commit(&mut conn, &usage, &spend) {
                    error!(error = %e, "cannot persist usage to sqlite; will retry");
                    if !closed {
                        continue;
                    }
                }
                usage.clear();
                spend.clear();
            }
            first_pending = None;
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
        }
        if closed {
            return;
        }
    }
}

fn commit(
    conn: &mut Connection,
    usage: &HashMap<(String, String), UsageTotals>,
    spend: &HashMap<(String, String), u64>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut up = tx.prepare_cached(
            "INSERT INTO usage (key, model, requests, input_tokens, output_tokens, cached_input_tokens, micro_usd)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (key, model) DO UPDATE SET
                 requests = requests + excluded.requests,
                 input_tokens = input_tokens + excluded.input_tokens,
                 output_tokens = output_tokens + excluded.output_tokens,
                 cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
                 micro_usd = micro_usd + excluded.micro_usd",
        )?;
        for ((k, m), t) in usage {
            up.execute(params![
                k,
                m,
                t.requests as i64,
                t.input_tokens as i64,
                t.output_tokens as i64,
                t.cached_input_tokens as i64,
                t.micro_usd as i64
            ])?;
        }
        let mut sp = tx.prepare_cached(
            "INSERT INTO spend (key, period, micro_usd) VALUES (?1, ?2, ?3)
             ON CONFLICT (key, period) DO UPDATE SET micro_usd = micro_usd + excluded.micro_usd",
        )?;
        for ((k, p), micro) in spend {
            sp.execute(params![k, p, *micro as i64])?;
        }
    }
    tx.commit()
}

#[async_trait::async_trait]
impl Ledger for SqliteLedger {
    async fn reserve(&self, ask: &Ask) -> Result<Reservation, GatewayError> {
        self.mem.reserve_at(ask, unix_now())
    }

    async fn record(
        &self,
        key: &str,
        model: &str,
        reservation: Option<Reservation>,
        actual: Option<Actual>,
    ) {
        self.mem.record_at(
            key,
            model,
            reservation.as_ref(),
            actual.as_ref(),
            unix_now(),
        );
        let Some(actual) = actual else { return };
        if let Some(period) = reservation.and_then(|r| r.period) {
            self.send(Write::Spend(key.to_string(), period, actual.cost_micro_usd));
        }
        self.send(Write::Usage(key.to_string(), model.to_string(), actual));
    }

    async fn usage(&self) -> Vec<(String, String, UsageTotals)> {
        self.mem.usage_rows()
    }

    fn kv(&self) -> Arc<dyn KvStore> {
        self.mem.kv()
    }

    async fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Write::Flush(tx));
        let waited =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(5))).await;
        if !matches!(waited, Ok(Ok(()))) {
            warn!("the sqlite writer did not confirm the final flush");
        }
    }
}

/// Policies' key-value store in the sqlite file.
#[derive(Debug)]
pub struct SqliteKv {
    conn: Arc<Mutex<Connection>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl SqliteKv {
    async fn run<T: Send + 'static>(
        &self,
        default: T,
        op: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> T {
        let conn = self.conn.clone();
        let result = tokio::task::spawn_blocking(move || op(&conn.lock())).await;
        match result {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                warn!(error = %e, "policy key-value operation failed");
                default
            }
            Err(_) => default,
        }
    }
}

#[async_trait::async_trait]
impl KvStore for SqliteKv {
    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let key = key.to_string();
        self.run(None, move |c| {
            c.query_row(
                "SELECT value, counter FROM kv WHERE key = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)",
                params![key, now_ms()],
                |r| {
                    let value: Option<Vec<u8>> = r.get(0)?;
                    let counter: Option<i64> = r.get(1)?;
                    Ok(value.or_else(|| counter.map(|n| n.to_string().into_bytes())))
                },
            )
            .optional()
            .map(Option::flatten)
        })
        .await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) {
        let key = key.to_string();
        let expires = ttl.map(|t| now_ms() + t.as_millis() as i64);
        self.run((), move |c| {
            c.execute(
                "INSERT INTO kv (key, value, counter, expires_at_ms) VALUES (?1, ?2, NULL, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, counter = NULL, expires_at_ms = excluded.expires_at_ms",
                params![key, value, expires],
            )
            .map(drop)
        })
        .await;
    }

    async fn delete(&self, key: &str) {
        let key = key.to_string();
        self.run((), move |c| {
            c.execute("DELETE FROM kv WHERE key = ?1", params![key])
                .map(drop)
        })
        .await;
    }

    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        let key = key.to_string();
        let expires = ttl.map(|t| now_ms() + t.as_millis() as i64);
        self.run(0, move |c| {
            let now = now_ms();
            c.execute(
                "DELETE FROM kv WHERE key = ?1 AND expires_at_ms IS NOT NULL AND expires_at_ms <= ?2",
                params![key, now],
            )?;
            c.query_row(
                "INSERT INTO kv (key, value, counter, expires_at_ms) VALUES (?1, NULL, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET counter = COALESCE(counter, 0) + ?2, value = NULL
                 RETURNING counter",
                params![key, delta, expires],
                |r| r.get(0),
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::VirtualKey;
    use crate::config::BudgetPeriod;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spend_usage_and_kv_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/weir.db");
        let key = Arc::new(VirtualKey {
            name: "team".into(),
            models: None,
            tokens_per_minute: None,
            requests_per_minute: None,
            budget_micro_usd: Some(1000),
            budget_period: BudgetPeriod::Total,
            model_limits: Default::default(),
        });
        let ask = Ask {
            key: key.clone(),
            model: "m".into(),
            tokens: 10,
            cost_micro_usd: 500,
        };
        {
            let l = SqliteLedger::open(&path).unwrap();
            let r = l.reserve(&ask).await.unwrap();
            let actual = Actual {
                input_tokens: 7,
                output_tokens: 3,
                cached_input_tokens: 2,
                cost_micro_usd: 700,
            };
            l.record("team", "m", Some(r), Some(actual)).await;
            l.kv().increment("ns\u{1f}c", 5, None).await;
            l.kv().set("ns\u{1f}v", b"hello".to_vec(), None).await;
            l.flush().await;
        }
        let l = SqliteLedger::open(&path).unwrap();
        let rows = l.usage().await;
        assert_eq!(
            rows,
            vec![(
                "team".to_string(),
                "m".to_string(),
                UsageTotals {
                    requests: 1,
                    input_tokens: 7,
                    output_tokens: 3,
                    cached_input_tokens: 2,
                    micro_usd: 700
                }
            )]
        );
        // 700 spent: a 400 reservation no longer fits a 1000 budget.
        let mut bigger = ask.clone();
        bigger.cost_micro_usd = 400;
        assert_eq!(
            l.reserve(&bigger).await.unwrap_err().code(),
            Some("insufficient_quota")
        );
        assert_eq!(l.kv().increment("ns\u{1f}c", 1, None).await, 6);
        assert_eq!(l.kv().get("ns\u{1f}v").await, Some(b"hello".to_vec()));
        l.kv()
            .set("ns\u{1f}t", b"x".to_vec(), Some(Duration::ZERO))
            .await;
        assert_eq!(l.kv().get("ns\u{1f}t").await, None);
    }
}
