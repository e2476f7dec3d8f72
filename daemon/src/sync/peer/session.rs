//! A peer's sync session: a local folder kept in two-way sync with a share
//! on a hub. Each round gathers (the folder's state, hashing only what
//! changed, and the hub's changes since the cursor), asks the planner what
//! to do, then applies that: pushes each made on a base version, fetches,
//! renames aside and deletes, each checked against what the plan expected.
//! It never decides who wins a conflict: `plan` does.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use sidekey_api::SessionState;
use tokio::sync::mpsc;

use crate::http_util::ChannelBody;
use crate::registry::{now_ms, now_secs};
use crate::shutdown::Tasks;
use crate::store::SessionRecord;
use crate::sync::peer::client::{HubClient, SyncError};
use crate::sync::plan::{self, Local, Op, State};
use crate::sync::replica::apply::{self, Arriving, Landed, NotStaged};
use crate::sync::replica::beneath::{self, At};
use crate::sync::replica::ignore::{Ignorer, MARKER};
use crate::sync::replica::journal::Journal;
use crate::sync::replica::scan::{self, Scope, Stat};
use crate::sync::replica::{fsops, paths};
use crate::sync::wire::frames::FrameWriter;
use crate::sync::wire::model::{Entry, Kind, PushHead, PushResult, Synced};

/// How long deletes seen by a look at some paths wait for the rest of a
/// burst, before a look at everything decides whether the folder is being
/// emptied. Edits never wait.
const DELETE_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a long-poll must have waited before a round trusts it to mean
/// the hub has nothing new: long enough for it to have reached the hub.
const QUIET_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

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
    /// The cursor the long-poll is waiting on, and since when.
    long_poll: Mutex<Option<(u64, Instant)>>,
    /// The session's branch of the task tree, for its push writers.
    tasks: Tasks,
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
            long_poll: Mutex::new(None),
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

    /// The long-poll on the hub's changes starts (`Some(cursor)`) or ends.
    pub fn polling(&self, since: Option<u64>) {
        *self.long_poll.lock().unwrap_or_else(|p| p.into_inner()) =
            since.map(|cursor| (cursor, Instant::now()));
    }

    /// Whether the hub has had nothing past `cursor` for a while: a
    /// long-poll on it is still waiting. Then a round plans without asking
    /// again, which saves a round trip on every local edit. It is only an
    /// economy: a push the hub has moved past is refused with a conflict.
    fn hub_quiet(&self, cursor: u64) -> bool {
        let polling = *self.long_poll.lock().unwrap_or_else(|p| p.into_inner());
        polling.is_some_and(|(since, at)| since == cursor && at.elapsed() >= QUIET_AFTER)
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

    /// One round: gather, plan, apply.
    pub async fn round(&self, mut scope: Scope) -> Result<(), RoundError> {
        loop {
            let partial = matches!(scope, Scope::Paths(_));
            let (ops, cursor, first) = self.gather_and_plan(scope).await?;
            // A look at some paths cannot tell a deleted file from a folder
            // being emptied (`rm -r` is many events): before a delete leaves,
            // let the burst settle and judge the whole folder.
            if partial && ops.iter().any(|op| matches!(op, Op::DeleteRemote { .. })) {
                tokio::time::sleep(DELETE_SETTLE).await;
                scope = Scope::Everything;
                continue;
            }
            return self.apply(ops, cursor, first).await;
        }
    }

    async fn gather_and_plan(&self, scope: Scope) -> Result<(Vec<Op>, u64, bool), RoundError> {
        self.check_marker().map_err(RoundError::Halt)?;
        self.update(|s| s.state = SessionState::Scanning);
        let ignorer = Ignorer::load(&self.root);
        let look = scan::look_around(&self.root, scope, &ignorer, &self.index)
            .map_err(|e| RoundError::Halt(format!("cannot read {}: {e}", self.root.display())))?;
        if look.emptied {
            return Err(RoundError::Halt(format!(
                "{} suddenly went empty; nothing was deleted anywhere. If that was intended, remove this session",
                self.root.display()
            )));
        }
        let found = look.found;
        if found.is_whole() {
            fsops::remove_leftovers(&found.scan.leftovers);
            self.update(|s| {
                s.skipped = found.scan.skipped.clone();
                s.case_collisions = found.scan.case_collisions.clone();
            });
        }
        let first = !self.record().initial_sync_done;
        let cursor = self.record().cursor;
        let (remote, cursor) = if !first && self.hub_quiet(cursor) {
            (BTreeMap::new(), cursor)
        } else {
            self.remote_changes().await?
        };
        let mut base = look.synced;
        for path in remote.keys() {
            if !base.contains_key(path)
                && let Some(synced) = self.index.get(path).map_err(store_error)?
            {
                base.insert(path.clone(), synced);
            }
        }
        let mut local = scan::gather(&self.root, &found, &base, &ignorer);
        for path in remote.keys() {
            if !local.contains_key(path) {
                // A path the planner refuses is never looked at on disk.
                let here = match paths::check(path) {
                    Ok(_) => scan::look_at_path(&self.root, path, base.get(path)),
                    Err(_) => Local::Skipped,
                };
                local.insert(path.clone(), here);
            }
        }
        Ok((plan::plan(&local, &remote, &base), cursor, first))
    }

    /// The hub's changes since the cursor, every page of them; a later
    /// page's entry for a path supersedes an earlier one.
    async fn remote_changes(&self) -> Result<(BTreeMap<String, Entry>, u64), RoundError> {
        let mut since = self.record().cursor;
        let mut remote = BTreeMap::new();
        loop {
            let changes = self
                .client
                .changes(since, 0)
                .await
                .map_err(RoundError::Sync)?;
            for entry in changes.entries {
                remote.insert(entry.path.clone(), entry);
            }
            since = changes.cursor;
            if !changes.more {
                return Ok((remote, since));
            }
        }
    }

    /// Carries out a plan, in its order. The cursor moves to `cursor` only
    /// once everything that came from the hub is applied, and never past a
    /// change held for later or one the hub answered with a conflict.
    async fn apply(&self, ops: Vec<Op>, cursor: u64, first: bool) -> Result<(), RoundError> {
        if first {
            self.update(|s| s.progress_total += ops.len() as u64);
        }
        let mut hold = Hold::default();
        // Consecutive pushes travel in batches, as do consecutive downloads.
        let mut pushes = Vec::new();
        let mut downloads = Vec::new();
        for op in ops {
            if !matches!(
                op,
                Op::Upload { .. } | Op::PushDir { .. } | Op::DeleteRemote { .. }
            ) && !pushes.is_empty()
            {
                self.push_all(std::mem::take(&mut pushes), &mut hold)
                    .await?;
            }
            if !matches!(op, Op::Download { .. }) && !downloads.is_empty() {
                self.fetch(std::mem::take(&mut downloads)).await?;
            }
            match op {
                Op::Upload { .. } | Op::PushDir { .. } | Op::DeleteRemote { .. } => {
                    pushes.push(Push::of(op));
                    continue;
                }
                Op::Download { entry, expect } => {
                    downloads.push((entry, expect));
                    continue;
                }
                Op::KeepConflictCopy { path, expect } => {
                    self.keep_conflict_copy(&path, &expect)?;
                    hold.again = true;
                }
                Op::DeleteLocal { .. } | Op::MakeDir { .. } | Op::SetExec { .. } => {
                    self.apply_here(op)?
                }
                Op::Remember { path, synced } => {
                    self.index.put(&path, &synced).map_err(store_error)?
                }
                Op::Forget { path } => self.index.remove(&path).map_err(store_error)?,
                Op::Wait { path, version } => {
                    tracing::debug!(%path, "the local side cannot be read; the hub's change waits");
                    hold.below(version);
                }
                Op::Refuse { path, why } => {
                    tracing::warn!(%path, %why, "refused a path from the hub");
                }
            }
            self.update(|s| s.progress_done += 1);
        }
        if !pushes.is_empty() {
            self.push_all(pushes, &mut hold).await?;
        }
        self.fetch(downloads).await?;
        let read_only = self.read_only.load(Ordering::Relaxed);
        {
            let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
            record.cursor = hold.cursor(cursor);
            if first && !hold.again {
                record.initial_sync_done = true;
            }
        }
        self.update(|s| {
            s.state = SessionState::Watching;
            if !read_only {
                s.message = None;
                s.pending = 0;
            }
            s.last_sync = Some(now_secs());
        });
        if hold.again {
            return Err(RoundError::Again);
        }
        Ok(())
    }

    async fn push_all(&self, pushes: Vec<Push>, hold: &mut Hold) -> Result<(), RoundError> {
        let unpushed = pushes.len() as u64;
        if self.read_only.load(Ordering::Relaxed) {
            self.update(|s| s.pending = unpushed);
            return Ok(());
        }
        self.update(|s| {
            s.state = SessionState::Syncing;
            s.pending = unpushed;
        });
        for batch in plan::batches(pushes, |p| p.head.size) {
            match self.push_batch(batch, hold).await {
                Err(RoundError::Sync(SyncError::Forbidden(why))) => {
                    tracing::warn!(session = %self.record().id, %why, "the hub refused our changes; pulling only");
                    self.read_only.store(true, Ordering::Relaxed);
                    self.update(|s| s.message = Some(format!("The hub refused our changes ({why}); they stay in this folder, and changes from the hub still arrive.")));
                    return Ok(());
                }
                other => other?,
            }
        }
        Ok(())
    }

    async fn push_batch(&self, batch: Vec<Push>, hold: &mut Hold) -> Result<(), RoundError> {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let root = self.root.clone();
        let heads: Vec<PushHead> = batch.iter().map(|p| p.head.clone()).collect();
        let sending = heads.clone();
        let writer_task = self.tasks.spawn(async move {
            let writer = FrameWriter::new(tx);
            for head in sending {
                writer.head(&head).await?;
                if head.kind == Kind::File {
                    writer.file(&root, Path::new(&head.path), head.size).await?;
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
        // The hub answers in its own order (files land last): match by path.
        let mut sent: HashMap<String, Push> = batch
            .into_iter()
            .map(|p| (p.head.path.clone(), p))
            .collect();
        for result in results {
            let path = match &result {
                PushResult::Accepted { path, .. }
                | PushResult::Conflict { path, .. }
                | PushResult::Refused { path, .. } => path.clone(),
            };
            let Some(push) = sent.remove(&path) else {
                tracing::warn!(%path, "the hub answered for a path it was not sent");
                continue;
            };
            match result {
                PushResult::Accepted { path, version } => {
                    let state = match &push.state {
                        None => Synced::deleted(version),
                        Some(state) => synced_of_state(state, version),
                    };
                    self.index.put(&path, &state).map_err(store_error)?;
                }
                PushResult::Conflict { path, current } => {
                    // The hub moved on since the plan: plan again with its
                    // change. A refused delete also forgets what we had, so
                    // the hub's side comes back even at the same version.
                    tracing::debug!(%path, base = push.head.base, mine = ?push.head.kind, theirs = ?current.kind, version = current.version, "the hub moved on");
                    if push.head.kind == Kind::Deleted {
                        self.index
                            .put(&path, &Synced::deleted(0))
                            .map_err(store_error)?;
                    }
                    hold.below(current.version);
                    hold.again = true;
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
        Ok(())
    }

    /// Renames the local side aside, unless it changed again since the plan
    /// (then the hub's side does not land over it either).
    fn keep_conflict_copy(&self, path: &str, expect: &State) -> Result<(), RoundError> {
        if !scan::still(&self.root, path, Some(expect)) {
            tracing::debug!(%path, "changed again since the plan; the next round decides");
            return Ok(());
        }
        let copy = fsops::move_to_conflict(&self.root, path, &self.host, now_ms() / 1000).map_err(
            |e| RoundError::Retry(format!("cannot keep the conflicting copy of {path}: {e}")),
        )?;
        tracing::info!(session = %self.record().id, %path, %copy, "conflict: kept the local side as a copy");
        self.index
            .put(path, &Synced::deleted(0))
            .map_err(store_error)?;
        self.update(|s| s.conflicts += 1);
        Ok(())
    }

    /// Deletes, directories and exec bits from the hub.
    fn apply_here(&self, op: Op) -> Result<(), RoundError> {
        match op {
            Op::DeleteLocal {
                path,
                expect,
                version,
            } => {
                if !scan::still(&self.root, &path, Some(&expect)) {
                    tracing::debug!(%path, "changed since the plan; kept");
                    return Ok(());
                }
                match beneath::remove(&self.root, Path::new(&path)) {
                    Ok(()) => self
                        .index
                        .put(&path, &Synced::deleted(version))
                        .map_err(store_error)?,
                    // A directory that still holds files stays (an edit
                    // beats a delete) and syncs back.
                    Err(e) => tracing::debug!(error = %e, %path, "kept a path the hub deleted"),
                }
            }
            Op::MakeDir { entry } => {
                let relative = PathBuf::from(&entry.path);
                if let Err(e) = fsops::make_dir(&self.root, &relative) {
                    tracing::warn!(error = %e, path = %entry.path, "cannot create a directory");
                    return Ok(());
                }
                self.remember(&entry)?;
            }
            Op::SetExec { entry, expect } => {
                if !scan::still(&self.root, &entry.path, Some(&expect)) {
                    return Ok(());
                }
                if let Err(e) = fsops::set_exec(&self.root, Path::new(&entry.path), entry.exec) {
                    tracing::warn!(error = %e, path = %entry.path, "cannot set the exec bit");
                    return Ok(());
                }
                self.remember(&entry)?;
            }
            other => unreachable!("not a local step: {other:?}"),
        }
        Ok(())
    }

    /// Records `entry` as synced, with the stat data now on disk.
    fn remember(&self, entry: &Entry) -> Result<(), RoundError> {
        let stat = match beneath::stat(&self.root, Path::new(&entry.path)) {
            Ok(At::Entry(stat)) => Some(stat),
            _ => None,
        };
        self.index
            .put(&entry.path, &synced_from(entry, stat.as_ref()))
            .map_err(store_error)
    }

    async fn fetch(&self, files: Vec<(Entry, Option<State>)>) -> Result<(), RoundError> {
        for batch in plan::batches(files, |(e, _)| e.size) {
            self.fetch_batch(batch).await?;
        }
        Ok(())
    }

    /// Fetches a batch and lands it (see `replica::apply`). What the hub
    /// sends is its current entry, which may be newer than the plan's.
    async fn fetch_batch(&self, batch: Vec<(Entry, Option<State>)>) -> Result<(), RoundError> {
        let alone = batch.len() == 1;
        let paths_asked = batch.iter().map(|(e, _)| e.path.clone()).collect();
        let expect: HashMap<String, Option<State>> = batch
            .into_iter()
            .map(|(e, expect)| (e.path, expect))
            .collect();
        let mut reader = self
            .client
            .fetch(paths_asked)
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
            let file = Arriving {
                relative: &relative,
                size: entry.size,
                sha256: entry.sha256,
                exec: entry.exec,
            };
            let received = apply::receive(&mut reader, &self.root, file, alone)
                .await
                .map_err(broken)?;
            self.bytes_moved.fetch_add(entry.size, Ordering::Relaxed);
            match received {
                Ok(file) => staged.push((entry, file)),
                Err(NotStaged::Unwritable(e)) => {
                    tracing::warn!(error = %e, path = %entry.path, "cannot receive a file here")
                }
                Err(NotStaged::Failed(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    tracing::info!(error = %e, path = %entry.path, "a fetched file did not verify; it will be fetched again")
                }
                Err(NotStaged::Failed(e)) => {
                    for (_, file) in staged {
                        file.discard();
                    }
                    return Err(RoundError::Retry(format!(
                        "cannot write {}: {e}",
                        entry.path
                    )));
                }
            }
        }
        apply::land(
            &self.root,
            alone,
            staged,
            |entry: &Entry| {
                Ok(expect
                    .get(&entry.path)
                    .is_some_and(|x| scan::still(&self.root, &entry.path, x.as_ref())))
            },
            |entry, landed| {
                match landed {
                    Landed::Placed(stat) => {
                        self.index
                            .put(&entry.path, &synced_from(&entry, stat.as_ref()))
                            .map_err(store_error)?;
                    }
                    Landed::Changed => {
                        tracing::debug!(path = %entry.path, "changed here since the plan; not replaced")
                    }
                    Landed::Failed(e) => {
                        tracing::warn!(error = %e, path = %entry.path, "cannot put a received file in place")
                    }
                }
                self.update(|s| s.progress_done += 1);
                Ok(())
            },
        )
    }
}

/// A planned push, with the local state it records once accepted.
struct Push {
    head: PushHead,
    state: Option<State>,
}

impl Push {
    fn of(op: Op) -> Push {
        let (path, kind, base, state) = match op {
            Op::Upload { path, base, state } => (path, Kind::File, base, Some(state)),
            Op::PushDir { path, base, state } => (path, Kind::Dir, base, Some(state)),
            Op::DeleteRemote { path, base } => (path, Kind::Deleted, base, None),
            other => unreachable!("not a push: {other:?}"),
        };
        let file = state.as_ref().filter(|s| s.kind == Kind::File);
        Push {
            head: PushHead {
                path,
                kind,
                base,
                sha256: file.and_then(|s| s.sha256),
                size: file.map_or(0, |s| s.size),
                exec: file.is_some_and(|s| s.exec),
            },
            state,
        }
    }
}

/// What keeps the cursor back after a round.
#[derive(Default)]
struct Hold {
    /// The oldest hub version that must be pulled again.
    oldest: Option<u64>,
    /// Conflicts were met: run another round at once.
    again: bool,
}

impl Hold {
    fn below(&mut self, version: u64) {
        self.oldest = Some(self.oldest.map_or(version, |v| v.min(version)));
    }

    /// The cursor after a round that pulled up to `pulled`: a held change
    /// is pulled again even if it is older than where the round started.
    fn cursor(&self, pulled: u64) -> u64 {
        match self.oldest {
            Some(v) => pulled.min(v.saturating_sub(1)),
            None => pulled,
        }
    }
}

fn synced_of_state(state: &State, version: u64) -> Synced {
    Synced {
        kind: state.kind,
        sha256: state.sha256,
        size: state.size,
        exec: state.exec,
        version,
        mtime_ns: state.mtime_ns,
        inode: state.inode,
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
