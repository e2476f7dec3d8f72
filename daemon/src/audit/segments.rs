//! The audit log on disk: append-only NDJSON segment files in
//! `<data_dir>/audit/`, named by the time they were opened. A record is
//! appended when its request starts and again when it ends; the later line
//! wins. Retention deletes whole segments, so pruning never rewrites a file.
//!
//! An opening line is written before its request goes upstream. A closing
//! line may wait in memory and go out with the next opening line, in one
//! write: one syscall per request, not two.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use sidekey_api::AuditRecord;
#[cfg(test)]
use sidekey_api::Outcome;

/// A segment is closed once it holds this much, whatever its age.
const MAX_SEGMENT_BYTES: u64 = 16 << 20;
/// Closing lines held back past this much are written at once.
const MAX_HELD_BYTES: usize = 64 << 10;
const SUFFIX: &str = ".ndjson";

pub struct Segments {
    dir: PathBuf,
    current: Mutex<Current>,
    /// Closing lines not yet written. Its own lock, so that completing a
    /// record never waits for another thread's write.
    held: Mutex<Vec<u8>>,
}

struct Current {
    file: File,
    start_ms: u64,
    bytes: u64,
}

impl Segments {
    pub fn open(dir: &Path, now_ms: u64) -> io::Result<Segments> {
        crate::fsutil::create_private_dir(dir).map_err(io::Error::other)?;
        Ok(Segments {
            dir: dir.to_path_buf(),
            current: Mutex::new(Current::create(dir, now_ms)?),
            held: Mutex::new(Vec::new()),
        })
    }

    /// Appends one line, with any held ones before it. It is in the kernel
    /// when this returns, so it outlives a killed daemon.
    pub fn append(&self, line: &[u8], now_ms: u64, span_ms: u64) -> io::Result<()> {
        let mut current = self.current();
        if current.bytes >= MAX_SEGMENT_BYTES || now_ms >= current.start_ms + span_ms {
            self.write_held(&mut current)?;
            *current = Current::create(&self.dir, now_ms.max(current.start_ms + 1))?;
        }
        let mut out = std::mem::take(&mut *self.held());
        let before = out.len();
        out.extend_from_slice(line);
        let written = current.write(&out);
        if written.is_err() {
            // The request is refused, so its opening line must never appear.
            out.truncate(before);
            self.hold_again(out);
        } else {
            self.reuse(out);
        }
        written
    }

    /// Holds a line back until the next [`Segments::append`] or
    /// [`Segments::flush`]. Returns whether it is the first one held, when
    /// the caller should arrange a flush.
    pub fn hold(&self, write_line: impl FnOnce(&mut Vec<u8>)) -> io::Result<bool> {
        let (first, full) = {
            let mut held = self.held();
            let first = held.is_empty();
            write_line(&mut held);
            (first, held.len() >= MAX_HELD_BYTES)
        };
        if full {
            self.flush()?;
        }
        Ok(first)
    }

    pub fn flush(&self) -> io::Result<()> {
        self.write_held(&mut self.current())
    }

    /// Writes the held lines; on an error they stay held, to be tried again.
    fn write_held(&self, current: &mut Current) -> io::Result<()> {
        let held = std::mem::take(&mut *self.held());
        if held.is_empty() {
            return Ok(());
        }
        let written = current.write(&held);
        if written.is_err() {
            self.hold_again(held);
        } else {
            self.reuse(held);
        }
        written
    }

    /// Gives a written buffer back to hold the next lines, so the held
    /// buffer keeps its size instead of growing again after every write.
    fn reuse(&self, mut written: Vec<u8>) {
        written.clear();
        let mut held = self.held();
        written.extend_from_slice(&held);
        *held = written;
    }

    /// Puts lines that could not be written back in front of those held since.
    fn hold_again(&self, mut lines: Vec<u8>) {
        let mut held = self.held();
        lines.extend_from_slice(&held);
        *held = lines;
    }

    fn held(&self) -> MutexGuard<'_, Vec<u8>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes every segment whose lines are all older than `cutoff_ms`:
    /// those followed by a segment opened before the cutoff. Returns how many.
    pub fn prune(&self, cutoff_ms: u64) -> io::Result<usize> {
        let open = self.current().start_ms;
        let starts = self.starts()?;
        let mut removed = 0;
        for pair in starts.windows(2) {
            if pair[1] <= cutoff_ms && pair[0] != open {
                std::fs::remove_file(self.path(pair[0]))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The `limit` most recently written records that `keep` accepts and
    /// that started at or after `cutoff_ms`, ordered by id. Reads segments
    /// newest first and stops once it has enough.
    pub fn tail(
        &self,
        limit: usize,
        cutoff_ms: u64,
        keep: impl Fn(&AuditRecord) -> bool,
    ) -> io::Result<Vec<AuditRecord>> {
        self.flush()?;
        let mut seen = HashSet::new();
        let mut records = Vec::new();
        'segments: for start in self.starts()?.into_iter().rev() {
            let text = match std::fs::read(self.path(start)) {
                Ok(text) => text,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // A torn last line, from a kill mid-append, does not parse and is skipped.
            for line in text.split(|b| *b == b'\n').rev() {
                if records.len() == limit {
                    break 'segments;
                }
                let Ok(record) = serde_json::from_slice::<AuditRecord>(line) else {
                    continue;
                };
                if record.time_ms >= cutoff_ms && seen.insert(record.id) && keep(&record) {
                    records.push(record);
                }
            }
        }
        records.sort_unstable_by_key(|r| r.id);
        Ok(records)
    }

    /// Start times of the segment files, oldest first.
    fn starts(&self) -> io::Result<Vec<u64>> {
        let mut starts: Vec<u64> = std::fs::read_dir(&self.dir)?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name();
                name.to_str()?.strip_suffix(SUFFIX)?.parse().ok()
            })
            .collect();
        starts.sort_unstable();
        Ok(starts)
    }

    /// The open segment. A panic elsewhere while it was held leaves at worst
    /// a torn last line, which readers skip, so the log goes on.
    fn current(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, start_ms: u64) -> PathBuf {
        self.dir.join(format!("{start_ms:020}{SUFFIX}"))
    }
}

impl Current {
    fn create(dir: &Path, start_ms: u64) -> io::Result<Current> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(dir.join(format!("{start_ms:020}{SUFFIX}")))?;
        let bytes = file.metadata()?.len();
        Ok(Current {
            file,
            start_ms,
            bytes,
        })
    }

    fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        self.file.write_all(lines)?;
        self.bytes += lines.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, time_ms: u64, outcome: Outcome) -> Vec<u8> {
        let mut line = serde_json::to_vec(&AuditRecord {
            id,
            time_ms,
            conn_id: "c".into(),
            conn: "agent".into(),
            cred: None,
            method: "GET".into(),
            url: "http://h/".into(),
            status: None,
            latency_ms: None,
            bytes_up: 0,
            bytes_down: 0,
            outcome,
            scrubbed: false,
        })
        .unwrap();
        line.push(b'\n');
        line
    }

    #[test]
    fn the_last_line_of_a_record_wins_across_segments_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = Segments::open(dir.path(), 1_000).unwrap();
        log.append(&record(1, 1_000, Outcome::Started), 1_000, 10)
            .unwrap();
        log.append(&record(2, 1_001, Outcome::Started), 1_001, 10)
            .unwrap();
        // The next append opens a new segment; record 1 ends there.
        log.append(&record(1, 1_000, Outcome::Ok), 1_020, 10)
            .unwrap();
        log.append(b"{\"id\":3,\"ti", 1_021, 10).unwrap();
        let records = log.tail(10, 0, |_| true).unwrap();
        let outcomes: Vec<(u64, Outcome)> = records.iter().map(|r| (r.id, r.outcome)).collect();
        assert_eq!(outcomes, [(1, Outcome::Ok), (2, Outcome::Started)]);
        assert_eq!(
            log.tail(1, 0, |_| true).unwrap()[0].id,
            1,
            "the last written"
        );
        assert!(log.tail(10, 1_002, |_| true).unwrap().is_empty());
    }

    #[test]
    fn a_closing_line_waits_for_the_next_write_or_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let log = Segments::open(dir.path(), 1_000).unwrap();
        let on_disk = || std::fs::read(log.path(1_000)).unwrap();
        log.append(&record(1, 1_000, Outcome::Started), 1_000, 10)
            .unwrap();
        assert!(
            log.hold(|held| held.extend(record(1, 1_000, Outcome::Ok)))
                .unwrap(),
            "the first held"
        );
        assert!(
            !log.hold(|held| held.extend(record(2, 1_000, Outcome::Ok)))
                .unwrap()
        );
        assert_eq!(on_disk(), record(1, 1_000, Outcome::Started));
        log.append(&record(3, 1_001, Outcome::Started), 1_001, 10)
            .unwrap();
        let written = [
            record(1, 1_000, Outcome::Started),
            record(1, 1_000, Outcome::Ok),
            record(2, 1_000, Outcome::Ok),
            record(3, 1_001, Outcome::Started),
        ]
        .concat();
        assert_eq!(on_disk(), written);
        log.hold(|held| held.extend(record(3, 1_001, Outcome::Ok)))
            .unwrap();
        log.flush().unwrap();
        assert!(on_disk().ends_with(&record(3, 1_001, Outcome::Ok)));
    }

    #[test]
    fn pruning_deletes_whole_old_segments_but_never_the_open_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = Segments::open(dir.path(), 1_000).unwrap();
        log.append(&record(1, 1_000, Outcome::Ok), 1_000, 10)
            .unwrap();
        log.append(&record(2, 1_050, Outcome::Ok), 1_050, 10)
            .unwrap();
        log.append(&record(3, 1_100, Outcome::Ok), 1_100, 10)
            .unwrap();
        assert_eq!(log.starts().unwrap(), [1_000, 1_050, 1_100]);
        assert_eq!(log.prune(1_060).unwrap(), 1);
        assert_eq!(log.prune(5_000).unwrap(), 1);
        assert_eq!(log.starts().unwrap(), [1_100]);
        assert_eq!(log.tail(10, 0, |_| true).unwrap().len(), 1);
    }
}
