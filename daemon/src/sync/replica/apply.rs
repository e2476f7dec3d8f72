//! Landing received files, the same way on the hub (a peer's push) and on a
//! peer (a fetch from the hub): each file goes to a verified temp file, one
//! `syncfs` makes the whole batch durable, each is renamed into place only
//! if its target still holds what was planned, and one more `syncfs` makes
//! the renames durable. A file alone fsyncs itself and its directory
//! instead. A crash leaves temp files to clean up, never a partial file.
//! Deciding what lands is the planner's; this module never decides.

use std::path::Path;

use super::fsops::{self, Staged};
use super::scan::Stat;
use crate::sync::wire::frames::FrameReader;
use crate::sync::wire::model::Digest;

/// One file of a batch as it arrives.
pub(crate) struct Arriving<'a> {
    pub relative: &'a Path,
    pub size: u64,
    pub sha256: Option<Digest>,
    pub exec: bool,
}

/// Why one file of a batch was not staged; the rest of the batch goes on.
pub(crate) enum NotStaged {
    /// Nothing may be written at its path (a file or symlink in the way).
    Unwritable(std::io::Error),
    /// Writing failed, or the content did not match its SHA-256
    /// (`ErrorKind::InvalidData`).
    Failed(std::io::Error),
}

impl std::fmt::Display for NotStaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotStaged::Unwritable(e) | NotStaged::Failed(e) => e.fmt(f),
        }
    }
}

/// Receives one file into a verified temp file; with `alone`, fsyncs it
/// now. The outer error is a broken stream, which ends the batch.
pub(crate) async fn receive(
    reader: &mut FrameReader,
    root: &Path,
    file: Arriving<'_>,
    alone: bool,
) -> std::io::Result<Result<Staged, NotStaged>> {
    let mut incoming = match fsops::Incoming::create(root, file.relative, file.exec).await {
        Ok(incoming) => incoming,
        Err(e) => {
            reader.skip(file.size).await?;
            return Ok(Err(NotStaged::Unwritable(e)));
        }
    };
    match reader.receive(file.size, &mut incoming).await {
        Err(stream) => {
            incoming.abandon().await;
            Err(stream)
        }
        Ok(Err(e)) => {
            incoming.abandon().await;
            Ok(Err(NotStaged::Failed(e)))
        }
        Ok(Ok(())) => Ok(incoming
            .finish(file.sha256, alone)
            .await
            .map_err(NotStaged::Failed)),
    }
}

/// How one staged file ended.
pub(crate) enum Landed {
    /// In place, with its stat data if it could be read back.
    Placed(Option<Stat>),
    /// Its target changed since the plan: discarded, nothing replaced.
    Changed,
    /// The batch could not be made durable, or the rename failed.
    Failed(std::io::Error),
}

/// Lands a batch of staged files under `root`. `still_planned` is asked
/// right before each rename; `landed` hears how each ended, in order, and
/// its error stops the batch (the rest are discarded).
pub(crate) fn land<T, E>(
    root: &Path,
    alone: bool,
    staged: Vec<(T, Staged)>,
    mut still_planned: impl FnMut(&T) -> Result<bool, E>,
    mut landed: impl FnMut(T, Landed) -> Result<(), E>,
) -> Result<(), E> {
    if staged.is_empty() {
        return Ok(());
    }
    let durable = if alone { Ok(()) } else { fsops::sync_fs(root) };
    let mut staged = staged.into_iter();
    let mut outcome = Ok(());
    for (item, file) in staged.by_ref() {
        let step = match &durable {
            Err(e) => {
                file.discard();
                landed(
                    item,
                    Landed::Failed(std::io::Error::new(e.kind(), e.to_string())),
                )
            }
            Ok(()) => match still_planned(&item) {
                Err(e) => {
                    file.discard();
                    Err(e)
                }
                Ok(false) => {
                    file.discard();
                    landed(item, Landed::Changed)
                }
                Ok(true) => match file.commit(alone) {
                    Err(e) => landed(item, Landed::Failed(e)),
                    Ok(stat) => landed(item, Landed::Placed(stat)),
                },
            },
        };
        if let Err(e) = step {
            outcome = Err(e);
            break;
        }
    }
    for (_, file) in staged {
        file.discard();
    }
    if durable.is_ok() && !alone {
        let _ = fsops::sync_fs(root);
    }
    outcome
}
