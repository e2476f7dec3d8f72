//! The audit log: one record per proxied request, appended to the data
//! dir's `audit/` segments before the request goes upstream and again when
//! its response ends. A record holds who, which credential, method,
//! scheme://host/path (never a query value), status, latency and bytes:
//! never a header or a secret.

mod line;
mod segments;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

pub use sidekey_api::AuditRecord;
use tokio::sync::{Notify, broadcast};

pub use sidekey_api::Outcome;

use crate::registry::now_ms;
use line::Closing;
pub use line::Opening;
use segments::Segments;
use tokio_util::sync::CancellationToken;

/// Ids are `time_ms << 20 | sequence`: ordered and unique.
const SEQ_BITS: u32 = 20;
/// How long a closing line may wait in memory for a write to share.
const HOLD_AT_MOST: Duration = Duration::from_millis(100);

pub struct Audit {
    segments: Segments,
    /// How long one segment stays open: a quarter of the retention, so
    /// pruning whole segments keeps at most a quarter more than asked.
    span_ms: AtomicU64,
    seq: AtomicU64,
    feed: broadcast::Sender<Arc<AuditRecord>>,
    /// Woken when closing lines start waiting to be written.
    held: Notify,
    /// Opening lines waiting for the write they will share, a batch per
    /// thread, so a request never waits to be woken from another thread.
    opening: Mutex<Vec<(ThreadId, Batch)>>,
}

/// Opening lines written together: every request that begins while the
/// first one's task yields shares its write.
struct Batch {
    lines: Vec<u8>,
    written: Arc<Written>,
}

#[derive(Default)]
struct Written {
    result: OnceLock<Result<(), io::ErrorKind>>,
    done: Notify,
}

impl Written {
    async fn wait(&self) -> io::Result<()> {
        let done = self.done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if self.result.get().is_none() {
            done.await;
        }
        match self.result.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(kind)) => Err((*kind).into()),
            None => Err(io::Error::other("the audit write was abandoned")),
        }
    }
}

thread_local! {
    /// A written batch's buffer, kept for the thread's next batch.
    static SPARE_LINES: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Writes its batch when dropped, so a leader cancelled while it yields
/// still releases the requests that joined it.
struct Leader<'a>(&'a Audit, ThreadId);

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let Leader(audit, thread) = *self;
        let batch = {
            let mut opening = audit.opening();
            let Some(at) = opening.iter().position(|(t, _)| *t == thread) else {
                return;
            };
            opening.swap_remove(at).1
        };
        let span = audit.span_ms.load(Ordering::Relaxed);
        let result = audit.segments.append(&batch.lines, now_ms(), span);
        let _ = batch.written.result.set(result.map_err(|e| e.kind()));
        batch.written.done.notify_waiters();
        let mut lines = batch.lines;
        lines.clear();
        SPARE_LINES.set(lines);
    }
}

/// A request's record, to be written when it begins and again when it ends.
pub struct Pending {
    /// The part both lines share; see [`line::head`].
    head: Vec<u8>,
    started: Instant,
    scrubbed: bool,
}

impl Pending {
    /// The response carried an injected secret, and the scrub masked it.
    pub fn mark_scrubbed(&mut self) {
        self.scrubbed = true;
    }
}

impl Audit {
    pub fn open(data_dir: &Path, retention_secs: u64) -> io::Result<Audit> {
        Ok(Audit {
            segments: Segments::open(&data_dir.join("audit"), now_ms())?,
            span_ms: AtomicU64::new(span_ms(retention_secs)),
            seq: AtomicU64::new(0),
            feed: broadcast::channel(4096).0,
            held: Notify::new(),
            opening: Mutex::new(Vec::new()),
        })
    }

    /// Stamps a request's record, to be written by [`Audit::begin`].
    pub fn record(&self, opening: &Opening) -> Pending {
        let time_ms = now_ms();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) & ((1 << SEQ_BITS) - 1);
        Pending {
            head: line::head((time_ms << SEQ_BITS) | seq, time_ms, opening),
            started: Instant::now(),
            scrubbed: false,
        }
    }

    /// Writes the opening line. An error means the request must be refused.
    pub async fn begin(&self, pending: &Pending) -> io::Result<()> {
        self.append_opening(&pending.head).await
    }

    pub fn finish(
        &self,
        pending: Pending,
        status: Option<u16>,
        bytes: (u64, u64),
        outcome: Outcome,
    ) {
        let closing = Closing {
            status,
            latency_ms: Some(pending.started.elapsed().as_millis() as u64),
            bytes,
            outcome,
            scrubbed: pending.scrubbed,
        };
        let held = self.segments.hold(|held| {
            held.extend_from_slice(&pending.head);
            line::push_tail(held, &closing);
        });
        match held {
            Ok(true) => self.held.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not complete an audit record"),
        }
        let watched = self.feed.receiver_count() > 0;
        if watched || tracing::enabled!(tracing::Level::DEBUG) {
            let mut line = pending.head;
            line::push_tail(&mut line, &closing);
            // The audit log is the record of every request; the log gets it at debug.
            tracing::debug!(record = %String::from_utf8_lossy(line.trim_ascii_end()), "proxied");
            if watched && let Ok(record) = serde_json::from_slice(&line) {
                let _ = self.feed.send(Arc::new(record));
            }
        }
    }

    /// Returns once the opening line of the record that begins with `head`
    /// is in the kernel. Requests that begin on this thread in the same turn
    /// share one write: the first one yields so the others can join it, then
    /// writes them all.
    async fn append_opening(&self, head: &[u8]) -> io::Result<()> {
        let thread = std::thread::current().id();
        let (written, leader) = {
            let mut opening = self.opening();
            match opening.iter_mut().find(|(t, _)| *t == thread) {
                Some((_, batch)) => {
                    batch.lines.extend_from_slice(head);
                    line::push_tail(&mut batch.lines, &line::STARTED);
                    (batch.written.clone(), None)
                }
                None => {
                    let written = Arc::new(Written::default());
                    let mut lines = SPARE_LINES.take();
                    lines.extend_from_slice(head);
                    line::push_tail(&mut lines, &line::STARTED);
                    let batch = Batch {
                        lines,
                        written: written.clone(),
                    };
                    opening.push((thread, batch));
                    (written, Some(Leader(self, thread)))
                }
            }
        };
        if let Some(leader) = leader {
            tokio::task::yield_now().await;
            drop(leader);
        }
        written.wait().await
    }

    fn opening(&self) -> MutexGuard<'_, Vec<(ThreadId, Batch)>> {
        self.opening
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes held closing lines a moment after the first is held, so a
    /// burst of requests shares writes, and an idle daemon never wakes.
    pub async fn write_held_lines(&self, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.held.notified() => {}
            }
            tokio::time::sleep(HOLD_AT_MOST).await;
            self.flush();
        }
    }

    /// Writes every held closing line now.
    pub fn flush(&self) {
        if let Err(e) = self.segments.flush() {
            tracing::warn!(error = %e, "could not complete audit records");
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AuditRecord>> {
        self.feed.subscribe()
    }

    /// The `limit` most recently written records within `retention_secs`
    /// that `keep` accepts, oldest first.
    pub fn tail(
        &self,
        limit: usize,
        retention_secs: u64,
        keep: impl Fn(&AuditRecord) -> bool,
    ) -> io::Result<Vec<AuditRecord>> {
        self.segments.tail(limit, cutoff_ms(retention_secs), keep)
    }

    /// Deletes segments older than `retention_secs`; returns how many.
    pub fn prune(&self, retention_secs: u64) -> io::Result<usize> {
        self.span_ms
            .store(span_ms(retention_secs), Ordering::Relaxed);
        self.segments.prune(cutoff_ms(retention_secs))
    }
}

fn cutoff_ms(retention_secs: u64) -> u64 {
    now_ms().saturating_sub(retention_secs.saturating_mul(1000))
}

fn span_ms(retention_secs: u64) -> u64 {
    (retention_secs.saturating_mul(1000) / 4).clamp(1_000, 3_600_000)
}
