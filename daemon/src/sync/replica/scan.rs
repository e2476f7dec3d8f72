//! Reads a replica's folder for the planner, without following symlinks:
//! stat data for every file and directory, what it skipped and why, and
//! [`gather`], which hashes only files whose stat data changed. It never
//! writes, and decides nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::Dir;

use crate::sync::plan::{Local, State, same_stat};
use crate::sync::replica::beneath::{self, At};
use crate::sync::replica::ignore::{IGNORE_FILE, Ignorer, TEMP_PREFIX};
use crate::sync::replica::journal::Journal;
use crate::sync::replica::paths::case_key;
use crate::sync::wire::model::{Digest, Kind, Synced};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
    pub exec: bool,
}

#[derive(Debug, Default)]
pub struct Scan {
    pub entries: BTreeMap<String, Stat>,
    /// Symlinks and other non-regular files: reported, never synced.
    pub skipped: Vec<String>,
    /// Names that differ only by case: reported, never merged.
    pub case_collisions: Vec<String>,
    /// The second name of each such pair, left out of `entries`.
    pub twins: BTreeSet<String>,
    /// Our temp files, left by a crash: the caller removes them.
    pub leftovers: Vec<PathBuf>,
}

pub fn stat_of(meta: &std::fs::Metadata) -> Stat {
    let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
    Stat {
        kind,
        size: if meta.is_dir() { 0 } else { meta.len() },
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        inode: meta.ino(),
        exec: kind == Kind::File && meta.permissions().mode() & 0o111 != 0,
    }
}

pub fn scan(root: &Path, ignorer: &Ignorer) -> std::io::Result<Scan> {
    let mut out = Scan::default();
    walk(
        &mut out,
        root,
        vec![(root.to_path_buf(), String::new())],
        ignorer,
    )?;
    out.skipped.sort();
    out.case_collisions.sort();
    Ok(out)
}

/// Adds to `out` everything below the directories on `stack`, each with
/// the wire prefix of its entries. Only `root` being unreadable is an error.
fn walk(
    out: &mut Scan,
    root: &Path,
    mut stack: Vec<(PathBuf, String)>,
    ignorer: &Ignorer,
) -> std::io::Result<()> {
    let mut seen_case: HashMap<String, String> = HashMap::new();
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if dir == root => return Err(e),
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                out.skipped.push(format!(
                    "{prefix}{} (name is not UTF-8)",
                    entry.file_name().to_string_lossy()
                ));
                continue;
            };
            let relative = format!("{prefix}{name}");
            if name.starts_with(TEMP_PREFIX) {
                out.leftovers.push(entry.path());
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            let is_dir = meta.is_dir();
            if ignorer.ignored(&relative, is_dir) {
                continue;
            }
            if !is_dir && !meta.is_file() {
                out.skipped.push(relative);
                continue;
            }
            if let Some(other) = seen_case.insert(case_key(&relative), relative.clone()) {
                out.case_collisions.push(format!("{other} / {relative}"));
                out.twins.insert(relative);
                continue;
            }
            if is_dir {
                stack.push((entry.path(), format!("{relative}/")));
            }
            out.entries.insert(relative, stat_of(&meta));
        }
    }
    Ok(())
}

/// What a round looks at: the whole folder, or only the paths the watcher
/// saw change.
#[derive(Debug)]
pub enum Scope {
    Everything,
    Paths(BTreeSet<String>),
}

/// What a round found, and which synced paths it speaks for: one missing
/// from [`Scan::entries`] that it settles is gone.
pub struct Found {
    pub scan: Scan,
    /// The paths looked at, each with everything below it; `None` when the
    /// whole folder was.
    settled: Option<Vec<String>>,
}

impl Found {
    pub fn is_whole(&self) -> bool {
        self.settled.is_none()
    }

    pub fn settles(&self, path: &str) -> bool {
        self.settled.as_ref().is_none_or(|settled| {
            settled.iter().any(|s| {
                path.strip_prefix(s.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
        })
    }
}

/// What a round found, with the journal entries it speaks for.
pub struct Look {
    pub found: Found,
    /// The entries of paths it found or settled.
    pub synced: HashMap<String, Synced>,
    /// Whether the folder has nothing left of what the journal holds: it
    /// was emptied, or is not the folder it was.
    pub emptied: bool,
}

/// Looks at what `scope` names, and at everything if that finds the folder
/// emptied.
pub fn look_around(
    root: &Path,
    scope: Scope,
    ignorer: &Ignorer,
    journal: &Journal,
) -> std::io::Result<Look> {
    let live = |path: &str| journal.is_live(path);
    let covering = |found: Found| {
        let synced = match &found.settled {
            None => journal.all(),
            Some(settled) => journal.around(found.scan.entries.keys(), settled),
        };
        let emptied = found.scan.entries.is_empty() && {
            let settled_live = synced
                .iter()
                .filter(|(path, s)| s.kind != Kind::Deleted && found.settles(path))
                .count();
            let live_total = journal.live_count();
            live_total > 0 && settled_live == live_total
        };
        Look {
            found,
            synced,
            emptied,
        }
    };
    let first = covering(look(root, scope, ignorer, live)?);
    if first.emptied && !first.found.is_whole() {
        return Ok(covering(look(root, Scope::Everything, ignorer, live)?));
    }
    Ok(first)
}

/// Looks at what `scope` names. A look at only some paths falls back to the
/// whole folder whenever it could not say what a full scan would: a path
/// that is no longer a file or a directory, an unreadable one, a name not
/// in UTF-8, a new name that differs from another only by case, or a change
/// to the ignore rules. `synced` says whether a path is synced already.
fn look(
    root: &Path,
    scope: Scope,
    ignorer: &Ignorer,
    synced: impl Fn(&str) -> bool,
) -> std::io::Result<Found> {
    if let Scope::Paths(paths) = scope
        && let Some(found) = look_at(root, paths, ignorer, synced)
    {
        return Ok(found);
    }
    Ok(Found {
        scan: scan(root, ignorer)?,
        settled: None,
    })
}

fn look_at(
    root: &Path,
    paths: BTreeSet<String>,
    ignorer: &Ignorer,
    synced: impl Fn(&str) -> bool,
) -> Option<Found> {
    let mut out = Scan::default();
    let mut settled = Vec::new();
    for path in paths {
        if path == IGNORE_FILE {
            return None;
        }
        let mut parts: Vec<&str> = path.split('/').collect();
        let name = parts.pop()?;
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        // The directories above it, as a full scan would have met them.
        let mut above = String::new();
        let mut reached = Reached::Path;
        for part in parts {
            above.push_str(part);
            if ignorer.ignored(&above, true) {
                reached = Reached::Ignored;
                break;
            }
            if !out.entries.contains_key(&above) {
                let stat = match beneath::stat(root, Path::new(&above)).ok()? {
                    At::Nothing => {
                        reached = Reached::Gone;
                        break;
                    }
                    At::Entry(stat) if stat.kind == Kind::Dir => stat,
                    _ => return None,
                };
                if !synced(&above) && has_case_twin(root, &above) {
                    return None;
                }
                out.entries.insert(above.clone(), stat);
            }
            above.push('/');
        }
        if reached == Reached::Ignored {
            continue;
        }
        settled.push(path.clone());
        if reached == Reached::Gone {
            continue;
        }
        let stat = match beneath::stat(root, Path::new(&path)).ok()? {
            At::Nothing => continue,
            At::Other => return None,
            At::Entry(stat) => stat,
        };
        let is_dir = stat.kind == Kind::Dir;
        if !synced(&path) && has_case_twin(root, &path) {
            return None;
        }
        if ignorer.ignored(&path, is_dir) {
            continue;
        }
        if is_dir {
            let stack = vec![(root.join(&path), format!("{path}/"))];
            walk(&mut out, root, stack, ignorer).ok()?;
        }
        out.entries.insert(path, stat);
    }
    let reportable = !out.skipped.is_empty() || !out.case_collisions.is_empty();
    if reportable || !out.leftovers.is_empty() {
        return None;
    }
    Some(Found {
        scan: out,
        settled: Some(settled),
    })
}

#[derive(PartialEq, Eq)]
enum Reached {
    Path,
    /// A directory above it is ignored.
    Ignored,
    /// A directory above it is gone, so it is too.
    Gone,
}

/// Whether another entry beside `path` has a name that differs from its
/// own only by case.
fn has_case_twin(root: &Path, path: &str) -> bool {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let key = case_key(name);
    let Ok(entries) = beneath::dir(root, Path::new(dir)).and_then(|fd| Ok(Dir::read_from(fd)?))
    else {
        return true;
    };
    entries.flatten().any(|entry| {
        let other = entry.file_name().to_str().ok();
        other != Some(name) && other.is_some_and(|o| case_key(o) == key)
    })
}

/// What is at each path a look found or settles, for the planner: files
/// whose stat data still match `base` take its hash; the others are hashed
/// now. A synced path the look settles but did not find is gone, ignored,
/// or a case twin.
pub fn gather(
    root: &Path,
    found: &Found,
    base: &HashMap<String, Synced>,
    ignorer: &Ignorer,
) -> BTreeMap<String, Local> {
    let mut local: BTreeMap<String, Local> = found
        .scan
        .entries
        .iter()
        .map(|(path, stat)| (path.clone(), local_of(root, path, stat, base.get(path))))
        .collect();
    for (path, synced) in base {
        if synced.kind == Kind::Deleted || local.contains_key(path) || !found.settles(path) {
            continue;
        }
        let here = if found.scan.twins.contains(path) {
            Local::Skipped
        } else if ignorer.ignored(path, synced.kind == Kind::Dir) {
            Local::Ignored
        } else {
            Local::Absent
        };
        local.insert(path.clone(), here);
    }
    local
}

/// What is at one wire path, which the caller has checked.
pub fn look_at_path(root: &Path, path: &str, base: Option<&Synced>) -> Local {
    match beneath::stat(root, Path::new(path)) {
        Ok(At::Entry(stat)) => local_of(root, path, &stat, base),
        Ok(At::Other) => Local::Skipped,
        Ok(At::Nothing) => Local::Absent,
        Err(_) => Local::Unreadable,
    }
}

fn local_of(root: &Path, path: &str, stat: &Stat, base: Option<&Synced>) -> Local {
    let mut state = State {
        kind: stat.kind,
        sha256: None,
        size: stat.size,
        exec: stat.exec,
        mtime_ns: stat.mtime_ns,
        inode: stat.inode,
    };
    if stat.kind == Kind::Dir {
        return Local::Here(state);
    }
    match base {
        Some(synced) if same_stat(synced, &state) => state.sha256 = synced.sha256,
        _ => match hash_file(root, Path::new(path)) {
            Ok((sha, size)) => {
                state.sha256 = Some(sha);
                state.size = size;
            }
            Err(_) => return Local::Unreadable,
        },
    }
    Local::Here(state)
}

/// Whether `path` still holds what a plan expected (`None`: nothing), by
/// stat data: checked right before anything replaces or removes it.
pub fn still(root: &Path, path: &str, expect: Option<&State>) -> bool {
    match (expect, beneath::stat(root, Path::new(path))) {
        (None, Ok(At::Nothing)) => true,
        (Some(expect), Ok(At::Entry(stat))) => {
            stat.kind == expect.kind
                && (stat.kind == Kind::Dir
                    || (stat.size == expect.size
                        && stat.mtime_ns == expect.mtime_ns
                        && stat.inode == expect.inode
                        && stat.exec == expect.exec))
        }
        _ => false,
    }
}

/// SHA-256 of a file beneath `root`, streamed; never follows a symlink.
pub fn hash_file(root: &Path, relative: &Path) -> std::io::Result<(Digest, u64)> {
    use sha2::{Digest as _, Sha256};
    use std::io::Read;
    let mut file = beneath::open_file(root, relative)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((Digest::of(hasher), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_reports_symlinks_case_collisions_and_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f.txt"), "x").unwrap();
        std::fs::write(root.join("Readme"), "1").unwrap();
        std::fs::write(root.join("README"), "2").unwrap();
        std::fs::write(root.join(".sidekey-tmp-9"), "partial").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let scan = scan(root, &Ignorer::load(root)).unwrap();
        assert_eq!(scan.entries["a"].kind, Kind::Dir);
        assert_eq!(scan.entries["a/b/f.txt"].size, 1);
        assert_eq!(scan.skipped, vec!["link".to_string()]);
        assert_eq!(scan.case_collisions.len(), 1);
        assert_eq!(scan.leftovers.len(), 1);
    }

    fn paths(names: &[&str]) -> Scope {
        Scope::Paths(names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn a_look_at_named_paths_settles_them_and_everything_below() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f.txt"), "f").unwrap();
        std::fs::write(root.join("a/g.txt"), "g").unwrap();
        std::fs::write(root.join("top.txt"), "t").unwrap();
        std::fs::write(root.join("untouched.txt"), "u").unwrap();
        let named = paths(&["a", "gone/deeper/x", "top.txt", ".sidekey-tmp-1"]);
        let found = look(root, named, &Ignorer::load(root), |_| true).unwrap();
        assert!(!found.is_whole());
        let entries: Vec<&str> = found.scan.entries.keys().map(String::as_str).collect();
        assert_eq!(entries, ["a", "a/b", "a/b/f.txt", "a/g.txt", "top.txt"]);
        for settled in [
            "a",
            "a/b/f.txt",
            "gone/deeper/x",
            "gone/deeper/x/y",
            "top.txt",
        ] {
            assert!(found.settles(settled), "{settled}");
        }
        for open in ["untouched.txt", "ab", "gone", ".sidekey-tmp-1"] {
            assert!(!found.settles(open), "{open}");
        }
    }

    #[test]
    fn a_look_at_named_paths_looks_at_everything_when_unsure() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("Readme"), "1").unwrap();
        std::fs::write(root.join("README"), "2").unwrap();
        std::fs::write(root.join(".sidekeyignore"), "*.log\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let ignorer = Ignorer::load(root);
        let synced_readme = |path: &str| path == "Readme";
        for unsure in ["README", "link", ".sidekeyignore"] {
            let found = look(root, paths(&[unsure]), &ignorer, synced_readme).unwrap();
            assert!(found.is_whole(), "{unsure}");
        }
        let found = look(root, paths(&["Readme"]), &ignorer, synced_readme).unwrap();
        assert!(!found.is_whole(), "a synced name is no new collision");
    }
}
