//! The shared backend: limits, spend and usage on a Redis server, so every
//! gateway process pointed at it enforces the same limits and budgets.
//!
//! A reservation and a settlement are each one Lua script (atomic on the
//! server, one round trip): the reserve script sums the key's per-second
//! buckets over the last minute, checks the limits and the budget
//! (spent + reserved + this request), and only then charges the current
//! second and the reserved amount. Time is Redis's `TIME`, so processes with
//! skewed clocks still agree. Reserved money expires after 10 minutes
//! without activity, so a crashed process cannot hold a budget forever.
//!
//! If Redis is unreachable the gateway keeps serving and logs why: limits
//! and budgets are not enforced while it is down (fail open), and usage of
//! those requests is lost.
//!
//! Keys: `weir:wr:<window>` / `weir:wt:<window>` (hashes second → requests /
//! tokens), `weir:spend:<key>:<period>`, `weir:reserved:<key>:<period>`,
//! `weir:u:<key>\x1f<model>` (usage hash) indexed in the set `weir:u`,
//! `weir:kv:<policy>\x1f<key>` for policies.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use redis::Script;
use redis::aio::ConnectionManager;
use tracing::warn;

use super::{
    Actual, Ask, Ledger, Reservation, UsageTotals, period_key, quota_spent, rate_limited, windows,
};
use crate::error::GatewayError;
use crate::limits::RateInfo;
use crate::policy::KvStore;

const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1])
local tokens = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local spend_key, reserved_key, budget = ARGV[3], ARGV[4], tonumber(ARGV[5])
local nwin = tonumber(ARGV[6])
local function sum(h)
  local all = redis.call('HGETALL', h)
  local total, oldest, stale = 0, nil, {}
  for i = 1, #all, 2 do
    local sec, v = tonumber(all[i]), tonumber(all[i + 1])
    if sec + 60 > now then
      total = total + v
      if v > 0 and (oldest == nil or sec < oldest) then oldest = sec end
    else
      stale[#stale + 1] = all[i]
    end
  end
  if #stale > 0 then redis.call('HDEL', h, unpack(stale)) end
  return total, oldest
end
local used = {}
for i = 0, nwin - 1 do
  local name = ARGV[7 + 3 * i]
  local tpm, rpm = tonumber(ARGV[8 + 3 * i]), tonumber(ARGV[9 + 3 * i])
  local r, roldest = sum('weir:wr:' .. name)
  local k, toldest = sum('weir:wt:' .. name)
  if rpm >= 0 and r + 1 > rpm then
    return {0, i, 1, rpm, (roldest or now) + 60 - now}
  end
  if tpm >= 0 and k + tokens > tpm then
    local wait = 60
    if tokens <= tpm then wait = (toldest or now) + 60 - now end
    return {0, i, 2, tpm, wait}
  end
  used[#used + 1] = {r, k}
end
if spend_key ~= '' then
  local spent = tonumber(redis.call('GET', spend_key) or '0')
  local reserved = tonumber(redis.call('GET', reserved_key) or '0')
  if spent + reserved + cost > budget then
    return {0, -1, 3, budget, spent}
  end
  redis.call('INCRBY', reserved_key, cost)
  redis.call('EXPIRE', reserved_key, 600)
end
local out = {1, now}
for i = 0, nwin - 1 do
  local name = ARGV[7 + 3 * i]
  redis.call('HINCRBY', 'weir:wr:' .. name, now, 1)
  redis.call('HINCRBY', 'weir:wt:' .. name, now, tokens)
  redis.call('EXPIRE', 'weir:wr:' .. name, 120)
  redis.call('EXPIRE', 'weir:wt:' .. name, 120)
  out[#out + 1] = used[i + 1][1] + 1
  out[#out + 1] = used[i + 1][2] + tokens
end
return out
"#;

const RECORD: &str = r#"
local sec = ARGV[1]
local reserved_tokens, actual_tokens = tonumber(ARGV[2]), tonumber(ARGV[3])
local spend_key, reserved_key = ARGV[4], ARGV[5]
local reserved_cost, actual_cost = tonumber(ARGV[6]), tonumber(ARGV[7])
local usage_key, member = ARGV[8], ARGV[9]
if ARGV[14] == '1' then
  redis.call('HINCRBY', usage_key, 'requests', 1)
  redis.call('HINCRBY', usage_key, 'input_tokens', ARGV[10])
  redis.call('HINCRBY', usage_key, 'output_tokens', ARGV[11])
  redis.call('HINCRBY', usage_key, 'cached_input_tokens', ARGV[12])
  redis.call('HINCRBY', usage_key, 'micro_usd', actual_cost)
  redis.call('SADD', 'weir:u', member)
end
if spend_key ~= '' then
  local left = tonumber(redis.call('GET', reserved_key) or '0') - reserved_cost
  if left < 0 then left = 0 end
  redis.call('SET', reserved_key, left, 'EX', 600)
  redis.call('INCRBY', spend_key, actual_cost)
end
for i = 15, 14 + tonumber(ARGV[13]) do
  local h = 'weir:wt:' .. ARGV[i]
  local v = redis.call('HGET', h, sec)
  if v then
    local n = tonumber(v) - reserved_tokens + actual_tokens
    if n < 0 then n = 0 end
    redis.call('HSET', h, sec, n)
  end
end
return 1
"#;

const INCREMENT: &str = r#"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v == tonumber(ARGV[1]) and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
"#;

/// Limits and usage on a Redis server.
pub struct RedisLedger {
    conn: ConnectionManager,
    reserve: Script,
    record: Script,
    kv: Arc<RedisKv>,
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLedger").finish_non_exhaustive()
    }
}

impl RedisLedger {
    /// Connect to `url` (e.g. `redis://127.0.0.1:6379`).
    pub async fn connect(url: &str) -> anyhow::Result<RedisLedger> {
        let client =
            redis::Client::open(url).with_context(|| format!("invalid redis url `{url}`"))?;
        let conn = tokio::time::timeout(Duration::from_secs(5), ConnectionManager::new(client))
            .await
            .with_context(|| format!("redis at `{url}` did not answer within 5 s"))?
            .with_context(|| format!("cannot connect to redis at `{url}`"))?;
        Ok(RedisLedger {
            kv: Arc::new(RedisKv {
                conn: conn.clone(),
                increment: Script::new(INCREMENT),
            }),
            conn,
            reserve: Script::new(RESERVE),
            record: Script::new(RECORD),
        })
    }
}

#[async_trait::async_trait]
impl Ledger for RedisLedger {
    async fn reserve(&self, ask: &Ask) -> Result<Reservation, GatewayError> {
        let key = &ask.key;
        let wins = windows(key, &ask.model);
        // The period is decided with this process's clock (a day boundary is
        // the only place processes could disagree, for a few milliseconds).
        let period = key
            .budget_micro_usd
            .map(|_| period_key(key.budget_period, super::unix_now()));
        let (spend_key, reserved_key) = match &period {
            Some(p) => (
                format!("weir:spend:{}:{p}", key.name),
                format!("weir:reserved:{}:{p}", key.name),
            ),
            None => (String::new(), String::new()),
        };
        let mut inv = self.reserve.prepare_invoke();
        inv.arg(ask.tokens)
            .arg(ask.cost_micro_usd)
            .arg(&spend_key)
            .arg(&reserved_key)
            .arg(key.budget_micro_usd.map_or(-1, |b| b as i64))
            .arg(wins.len());
        for (name, tpm, rpm) in &wins {
            inv.arg(name)
                .arg(tpm.map_or(-1, |v| v as i64))
                .arg(rpm.map_or(-1, |v| v as i64));
        }
        let mut conn = self.conn.clone();
        let out: Vec<i64> = match inv.invoke_async(&mut conn).await {
            Ok(out) => out,
            Err(e) => {
                warn!(error = %e, key = %key.name, "redis is unavailable: limits and budgets are not enforced for this request");
                return Ok(Reservation {
                    key: key.name.clone(),
                    model: ask.model.clone(),
                    second: 0,
                    windows: Vec::new(),
                    tokens: 0,
                    cost_micro_usd: 0,
                    period: None,
                    info: RateInfo::default(),
                });
            }
        };
        if out.first() == Some(&0) {
            let get = |i: usize| out.get(i).copied().unwrap_or(0).max(0) as u64;
            let window = out.get(1).copied().unwrap_or(0);
            let model = (window >= 0 && wins.get(window as usize).is_some_and(|w| w.0 != key.name))
                .then_some(ask.model.as_str());
            let retry = Duration::from_secs(get(4).max(1));
            return Err(match out.get(2) {
                Some(1) => rate_limited(&key.name, model, "requests", get(3), retry),
                Some(2) => rate_limited(
                    &key.name,
                    model,
                    &format!("tokens (this request needs an estimated {})", ask.tokens),
                    get(3),
                    retry,
                ),
                _ => quota_spent(
                    &key.name,
                    get(4),
                    get(3),
                    period.as_deref().unwrap_or("total"),
                ),
            });
        }
        let second = out.get(1).copied().unwrap_or(0).max(0) as u64;
        let mut info = RateInfo::default();
        for (i, (_, tpm, rpm)) in wins.iter().enumerate() {
            let used = (
                out.get(2 + 2 * i).copied().unwrap_or(0).max(0) as u64,
                out.get(3 + 2 * i).copied().unwrap_or(0).max(0) as u64,
            );
            let standing = RateInfo::of(*tpm, *rpm, used, Duration::from_secs(60));
            info.requests = info.requests.or(standing.requests);
            info.tokens = info.tokens.or(standing.tokens);
        }
        Ok(Reservation {
            key: key.name.clone(),
            model: ask.model.clone(),
            second,
            windows: wins.into_iter().map(|(name, ..)| name).collect(),
            tokens: ask.tokens,
            cost_micro_usd: ask.cost_micro_usd,
            period,
            info,
        })
    }

    async fn record(
        &self,
        key: &str,
        model: &str,
        reservation: Option<Reservation>,
        actual: Option<Actual>,
    ) {
        let served = actual.is_some();
        let actual = actual.unwrap_or_default();
        let member = format!("{key}\u{1f}{model}");
        let (spend_key, reserved_key) = match reservation.as_ref().and_then(|r| r.period.as_ref()) {
            Some(p) => (
                format!("weir:spend:{key}:{p}"),
                format!("weir:reserved:{key}:{p}"),
            ),
            None => (String::new(), String::new()),
        };
        let r = reservation.as_ref();
        let mut inv = self.record.prepare_invoke();
        inv.arg(r.map_or(0, |r| r.second))
            .arg(r.map_or(0, |r| r.tokens))
            .arg(actual.input_tokens + actual.output_tokens)
            .arg(&spend_key)
            .arg(&reserved_key)
            .arg(r.map_or(0, |r| r.cost_micro_usd))
            .arg(actual.cost_micro_usd)
            .arg(format!("weir:u:{member}"))
            .arg(&member)
            .arg(actual.input_tokens)
            .arg(actual.output_tokens)
            .arg(actual.cached_input_tokens)
            .arg(r.map_or(0, |r| r.windows.len()))
            .arg(u8::from(served));
        for name in r.map(|r| r.windows.as_slice()).unwrap_or_default() {
            inv.arg(name);
        }
        let mut conn = self.conn.clone();
        if let Err(e) = inv.invoke_async::<i64>(&mut conn).await {
            warn!(error = %e, key, model, "cannot record usage in redis");
        }
    }

    async fn usage(&self) -> Vec<(String, String, UsageTotals)> {
        let mut conn = self.conn.clone();
        let members: Vec<String> = match redis::cmd("SMEMBERS")
            .arg("weir:u")
            .query_async(&mut conn)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "cannot read usage from redis");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(members.len());
        for member in members {
            let Some((key, model)) = member.split_once('\u{1f}') else {
                continue;
            };
            let fields: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
                .arg(format!("weir:u:{member}"))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            let get = |f: &str| fields.get(f).copied().unwrap_or(0);
            out.push((
                key.to_string(),
                model.to_string(),
                UsageTotals {
                    requests: get("requests"),
                    input_tokens: get("input_tokens"),
                    output_tokens: get("output_tokens"),
                    cached_input_tokens: get("cached_input_tokens"),
                    micro_usd: get("micro_usd"),
                },
            ));
        }
        out
    }

    fn kv(&self) -> Arc<dyn KvStore> {
        self.kv.clone()
    }
}

/// Policies' key-value store on the Redis server.
pub struct RedisKv {
    conn: ConnectionManager,
    increment: Script,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv").finish_non_exhaustive()
    }
}

fn kv_key(key: &str) -> String {
    format!("weir:kv:{key}")
}

#[async_trait::async_trait]
impl KvStore for RedisKv {
    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut conn = self.conn.clone();
        redis::cmd("GET")
            .arg(kv_key(key))
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| {
                warn!(error = %e, "policy key-value get failed");
                None
            })
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(kv_key(key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg((ttl.as_millis() as u64).max(1));
        }
        if let Err(e) = cmd.query_async::<()>(&mut conn).await {
            warn!(error = %e, "policy key-value set failed");
        }
    }

    async fn delete(&self, key: &str) {
        let mut conn = self.conn.clone();
        if let Err(e) = redis::cmd("DEL")
            .arg(kv_key(key))
            .query_async::<()>(&mut conn)
            .await
        {
            warn!(error = %e, "policy key-value delete failed");
        }
    }

    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        let mut conn = self.conn.clone();
        self.increment
            .key(kv_key(key))
            .arg(delta)
            .arg(ttl.map_or(0, |t| (t.as_millis() as u64).max(1)))
            .invoke_async(&mut conn)
            .await
            .unwrap_or_else(|e| {
                warn!(error = %e, "policy key-value increment failed");
                0
            })
    }
}
