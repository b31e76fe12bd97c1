//! Sliding one-minute windows for request and token rate limits, and the
//! `x-ratelimit-*` headers they produce (SPEC §8).
//!
//! A window is 60 one-second buckets of (requests, tokens): exact to a
//! second, 60 small counters per window, and a check is a sum over them
//! under a mutex held for well under a microsecond. Buckets are keyed by
//! Unix second so the in-memory windows and the Redis ones (see
//! `state::redis`) agree on what "the last minute" is.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Seconds in a window.
pub const WINDOW_SECS: u64 = 60;

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    second: u64,
    requests: u64,
    tokens: u64,
}

/// One window's buckets.
#[derive(Debug, Clone)]
pub struct Window {
    buckets: [Bucket; WINDOW_SECS as usize],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            buckets: [Bucket::default(); WINDOW_SECS as usize],
        }
    }
}

/// Why a window cannot take a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Requests { limit: u64, retry_after: Duration },
    Tokens { limit: u64, retry_after: Duration },
}

impl Window {
    fn live(&self, now: u64) -> impl Iterator<Item = &Bucket> {
        self.buckets
            .iter()
            .filter(move |b| b.second + WINDOW_SECS > now && (b.requests > 0 || b.tokens > 0))
    }

    /// (requests, tokens) in the last minute.
    pub fn used(&self, now: u64) -> (u64, u64) {
        self.live(now)
            .fold((0, 0), |(r, t), b| (r + b.requests, t + b.tokens))
    }

    fn wait_for(&self, now: u64, used: u64, need: u64, limit: u64, of: fn(&Bucket) -> u64) -> u64 {
        let mut live: Vec<&Bucket> = self.live(now).collect();
        live.sort_by_key(|b| b.second);
        let mut freed = 0;
        for b in live {
            freed += of(b);
            if used - freed + need <= limit {
                return b.second + WINDOW_SECS - now;
            }
        }
        WINDOW_SECS
    }

    /// Check that one more request of `tokens` fits under the limits.
    pub fn check(
        &self,
        now: u64,
        tokens: u64,
        tpm: Option<u64>,
        rpm: Option<u64>,
    ) -> Result<(), Full> {
        let (requests, used_tokens) = self.used(now);
        if let Some(limit) = rpm
            && requests + 1 > limit
        {
            let wait = self.wait_for(now, requests, 1, limit, |b| b.requests);
            return Err(Full::Requests {
                limit,
                retry_after: Duration::from_secs(wait),
            });
        }
        if let Some(limit) = tpm
            && used_tokens + tokens > limit
        {
            let wait = if tokens > limit {
                WINDOW_SECS
            } else {
                self.wait_for(now, used_tokens, tokens, limit, |b| b.tokens)
            };
            return Err(Full::Tokens {
                limit,
                retry_after: Duration::from_secs(wait),
            });
        }
        Ok(())
    }

    /// Add a request of `tokens` at second `now`.
    pub fn add(&mut self, now: u64, requests: u64, tokens: u64) {
        let b = &mut self.buckets[(now % WINDOW_SECS) as usize];
        if b.second != now {
            *b = Bucket {
                second: now,
                ..Bucket::default()
            };
        }
        b.requests += requests;
        b.tokens += tokens;
    }

    /// Replace `reserved` tokens charged at `second` with `actual`.
    pub fn settle(&mut self, now: u64, second: u64, reserved: u64, actual: u64) {
        let b = &mut self.buckets[(second % WINDOW_SECS) as usize];
        if b.second == second && second + WINDOW_SECS > now {
            b.tokens = (b.tokens + actual).saturating_sub(reserved);
        }
    }

    /// Seconds until the window is empty again.
    pub fn reset(&self, now: u64) -> Duration {
        Duration::from_secs(
            self.live(now)
                .map(|b| b.second + WINDOW_SECS - now)
                .max()
                .unwrap_or(0),
        )
    }
}

/// What a key has left, for `x-ratelimit-*` headers: (limit, remaining,
/// reset) for requests and tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateInfo {
    pub requests: Option<(u64, u64, Duration)>,
    pub tokens: Option<(u64, u64, Duration)>,
}

impl RateInfo {
    /// Standing of a window with `used` (requests, tokens) after reserving.
    pub fn of(tpm: Option<u64>, rpm: Option<u64>, used: (u64, u64), reset: Duration) -> RateInfo {
        RateInfo {
            requests: rpm.map(|l| (l, l.saturating_sub(used.0), reset)),
            tokens: tpm.map(|l| (l, l.saturating_sub(used.1), reset)),
        }
    }

    /// Add OpenAI's `x-ratelimit-*` headers to `headers`. (The names are
    /// constants: a name given as a string is parsed on every insert.)
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        const NAMES: [[HeaderName; 3]; 2] = [
            [
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderName::from_static("x-ratelimit-reset-requests"),
            ],
            [
                HeaderName::from_static("x-ratelimit-limit-tokens"),
                HeaderName::from_static("x-ratelimit-remaining-tokens"),
                HeaderName::from_static("x-ratelimit-reset-tokens"),
            ],
        ];
        let standings = [self.requests, self.tokens];
        // One growth of the map for all of them, not one per insert.
        headers.reserve(3 * standings.iter().flatten().count());
        for (standing, [limit_name, remaining_name, reset_name]) in standings.into_iter().zip(NAMES)
        {
            let Some((limit, remaining, reset)) = standing else {
                continue;
            };
            headers.insert(limit_name, HeaderValue::from(limit));
            headers.insert(remaining_name, HeaderValue::from(remaining));
            if let Ok(v) = HeaderValue::from_str(openai_duration(reset).as_str()) {
                headers.insert(reset_name, v);
            }
        }
    }
}

/// OpenAI's duration format: `20ms`, `1s`, `6m0s` (written without
/// `format!`: two of these go on every limited response).
pub fn openai_duration(d: Duration) -> DurationText {
    let mut out = DurationText::default();
    let ms = d.as_millis();
    if ms < 1000 {
        out.push(ms as u64, "ms");
        return out;
    }
    let secs = d.as_secs_f64().ceil() as u64;
    if secs >= 3600 {
        out.push(secs / 3600, "h");
    }
    if secs >= 60 {
        out.push(secs % 3600 / 60, "m");
    }
    out.push(secs % 60, "s");
    out
}

/// A duration in OpenAI's format, on the stack.
#[derive(Default)]
pub struct DurationText {
    // The longest: 20 digits of hours, "h", "59m59s".
    bytes: [u8; 32],
    len: usize,
}

impl DurationText {
    fn push(&mut self, n: u64, unit: &str) {
        let mut digits = itoa::Buffer::new();
        for part in [digits.format(n), unit] {
            self.bytes[self.len..self.len + part.len()].copy_from_slice(part.as_bytes());
            self.len += part.len();
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and units were written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_tokens() {
        let mut w = Window::default();
        let now = 1000;
        assert!(w.check(now, 0, None, Some(2)).is_ok());
        w.add(now, 1, 0);
        w.add(now, 1, 0);
        match w.check(now + 10, 0, None, Some(2)) {
            Err(Full::Requests {
                limit: 2,
                retry_after,
            }) => assert_eq!(retry_after, Duration::from_secs(50)),
            other => panic!("{other:?}"),
        }
        assert!(
            w.check(now + 60, 0, None, Some(2)).is_ok(),
            "the window slid"
        );
    }

    #[test]
    fn tokens_settle_to_actual_usage() {
        let mut w = Window::default();
        w.add(1000, 1, 80);
        assert!(w.check(1000, 30, Some(100), None).is_err());
        w.settle(1000, 1000, 80, 10);
        assert!(w.check(1000, 30, Some(100), None).is_ok());
        assert_eq!(w.used(1000), (1, 10));
        assert!(matches!(
            w.check(1000, 200, Some(100), None),
            Err(Full::Tokens { .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(openai_duration(Duration::from_millis(20)).as_str(), "20ms");
        assert_eq!(openai_duration(Duration::from_secs(1)).as_str(), "1s");
        assert_eq!(openai_duration(Duration::from_secs(360)).as_str(), "6m0s");
        assert_eq!(
            openai_duration(Duration::from_millis(59_500)).as_str(),
            "1m0s"
        );
    }
}
