//! Watching a folder: notify events are only hints that wake a scan; a
//! jittered periodic rescan catches what they miss, and when the watcher
//! fails the loop falls back to polling.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// How long notify events are gathered before a round starts.
const DEBOUNCE: Duration = Duration::from_millis(15);

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
}

impl Watch {
    pub fn start(root: &Path, hints: mpsc::Sender<()>) -> Watch {
        use notify::{EventKind, RecursiveMode, Watcher};
        let blind = Arc::new(AtomicBool::new(false));
        let flag = blind.clone();
        let created = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            match &event {
                Ok(event) if matches!(event.kind, EventKind::Access(_)) => return,
                Ok(_) => {}
                Err(e) => {
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
        }
    }

    pub fn poll(&self) -> Duration {
        if self.blind.load(Ordering::Relaxed) {
            Duration::from_secs(2)
        } else {
            self.interval
        }
    }
}

/// Waits for a hint (then gathers more for [`DEBOUNCE`]), a rescan tick, or stop.
pub async fn next_wake(
    hints: &mut mpsc::Receiver<()>,
    wake: Option<&Notify>,
    stop: &CancellationToken,
    poll: Duration,
) -> bool {
    let woke = tokio::select! {
        () = stop.cancelled() => return false,
        _ = hints.recv() => true,
        () = async { match wake { Some(w) => w.notified().await, None => std::future::pending().await } } => true,
        () = tokio::time::sleep(poll) => true,
    };
    if woke {
        tokio::time::sleep(DEBOUNCE).await;
        while hints.try_recv().is_ok() {}
    }
    true
}
