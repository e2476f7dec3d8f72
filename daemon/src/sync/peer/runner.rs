//! The loops that keep a session going: rounds on watcher hints, the hub's
//! long-poll and ticks, backing off within a bound. After a halt or a
//! refused key they wait for the user; they never retry that on their own.

use std::sync::Arc;
use std::time::Duration;

use sidekey_api::SessionState;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::shutdown::Tasks;
use crate::sync::SyncEngine;
use crate::sync::peer::client::SyncError;
use crate::sync::peer::session::{RoundError, Session};
use crate::sync::replica::watcher::{Watch, next_wake};

/// Failed rounds in a row before a session stops retrying on its own.
const MAX_FAILURES: u32 = 8;

pub async fn run_session(
    engine: Arc<SyncEngine>,
    session: Arc<Session>,
    wake: Arc<Notify>,
    mut user: watch::Receiver<u64>,
    tasks: Tasks,
    // Closes the session's hub connection once the last round is done.
    _connection: DropGuard,
) {
    let stop = tasks.token().clone();
    let (tx, mut hints) = mpsc::channel(1);
    let watch = Watch::start(&session.root, tx);
    tasks.spawn(long_poll(
        session.clone(),
        wake.clone(),
        user.clone(),
        stop.clone(),
    ));
    let mut failures = 0u32;
    let mut again = 0u32;
    loop {
        let id = session.record().id;
        if session.record().paused {
            session.set_state(
                SessionState::Paused,
                Some(format!("Paused; resume with: sidekeyctl sync resume {id}")),
            );
            if !wait_for_user(&mut user, &stop).await {
                return;
            }
            continue;
        }
        let outcome = session.round(watch.take()).await;
        if outcome.is_err() {
            watch.look_again();
        }
        let stopped = match outcome {
            Ok(()) => {
                failures = 0;
                again = 0;
                false
            }
            Err(RoundError::Again) if again < 5 => {
                again += 1;
                continue;
            }
            Err(RoundError::Again) => {
                again = 0;
                false
            }
            Err(RoundError::Halt(why)) => {
                session.set_state(SessionState::Halted, Some(why));
                true
            }
            Err(RoundError::Sync(SyncError::Auth(why))) => {
                session.set_state(SessionState::AuthFailed, Some(why.replace("<id>", &id)));
                true
            }
            Err(RoundError::Sync(
                SyncError::Fingerprint(why) | SyncError::Refused(why) | SyncError::Forbidden(why),
            )) => {
                session.set_state(SessionState::Error, Some(why));
                true
            }
            Err(RoundError::Sync(SyncError::Transport(why)) | RoundError::Retry(why)) => {
                failures += 1;
                if failures >= MAX_FAILURES {
                    session.set_state(SessionState::Error, Some(format!("{why}; gave up after {failures} tries. Retry with: sidekeyctl sync resume {id}")));
                    true
                } else {
                    // Bounded exponential backoff: 2, 4, ... 64 s.
                    session.set_state(SessionState::Error, Some(format!("{why}; retrying")));
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1u64 << failures.min(6))) => {}
                    }
                    continue;
                }
            }
        };
        if let Err(e) = engine.save(&session).await {
            tracing::warn!(error = %e.message, "cannot save the session");
        }
        if stopped {
            // Never retry on our own: wait for resume or set-key.
            if !wait_for_user(&mut user, &stop).await {
                return;
            }
            failures = 0;
            continue;
        }
        crate::memory::release_freed_soon();
        tokio::select! {
            keep = next_wake(&watch, &mut hints, Some(&wake), &stop) => if !keep { return },
            _ = user.changed() => {}
        }
    }
}

async fn wait_for_user(user: &mut watch::Receiver<u64>, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        changed = user.changed() => changed.is_ok(),
    }
}

/// Waits on the hub's change feed and wakes the session when it moves.
/// After a refused key it waits for the user, like the session does.
async fn long_poll(
    session: Arc<Session>,
    wake: Arc<Notify>,
    mut user: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let since = session.record().cursor;
        session.polling(Some(since));
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = session.client.changes(since, 25) => outcome,
        };
        session.polling(None);
        match outcome {
            Ok(changes) => {
                failures = 0;
                if !changes.entries.is_empty() {
                    wake.notify_one();
                    // Let the round move the cursor before asking again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(
                SyncError::Auth(_)
                | SyncError::Fingerprint(_)
                | SyncError::Refused(_)
                | SyncError::Forbidden(_),
            ) => {
                wake.notify_one();
                if !wait_for_user(&mut user, &stop).await {
                    return;
                }
            }
            Err(_) => {
                failures += 1;
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1u64 << failures.min(6))) => {}
                }
            }
        }
    }
}
