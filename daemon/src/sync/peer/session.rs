//! A peer's sync session: a local folder kept in two-way sync with a share
//! on a hub. Each round pushes local changes (each made on a base version),
//! resolves what the hub refused without losing a byte, then pulls.
//!
//! Rules: an edit beats a delete; on edit/edit the hub's version keeps the
//! name and the local one becomes `name.sync-conflict-<ts>-<host>.ext`,
//! which then syncs like any file; an incoming change is applied only while
//! the local path still matches what was last synced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use sidekey_api::SessionState;
use tokio::sync::mpsc;

use crate::http_util::ChannelBody;
use crate::registry::{now_ms, now_secs};
use crate::shutdown::Tasks;
use crate::store::SessionRecord;
use crate::sync::hub::share::same_stat;
use crate::sync::peer::client::{HubClient, SyncError};
use crate::sync::replica::ignore::{Ignorer, MARKER};
use crate::sync::replica::journal::Journal;
use crate::sync::replica::scan::{self, Found, Scope, Stat};
use crate::sync::replica::{fsops, paths};
use crate::sync::wire::frames::FrameWriter;
use crate::sync::wire::model::{Entry, Kind, PushHead, PushResult, Synced};

/// Files at most this big travel together in one request.
const SMALL_FILE: u64 = 1024 * 1024;
const BATCH_BYTES: u64 = 16 * 1024 * 1024;
const BATCH_FILES: usize = 2000;

/// What `sync status` shows.
#[derive(Debug, Clone)]
pub struct Status {
    pub state: SessionState,
    pub message: Option<String>,
    pub pending: u64,
    pub conflicts: u64,
    pub last_sync: Option<u64>,
    pub progress_done: u64,
    pub progress_total: u64,
    pub skipped: Vec<String>,
    pub case_collisions: Vec<String>,
}

pub struct Session {
    pub record: Mutex<SessionRecord>,
    pub root: PathBuf,
    pub index: Arc<Journal>,
    pub client: HubClient,
    pub status: Mutex<Status>,
    pub bytes_moved: AtomicU64,
    pub host: String,
    /// Set when the hub refuses our pushes (a read-only key): pull only.
    read_only: std::sync::atomic::AtomicBool,
    /// The session's branch of the task tree, for its push writers.
    tasks: Tasks,
}

/// A local change to push.
struct Change {
    head: PushHead,
    stat: Option<Stat>,
}

impl Session {
    pub fn new(
        record: SessionRecord,
        index: Arc<Journal>,
        client: HubClient,
        host: String,
        tasks: Tasks,
    ) -> Session {
        Session {
            root: PathBuf::from(&record.folder),
            status: Mutex::new(Status {
                state: if record.paused {
                    SessionState::Paused
                } else {
                    SessionState::Scanning
                },
                message: None,
                pending: 0,
                conflicts: 0,
                last_sync: None,
                progress_done: 0,
                progress_total: 0,
                skipped: Vec::new(),
                case_collisions: Vec::new(),
            }),
            record: Mutex::new(record),
            index,
            client,
            bytes_moved: AtomicU64::new(0),
            host,
            read_only: std::sync::atomic::AtomicBool::new(false),
            tasks,
        }
    }

    pub fn record(&self) -> SessionRecord {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_state(&self, state: SessionState, message: Option<String>) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.state = state;
        status.message = message;
    }

    fn update<F: FnOnce(&mut Status)>(&self, f: F) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Checks the marker: a folder whose marker vanished while it has synced
    /// files is not trusted (it may be a different, empty folder).
    pub fn check_marker(&self) -> Result<(), String> {
        let marker = self.root.join(MARKER);
        let replica = self.record().replica;
        match std::fs::read_to_string(&marker) {
            Ok(text) if text.trim() == replica => Ok(()),
            Ok(_) => Err(format!(
                "{} belongs to another replica; nothing was deleted. Remove this session and add the folder again",
                marker.display()
            )),
            Err(_) if self.index.is_empty() => {
                std::fs::create_dir_all(&self.root)
                    .map_err(|e| format!("cannot create {}: {e}", self.root.display()))?;
                std::fs::write(&marker, format!("{replica}\n"))
                    .map_err(|e| format!("cannot write {}: {e}", marker.display()))
            }
            Err(_) => Err(format!(
                "the marker {} is gone, so this may not be the synced folder any more; nothing was deleted anywhere. If the folder moved, remove this session and add it again",
                marker.display()
            )),
        }
    }

    /// One round: push the local changes `scope` covers, then pull the hub's.
    pub async fn round(&self, scope: Scope) -> Result<(), RoundError> {
        self.check_marker().map_err(RoundError::Halt)?;
        self.update(|s| s.state = SessionState::Scanning);
        let ignorer = Ignorer::load(&self.root);
        let look = scan::look_around(&self.root, scope, &ignorer, &self.index)
            .map_err(|e| RoundError::Halt(format!("cannot read {}: {e}", self.root.display())))?;
        let found = look.found;
        let index = look.synced;
        if look.emptied {
            return Err(RoundError::Halt(format!(
                "{} suddenly went empty; nothing was deleted anywhere. If that was intended, remove this session",
                self.root.display()
            )));
        }
        if found.is_whole() {
            fsops::remove_leftovers(&found.scan.leftovers);
            self.update(|s| {
                s.skipped = found.scan.skipped.clone();
                s.case_collisions = found.scan.case_collisions.clone();
            });
        }

        let changes = self.local_changes(&found, &index, &ignorer)?;
        let first = !self.record().initial_sync_done;
        let unpushed = changes.len() as u64;
        let read_only = self.read_only.load(Ordering::Relaxed);
        if !changes.is_empty() && !read_only {
            self.update(|s| {
                s.state = SessionState::Syncing;
                s.pending = unpushed;
                if first {
                    s.progress_total += unpushed;
                }
            });
            match self.push(changes).await {
                Err(RoundError::Sync(SyncError::Forbidden(why))) => {
                    tracing::warn!(session = %self.record().id, %why, "the hub refused our changes; pulling only");
                    self.read_only.store(true, Ordering::Relaxed);
                    self.update(|s| s.message = Some(format!("The hub refused our changes ({why}); they stay in this folder, and changes from the hub still arrive.")));
                }
                other => other?,
            }
        }
        self.pull(first).await?;
        let read_only = self.read_only.load(Ordering::Relaxed);
        let mut record = self.record();
        if first {
            record.initial_sync_done = true;
        }
        *self.record.lock().unwrap_or_else(|p| p.into_inner()) = record;
        self.update(|s| {
            s.state = SessionState::Watching;
            if !read_only {
                s.message = None;
            }
            s.pending = if read_only { unpushed } else { 0 };
            s.last_sync = Some(now_secs());
        });
        Ok(())
    }

    fn local_changes(
        &self,
        found: &Found,
        index: &HashMap<String, Synced>,
        ignorer: &Ignorer,
    ) -> Result<Vec<Change>, RoundError> {
        let mut creates = Vec::new();
        for (path, stat) in &found.scan.entries {
            let synced = index.get(path).filter(|s| s.kind != Kind::Deleted);
            let base = index.get(path).map(|s| s.version).unwrap_or(0);
            if let Some(synced) = synced
                && same_stat(synced, stat)
            {
                continue;
            }
            let head = match stat.kind {
                Kind::Dir => {
                    if synced.is_some_and(|s| s.kind == Kind::Dir) {
                        continue;
                    }
                    PushHead {
                        path: path.clone(),
                        kind: Kind::Dir,
                        base,
                        sha256: None,
                        size: 0,
                        exec: false,
                    }
                }
                _ => {
                    let Ok((sha, size)) = scan::hash_file(&self.root.join(path)) else {
                        continue;
                    };
                    if let Some(synced) = synced
                        && synced.kind == Kind::File
                        && synced.sha256 == Some(sha)
                        && synced.exec == stat.exec
                    {
                        // Touched, not changed: remember the new stat data.
                        let touched = Synced {
                            mtime_ns: stat.mtime_ns,
                            inode: stat.inode,
                            size,
                            ..synced.clone()
                        };
                        self.index.put(path, &touched).map_err(store_error)?;
                        continue;
                    }
                    PushHead {
                        path: path.clone(),
                        kind: Kind::File,
                        base,
                        sha256: Some(sha),
                        size,
                        exec: stat.exec,
                    }
                }
            };
            creates.push(Change {
                head,
                stat: Some(stat.clone()),
            });
        }
        let mut deletes = Vec::new();
        for (path, synced) in index {
            let here = found.scan.entries.contains_key(path);
            if synced.kind == Kind::Deleted || here || !found.settles(path) {
                continue;
            }
            if ignorer.ignored(path, synced.kind == Kind::Dir) {
                // Newly ignored: forget it here, leave it alone everywhere else.
                self.index.remove(path).map_err(store_error)?;
                continue;
            }
            let head = PushHead {
                path: path.clone(),
                kind: Kind::Deleted,
                base: synced.version,
                sha256: None,
                size: 0,
                exec: false,
            };
            deletes.push(Change { head, stat: None });
        }
        // Parents before children when creating; children before parents when deleting.
        creates.sort_by_key(|c| c.head.path.matches('/').count());
        deletes.sort_by_key(|c| std::cmp::Reverse(c.head.path.matches('/').count()));
        creates.extend(deletes);
        Ok(creates)
    }

    async fn push(&self, changes: Vec<Change>) -> Result<(), RoundError> {
        let mut batch: Vec<Change> = Vec::new();
        let mut batch_bytes = 0u64;
        for change in changes {
            let size = if change.head.kind == Kind::File {
                change.head.size
            } else {
                0
            };
            if !batch.is_empty()
                && (batch.len() >= BATCH_FILES
                    || batch_bytes + size > BATCH_BYTES
                    || size > SMALL_FILE)
            {
                self.push_batch(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(change);
        }
        if !batch.is_empty() {
            self.push_batch(batch).await?;
        }
        Ok(())
    }

    async fn push_batch(&self, batch: Vec<Change>) -> Result<(), RoundError> {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let root = self.root.clone();
        let heads: Vec<PushHead> = batch.iter().map(|c| c.head.clone()).collect();
        let sending = heads.clone();
        let writer_task = self.tasks.spawn(async move {
            let writer = FrameWriter::new(tx);
            for head in sending {
                writer.head(&head).await?;
                if head.kind == Kind::File {
                    writer.file(&root.join(&head.path), head.size).await?;
                }
            }
            Ok::<_, std::io::Error>(())
        });
        let results = self
            .client
            .push(ChannelBody::new(rx).boxed())
            .await
            .map_err(RoundError::Sync)?;
        if let Ok(Err(e)) = writer_task.await {
            // The file changed while it was sent: the next round sends it again.
            tracing::debug!(error = %e, "a pushed file changed while it was sent");
        }
        let sent: u64 = heads.iter().map(|h| h.size).sum();
        self.bytes_moved.fetch_add(sent, Ordering::Relaxed);
        let mut again = false;
        // The hub answers in its own order (files land last): match by path.
        let mut sent: std::collections::HashMap<String, Change> = batch
            .into_iter()
            .map(|c| (c.head.path.clone(), c))
            .collect();
        for result in results {
            let path = match &result {
                PushResult::Accepted { path, .. }
                | PushResult::Conflict { path, .. }
                | PushResult::Refused { path, .. } => path.clone(),
            };
            let Some(change) = sent.remove(&path) else {
                tracing::warn!(%path, "the hub answered for a path it was not sent");
                continue;
            };
            match result {
                PushResult::Accepted { path, version } => {
                    let state = match (change.head.kind, &change.stat) {
                        (Kind::Deleted, _) | (_, None) => Synced::deleted(version),
                        (kind, Some(stat)) => Synced {
                            kind,
                            sha256: change.head.sha256,
                            size: change.head.size,
                            exec: change.head.exec,
                            version,
                            mtime_ns: stat.mtime_ns,
                            inode: stat.inode,
                        },
                    };
                    self.index.put(&path, &state).map_err(store_error)?;
                }
                PushResult::Conflict { path, current } => {
                    tracing::debug!(%path, base = change.head.base, mine = ?change.head.kind, theirs = ?current.kind, version = current.version, "the hub moved on");
                    again |= self.resolve(&change.head, &path, &current)?
                }
                PushResult::Refused { path, message } => {
                    tracing::warn!(session = %self.record().id, %path, %message, "the hub refused a change");
                }
            }
            self.update(|s| {
                s.pending = s.pending.saturating_sub(1);
                s.progress_done += 1;
            });
        }
        if again {
            return Err(RoundError::Again);
        }
        Ok(())
    }

    /// Makes the next pull include `version` again.
    fn rewind_to(&self, version: u64) {
        let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        record.cursor = record.cursor.min(version.saturating_sub(1));
    }

    /// The hub moved on from our base. Returns whether another round is due.
    fn resolve(&self, mine: &PushHead, path: &str, current: &Entry) -> Result<bool, RoundError> {
        // Same result on both sides: nothing to resolve.
        if current.kind == mine.kind && current.sha256 == mine.sha256 && current.exec == mine.exec {
            let stat = std::fs::symlink_metadata(self.root.join(path))
                .map(|m| scan::stat_of(&m))
                .ok();
            let state = Synced {
                kind: current.kind,
                sha256: current.sha256,
                size: current.size,
                exec: current.exec,
                version: current.version,
                mtime_ns: stat.as_ref().map(|s| s.mtime_ns).unwrap_or(0),
                inode: stat.map(|s| s.inode).unwrap_or(0),
            };
            self.index.put(path, &state).map_err(store_error)?;
            return Ok(false);
        }
        match (mine.kind, current.kind) {
            // We deleted, they edited: the edit wins; the pull brings it back.
            (Kind::Deleted, _) => {
                self.index
                    .put(path, &Synced::deleted(0))
                    .map_err(store_error)?;
                self.rewind_to(current.version);
                Ok(false)
            }
            // We edited, they deleted: the edit wins; push again on their tombstone.
            (_, Kind::Deleted) => {
                self.index
                    .put(path, &Synced::deleted(current.version))
                    .map_err(store_error)?;
                Ok(true)
            }
            // A directory against anything else, or two different edits:
            // keep ours beside theirs as a conflict copy.
            _ => {
                if mine.kind == Kind::Dir && current.kind == Kind::Dir {
                    return Ok(false);
                }
                let copy = fsops::move_to_conflict(&self.root, path, &self.host, now_ms() / 1000)
                    .map_err(|e| {
                    RoundError::Retry(format!("cannot keep the conflicting copy of {path}: {e}"))
                })?;
                tracing::info!(session = %self.record().id, %path, %copy, "conflict: kept the local side as a copy");
                self.index
                    .put(path, &Synced::deleted(0))
                    .map_err(store_error)?;
                self.rewind_to(current.version);
                self.update(|s| s.conflicts += 1);
                Ok(true)
            }
        }
    }

    async fn pull(&self, first: bool) -> Result<(), RoundError> {
        let mut since = self.record().cursor;
        // The cursor never moves past a change left for later (a local edit
        // was waiting), so the next pull sees it again.
        let mut first_skipped: Option<u64> = None;
        loop {
            let changes = self
                .client
                .changes(since, 0)
                .await
                .map_err(RoundError::Sync)?;
            if first {
                self.update(|s| s.progress_total += changes.entries.len() as u64);
            }
            let mut files = Vec::new();
            let mut deletes: Vec<&Entry> = Vec::new();
            for entry in &changes.entries {
                if paths::check(&entry.path).is_err() {
                    tracing::warn!(path = %entry.path, "refused a path from the hub");
                    continue;
                }
                let synced = self.index.get(&entry.path).map_err(store_error)?;
                if synced.as_ref().is_some_and(|s| s.version == entry.version) {
                    self.update(|s| s.progress_done += 1);
                    continue;
                }
                if !self.unchanged_since_sync(&entry.path, synced.as_ref()) {
                    // A local change waits to be pushed; the next round meets the conflict.
                    tracing::debug!(path = %entry.path, "a local change waits; not applying the hub's");
                    first_skipped.get_or_insert(entry.version);
                    continue;
                }
                match entry.kind {
                    Kind::File => files.push(entry.clone()),
                    Kind::Dir => {
                        let relative = PathBuf::from(&entry.path);
                        if let Err(e) = fsops::make_dir(&self.root, &relative) {
                            tracing::warn!(error = %e, path = %entry.path, "cannot create a directory");
                            continue;
                        }
                        let stat = std::fs::symlink_metadata(self.root.join(&relative))
                            .map(|m| scan::stat_of(&m))
                            .ok();
                        self.index
                            .put(&entry.path, &synced_from(entry, stat.as_ref()))
                            .map_err(store_error)?;
                        self.update(|s| s.progress_done += 1);
                    }
                    Kind::Deleted => deletes.push(entry),
                }
            }
            self.fetch(files).await?;
            // Children before parents; a directory that still holds local
            // files stays (an edit beats a delete) and syncs back.
            deletes.sort_by_key(|e| std::cmp::Reverse(e.path.matches('/').count()));
            for entry in deletes {
                match fsops::remove(&self.root, Path::new(&entry.path)) {
                    Ok(()) => self
                        .index
                        .put(&entry.path, &synced_from(entry, None))
                        .map_err(store_error)?,
                    Err(e) => {
                        tracing::debug!(error = %e, path = %entry.path, "kept a path the hub deleted")
                    }
                }
                self.update(|s| s.progress_done += 1);
            }
            since = changes.cursor;
            let mut record = self.record();
            record.cursor = first_skipped.map_or(since, |v| since.min(v - 1));
            *self.record.lock().unwrap_or_else(|p| p.into_inner()) = record;
            if !changes.more {
                return Ok(());
            }
        }
    }

    /// Whether the local path still holds what was last synced (or nothing,
    /// if nothing was).
    fn unchanged_since_sync(&self, path: &str, synced: Option<&Synced>) -> bool {
        let local = std::fs::symlink_metadata(self.root.join(path)).ok();
        match (synced.filter(|s| s.kind != Kind::Deleted), local) {
            (None, None) => true,
            (Some(synced), Some(meta)) => {
                (meta.is_file() || meta.is_dir()) && same_stat(synced, &scan::stat_of(&meta))
            }
            _ => false,
        }
    }

    async fn fetch(&self, files: Vec<Entry>) -> Result<(), RoundError> {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        for entry in files {
            if !batch.is_empty()
                && (batch.len() >= BATCH_FILES
                    || bytes + entry.size > BATCH_BYTES
                    || entry.size > SMALL_FILE)
            {
                self.fetch_batch(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
            bytes += entry.size;
            batch.push(entry);
        }
        if !batch.is_empty() {
            self.fetch_batch(batch).await?;
        }
        Ok(())
    }

    /// Fetches, verifies and applies a batch: temp files first, one syncfs,
    /// then the renames, then one more syncfs. A single file fsyncs itself.
    async fn fetch_batch(&self, batch: Vec<Entry>) -> Result<(), RoundError> {
        let single = batch.len() == 1;
        let mut reader = self
            .client
            .fetch(batch.iter().map(|e| e.path.clone()).collect())
            .await
            .map_err(RoundError::Sync)?;
        let mut staged: Vec<(Entry, fsops::Staged)> = Vec::new();
        let broken =
            |e: std::io::Error| RoundError::Retry(format!("the hub's answer broke off: {e}"));
        while let Some(entry) = reader.head::<Entry>().await.map_err(broken)? {
            if entry.kind != Kind::File {
                continue;
            }
            let Ok(relative) = paths::check(&entry.path) else {
                reader.skip(entry.size).await.map_err(broken)?;
                continue;
            };
            let mut incoming = match fsops::Incoming::create(&self.root, &relative, entry.exec)
                .await
            {
                Ok(incoming) => incoming,
                Err(e) => {
                    tracing::warn!(error = %e, path = %entry.path, "cannot receive a file here");
                    reader.skip(entry.size).await.map_err(broken)?;
                    continue;
                }
            };
            let size = entry.size;
            if let Err(e) = reader.receive(size, &mut incoming).await.map_err(broken)? {
                incoming.abandon().await;
                return Err(RoundError::Retry(format!(
                    "cannot write {}: {e}",
                    entry.path
                )));
            }
            match incoming.finish(entry.sha256, single).await {
                Ok(file) => staged.push((entry, file)),
                Err(e) => {
                    tracing::info!(error = %e, path = %entry.path, "a fetched file did not verify; it will be fetched again")
                }
            }
            self.bytes_moved.fetch_add(size, Ordering::Relaxed);
        }
        if !single {
            fsops::sync_fs(&self.root).map_err(|e| {
                RoundError::Retry(format!("cannot make received files durable: {e}"))
            })?;
        }
        for (entry, file) in staged {
            let synced = self.index.get(&entry.path).map_err(store_error)?;
            if !self.unchanged_since_sync(&entry.path, synced.as_ref()) {
                file.discard();
                continue;
            }
            let target = file.target.clone();
            if let Err(e) = file.commit() {
                tracing::warn!(error = %e, path = %entry.path, "cannot put a received file in place");
                continue;
            }
            let stat = std::fs::symlink_metadata(&target)
                .map(|m| scan::stat_of(&m))
                .ok();
            self.index
                .put(&entry.path, &synced_from(&entry, stat.as_ref()))
                .map_err(store_error)?;
            self.update(|s| s.progress_done += 1);
            if single && let Some(dir) = target.parent() {
                let _ = fsops::sync_dir(dir);
            }
        }
        if !single {
            let _ = fsops::sync_fs(&self.root);
        }
        Ok(())
    }
}

fn synced_from(entry: &Entry, stat: Option<&Stat>) -> Synced {
    Synced {
        kind: entry.kind,
        sha256: entry.sha256,
        size: entry.size,
        exec: entry.exec,
        version: entry.version,
        mtime_ns: stat.map(|s| s.mtime_ns).unwrap_or(0),
        inode: stat.map(|s| s.inode).unwrap_or(0),
    }
}

#[derive(Debug)]
pub enum RoundError {
    /// Stop and say why; nothing more is done until the user acts.
    Halt(String),
    Sync(SyncError),
    /// Try again soon.
    Retry(String),
    /// Conflicts were resolved; run another round at once.
    Again,
}

fn store_error(e: crate::store::StoreError) -> RoundError {
    RoundError::Retry(format!("the store failed: {e}"))
}
