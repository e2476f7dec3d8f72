//! Walks a replica's folder without following symlinks: stat data for every
//! file and directory, and what it skipped and why. Hashing happens later,
//! only for files whose stat data changed.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ignore::{Ignorer, TEMP_PREFIX};
use super::model::{Digest, Kind};
use super::paths::case_key;

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
    let mut seen_case: HashMap<String, String> = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
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
                continue;
            }
            if is_dir {
                stack.push((entry.path(), format!("{relative}/")));
            }
            out.entries.insert(relative, stat_of(&meta));
        }
    }
    out.skipped.sort();
    out.case_collisions.sort();
    Ok(out)
}

/// SHA-256 of a file, streamed; never follows a symlink.
pub fn hash_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    use sha2::{Digest as _, Sha256};
    use std::io::Read;
    let mut file = open_no_follow(path)?;
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

pub fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
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
}
