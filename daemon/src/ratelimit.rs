//! A per-connection token bucket. `check` is one short critical section, and
//! a refusal says how many seconds until a request would pass.

use std::sync::Mutex;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
