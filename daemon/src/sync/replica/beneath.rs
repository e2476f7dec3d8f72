//! Every path a wire message or a round names is resolved beneath the
//! folder's root without following a symlink in any component. A share that
//! holds `link -> /elsewhere` gives no peer a byte from `/elsewhere`, and lets
//! none stat, hash, delete, rename or chmod anything there: a symlink
//! anywhere on a path makes the path "not a file sidekey syncs", as a
//! symlinked file already is.
//!
//! Linux resolves a path in one `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`. Elsewhere, or where a seccomp filter hides that
//! call, the path is walked one directory at a time with `O_NOFOLLOW`. Either
//! way each step is relative to a descriptor, so nothing swapped in between
//! two checks can redirect it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::sync::replica::scan::Stat;
use crate::sync::wire::model::Kind;

/// What is at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// A regular file or a directory.
    Entry(Stat),
    /// A symlink (at the path or on the way to it), a FIFO, a socket…:
    /// never synced, never touched.
    Other,
    Nothing,
}

const DIR: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

const EXEC: Mode = Mode::XUSR.union(Mode::XGRP).union(Mode::XOTH);

/// Opens `relative` (a checked wire path; empty for the root) beneath `root`.
fn open(root: &Path, relative: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let root_fd = rustix::fs::open(root, DIR, Mode::empty())?;
    if relative.as_os_str().is_empty() {
        return Ok(root_fd);
    }
    resolve(&root_fd, relative, flags | OFlags::CLOEXEC)
}

#[cfg(target_os = "linux")]
fn resolve(root: &OwnedFd, relative: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    use rustix::fs::ResolveFlags;
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
    match rustix::fs::openat2(root, relative, flags, Mode::empty(), how) {
        Err(Errno::NOSYS) => walk(root, relative, flags),
        other => other.map_err(io::Error::from),
    }
}

#[cfg(not(target_os = "linux"))]
fn resolve(root: &OwnedFd, relative: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    walk(root, relative, flags)
}

/// The portable resolution: one `openat(O_NOFOLLOW)` per component.
fn walk(root: &OwnedFd, relative: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let mut names = Vec::new();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "not a relative path of plain names",
            ));
        };
        names.push(name);
    }
    let Some((last, dirs)) = names.split_last() else {
        return Err(io::Error::new(ErrorKind::InvalidInput, "an empty path"));
    };
    let mut at: Option<OwnedFd> = None;
    for name in dirs {
        at = Some(open_no_follow(at.as_ref().unwrap_or(root), name, DIR)?);
    }
    open_no_follow(at.as_ref().unwrap_or(root), last, flags)
}

/// One step of the walk. `O_DIRECTORY` on a symlink says "not a directory",
/// where `openat2` says "a symlink": the same answer is given for both.
fn open_no_follow(dir: &OwnedFd, name: &OsStr, flags: OFlags) -> io::Result<OwnedFd> {
    match rustix::fs::openat(dir, name, flags | OFlags::NOFOLLOW, Mode::empty()) {
        Err(Errno::NOTDIR) if is_symlink(dir, name) => Err(Errno::LOOP.into()),
        other => Ok(other?),
    }
}

fn is_symlink(dir: &OwnedFd, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|raw| FileType::from_raw_mode(raw.st_mode) == FileType::Symlink)
}

/// The directory that holds `relative`, and the last component's name.
fn parent<'p>(root: &Path, relative: &'p Path) -> io::Result<(OwnedFd, &'p OsStr)> {
    let name = relative
        .file_name()
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "an empty path"))?;
    let above = relative.parent().unwrap_or(Path::new(""));
    Ok((open(root, above, DIR)?, name))
}

/// Whether an error says a symlink (or a file) stood where a directory had
/// to be: the path leads nowhere sidekey follows.
fn is_blocked(e: &io::Error) -> bool {
    matches!(Errno::from_io_error(e), Some(Errno::LOOP | Errno::XDEV))
}

fn is_absent(e: &io::Error) -> bool {
    e.kind() == ErrorKind::NotFound || Errno::from_io_error(e) == Some(Errno::NOTDIR)
}

/// The directory `relative` beneath `root` (empty: the root itself).
pub fn dir(root: &Path, relative: &Path) -> io::Result<OwnedFd> {
    open(root, relative, DIR)
}

/// What is at `relative`, without following a symlink on the way.
pub fn stat(root: &Path, relative: &Path) -> io::Result<At> {
    let (dir, name) = match parent(root, relative) {
        Ok(found) => found,
        Err(e) if is_blocked(&e) => return Ok(At::Other),
        Err(e) if is_absent(&e) => return Ok(At::Nothing),
        Err(e) => return Err(e),
    };
    match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(raw) => Ok(stat_of_raw(&raw).map_or(At::Other, At::Entry)),
        Err(Errno::NOENT) => Ok(At::Nothing),
        Err(e) => Err(e.into()),
    }
}

/// `Some` for a regular file or a directory.
pub fn stat_of_raw(raw: &rustix::fs::Stat) -> Option<Stat> {
    let kind = match FileType::from_raw_mode(raw.st_mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        _ => return None,
    };
    let seconds = i128::from(raw.st_mtime);
    let nanos = i128::from(raw.st_mtime_nsec);
    Some(Stat {
        kind,
        size: match kind {
            Kind::File => u64::try_from(raw.st_size).unwrap_or(0),
            _ => 0,
        },
        mtime_ns: seconds * 1_000_000_000 + nanos,
        inode: raw.st_ino,
        exec: kind == Kind::File && Mode::from_raw_mode(raw.st_mode).intersects(EXEC),
    })
}

/// A regular file beneath `root`, open for reading. A FIFO or device is
/// refused without blocking on it.
pub fn open_file(root: &Path, relative: &Path) -> io::Result<File> {
    let fd = open(root, relative, OFlags::RDONLY | OFlags::NONBLOCK)?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not a regular file", relative.display()),
        ));
    }
    Ok(file)
}

/// Removes a file, or a directory if it is empty; nothing there is done.
pub fn remove(root: &Path, relative: &Path) -> io::Result<()> {
    let refused = || {
        io::Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{} is a symlink or lies behind one; sidekey never removes through one",
                relative.display()
            ),
        )
    };
    let (dir, name) = match parent(root, relative) {
        Ok(found) => found,
        Err(e) if is_blocked(&e) => return Err(refused()),
        Err(e) if is_absent(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    let flags = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
        Ok(raw) => match FileType::from_raw_mode(raw.st_mode) {
            FileType::Directory => AtFlags::REMOVEDIR,
            FileType::RegularFile => AtFlags::empty(),
            _ => return Err(refused()),
        },
    };
    match rustix::fs::unlinkat(&dir, name, flags) {
        Err(Errno::NOENT) => Ok(()),
        other => other.map_err(io::Error::from),
    }
}

/// Renames the file or directory `from` to `to`, both beneath `root`.
pub fn rename(root: &Path, from: &Path, to: &Path) -> io::Result<()> {
    let (from_dir, from_name) = parent(root, from)?;
    if is_symlink(&from_dir, from_name) {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{} is a symlink; sidekey never moves one", from.display()),
        ));
    }
    let (to_dir, to_name) = parent(root, to)?;
    Ok(rustix::fs::renameat(
        &from_dir, from_name, &to_dir, to_name,
    )?)
}

/// Opens the directory `relative` names, creating each missing one on the
/// way; a symlink or a file on the way is refused.
pub fn make_dirs(root: &Path, relative: &Path) -> io::Result<OwnedFd> {
    let mut at = dir(root, Path::new(""))?;
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "not a relative path of plain names",
            ));
        };
        let opened = match rustix::fs::openat(&at, name, DIR | OFlags::NOFOLLOW, Mode::empty()) {
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&at, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                rustix::fs::openat(&at, name, DIR | OFlags::NOFOLLOW, Mode::empty())
            }
            other => other,
        };
        at = opened.map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => io::Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} is not a directory (or is a symlink)",
                    Path::new(name).display()
                ),
            ),
            e => e.into(),
        })?;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A share with `link -> outside` and `file-link -> outside/secret.txt`.
    fn share_with_links() -> (tempfile::TempDir, tempfile::TempDir) {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "outside").unwrap();
        std::fs::create_dir(outside.path().join("sub")).unwrap();
        symlink(outside.path(), root.path().join("link")).unwrap();
        symlink(
            outside.path().join("secret.txt"),
            root.path().join("file-link"),
        )
        .unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/inside.txt"), "inside").unwrap();
        (root, outside)
    }

    #[test]
    fn nothing_behind_a_symlink_is_reached() {
        let (root, outside) = share_with_links();
        let r = root.path();
        for path in ["link", "link/secret.txt", "link/sub", "file-link"] {
            let path = Path::new(path);
            assert_eq!(stat(r, path).unwrap(), At::Other, "{path:?}");
            assert!(open_file(r, path).is_err(), "{path:?} was opened");
            assert!(remove(r, path).is_err(), "{path:?} was removed");
            assert!(rename(r, path, Path::new("moved")).is_err(), "{path:?}");
        }
        assert!(make_dirs(r, Path::new("link/new")).is_err());
        assert!(dir(r, Path::new("link")).is_err());
        assert_eq!(
            std::fs::read_to_string(outside.path().join("secret.txt")).unwrap(),
            "outside"
        );
        assert!(outside.path().join("sub").is_dir());
        assert!(!outside.path().join("new").exists());
        // The symlinks themselves are left as they were.
        assert!(r.join("link").symlink_metadata().unwrap().is_symlink());
        assert!(r.join("file-link").symlink_metadata().unwrap().is_symlink());
    }

    #[test]
    fn paths_inside_work_as_before() {
        let (root, _outside) = share_with_links();
        let r = root.path();
        let At::Entry(file) = stat(r, Path::new("d/inside.txt")).unwrap() else {
            panic!("d/inside.txt not found");
        };
        assert_eq!((file.kind, file.size, file.exec), (Kind::File, 6, false));
        assert!(matches!(stat(r, Path::new("d")).unwrap(), At::Entry(s) if s.kind == Kind::Dir));
        assert_eq!(stat(r, Path::new("d/none")).unwrap(), At::Nothing);
        assert_eq!(stat(r, Path::new("d/inside.txt/x")).unwrap(), At::Nothing);
        assert_eq!(stat(r, Path::new("gone/x")).unwrap(), At::Nothing);
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut open_file(r, Path::new("d/inside.txt")).unwrap(),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, "inside");
        make_dirs(r, Path::new("a/b/c")).unwrap();
        assert!(r.join("a/b/c").is_dir());
        rename(r, Path::new("d/inside.txt"), Path::new("a/b/moved.txt")).unwrap();
        assert_eq!(
            std::fs::read_to_string(r.join("a/b/moved.txt")).unwrap(),
            "inside"
        );
        remove(r, Path::new("a/b/moved.txt")).unwrap();
        remove(r, Path::new("a/b/c")).unwrap();
        remove(r, Path::new("a/b/never-there")).unwrap();
        assert!(!r.join("a/b/c").exists() && !r.join("a/b/moved.txt").exists());
    }

    #[test]
    fn a_fifo_is_neither_opened_nor_waited_on() {
        let root = tempfile::tempdir().unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            root.path().join("pipe"),
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        assert_eq!(stat(root.path(), Path::new("pipe")).unwrap(), At::Other);
        assert!(open_file(root.path(), Path::new("pipe")).is_err());
    }

    #[test]
    fn the_portable_walk_refuses_symlinks_as_openat2_does() {
        let (root, _outside) = share_with_links();
        let root_fd = dir(root.path(), Path::new("")).unwrap();
        for path in ["link/secret.txt", "file-link", "link/sub"] {
            let e = walk(&root_fd, Path::new(path), OFlags::RDONLY).unwrap_err();
            assert!(is_blocked(&e), "{path}: {e}");
        }
        assert!(walk(&root_fd, Path::new("d/inside.txt"), OFlags::RDONLY).is_ok());
    }
}
