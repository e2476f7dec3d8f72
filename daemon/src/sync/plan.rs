//! The one decision of sync: from what a replica holds now, what the hub
//! reported, and what the two last agreed on, the operations that make them
//! agree again without losing a byte. Pure: no I/O, no clock, no store. The
//! hub and every peer call it; only what they do with its answer differs.
//!
//! Rules: an edit beats a delete; two different edits (or a file against a
//! directory) keep both, the local side renamed to a conflict copy that then
//! syncs like any file; mtime never picks a winner, it only tells a scan
//! what it may skip hashing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::sync::replica::paths;
use crate::sync::wire::model::{Digest, Entry, Kind, Synced};

/// A file or directory on a replica now: its content (hashed only when its
/// stat data changed), and that stat data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct State {
    pub kind: Kind,
    pub sha256: Option<Digest>,
    pub size: u64,
    pub exec: bool,
    pub mtime_ns: i128,
    pub inode: u64,
}

/// What a replica has at a path, as gathered before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Local {
    Absent,
    Here(State),
    /// Covered by the ignore rules: left alone here, and forgotten.
    Ignored,
    /// A symlink, a special file, or a name that differs from another only
    /// by case: reported by the scan, never synced, never deleted.
    Skipped,
    /// Its content could not be read: nothing is decided on it yet.
    Unreadable,
}

/// One step of a plan. Those that touch the local folder carry what the plan
/// expects to find there, so that applying can check nothing changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Rename the local side aside as a conflict copy. The hub's side of the
    /// same path follows in the plan.
    KeepConflictCopy {
        path: String,
        expect: State,
    },
    /// Send a directory to the hub, made on the hub's version `base`.
    PushDir {
        path: String,
        base: u64,
        state: State,
    },
    /// Send a file (its content follows on the wire), made on `base`.
    Upload {
        path: String,
        base: u64,
        state: State,
    },
    /// Send a tombstone, made on `base`.
    DeleteRemote {
        path: String,
        base: u64,
    },
    /// Remove the local path (a directory only if empty), then record a
    /// tombstone at `version` (0 when the hub's new entry follows).
    DeleteLocal {
        path: String,
        expect: State,
        version: u64,
    },
    MakeDir {
        entry: Entry,
    },
    /// Fetch the hub's file over what `expect` says is there (`None`: nothing).
    Download {
        entry: Entry,
        expect: Option<State>,
    },
    /// Same content on both sides; only the exec bit changed on the hub.
    SetExec {
        entry: Entry,
        expect: State,
    },
    /// Both sides agree already: only the record changes.
    Remember {
        path: String,
        synced: Synced,
    },
    /// Newly ignored: forgotten here, left alone everywhere else.
    Forget {
        path: String,
    },
    /// The hub changed a path whose local side cannot be read yet: its
    /// change is held for a later round, not skipped.
    Wait {
        path: String,
        version: u64,
    },
    /// A path from the hub that no replica may write.
    Refuse {
        path: String,
        why: String,
    },
}

impl Op {
    pub(crate) fn path(&self) -> &str {
        match self {
            Op::KeepConflictCopy { path, .. }
            | Op::PushDir { path, .. }
            | Op::Upload { path, .. }
            | Op::DeleteRemote { path, .. }
            | Op::DeleteLocal { path, .. }
            | Op::Remember { path, .. }
            | Op::Forget { path }
            | Op::Wait { path, .. }
            | Op::Refuse { path, .. } => path,
            Op::MakeDir { entry } | Op::Download { entry, .. } | Op::SetExec { entry, .. } => {
                &entry.path
            }
        }
    }

    /// The order a plan is applied in: renames aside first, then what goes
    /// to the hub, then what changes here, then records. Deletes go before
    /// creates on each side, so a directory replaced by a file (or the other
    /// way round) is empty by the time its new kind lands.
    fn phase(&self) -> u8 {
        match self {
            Op::KeepConflictCopy { .. } => 0,
            Op::DeleteRemote { .. } => 1,
            Op::PushDir { .. } => 2,
            Op::Upload { .. } => 3,
            Op::DeleteLocal { .. } => 4,
            Op::MakeDir { .. } => 5,
            Op::Download { .. } => 6,
            Op::SetExec { .. } => 7,
            Op::Remember { .. } | Op::Forget { .. } | Op::Wait { .. } | Op::Refuse { .. } => 8,
        }
    }

    /// Deletes run children first; everything else parents first.
    fn children_first(&self) -> bool {
        matches!(self, Op::DeleteRemote { .. } | Op::DeleteLocal { .. })
    }
}

/// Whether a local file or directory still holds what `synced` recorded,
/// judged by stat data alone (a directory by its kind).
pub(crate) fn same_stat(synced: &Synced, state: &State) -> bool {
    synced.kind == state.kind
        && (state.kind == Kind::Dir
            || (synced.size == state.size
                && synced.mtime_ns == state.mtime_ns
                && synced.inode == state.inode
                && synced.exec == state.exec))
}

fn same_content(state: &State, synced: &Synced) -> bool {
    state.kind == synced.kind && state.sha256 == synced.sha256 && state.exec == synced.exec
}

/// Whether the local side (`None`: nothing) already holds the hub's entry.
fn matches_entry(local: Option<&State>, entry: &Entry) -> bool {
    match local {
        None => entry.kind == Kind::Deleted,
        Some(s) => s.kind == entry.kind && s.sha256 == entry.sha256 && s.exec == entry.exec,
    }
}

fn synced_of(entry: &Entry, local: Option<&State>) -> Synced {
    Synced {
        kind: entry.kind,
        sha256: entry.sha256,
        size: entry.size,
        exec: entry.exec,
        version: entry.version,
        mtime_ns: local.map_or(0, |s| s.mtime_ns),
        inode: local.map_or(0, |s| s.inode),
    }
}

/// Whether the hub takes a change made on `base`: only while its version of
/// the path is still that one (0: the path never existed there).
pub(crate) fn accepts(current: Option<&Entry>, base: u64) -> bool {
    current.map_or(0, |e| e.version) == base
}

/// Plans one round. `local` holds every path the round looked at, `remote`
/// the hub's entries that changed since the last round (the hub passes
/// none), and `base` the last-synced record of those paths. A path in
/// `base` that `local` does not hold was not looked at, and nothing is
/// decided on it.
pub(crate) fn plan(
    local: &BTreeMap<String, Local>,
    remote: &BTreeMap<String, Entry>,
    base: &HashMap<String, Synced>,
) -> Vec<Op> {
    let paths: BTreeSet<&String> = local.keys().chain(remote.keys()).collect();
    let news = |path: &String| {
        remote
            .get(path)
            .filter(|r| base.get(path).is_none_or(|b| b.version != r.version))
    };
    // Paths changed here, and paths the hub made live, each with its
    // ancestors: a directory replaced by a file on one side conflicts
    // with what changed below it on the other.
    let mut changed_below = BTreeSet::new();
    for (path, here) in local {
        let live_base = base.get(path).filter(|b| b.kind != Kind::Deleted);
        let changed = match (here, live_base) {
            (Local::Here(s), Some(b)) => !same_content(s, b),
            (Local::Here(_), None) | (Local::Absent, Some(_)) => true,
            _ => false,
        };
        if changed {
            changed_below.extend(ancestors(path));
        }
    }
    let mut live_news_below = BTreeSet::new();
    for path in remote.keys() {
        if news(path).is_some_and(|r| r.kind != Kind::Deleted) {
            live_news_below.extend(ancestors(path));
        }
    }
    let mut ops = Vec::new();
    // Directories renamed aside: what was below them is gone from its name.
    let mut moved: Vec<String> = Vec::new();
    // Sorted, so a directory comes before everything below it.
    for path in paths {
        let remote = remote.get(path);
        if remote.is_some()
            && let Err(why) = paths::check(path)
        {
            ops.push(Op::Refuse {
                path: path.clone(),
                why,
            });
            continue;
        }
        let here = if moved.iter().any(|m| path.starts_with(m.as_str())) {
            &Local::Absent
        } else {
            local.get(path).unwrap_or(&Local::Unreadable)
        };
        let below = Below {
            changed: changed_below.contains(path.as_str()),
            live_news: live_news_below.contains(path.as_str()),
        };
        if decide(path, here, remote, base.get(path), below, &mut ops) {
            moved.push(format!("{path}/"));
        }
    }
    ops.sort_by(|a, b| {
        a.phase().cmp(&b.phase()).then_with(|| {
            if a.children_first() {
                b.path().cmp(a.path())
            } else {
                a.path().cmp(b.path())
            }
        })
    });
    ops
}

/// The directories above `path`, nearest last.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// What happened below a path: changes here, and live news from the hub.
#[derive(Clone, Copy)]
struct Below {
    changed: bool,
    live_news: bool,
}

/// Decides one path; returns whether a local directory is renamed aside.
fn decide(
    path: &str,
    here: &Local,
    remote: Option<&Entry>,
    base: Option<&Synced>,
    below: Below,
    ops: &mut Vec<Op>,
) -> bool {
    // The hub's entry is news only if it is not what was last synced.
    let news = remote.filter(|r| base.is_none_or(|b| b.version != r.version));
    let local = match here {
        Local::Absent => None,
        Local::Here(state) => Some(state),
        Local::Ignored => {
            if base.is_some() {
                ops.push(Op::Forget { path: path.into() });
            }
            return false;
        }
        Local::Skipped => return false,
        Local::Unreadable => {
            if let Some(r) = news {
                ops.push(Op::Wait {
                    path: path.into(),
                    version: r.version,
                });
            }
            return false;
        }
    };
    let live_base = base.filter(|b| b.kind != Kind::Deleted);
    let changed = match (local, live_base) {
        (None, None) => false,
        (Some(s), Some(b)) => !same_content(s, b),
        _ => true,
    };
    let base_version = base.map_or(0, |b| b.version);
    let Some(r) = news else {
        // A directory replaced by a file here, while the hub changed what
        // is below it: keep the file aside and the hub's directory.
        if let (Some(s), Some(b)) = (local, live_base)
            && s.kind == Kind::File
            && b.kind == Kind::Dir
            && below.live_news
        {
            ops.push(Op::KeepConflictCopy {
                path: path.into(),
                expect: s.clone(),
            });
            ops.push(Op::MakeDir {
                entry: b.entry(path),
            });
            return false;
        }
        match (changed, local) {
            (false, Some(s)) => {
                // Touched, not changed: remember the new stat data.
                if let Some(b) = live_base
                    && !same_stat(b, s)
                {
                    ops.push(Op::Remember {
                        path: path.into(),
                        synced: Synced {
                            mtime_ns: s.mtime_ns,
                            inode: s.inode,
                            size: s.size,
                            ..b.clone()
                        },
                    });
                }
            }
            (false, None) => {}
            (true, None) => ops.push(Op::DeleteRemote {
                path: path.into(),
                base: base_version,
            }),
            (true, Some(s)) => ops.push(push(path, s, base_version)),
        }
        return false;
    };
    if !changed {
        // The hub replaced a directory with a file while something below it
        // changed here: keep the directory aside, whole.
        if let Some(s) = local
            && s.kind == Kind::Dir
            && r.kind == Kind::File
            && below.changed
        {
            ops.push(Op::KeepConflictCopy {
                path: path.into(),
                expect: s.clone(),
            });
            take(path, None, r, ops);
            return true;
        }
        take(path, local, r, ops);
        return false;
    }
    // Both sides changed since they last agreed.
    if matches_entry(local, r) {
        ops.push(Op::Remember {
            path: path.into(),
            synced: synced_of(r, local),
        });
        return false;
    }
    match (local, r.kind) {
        // Deleted here, edited there: the edit wins.
        (None, _) => take(path, None, r, ops),
        // Edited here, deleted there: the edit wins, made on their tombstone.
        (Some(s), Kind::Deleted) => ops.push(push(path, s, r.version)),
        // Two different edits, or a file against a directory: keep both.
        (Some(s), _) => {
            ops.push(Op::KeepConflictCopy {
                path: path.into(),
                expect: s.clone(),
            });
            take(path, None, r, ops);
            return s.kind == Kind::Dir;
        }
    }
    false
}

fn push(path: &str, state: &State, base: u64) -> Op {
    let (path, state) = (path.to_string(), state.clone());
    match state.kind {
        Kind::Dir => Op::PushDir { path, base, state },
        _ => Op::Upload { path, base, state },
    }
}

/// Brings the hub's entry here, over a local side (`None`: nothing) that
/// holds what was last synced.
fn take(path: &str, local: Option<&State>, r: &Entry, ops: &mut Vec<Op>) {
    let replace = |ops: &mut Vec<Op>, s: &State| {
        ops.push(Op::DeleteLocal {
            path: path.into(),
            expect: s.clone(),
            version: 0,
        })
    };
    match (r.kind, local) {
        (Kind::Deleted, None) => ops.push(Op::Remember {
            path: path.into(),
            synced: Synced::deleted(r.version),
        }),
        (Kind::Deleted, Some(s)) => ops.push(Op::DeleteLocal {
            path: path.into(),
            expect: s.clone(),
            version: r.version,
        }),
        (Kind::Dir, Some(s)) if s.kind == Kind::Dir => ops.push(Op::Remember {
            path: path.into(),
            synced: synced_of(r, Some(s)),
        }),
        (Kind::Dir, Some(s)) => {
            replace(ops, s);
            ops.push(Op::MakeDir { entry: r.clone() });
        }
        (Kind::Dir, None) => ops.push(Op::MakeDir { entry: r.clone() }),
        (Kind::File, Some(s)) if s.kind == Kind::File && s.sha256 == r.sha256 => {
            if s.exec == r.exec {
                ops.push(Op::Remember {
                    path: path.into(),
                    synced: synced_of(r, Some(s)),
                });
            } else {
                ops.push(Op::SetExec {
                    entry: r.clone(),
                    expect: s.clone(),
                });
            }
        }
        (Kind::File, Some(s)) if s.kind == Kind::File => ops.push(Op::Download {
            entry: r.clone(),
            expect: Some(s.clone()),
        }),
        (Kind::File, Some(s)) => {
            replace(ops, s);
            ops.push(Op::Download {
                entry: r.clone(),
                expect: None,
            });
        }
        (Kind::File, None) => ops.push(Op::Download {
            entry: r.clone(),
            expect: None,
        }),
    }
}

/// Files at most this big travel together in one request.
pub(crate) const SMALL_FILE: u64 = 1024 * 1024;
const BATCH_BYTES: u64 = 16 * 1024 * 1024;
const BATCH_FILES: usize = 2000;

/// Splits transfers into requests: small files together (up to a count and
/// a byte budget), each large file alone. Order is kept.
pub(crate) fn batches<T>(items: Vec<T>, size: impl Fn(&T) -> u64) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut batch: Vec<T> = Vec::new();
    let mut bytes = 0u64;
    for item in items {
        let n = size(&item);
        if !batch.is_empty()
            && (batch.len() >= BATCH_FILES || bytes + n > BATCH_BYTES || n > SMALL_FILE)
        {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += n;
        batch.push(item);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

#[cfg(test)]
mod tests;
