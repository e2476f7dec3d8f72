//! One shared folder on the hub. The hub's folder is itself a replica: its
//! own edits are journaled by [`Share::scan`], and peers' pushes are applied
//! only when the hub's file still matches the journal.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::store::{ShareRecord, StoreError};
use crate::sync::replica::fsops;
use crate::sync::replica::ignore::{Ignorer, MARKER};
use crate::sync::replica::journal::Journal;
use crate::sync::replica::scan::{self, Scope, Stat};
use crate::sync::replica::watcher::{Watch, next_wake};
use crate::sync::wire::model::{Entry, Kind, PushHead, Synced};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct ScanReport {
    pub skipped: Vec<String>,
    pub case_collisions: Vec<String>,
}

pub struct Share {
    pub record: ShareRecord,
    pub root: PathBuf,
    pub journal: Arc<Journal>,
    /// Serializes the hub's own scans and peers' pushes on this share.
    pub lock: tokio::sync::Mutex<()>,
    pub halted: Mutex<Option<String>>,
    pub report: Mutex<ScanReport>,
}

impl Share {
    pub fn new(record: ShareRecord, journal: Arc<Journal>) -> Share {
        Share {
            root: PathBuf::from(&record.path),
            record,
            journal,
            lock: tokio::sync::Mutex::new(()),
            halted: Mutex::new(None),
            report: Mutex::new(ScanReport::default()),
        }
    }

    pub fn halted(&self) -> Option<String> {
        self.halted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn halt(&self, why: String) {
        tracing::error!(share = %self.record.name, reason = %why, "share halted; nothing will be deleted");
        *self.halted.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Writes the replica marker when the share is created.
    pub fn write_marker(root: &Path, replica: &str) -> std::io::Result<()> {
        std::fs::write(root.join(MARKER), format!("{replica}\n"))
    }

    /// Journals the hub's own changes that `scope` covers: the caller holds
    /// `lock`. A vanished marker or a folder that suddenly went empty halts
    /// the share instead.
    pub fn scan(&self, scope: Scope) -> Result<(), String> {
        if self.halted().is_some() {
            return Ok(());
        }
        let marker = std::fs::read_to_string(self.root.join(MARKER)).unwrap_or_default();
        if marker.trim() != self.record.replica {
            self.halt(format!(
                "the marker {} is gone or changed, so this may not be the shared folder any more; nothing was deleted. If the folder moved, remove the share and add it again",
                self.root.join(MARKER).display()
            ));
            return Ok(());
        }
        let ignorer = Ignorer::load(&self.root);
        let look = scan::look_around(&self.root, scope, &ignorer, &self.journal)
            .map_err(|e| format!("cannot read {}: {e}", self.root.display()))?;
        let found = look.found;
        let known = look.synced;
        if look.emptied {
            self.halt(format!(
                "{} suddenly went empty; nothing was deleted anywhere. If that was intended, remove the share and add it again",
                self.root.display()
            ));
            return Ok(());
        }
        for (path, stat) in &found.scan.entries {
            self.journal_local(path, stat, known.get(path))
                .map_err(|e| e.to_string())?;
        }
        // Children before parents, so a peer can apply deletes in order.
        let mut gone: Vec<&String> = known
            .iter()
            .filter(|(path, synced)| {
                synced.kind != Kind::Deleted
                    && !found.scan.entries.contains_key(*path)
                    && found.settles(path)
                    && !ignorer.ignored(path, synced.kind == Kind::Dir)
            })
            .map(|(path, _)| path)
            .collect();
        gone.sort_by_key(|path| std::cmp::Reverse(path.matches('/').count()));
        for path in gone {
            self.journal
                .record(path, Synced::deleted(0))
                .map_err(|e| e.to_string())?;
        }
        if found.is_whole() {
            fsops::remove_leftovers(&found.scan.leftovers);
            *self.report.lock().unwrap_or_else(|p| p.into_inner()) = ScanReport {
                skipped: found.scan.skipped,
                case_collisions: found.scan.case_collisions,
            };
        }
        Ok(())
    }

    /// Journals one path's local state if it differs from the journal.
    fn journal_local(
        &self,
        path: &str,
        stat: &Stat,
        synced: Option<&Synced>,
    ) -> Result<(), StoreError> {
        if let Some(synced) = synced
            && same_stat(synced, stat)
        {
            return Ok(());
        }
        let state = match stat.kind {
            Kind::Dir => Synced {
                kind: Kind::Dir,
                sha256: None,
                size: 0,
                exec: false,
                version: 0,
                mtime_ns: stat.mtime_ns,
                inode: stat.inode,
            },
            _ => {
                let Ok((sha, size)) = scan::hash_file(&self.root.join(path)) else {
                    return Ok(());
                };
                Synced {
                    kind: Kind::File,
                    sha256: Some(sha),
                    size,
                    exec: stat.exec,
                    version: 0,
                    mtime_ns: stat.mtime_ns,
                    inode: stat.inode,
                }
            }
        };
        match synced {
            Some(old)
                if old.kind == state.kind
                    && old.sha256 == state.sha256
                    && old.exec == state.exec =>
            {
                self.journal.put(
                    path,
                    &Synced {
                        version: old.version,
                        ..state
                    },
                )
            }
            _ => self.journal.record(path, state).map(|_| ()),
        }
    }

    /// Before a push lands on `path`, journal any local edit there, so the
    /// push meets it as a conflict instead of overwriting it.
    pub fn refresh(&self, path: &str) -> Result<Option<Entry>, StoreError> {
        let synced = self.journal.get(path)?;
        match std::fs::symlink_metadata(self.root.join(path)) {
            Ok(meta) if meta.is_file() || meta.is_dir() => {
                self.journal_local(path, &scan::stat_of(&meta), synced.as_ref())?
            }
            Ok(_) => {}
            Err(_) => {
                if synced.as_ref().is_some_and(|s| s.kind != Kind::Deleted) {
                    self.journal.record(path, Synced::deleted(0))?;
                }
            }
        }
        self.journal.entry_of(path)
    }

    /// Whether a push made on `base` may land.
    pub fn base_matches(current: Option<&Entry>, head: &PushHead) -> bool {
        match current {
            None => head.base == 0,
            Some(entry) => entry.version == head.base,
        }
    }
}

pub fn same_stat(synced: &Synced, stat: &Stat) -> bool {
    synced.kind == stat.kind
        && (stat.kind == Kind::Dir
            || (synced.size == stat.size
                && synced.mtime_ns == stat.mtime_ns
                && synced.inode == stat.inode
                && synced.exec == stat.exec))
}

/// Keeps a share's journal current: scans on watcher hints and ticks.
pub async fn run_share(share: Arc<Share>, stop: CancellationToken) {
    let (tx, mut hints) = mpsc::channel(1);
    let watch = Watch::start(&share.root, tx);
    loop {
        {
            let _guard = share.lock.lock().await;
            let scope = watch.take();
            if let Err(e) = tokio::task::block_in_place(|| share.scan(scope)) {
                tracing::warn!(share = %share.record.name, error = %e, "scanning the share failed");
                watch.look_again();
            }
            let _ = share.journal.flush().await;
        }
        crate::memory::release_freed_soon();
        if !next_wake(&watch, &mut hints, None, &stop).await {
            return;
        }
    }
}
