//! Key verification timed in isolation. The daemon's registry is private to
//! it, so this is a faithful model of `Registry::verify` on the whoami path
//! rather than the daemon's own code: parse the key's shape, SHA-256 it, look
//! the hash up under a read lock among `store_conns` entries, compare in
//! constant time, check the connection's flags, take the process-wide
//! default-rate lock (no default rate set, as in the bench), and mark the
//! connection used. If the daemon's verify changes, this model has to follow.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "sk_live_";
const BATCH: usize = 1_000;

/// Median time per verification, over batches.
pub struct ModelTimes {
    pub hit: Duration,
    pub miss: Duration,
}

struct Live {
    disabled: AtomicBool,
    expires_at: Option<u64>,
    last_used_at: AtomicU64,
    last_used_by: Mutex<String>,
    dirty: AtomicBool,
}

struct Model {
    by_hash: RwLock<HashMap<[u8; 32], Arc<Live>>>,
    /// The daemon's `DefaultRates`: one mutex taken by every agent request.
    default_rates: Mutex<Option<HashMap<String, u64>>>,
}

impl Model {
    fn new(keys: &[String]) -> Model {
        let by_hash = keys
            .iter()
            .map(|key| {
                let live = Live {
                    disabled: AtomicBool::new(false),
                    expires_at: None,
                    last_used_at: AtomicU64::new(0),
                    last_used_by: Mutex::new(String::new()),
                    dirty: AtomicBool::new(false),
                };
                (hash(key), Arc::new(live))
            })
            .collect();
        Model {
            by_hash: RwLock::new(by_hash),
            default_rates: Mutex::new(None),
        }
    }

    fn verify(&self, presented: &str, used_by: &str) -> Option<Arc<Live>> {
        if !well_formed(presented) {
            return None;
        }
        let wanted = hash(presented);
        let live = {
            let index = self.by_hash.read().unwrap_or_else(|p| p.into_inner());
            match index.get_key_value(&wanted) {
                Some((stored, live)) if bool::from(stored.ct_eq(&wanted)) => live.clone(),
                _ => return None,
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if live.disabled.load(Ordering::Acquire) || live.expires_at.is_some_and(|at| now >= at) {
            return None;
        }
        if self
            .default_rates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return None;
        }
        live.last_used_at.store(now, Ordering::Relaxed);
        {
            let mut by = live.last_used_by.lock().unwrap_or_else(|p| p.into_inner());
            if by.as_str() != used_by {
                by.clear();
                by.push_str(used_by);
            }
        }
        live.dirty.store(true, Ordering::Release);
        Some(live)
    }
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn well_formed(key: &str) -> bool {
    key.strip_prefix(PREFIX).is_some_and(|rest| {
        rest.len() == 64
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Times the model with `keys` in the index, presenting the first
/// `presented` of them in turn (hits) and `unknown` (misses), for about
/// `budget` in all. `None` without any key to hit.
pub fn time(
    keys: &[String],
    presented: usize,
    unknown: &str,
    budget: Duration,
) -> Option<ModelTimes> {
    let model = Model::new(keys);
    let hits = &keys[..presented.min(keys.len())];
    if hits.is_empty() {
        return None;
    }
    let half = budget / 2;
    let hit = median_batch(half, |i| {
        let key = &hits[i % hits.len()];
        // The daemon formats `used_by` per request; so does the model.
        let used_by = format!("whoami from {}", "127.0.0.1");
        black_box(model.verify(black_box(key), &used_by)).is_some()
    });
    let miss = median_batch(half, |_| {
        let used_by = format!("whoami from {}", "127.0.0.1");
        black_box(model.verify(black_box(unknown), &used_by)).is_some()
    });
    Some(ModelTimes { hit, miss })
}

/// Runs `verify` in batches for `budget` and returns the median time per call.
fn median_batch(budget: Duration, mut verify: impl FnMut(usize) -> bool) -> Duration {
    let begun = Instant::now();
    let mut per_call = Vec::new();
    let mut i = 0usize;
    while begun.elapsed() < budget || per_call.len() < 5 {
        let start = Instant::now();
        for _ in 0..BATCH {
            black_box(verify(i));
            i = i.wrapping_add(1);
        }
        per_call.push(start.elapsed() / BATCH as u32);
    }
    per_call.sort_unstable();
    per_call[per_call.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_accepts_known_keys_only() {
        let known = format!("{PREFIX}{}", "ab".repeat(32));
        let unknown = format!("{PREFIX}{}", "cd".repeat(32));
        let model = Model::new(std::slice::from_ref(&known));
        assert!(model.verify(&known, "test").is_some());
        assert!(model.verify(&unknown, "test").is_none());
        assert!(model.verify("sk_live_short", "test").is_none());
    }
}
