//! A replica's record of every path: its last-synced state, keyed by path,
//! plus (on the hub) the order of changes, keyed by version, for the change
//! feed. On a peer the same table is its index of what it last synced.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use super::model::{Changes, Entry, Synced};
use crate::store::{Store, StoreError, Table};

pub struct Journal {
    entries: Table,
    /// version (big-endian) → path; only the hub keeps it.
    order: Option<Table>,
    last_version: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Journal {
    /// A hub's journal for a share: entries plus the change order.
    pub fn for_share(store: &Store, share: &str) -> Result<Arc<Journal>, StoreError> {
        let entries = store.table(&format!("share-entries:{share}"))?;
        let order = store.table(&format!("share-order:{share}"))?;
        let last = order
            .all::<String>()?
            .last()
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        Ok(Arc::new(Journal {
            entries,
            order: Some(order),
            last_version: AtomicU64::new(last),
            changed: watch::channel(last).0,
        }))
    }

    /// A peer's index for a session.
    pub fn for_session(store: &Store, session: &str) -> Result<Arc<Journal>, StoreError> {
        Ok(Arc::new(Journal {
            entries: store.table(&format!("session-index:{session}"))?,
            order: None,
            last_version: AtomicU64::new(0),
            changed: watch::channel(0).0,
        }))
    }

    pub fn drop_tables_for_share(store: &Store, share: &str) -> Result<(), StoreError> {
        store.drop_table(&format!("share-entries:{share}"))?;
        store.drop_table(&format!("share-order:{share}"))
    }

    pub fn drop_tables_for_session(store: &Store, session: &str) -> Result<(), StoreError> {
        store.drop_table(&format!("session-index:{session}"))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, path: &str) -> Result<Option<Synced>, StoreError> {
        self.entries.get(path.as_bytes())
    }

    pub fn all(&self) -> Result<Vec<(String, Synced)>, StoreError> {
        Ok(self
            .entries
            .all::<Synced>()?
            .into_iter()
            .filter_map(|(k, v)| String::from_utf8(k).ok().map(|k| (k, v)))
            .collect())
    }

    /// Live (not deleted) paths.
    pub fn live_count(&self) -> Result<usize, StoreError> {
        Ok(self
            .all()?
            .iter()
            .filter(|(_, s)| s.kind != super::model::Kind::Deleted)
            .count())
    }

    /// Sets a path's state as-is (a peer recording what it synced).
    pub fn put(&self, path: &str, state: &Synced) -> Result<(), StoreError> {
        self.entries.put(path.as_bytes(), state)
    }

    pub fn remove(&self, path: &str) -> Result<(), StoreError> {
        self.entries.remove(path.as_bytes())
    }

    /// The hub records a change: the path gets the next version, and the
    /// change feed wakes.
    pub fn record(&self, path: &str, mut state: Synced) -> Result<u64, StoreError> {
        let order = self
            .order
            .as_ref()
            .expect("only a hub journal records versions");
        let version = self.last_version.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(previous) = self.get(path)? {
            order.remove(&previous.version.to_be_bytes())?;
        }
        state.version = version;
        tracing::debug!(path, version, kind = ?state.kind, "journaled");
        self.entries.put(path.as_bytes(), &state)?;
        order.put(&version.to_be_bytes(), &path.to_string())?;
        self.changed.send_replace(version);
        Ok(version)
    }

    /// Updates stat data without a new version (content unchanged).
    pub fn touch(&self, path: &str, state: &Synced) -> Result<(), StoreError> {
        self.entries.put(path.as_bytes(), state)
    }

    pub fn last_version(&self) -> u64 {
        self.last_version.load(Ordering::Acquire)
    }

    /// Changes after `since`, oldest first, at most `limit`.
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        let order = self
            .order
            .as_ref()
            .expect("only a hub journal has a change feed");
        let mut entries = Vec::new();
        let mut cursor = since;
        let mut more = false;
        for (key, path) in order.range_from::<String>(&(since + 1).to_be_bytes())? {
            if entries.len() == limit {
                more = true;
                break;
            }
            let Ok(version) = <[u8; 8]>::try_from(key.as_slice()).map(u64::from_be_bytes) else {
                continue;
            };
            if let Some(state) = self.get(&path)?
                && state.version == version
            {
                entries.push(state.entry(&path));
            }
            cursor = version;
        }
        Ok(Changes {
            cursor: cursor.max(since),
            entries,
            more,
        })
    }

    /// Resolves when the journal moves past `since`, or after `wait`.
    pub async fn wait_past(&self, since: u64, wait: std::time::Duration) {
        let mut rx = self.changed.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v > since)).await;
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.entries.flush().await?;
        if let Some(order) = &self.order {
            order.flush().await?;
        }
        Ok(())
    }

    pub fn entry_of(&self, path: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.get(path)?.map(|s| s.entry(path)))
    }
}
