//! The config in force now. SIGHUP swaps it whole; readers take an `Arc` of
//! the current one, so a request sees one config from start to end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::{Config, Egress, Intercept};

pub struct Live {
    config: RwLock<Arc<Config>>,
    /// `egress` and `intercept` again, read by every proxied request: two
    /// relaxed loads instead of a lock and an `Arc` count that both proxy
    /// threads would bounce between their caches.
    egress_deny: AtomicBool,
    intercept_all: AtomicBool,
}

impl Live {
    pub fn new(config: Config) -> Live {
        let live = Live {
            config: RwLock::new(Arc::new(config.clone())),
            egress_deny: AtomicBool::new(false),
            intercept_all: AtomicBool::new(false),
        };
        live.set(config);
        live
    }

    pub fn get(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set(&self, config: Config) {
        self.egress_deny
            .store(config.egress == Egress::Deny, Ordering::Relaxed);
        self.intercept_all
            .store(config.intercept == Intercept::All, Ordering::Relaxed);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    pub fn egress(&self) -> Egress {
        match self.egress_deny.load(Ordering::Relaxed) {
            true => Egress::Deny,
            false => Egress::Tunnel,
        }
    }

    pub fn intercept(&self) -> Intercept {
        match self.intercept_all.load(Ordering::Relaxed) {
            true => Intercept::All,
            false => Intercept::Bound,
        }
    }
}
