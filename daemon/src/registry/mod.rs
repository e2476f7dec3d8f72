//! Connections, credentials and grants: every change goes to the store first
//! (flushed), then to the in-memory index that verifies keys. A change is
//! acknowledged only after both, so a rotation that returned is in force.
//!
//! Verification is a read lock and a hash lookup; it never writes the store.
//! The index holds only what verification needs: control operations read a
//! connection's full record from the store. `last_used` is kept in memory and
//! written in batches by [`Registry::flush_last_used`].

mod conns;
mod creds;
mod index;
mod live;
mod validate;
mod verify;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::ApiError;
use crate::keys::KeyHash;
use crate::ratelimit::DefaultRates;
use crate::store::Store;

use conns::*;
use index::Index;
use live::*;
pub use live::{LiveConn, LiveCred, Verified};
use validate::*;
pub use verify::KeyUse;

pub struct Registry {
    store: Store,
    index: RwLock<Index>,
    /// Serializes changes so that store and index move together.
    change: tokio::sync::Mutex<()>,
    /// The config's `default_rate`, for agent connections without their own.
    default_rates: DefaultRates,
    /// Moves on with every change to the index, so a [`Lookup`] can tell
    /// that it still holds.
    generation: AtomicU64,
    /// Told of every change, so that what a key opened can end when the key
    /// stops working (see [`Registry::retired`]).
    changed: tokio::sync::watch::Sender<()>,
}

/// Which connection a key names, as of one state of the index.
pub struct Lookup {
    verified: Verified,
    /// The end of a rotated key's grace.
    until_ms: Option<u64>,
    generation: u64,
}

impl Lookup {
    /// The connection, not yet admitted: see [`Registry::admit`].
    pub fn conn(&self) -> &Arc<LiveConn> {
        &self.verified.conn
    }

    /// The one credential a `pxr_` grant token opens; `None` for a key.
    pub fn grant_cred(&self) -> Option<&str> {
        self.verified.grant_cred.as_deref()
    }
}

pub fn now_secs() -> u64 {
    now_ms() / 1000
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Registry {
    /// Loads every record into the index. Revoked keys and grants of missing
    /// connections are left out, so a half-finished delete stays deleted.
    pub fn load(store: Store) -> Result<Registry, ApiError> {
        let revoked: HashSet<KeyHash> = store.revoked()?.into_iter().collect();
        let mut index = Index::default();
        let now = now_ms();
        for record in store.conns() {
            let record = record?;
            let Some(hash) = KeyHash::from_hex(&record.key_hash) else {
                continue;
            };
            if revoked.contains(&hash) {
                continue;
            }
            index.insert_conn(&record, now, &revoked);
        }
        for record in store.creds()? {
            let secret = store.open_cred_secret(&record)?;
            index.live_creds.insert(
                record.name.clone(),
                Arc::new(LiveCred::new(&record, secret)),
            );
            index.creds.insert(record.name.clone(), record);
        }
        for record in store.grants()? {
            index.insert_grant(record, &revoked);
        }
        Ok(Registry {
            store,
            index: RwLock::new(index),
            change: tokio::sync::Mutex::new(()),
            default_rates: DefaultRates::default(),
            generation: AtomicU64::new(0),
            changed: tokio::sync::watch::Sender::new(()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Sets the rate of agent connections that have none of their own.
    pub fn set_default_rate(&self, limit: Option<sidekey_api::RateLimit>) {
        self.default_rates.set(limit);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Moving the generation on while holding the lock: a lookup that read
    /// the old generation either finished before this change or waits for it.
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        let index = self.index.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.send_replace(());
        index
    }

    pub fn counts(&self) -> (u64, u64, u64) {
        let index = self.read();
        (
            index.conns.len() as u64,
            index.creds.len() as u64,
            index.grants.len() as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidekey_api::{ConnCreate, ConnKind, ConnState};

    fn open(data_dir: &std::path::Path) -> Registry {
        let master = crate::store::master_key::load_or_create(data_dir).unwrap();
        Registry::load(Store::open(data_dir, &master).unwrap()).unwrap()
    }

    fn agent(name: &str) -> ConnCreate {
        ConnCreate {
            name: name.to_string(),
            kind: ConnKind::Agent,
            expires_in_secs: None,
            rate: None,
            share: None,
            read_only: None,
        }
    }

    #[tokio::test]
    async fn changes_to_a_connection_are_read_back_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let registry = open(dir.path());
        let first = registry.create_conn(agent("first")).await.unwrap();
        let second = registry.create_conn(agent("second")).await.unwrap();
        registry
            .verify(Some(&first.key), KeyUse::Proxy, "test")
            .unwrap();
        assert_eq!(registry.flush_last_used().await.unwrap(), 1);
        let rotated = registry.rotate_key("first", None).await.unwrap();
        assert!(
            registry
                .verify(Some(&first.key), KeyUse::Proxy, "test")
                .is_err()
        );
        registry.set_disabled(&second.conn.id, true).await.unwrap();
        drop(registry);

        let registry = open(dir.path());
        let conn = registry.conn("first").unwrap();
        assert_eq!(conn.last_used_by.as_deref(), Some("test"));
        assert!(conn.rotated_at.is_some());
        assert_eq!(registry.reveal_key(&conn.id).unwrap().key, rotated.key);
        assert_eq!(
            registry.conn(&second.conn.id).unwrap().state,
            ConnState::Disabled
        );
        let mut ids = vec![first.conn.id, second.conn.id];
        ids.sort();
        let listed: Vec<String> = registry
            .list_conns()
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(listed, ids, "listed in id order");
        registry.remove_conn("second").await.unwrap();
        assert!(registry.conn("second").is_err());
        assert!(!registry.conn_name_taken("second"));
    }
}
