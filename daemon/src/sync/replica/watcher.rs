//! Watching a folder: notify events name the paths the next round looks
//! at; a jittered periodic rescan of the whole folder catches what they
//! miss, and when the watcher fails the loop falls back to polling. Events
//! are hints only: a lost one costs a rescan, never a change.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::sync::replica::scan::Scope;

/// More changed paths than this in one round, and it looks at everything.
const MAX_PATHS: usize = 512;

/// How long notify events are gathered before a round starts. Short, since
/// a round looks only at the paths named: an editor's burst of writes that
/// straddles it costs one more small round, not a rescan.
const DEBOUNCE: Duration = Duration::from_millis(1);

/// A periodic rescan catches what notify missed; jitter keeps many replicas
/// from scanning in lockstep. With a working watcher it is only a safety
/// net, so it is rare: a full scan of 100,000 files costs about a second.
pub fn rescan_interval() -> Duration {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    Duration::from_secs(240 + u64::from(byte[0]) % 120)
}

/// A folder's watcher. notify events (and its errors, such as an overflow)
/// only wake the loop; once the watcher fails (no watcher at all, or a
/// watch limit hit later), the loop falls back to polling every 2 s.
pub struct Watch {
    _watcher: Option<notify::RecommendedWatcher>,
    blind: Arc<AtomicBool>,
    interval: Duration,
    changed: Arc<Mutex<Changed>>,
}

/// What changed since the last round took it.
struct Changed {
    /// Wire paths.
    paths: BTreeSet<String>,
    everything: bool,
}

impl Changed {
    fn note(&mut self, root: &Path, event: &notify::Event) {
        if event.need_rescan() {
            self.everything = true;
        }
        for path in &event.paths {
            match wire_path(root, path) {
                Some(path) if self.paths.len() < MAX_PATHS => {
                    self.paths.insert(path);
                }
                _ => self.everything = true,
            }
        }
    }
}

/// The wire path of a file under `root`; `None` for the root itself or a
/// name that is not UTF-8.
fn wire_path(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?.to_str()?;
    (!relative.is_empty()).then(|| relative.to_string())
}

impl Watch {
    pub fn start(root: &Path, hints: mpsc::Sender<()>) -> Watch {
        use notify::{EventKind, RecursiveMode, Watcher};
        let blind = Arc::new(AtomicBool::new(false));
        let changed = Arc::new(Mutex::new(Changed {
            paths: BTreeSet::new(),
            everything: true,
        }));
        let flag = blind.clone();
        let noted = changed.clone();
        let watched: PathBuf = root.to_path_buf();
        let created = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let mut noted = noted.lock().unwrap_or_else(|p| p.into_inner());
            match &event {
                Ok(event) if matches!(event.kind, EventKind::Access(_)) => return,
                Ok(event) => noted.note(&watched, event),
                Err(e) => {
                    noted.everything = true;
                    if !flag.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "the folder watcher failed (inotify limits?); scanning every 2 s instead");
                    }
                }
            }
            let _ = hints.try_send(());
        });
        let watcher = match created {
            Ok(mut watcher) => match watcher.watch(root, RecursiveMode::Recursive) {
                Ok(()) => Some(watcher),
                Err(e) => {
                    tracing::warn!(error = %e, root = %root.display(), "cannot watch (inotify limits?); scanning every 2 s instead");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch; scanning every 2 s instead");
                None
            }
        };
        if watcher.is_none() {
            blind.store(true, Ordering::Relaxed);
        }
        Watch {
            _watcher: watcher,
            blind,
            interval: rescan_interval(),
            changed,
        }
    }

    fn poll(&self) -> Duration {
        if self.blind.load(Ordering::Relaxed) {
            Duration::from_secs(2)
        } else {
            self.interval
        }
    }

    /// What the next round looks at; from then on, changes count for the
    /// round after it.
    pub fn take(&self) -> Scope {
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        let paths = std::mem::take(&mut changed.paths);
        if std::mem::take(&mut changed.everything) || self.blind.load(Ordering::Relaxed) {
            Scope::Everything
        } else {
            Scope::Paths(paths)
        }
    }

    /// Makes the next round look at everything: after a round that failed
    /// with what it took, or on the periodic tick.
    pub fn look_again(&self) {
        self.changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .everything = true;
    }
}

/// Waits for a hint (then gathers more for [`DEBOUNCE`]), a `wake`, a
/// rescan tick, or stop; `false` on stop.
pub async fn next_wake(
    watch: &Watch,
    hints: &mut mpsc::Receiver<()>,
    wake: Option<&Notify>,
    stop: &CancellationToken,
) -> bool {
    tokio::select! {
        () = stop.cancelled() => return false,
        _ = hints.recv() => tokio::time::sleep(DEBOUNCE).await,
        () = async { match wake { Some(w) => w.notified().await, None => std::future::pending().await } } => {}
        () = tokio::time::sleep(watch.poll()) => watch.look_again(),
    }
    while hints.try_recv().is_ok() {}
    true
}
