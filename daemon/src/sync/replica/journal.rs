//! A replica's record of every path: its last-synced state, keyed by path.
//! On the hub each entry carries the version of its last change, and the
//! change feed is the entries ordered by version; on a peer the same table
//! is its index of what it last synced.
//!
//! The entries are the one thing persisted (one write per change, so a crash
//! cannot leave two tables disagreeing); the order is rebuilt from them at
//! start. Both live in memory, so a scan never re-reads the table, and the
//! feed reads one consistent view under a lock. It reaches sled only through
//! `store::PathTable`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::store::{PathTable, StoreError};
use crate::sync::wire::model::{Changes, Entry, Kind, Synced};

/// After a restart the hub's versions jump by this much, so a version it
/// served but had not flushed before a crash is never handed out again.
const RESTART_GAP: u64 = 1 << 20;

#[derive(Default)]
struct State {
    entries: HashMap<String, Synced>,
    /// version → path; only a hub keeps it.
    order: BTreeMap<u64, String>,
    last_version: u64,
}

pub struct Journal {
    entries: PathTable,
    /// Only a hub hands out versions.
    hub: bool,
    state: RwLock<State>,
    changed: watch::Sender<u64>,
}

impl Journal {
    /// A hub's journal for a share.
    pub fn for_share(table: PathTable) -> Result<Arc<Journal>, StoreError> {
        let entries: HashMap<String, Synced> = table.load()?;
        let order: BTreeMap<u64, String> = entries
            .iter()
            .map(|(path, s)| (s.version, path.clone()))
            .collect();
        let stored = order.keys().next_back().copied().unwrap_or(0);
        let last_version = if stored == 0 { 0 } else { stored + RESTART_GAP };
        let state = State {
            entries,
            order,
            last_version,
        };
        Ok(Arc::new(Journal {
            entries: table,
            hub: true,
            state: RwLock::new(state),
            changed: watch::channel(last_version).0,
        }))
    }

    /// A peer's index for a session.
    pub fn for_session(entries: PathTable) -> Result<Arc<Journal>, StoreError> {
        let state = State {
            entries: entries.load()?,
            ..State::default()
        };
        Ok(Arc::new(Journal {
            entries,
            hub: false,
            state: RwLock::new(state),
            changed: watch::channel(0).0,
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.read().entries.is_empty()
    }

    pub fn get(&self, path: &str) -> Result<Option<Synced>, StoreError> {
        Ok(self.read().entries.get(path).cloned())
    }

    pub fn entry_of(&self, path: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.read().entries.get(path).map(|s| s.entry(path)))
    }

    pub fn all(&self) -> HashMap<String, Synced> {
        self.read().entries.clone()
    }

    /// The entries of `paths` and `roots`, and of everything below those
    /// roots that are or were directories.
    pub fn around<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a String>,
        roots: &[String],
    ) -> HashMap<String, Synced> {
        let state = self.read();
        let mut out = HashMap::new();
        let mut trees = Vec::new();
        for path in paths {
            if let Some(synced) = state.entries.get(path) {
                out.insert(path.clone(), synced.clone());
            }
        }
        for root in roots {
            if let Some(synced) = state.entries.get(root) {
                if synced.kind != Kind::File {
                    trees.push(format!("{root}/"));
                }
                out.insert(root.clone(), synced.clone());
            }
        }
        if !trees.is_empty() {
            let below = |path: &str| trees.iter().any(|tree| path.starts_with(tree.as_str()));
            for (path, synced) in state.entries.iter().filter(|(path, _)| below(path)) {
                out.insert(path.clone(), synced.clone());
            }
        }
        out
    }

    pub fn is_live(&self, path: &str) -> bool {
        self.read()
            .entries
            .get(path)
            .is_some_and(|s| s.kind != Kind::Deleted)
    }

    /// Live (not deleted) paths.
    pub fn live_count(&self) -> usize {
        self.read()
            .entries
            .values()
            .filter(|s| s.kind != Kind::Deleted)
            .count()
    }

    /// Sets a path's state as-is: a peer recording what it synced, or the
    /// hub refreshing stat data without a new version.
    pub fn put(&self, path: &str, state: &Synced) -> Result<(), StoreError> {
        let mut guard = self.write();
        self.entries.put(path, state)?;
        guard.entries.insert(path.to_string(), state.clone());
        Ok(())
    }

    pub fn remove(&self, path: &str) -> Result<(), StoreError> {
        let mut guard = self.write();
        self.entries.remove(path)?;
        guard.entries.remove(path);
        Ok(())
    }

    /// The hub records a change: the path gets the next version, and the
    /// change feed wakes.
    pub fn record(&self, path: &str, mut state: Synced) -> Result<u64, StoreError> {
        assert!(self.hub, "only a hub journal records versions");
        let mut guard = self.write();
        let version = guard.last_version + 1;
        state.version = version;
        tracing::debug!(path, version, kind = ?state.kind, "journaled");
        self.entries.put(path, &state)?;
        if let Some(previous) = guard.entries.insert(path.to_string(), state) {
            guard.order.remove(&previous.version);
        }
        guard.order.insert(version, path.to_string());
        guard.last_version = version;
        drop(guard);
        self.changed.send_replace(version);
        Ok(version)
    }

    pub fn last_version(&self) -> u64 {
        self.read().last_version
    }

    /// Changes after `since`, oldest first, at most `limit`.
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        let guard = self.read();
        let mut entries = Vec::new();
        let mut cursor = since;
        let mut more = false;
        for (version, path) in guard.order.range(since.saturating_add(1)..) {
            if entries.len() == limit {
                more = true;
                break;
            }
            if let Some(state) = guard.entries.get(path)
                && state.version == *version
            {
                entries.push(state.entry(path));
            }
            cursor = *version;
        }
        Ok(Changes {
            cursor,
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
        self.entries.flush().await
    }
}
