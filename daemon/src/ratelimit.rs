//! A per-connection token bucket. `check` is one short critical section, and
//! a refusal says how many seconds until a request would pass.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use sidekey_api::RateLimit;

pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(limit: RateLimit) -> TokenBucket {
        let capacity = f64::from(limit.count.max(1));
        TokenBucket {
            capacity,
            per_sec: capacity / f64::from(limit.per_secs.max(1)),
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Takes one token, or returns the whole seconds to wait for one.
    pub fn check(&self, now: Instant) -> Result<(), u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.per_sec).min(self.capacity);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(((1.0 - tokens) / self.per_sec).ceil().max(1.0) as u64)
        }
    }
}

type Buckets = HashMap<String, Arc<TokenBucket>>;

/// The config's `default_rate`: one bucket per connection that has no rate of
/// its own, created on first use. Replacing the rate (on SIGHUP) starts every
/// bucket afresh.
#[derive(Default)]
pub struct DefaultRates {
    /// Lets the hot path skip the lock entirely when no default rate is set.
    enabled: AtomicBool,
    inner: RwLock<Option<(RateLimit, Buckets)>>,
}

impl DefaultRates {
    pub fn set(&self, limit: Option<RateLimit>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.as_ref().map(|(current, _)| *current) != limit {
            *inner = limit.map(|limit| (limit, HashMap::new()));
        }
        self.enabled.store(limit.is_some(), Ordering::Release);
    }

    /// Takes one token from `conn_id`'s bucket, or returns the seconds to wait.
    pub fn check(&self, conn_id: &str, now: Instant) -> Result<(), u64> {
        if !self.enabled.load(Ordering::Acquire) {
            return Ok(());
        }
        let bucket = {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            let Some((_, buckets)) = inner.as_ref() else {
                return Ok(());
            };
            buckets.get(conn_id).cloned()
        };
        let bucket = match bucket {
            Some(bucket) => bucket,
            None => {
                let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
                let Some((limit, buckets)) = inner.as_mut() else {
                    return Ok(());
                };
                let limit = *limit;
                buckets
                    .entry(conn_id.to_string())
                    .or_insert_with(|| Arc::new(TokenBucket::new(limit)))
                    .clone()
            }
        };
        bucket.check(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn default_rates_count_per_connection_and_reset_on_change() {
        let rates = DefaultRates::default();
        let t0 = Instant::now();
        assert!(rates.check("a", t0).is_ok(), "no default rate: no limit");
        let two = RateLimit {
            count: 2,
            per_secs: 60,
        };
        rates.set(Some(two));
        assert!(rates.check("a", t0).is_ok());
        assert!(rates.check("a", t0).is_ok());
        assert_eq!(rates.check("a", t0), Err(30));
        assert!(rates.check("b", t0).is_ok(), "b has its own bucket");
        rates.set(Some(two));
        assert_eq!(
            rates.check("a", t0),
            Err(30),
            "the same rate keeps its buckets"
        );
        rates.set(Some(RateLimit {
            count: 5,
            per_secs: 60,
        }));
        assert!(rates.check("a", t0).is_ok(), "a new rate starts afresh");
        rates.set(None);
        for _ in 0..10 {
            assert!(rates.check("a", t0).is_ok());
        }
    }

    #[test]
    fn bucket_refuses_past_capacity_then_refills() {
        let bucket = TokenBucket::new(RateLimit {
            count: 3,
            per_secs: 60,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(bucket.check(t0).is_ok());
        }
        assert_eq!(bucket.check(t0), Err(20));
        assert!(bucket.check(t0 + Duration::from_secs(21)).is_ok());
    }
}
