//! The config in force now. SIGHUP swaps it whole; readers take an `Arc` of
//! the current one, so a request sees one config from start to end.

use std::sync::{Arc, RwLock};

use crate::config::Config;

pub struct Live(RwLock<Arc<Config>>);

impl Live {
    pub fn new(config: Config) -> Live {
        Live(RwLock::new(Arc::new(config)))
    }

    pub fn get(&self) -> Arc<Config> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, config: Config) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}
