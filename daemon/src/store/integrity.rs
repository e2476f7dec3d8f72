//! Guards against sled's silent recovery. sled truncates a damaged log and
//! opens what is left, which would lose acknowledged changes without a word.
//!
//! * A generation number is bumped on every flush and kept both in sled and
//!   in `store.gen`; if sled comes back older than the file, flushed changes
//!   were lost and the open is refused.
//! * sled writes to its files on open, so the store is copied to
//!   `store.backup/` first, and a refused open puts the bytes back.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub struct GenerationFile {
    file: File,
}

impl GenerationFile {
    pub fn open(data_dir: &Path) -> std::io::Result<(GenerationFile, Option<u64>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(data_dir.join("store.gen"))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok((GenerationFile { file }, text.trim().parse().ok()))
    }

    pub fn write(&mut self, generation: u64) -> std::io::Result<()> {
        let text = format!("{generation:020}\n");
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }
}

/// Copies every file of the store into `<store>.backup/`, replacing the last
/// copy only once the new one is complete.
///
/// A store over [`BACKUP_LIMIT`] is not copied (that would double a large
/// data dir on every start); its open is guarded by the generation check alone.
pub fn back_up(store: &Path) -> std::io::Result<Option<PathBuf>> {
    let size = dir_size(store)?;
    if size > BACKUP_LIMIT {
        tracing::warn!(store = %store.display(), size_mb = size >> 20, "the store is too large to copy aside before opening");
        return Ok(None);
    }
    let backup = store.with_extension("backup");
    let staging = store.with_extension("backup.tmp");
    let _ = fs::remove_dir_all(&staging);
    copy_dir(store, &staging)?;
    let _ = fs::remove_dir_all(&backup);
    fs::rename(&staging, &backup)?;
    Ok(Some(backup))
}

const BACKUP_LIMIT: u64 = 1 << 30;

fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Puts the store's bytes back as they were before the failed open.
pub fn restore(backup: &Path, store: &Path) -> std::io::Result<()> {
    fs::remove_dir_all(store)?;
    copy_dir(backup, store)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
            File::open(&target)?.sync_all()?;
        }
    }
    File::open(to)?.sync_all()
}
