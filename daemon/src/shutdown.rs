//! The one shutdown tree: every task of the daemon is spawned here, on a
//! tracker that shutdown waits for, under the token that starts it. A bare
//! `tokio::spawn` elsewhere is refused by clippy (`clippy.toml`), because a
//! task outside the tree is cut at exit instead of drained.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A handle on the tree: clone it freely; every clone spawns into the same
/// tracker and watches the same token.
#[derive(Clone, Default)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    pub fn new(token: CancellationToken) -> Tasks {
        Tasks {
            token,
            tracker: TaskTracker::new(),
        }
    }

    /// Runs `task` on the current runtime, inside the tree.
    #[allow(clippy::disallowed_methods)]
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Cancelled when the daemon starts to shut down.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// The same tree under a token of its own, which `stop` ends early (a
    /// sync session being removed) and shutdown ends with everything else.
    pub fn child(&self) -> Tasks {
        Tasks {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
        }
    }

    /// The same tree under a token its owner cancels when it is done, not at
    /// shutdown: a sync peer's connection must carry the transfer in flight
    /// to its end, and close only once its session has stopped.
    pub fn until(&self, token: CancellationToken) -> Tasks {
        Tasks {
            token,
            tracker: self.tracker.clone(),
        }
    }

    /// A tree of its own for the tasks of one runtime (a proxy thread), which
    /// must drain on that runtime before it stops. The parent's drain waits
    /// for the returned guard to drop.
    pub fn scoped(&self) -> (Tasks, tokio_util::task::task_tracker::TaskTrackerToken) {
        let scoped = Tasks {
            token: self.token.clone(),
            tracker: TaskTracker::new(),
        };
        (scoped, self.tracker.token())
    }

    /// Waits for every task to end, at most `bound`; false when some were
    /// still running.
    pub async fn drain(&self, bound: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Serves a hyper connection until it ends; at shutdown, lets it finish the
/// request in flight and close, rather than cutting it. A macro, not a
/// function: rustc loses the `Send` proof of hyper's connection futures
/// when they pass through a generic async fn.
macro_rules! serve_graceful {
    ($conn:expr, $token:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            served = conn.as_mut() => served,
            () = $token.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}
pub(crate) use serve_graceful;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_and_is_bounded() {
        let tasks = Tasks::new(CancellationToken::new());
        let child = tasks.child();
        let watcher = child.clone();
        tasks.spawn(async move { watcher.cancelled().await });
        tasks.spawn(tokio::time::sleep(Duration::from_secs(5)));
        tasks.token().cancel();
        assert!(
            !tasks.drain(Duration::from_secs(1)).await,
            "a 5 s task outlives a 1 s bound"
        );
        assert!(tasks.drain(Duration::from_secs(10)).await);
    }

    #[tokio::test]
    async fn a_child_stops_without_stopping_the_tree() {
        let tasks = Tasks::new(CancellationToken::new());
        let child = tasks.child();
        child.token().cancel();
        child.cancelled().await;
        assert!(!tasks.token().is_cancelled());
    }
}
