//! Sync tests' world: a hub daemon serving a share, and peer daemons each
//! syncing their own folder with it, all real processes on loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Daemon, Home, wait_until};

/// A daemon with a folder of its own.
pub struct Replica {
    pub daemon: Option<Daemon>,
    pub home: Home,
    pub dir: PathBuf,
    /// The peer's session id (peers only).
    pub session: Option<String>,
    args: Vec<String>,
}

impl Replica {
    pub fn ctl(&self, args: &[&str]) -> crate::Ctl {
        self.home.ctl(args)
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    pub fn write(&self, relative: &str, content: &[u8]) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub fn read(&self, relative: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(relative)).ok()
    }

    pub fn exists(&self, relative: &str) -> bool {
        std::fs::symlink_metadata(self.path(relative)).is_ok()
    }

    /// Kills the daemon (SIGKILL when `hard`), leaving its files.
    pub fn stop(&mut self, hard: bool) {
        if let Some(daemon) = self.daemon.take() {
            if hard {
                daemon.signal("KILL");
                drop(daemon);
            } else {
                daemon.stop();
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop(false);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.daemon = Some(
            self.home
                .start_with(&args, &[])
                .unwrap_or_else(|e| panic!("restart failed: {e}")),
        );
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("running").pid()
    }

    pub fn session_status(&self) -> serde_json::Value {
        let id = self.session.as_deref().expect("a peer");
        self.ctl(&["sync", "status", id, "--json"]).success().json()
    }

    /// The files of the folder as (wire path → content), skipping our marker.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
        snapshot(&self.dir)
    }

    /// The wire paths of the files whose exec bit is set.
    pub fn executables(&self) -> std::collections::BTreeSet<String> {
        use std::os::unix::fs::PermissionsExt;
        self.snapshot()
            .into_iter()
            .filter(|(_, content)| content.is_some())
            .filter(|(path, _)| {
                std::fs::symlink_metadata(self.path(path))
                    .is_ok_and(|meta| meta.permissions().mode() & 0o111 != 0)
            })
            .map(|(path, _)| path)
            .collect()
    }
}

/// Every file (content) and directory (`None`) under `root`, by wire path.
pub fn snapshot(root: &Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".sidekey-replica" {
                continue;
            }
            // A file may vanish mid-walk while sync is busy.
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                out.insert(rel, None);
                stack.push(path);
            } else if meta.is_file() {
                out.insert(rel, Some(std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    out
}

pub struct World {
    pub hub: Replica,
    pub peers: Vec<Replica>,
    pub share: String,
}

impl World {
    /// A hub with `files` already in its folder, and `peers` peers that have
    /// finished their initial sync.
    pub fn new(peers: usize, files: &[(&str, &[u8])]) -> World {
        World::with(peers, files, &[])
    }

    pub fn with(peers: usize, files: &[(&str, &[u8])], hub_args: &[&str]) -> World {
        let mut args: Vec<String> = vec!["--sync-listen".into(), "127.0.0.1:0".into()];
        args.extend(hub_args.iter().map(|a| a.to_string()));
        let mut world = World::with_hub(files, args, &[], &[]);
        for _ in 0..peers {
            world.add_peer("rw");
        }
        world
    }

    pub fn invite(&self, mode: &str) -> String {
        self.hub
            .ctl(&["share", "invite", &self.share, "--mode", mode])
            .success()
            .stdout
            .trim()
            .to_string()
    }

    /// Adds a peer with its own daemon and waits for its initial sync.
    pub fn add_peer(&mut self, mode: &str) -> usize {
        let index = self.add_peer_started(mode, &[], &[], |_| {});
        wait_until("the initial sync finishes", Duration::from_secs(60), || {
            let s = self.peers[index].session_status();
            s["initial_sync_done"] == true && s["state"] == "watching"
        });
        index
    }

    /// Waits until every replica holds the same files and directories,
    /// with the same exec bits.
    pub fn converge(&self, limit: Duration) {
        let mut last = String::new();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            let hub = self.hub.snapshot();
            let hub_executables = self.hub.executables();
            let differing: Vec<String> = self
                .peers
                .iter()
                .enumerate()
                .filter(|(_, p)| p.snapshot() != hub || p.executables() != hub_executables)
                .map(|(i, p)| {
                    format!(
                        "peer {i}: {:?} vs hub {:?}",
                        p.snapshot().keys().collect::<Vec<_>>(),
                        hub.keys().collect::<Vec<_>>()
                    )
                })
                .collect();
            if differing.is_empty() {
                return;
            }
            last = differing.join("\n");
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("replicas did not converge within {limit:?}:\n{last}");
    }
}

// Helpers for tests/tests/sync_durability.rs: hubs that keep their port
// across restarts, peers that join without waiting, and daemons run under a
// wrapper command (such as `unshare`, for a private inotify limit).

/// A loopback port that was free a moment ago. A hub that must restart
/// listens on one, because its peers store `host:port` in their sessions.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("a bound address").port()
}

impl World {
    /// A hub with `files` in its folder, listening on a fixed loopback port
    /// (so [`Replica::restart`] keeps it reachable), and no peers yet. With a
    /// non-empty `wrap` the hub's daemon runs under that command; such a hub
    /// restarts unwrapped, so tests that use `wrap` do not restart it.
    pub fn with_fixed_hub_port(
        files: &[(&str, &[u8])],
        wrap: &[&str],
        envs: &[(&str, &str)],
    ) -> World {
        let args = vec!["--sync-listen".into(), format!("127.0.0.1:{}", free_port())];
        World::with_hub(files, args, wrap, envs)
    }

    /// A hub sharing a folder that holds `files`, and no peers yet.
    fn with_hub(
        files: &[(&str, &[u8])],
        args: Vec<String>,
        wrap: &[&str],
        envs: &[(&str, &str)],
    ) -> World {
        let home = Home::new();
        let dir = home.path().join("share");
        std::fs::create_dir_all(&dir).unwrap();
        for (path, content) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = home
            .start_wrapped(wrap, &arg_refs, envs)
            .unwrap_or_else(|e| panic!("hub: {e}"));
        home.ctl(&["share", "add", dir.to_str().unwrap(), "--name", "work"])
            .success();
        let hub = Replica {
            daemon: Some(daemon),
            home,
            dir,
            session: None,
            args,
        };
        World {
            hub,
            peers: Vec::new(),
            share: "work".into(),
        }
    }

    /// Adds a peer whose folder `prepare` may fill first, its daemon run
    /// under `wrap` (empty: none), and returns at once: its initial sync may
    /// still be running. A wrapped peer restarts unwrapped.
    pub fn add_peer_started(
        &mut self,
        mode: &str,
        wrap: &[&str],
        envs: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> usize {
        let invite = self.invite(mode);
        let home = Home::new();
        let dir = home.path().join("folder");
        std::fs::create_dir_all(&dir).unwrap();
        prepare(&dir);
        let daemon = home
            .start_wrapped(wrap, &[], envs)
            .unwrap_or_else(|e| panic!("peer: {e}"));
        let out = home
            .ctl_stdin(
                &["sync", "add", dir.to_str().unwrap(), "--json", "--no-wait"],
                Some(&invite),
            )
            .success();
        let session = out.json()["id"].as_str().unwrap().to_string();
        self.peers.push(Replica {
            daemon: Some(daemon),
            home,
            dir,
            session: Some(session),
            args: Vec::new(),
        });
        self.peers.len() - 1
    }
}

impl Replica {
    /// [`Replica::restart`] with extra environment for the daemon, such as a
    /// quieter `RUST_LOG` for tests that restart it many times.
    pub fn restart_with(&mut self, envs: &[(&str, &str)]) {
        self.stop(false);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.daemon = Some(
            self.home
                .start_with(&args, envs)
                .unwrap_or_else(|e| panic!("restart failed: {e}")),
        );
    }
}
