//! Writing into a replica without ever losing or half-writing a file: every
//! incoming file goes to a temp file in its target directory, is verified
//! against its SHA-256, made durable, and only then renamed over its name.
//! Nothing here follows a symlink: each step is relative to the target
//! directory's descriptor, which [`beneath`] opened.

use std::ffi::{OsStr, OsString};
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};
use std::io::Write;

use crate::sync::replica::beneath;
use crate::sync::replica::ignore::TEMP_PREFIX;
use crate::sync::replica::scan::Stat;
use crate::sync::wire::model::Digest;

/// Bytes are gathered into writes of this size: h2 delivers ~16 KB pieces.
const WRITE_CHUNK: usize = 1024 * 1024;
/// A large file's written bytes are handed to the disk every this many, so
/// the final fsync waits for the tail only, not for the whole file.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// Runs blocking file I/O. Small files are a handful of fast syscalls, which
/// cost less done in place than as trips to tokio's blocking pool (the pool
/// made a 10,000-file sync several times slower); this tells the scheduler.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A file being received: bytes go to a temp file and into the hash.
pub struct Incoming {
    file: std::fs::File,
    buf: Vec<u8>,
    hasher: Sha256,
    written: u64,
    /// Bytes before this offset are already on their way to the disk.
    written_back: u64,
    /// The target's directory, held while the file is written.
    dir: OwnedFd,
    place: Place,
    exec: bool,
}

/// Where a received file goes: the temp file's name and the target's, in
/// the directory of `relative`. A staged file holds no descriptor (a batch
/// stages up to 2,000, over systemd's default limit of 1,024), so its
/// directory is resolved beneath `root` again when it lands.
struct Place {
    root: PathBuf,
    temp: OsString,
    target: OsString,
    /// The wire path.
    relative: PathBuf,
}

impl Place {
    fn dir(&self) -> std::io::Result<OwnedFd> {
        beneath::dir(&self.root, split(&self.relative)?.0)
    }

    fn remove_temp(&self, dir: &OwnedFd) {
        let _ = rustix::fs::unlinkat(dir, &self.temp, AtFlags::empty());
    }
}

/// A verified temp file, waiting to be renamed over its target.
pub struct Staged {
    place: Place,
}

impl Incoming {
    pub async fn create(root: &Path, relative: &Path, exec: bool) -> std::io::Result<Incoming> {
        blocking(|| {
            let (above, target) = split(relative)?;
            let dir = beneath::make_dirs(root, above)?;
            refuse_symlink(&dir, target, relative)?;
            let mut random = [0u8; 8];
            getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
            let temp = OsString::from(format!("{TEMP_PREFIX}{}", hex::encode(random)));
            let flags =
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(&dir, &temp, flags, Mode::from_raw_mode(0o644))?;
            Ok(Incoming {
                file: std::fs::File::from(fd),
                buf: Vec::new(),
                hasher: Sha256::new(),
                written: 0,
                written_back: 0,
                dir,
                place: Place {
                    root: root.to_path_buf(),
                    temp,
                    target: target.to_os_string(),
                    relative: relative.to_path_buf(),
                },
                exec,
            })
        })
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= WRITE_CHUNK {
            blocking(|| self.file.write_all(&self.buf))?;
            self.buf.clear();
            self.start_writeback();
        }
        Ok(())
    }

    /// Starts (without waiting for) the disk writes of what is in the file
    /// so far: on Linux, `POSIX_FADV_DONTNEED` queues dirty pages for
    /// writeback. Only a hint, so a failure changes nothing.
    fn start_writeback(&mut self) {
        let in_file = self.written - self.buf.len() as u64;
        let Some(len) = std::num::NonZeroU64::new(in_file - self.written_back) else {
            return;
        };
        if len.get() >= WRITEBACK_EVERY {
            let advice = rustix::fs::Advice::DontNeed;
            let _ = rustix::fs::fadvise(&self.file, self.written_back, Some(len), advice);
            self.written_back = in_file;
        }
    }

    /// Verifies the content; with `durable`, fsyncs the file now (a single
    /// edit), else leaves that to one `syncfs` for the whole batch.
    pub async fn finish(
        mut self,
        expected: Option<Digest>,
        durable: bool,
    ) -> std::io::Result<Staged> {
        let outcome = blocking(|| {
            self.file.write_all(&self.buf)?;
            self.buf = Vec::new();
            let hasher = std::mem::take(&mut self.hasher);
            if Some(Digest::of(hasher)) != expected {
                return Err(std::io::Error::new(
                    ErrorKind::InvalidData,
                    "the received content does not match its SHA-256",
                ));
            }
            let mode = if self.exec { 0o755 } else { 0o644 };
            self.file
                .set_permissions(std::fs::Permissions::from_mode(mode))?;
            if durable {
                self.file.sync_all()?;
            }
            Ok(())
        });
        match outcome {
            Ok(()) => Ok(Staged { place: self.place }),
            Err(e) => {
                self.place.remove_temp(&self.dir);
                Err(e)
            }
        }
    }

    pub async fn abandon(self) {
        self.place.remove_temp(&self.dir);
    }
}

/// A wire path's directory and last name.
fn split(relative: &Path) -> std::io::Result<(&Path, &OsStr)> {
    let name = relative
        .file_name()
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "an empty path"))?;
    Ok((relative.parent().unwrap_or(Path::new("")), name))
}

/// Refuses a target that is a symlink: sidekey never writes through one.
/// Returns what is there (`None`: nothing).
fn refuse_symlink(
    dir: &OwnedFd,
    name: &OsStr,
    relative: &Path,
) -> std::io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(raw) if FileType::from_raw_mode(raw.st_mode) == FileType::Symlink => {
            Err(std::io::Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} is a symlink; sidekey never writes through one",
                    relative.display()
                ),
            ))
        }
        Ok(raw) => Ok(Some(FileType::from_raw_mode(raw.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Staged {
    /// Renames into place; with `durable`, fsyncs the directory after.
    /// Returns the stat data of the file in place, if it can be read. The
    /// caller has checked the target still holds what the plan expected, so
    /// an empty directory in the way is what the plan replaces with this
    /// file, and goes.
    pub fn commit(self, durable: bool) -> std::io::Result<Option<Stat>> {
        let place = &self.place;
        let dir = place.dir()?;
        let replace = || -> std::io::Result<()> {
            if refuse_symlink(&dir, &place.target, &place.relative)? == Some(FileType::Directory) {
                rustix::fs::unlinkat(&dir, &place.target, AtFlags::REMOVEDIR)?;
            }
            rustix::fs::renameat(&dir, &place.temp, &dir, &place.target)?;
            Ok(())
        };
        if let Err(e) = replace() {
            place.remove_temp(&dir);
            return Err(e);
        }
        if durable {
            let _ = rustix::fs::fsync(&dir);
        }
        let now = rustix::fs::statat(&dir, &place.target, AtFlags::SYMLINK_NOFOLLOW);
        Ok(now.ok().as_ref().and_then(beneath::stat_of_raw))
    }

    pub fn discard(self) {
        if let Ok(dir) = self.place.dir() {
            self.place.remove_temp(&dir);
        }
    }
}

/// Makes everything written so far under `root` durable: one `syncfs` for a
/// whole batch instead of an fsync per file.
pub fn sync_fs(root: &Path) -> std::io::Result<()> {
    let dir = std::fs::File::open(root)?;
    rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
}

/// Sets or clears a file's exec bits, through a descriptor opened without
/// following a symlink.
pub fn set_exec(root: &Path, relative: &Path, exec: bool) -> std::io::Result<()> {
    let file = beneath::open_file(root, relative)?;
    let mode = if exec { 0o755 } else { 0o644 };
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Makes the directory `relative` names, and any missing above it.
pub fn make_dir(root: &Path, relative: &Path) -> std::io::Result<()> {
    beneath::make_dirs(root, relative).map(drop)
}

/// `notes.md` → `notes.sync-conflict-20261124-031500-laptop.md`.
pub fn conflict_name(relative: &str, host: &str, unix_secs: u64) -> String {
    let stamp = time::OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year][month][day]-[hour][minute][second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix_secs.to_string());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let (dir, name) = match relative.rsplit_once('/') {
        Some((dir, name)) => (format!("{dir}/"), name),
        None => (String::new(), relative),
    };
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, format!(".{ext}")),
        _ => (name, String::new()),
    };
    format!("{dir}{stem}.sync-conflict-{stamp}-{host}{ext}")
}

/// Renames a local path aside as a conflict copy; returns the new wire path.
pub fn move_to_conflict(
    root: &Path,
    relative: &str,
    host: &str,
    unix_secs: u64,
) -> std::io::Result<String> {
    let mut name = conflict_name(relative, host, unix_secs);
    let mut n = 1;
    while beneath::stat(root, Path::new(&name))? != beneath::At::Nothing {
        n += 1;
        name = conflict_name(relative, &format!("{host}-{n}"), unix_secs);
    }
    beneath::rename(root, Path::new(relative), Path::new(&name))?;
    Ok(name)
}

/// Removes temp files a crash left behind.
pub fn remove_leftovers(paths: &[PathBuf]) {
    for path in paths {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot remove a leftover temp file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names_keep_the_extension() {
        assert_eq!(
            conflict_name("notes.md", "laptop", 0),
            "notes.sync-conflict-19700101-000000-laptop.md"
        );
        assert_eq!(
            conflict_name("a/b/Makefile", "my host", 0),
            "a/b/Makefile.sync-conflict-19700101-000000-my-host"
        );
        assert_eq!(
            conflict_name(".env", "h", 0),
            ".env.sync-conflict-19700101-000000-h"
        );
    }

    #[tokio::test]
    async fn a_bad_hash_leaves_nothing_and_a_good_one_lands() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = Incoming::create(dir.path(), Path::new("x/y.txt"), false)
            .await
            .unwrap();
        bad.write(b"hello").await.unwrap();
        let zeros = serde_json::from_value(serde_json::json!("0".repeat(64))).unwrap();
        assert!(bad.finish(Some(zeros), true).await.is_err());
        assert_eq!(std::fs::read_dir(dir.path().join("x")).unwrap().count(), 0);

        let mut good = Incoming::create(dir.path(), Path::new("x/y.txt"), true)
            .await
            .unwrap();
        good.write(b"hello").await.unwrap();
        let mut hasher = Sha256::new();
        hasher.update(b"hello");
        good.finish(Some(Digest::of(hasher)), true)
            .await
            .unwrap()
            .commit(true)
            .unwrap();
        assert_eq!(std::fs::read(dir.path().join("x/y.txt")).unwrap(), b"hello");
        let mode = std::fs::metadata(dir.path().join("x/y.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
    }

    #[tokio::test]
    async fn staged_files_hold_no_descriptor_until_they_land() {
        let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let dir = tempfile::tempdir().unwrap();
        let before = open_fds();
        let mut staged = Vec::new();
        for i in 0..300 {
            let mut file = Incoming::create(dir.path(), Path::new(&format!("d{i}/f")), false)
                .await
                .unwrap();
            file.write(b"x").await.unwrap();
            let mut hasher = Sha256::new();
            hasher.update(b"x");
            staged.push(file.finish(Some(Digest::of(hasher)), false).await.unwrap());
        }
        // Other tests run beside this one; 300 held descriptors would show.
        assert!(open_fds() < before + 100, "{} open", open_fds());
        for file in staged {
            file.commit(false).unwrap();
        }
        assert_eq!(std::fs::read(dir.path().join("d299/f")).unwrap(), b"x");
    }

    #[tokio::test]
    async fn writes_never_go_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        assert!(
            Incoming::create(dir.path(), Path::new("link/evil.txt"), false)
                .await
                .is_err()
        );
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("file-link")).unwrap();
        assert!(
            Incoming::create(dir.path(), Path::new("file-link"), false)
                .await
                .is_err()
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
