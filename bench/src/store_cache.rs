//! Data dirs populated with many connections, built once through the real
//! daemon's control socket and cached under `bench/out/` (gitignored).
//! A benchmark never runs on the cache itself, only on a fresh copy, so every
//! run starts from the same bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::task::JoinSet;

use crate::control::Control;
use crate::daemon::Daemon;

/// Control connections that create connections at once. The daemon
/// serializes creates behind a flush, so more would only queue.
const CREATORS: usize = 8;
const COMPLETE_MARKER: &str = "complete";

/// A cached, fully populated data dir.
pub struct CachedStore {
    root: PathBuf,
    pub conns: usize,
}

impl CachedStore {
    /// The cache for `conns` connections, populated first if it is missing,
    /// incomplete, or `repopulate` is set.
    pub async fn ensure(
        binary: &Path,
        out: &Path,
        conns: usize,
        repopulate: bool,
    ) -> Result<CachedStore> {
        let root = out.join(format!("store-{conns}"));
        let store = CachedStore { root, conns };
        let complete = std::fs::read_to_string(store.root.join(COMPLETE_MARKER))
            .is_ok_and(|text| text.trim() == conns.to_string());
        if complete && !repopulate {
            return Ok(store);
        }
        if store.root.exists() {
            std::fs::remove_dir_all(&store.root)
                .with_context(|| format!("removing the stale cache {}", store.root.display()))?;
        }
        std::fs::create_dir_all(&store.root)
            .with_context(|| format!("creating {}", store.root.display()))?;
        populate(binary, &store, out).await?;
        std::fs::write(store.root.join(COMPLETE_MARKER), conns.to_string())
            .context("marking the cache complete")?;
        Ok(store)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn keys_file(&self) -> PathBuf {
        self.root.join("keys.txt")
    }

    /// The first `count` keys, in creation order.
    pub fn keys(&self, count: usize) -> Result<Vec<String>> {
        let path = self.keys_file();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let keys: Vec<String> = text.lines().take(count).map(str::to_string).collect();
        if keys.len() < count.min(self.conns) {
            bail!("{} holds fewer keys than asked for", path.display());
        }
        Ok(keys)
    }

    /// Added to a failed start on a copy: the cache may predate a change of
    /// the daemon's store format.
    pub fn stale_hint(&self) -> String {
        format!(
            "sidekeyd did not start on a copy of the cached store {}; if the daemon's store format changed since it was populated, run again with --repopulate",
            self.root.display()
        )
    }

    /// A private copy of the data dir, removed when dropped.
    pub fn working_copy(&self, scratch_parent: &Path) -> Result<TempDir> {
        let copy = tempfile::Builder::new()
            .prefix("data-")
            .tempdir_in(scratch_parent)
            .context("creating a scratch data dir")?;
        copy_dir(&self.data_dir(), copy.path())?;
        Ok(copy)
    }
}

/// An empty data dir, removed when dropped; the daemon initializes it.
pub fn empty_data_dir(scratch_parent: &Path) -> Result<TempDir> {
    std::fs::create_dir_all(scratch_parent)
        .with_context(|| format!("creating {}", scratch_parent.display()))?;
    tempfile::Builder::new()
        .prefix("data-empty-")
        .tempdir_in(scratch_parent)
        .context("creating an empty data dir")
}

async fn populate(binary: &Path, store: &CachedStore, out: &Path) -> Result<()> {
    let total = store.conns;
    eprintln!(
        "populating {} with {total} connections (once; cached for later runs)",
        store.root.display()
    );
    let mut daemon = Daemon::start(binary, &store.data_dir(), &out.join("scratch")).await?;
    let begun = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut creators = JoinSet::new();
    for first in 0..CREATORS.min(total.max(1)) {
        let socket = daemon.socket().to_path_buf();
        let done = done.clone();
        creators.spawn(async move {
            let mut control = Control::connect(&socket).await?;
            let mut keys = Vec::new();
            for index in (first..total).step_by(CREATORS) {
                let key = control.create_agent(&format!("bench-{index:06}")).await?;
                keys.push((index, key));
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(keys)
        });
    }
    let progress = tokio::spawn(report_progress(done, total, begun));
    let mut keys = Vec::with_capacity(total);
    while let Some(joined) = creators.join_next().await {
        keys.extend(joined.context("a creator task panicked")??);
    }
    progress.abort();
    keys.sort_unstable_by_key(|(index, _)| *index);

    let (_, counted) = daemon.wait_control().await?;
    if counted != total as u64 {
        bail!("the daemon counts {counted} connections after creating {total}");
    }
    daemon.stop().await?;
    let text: String = keys.iter().map(|(_, key)| format!("{key}\n")).collect();
    write_private(&store.keys_file(), &text)?;
    eprintln!(
        "populated {total} connections in {:.1} s",
        begun.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn report_progress(done: Arc<AtomicUsize>, total: usize, begun: Instant) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let done = done.load(Ordering::Relaxed);
        let rate = done as f64 / begun.elapsed().as_secs_f64().max(1e-9);
        let left = (total - done.min(total)) as f64 / rate.max(1e-9);
        eprintln!("  {done}/{total} connections, {rate:.0}/s, about {left:.0} s left");
    }
}

/// The keys are live secrets of a throwaway store; keep them owner-only anyway.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let entries = std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}
