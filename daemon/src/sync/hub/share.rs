//! One shared folder on the hub. The hub's folder is itself a replica: its
//! own edits are planned by `plan` and journaled by [`Share::scan`], and a
//! peer's push lands only once any hub edit at its path is journaled, so it
//! meets that edit as a conflict and never overwrites it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::{ShareRecord, StoreError};
use crate::sync::plan::{self, Op, State};
use crate::sync::replica::fsops;
use crate::sync::replica::ignore::{Ignorer, MARKER};
use crate::sync::replica::journal::Journal;
use crate::sync::replica::scan::{self, Scope};
use crate::sync::replica::watcher::{Watch, next_wake};
use crate::sync::wire::model::{Entry, Synced};

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
        let local = scan::gather(&self.root, &found, &known, &ignorer);
        self.journal_plan(plan::plan(&local, &BTreeMap::new(), &known))
            .map_err(|e| e.to_string())?;
        if found.is_whole() {
            fsops::remove_leftovers(&found.scan.leftovers);
            *self.report.lock().unwrap_or_else(|p| p.into_inner()) = ScanReport {
                skipped: found.scan.skipped,
                case_collisions: found.scan.case_collisions,
            };
        }
        Ok(())
    }

    /// Journals what a plan of the hub's own changes says: a new version for
    /// each change (children's tombstones first, so a peer can apply them in
    /// order), fresh stat data for what was only touched. A path newly
    /// ignored keeps its entry: peers are told nothing, and keep their copy.
    fn journal_plan(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        for op in ops {
            match op {
                Op::Upload { path, state, .. } | Op::PushDir { path, state, .. } => {
                    self.journal.record(&path, synced_of(&state))?;
                }
                Op::DeleteRemote { path, .. } => {
                    self.journal.record(&path, Synced::deleted(0))?;
                }
                Op::Remember { path, synced } => self.journal.put(&path, &synced)?,
                Op::Forget { .. } => {}
                // A plan made without news from a hub only journals.
                other => {
                    tracing::warn!(op = ?other, "the hub's own plan asked for more than journaling")
                }
            }
        }
        Ok(())
    }

    /// Before a push lands on `path`, journal any local edit there, so the
    /// push meets it as a conflict instead of overwriting it.
    pub fn refresh(&self, path: &str) -> Result<Option<Entry>, StoreError> {
        let synced = self.journal.get(path)?;
        let here = scan::look_at_path(&self.root, path, synced.as_ref());
        let local = BTreeMap::from([(path.to_string(), here)]);
        let base: HashMap<String, Synced> =
            synced.map(|s| (path.to_string(), s)).into_iter().collect();
        self.journal_plan(plan::plan(&local, &BTreeMap::new(), &base))?;
        self.journal.entry_of(path)
    }
}

fn synced_of(state: &State) -> Synced {
    Synced {
        kind: state.kind,
        sha256: state.sha256,
        size: state.size,
        exec: state.exec,
        version: 0,
        mtime_ns: state.mtime_ns,
        inode: state.inode,
    }
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
