//! The tools sidekey's sync is held against, driven headless on loopback:
//! rsync (one way, local), unison (one-shot runs between two local roots)
//! and two Syncthing instances talking over 127.0.0.1. Installs them from
//! Debian's packages when they are missing. Dropped Syncthing instances are
//! killed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::sync_util::{free_port, run_bounded, stop_child, tcp_json, wait_for};

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Installs the missing comparison tools with apt-get, when that is
/// possible; returns a note on what happened, for the report.
pub fn ensure_installed(tools: &[(&str, &str)]) -> Vec<String> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Vec::new();
    }
    if !on_path("apt-get") {
        return vec![format!(
            "{} missing and there is no apt-get to install them with",
            missing.join(", ")
        )];
    }
    eprintln!("installing: apt-get install -y {}", missing.join(" "));
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    let first = run_bounded(install, None, Duration::from_secs(600));
    if first.is_ok() {
        return vec![format!("installed {} with apt-get", missing.join(", "))];
    }
    // A fresh container has no package lists yet.
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    match run_bounded(update, None, Duration::from_secs(600))
        .and_then(|_| run_bounded(install, None, Duration::from_secs(600)))
    {
        Ok(_) => vec![format!("installed {} with apt-get", missing.join(", "))],
        Err(e) => vec![format!(
            "apt-get install {} failed: {e:#}",
            missing.join(" ")
        )],
    }
}

/// The first line of `program --version`-like output.
pub fn version(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown version".into())
}

/// `rsync -a src/ dst/`, local: rsync forks a sender and a receiver that
/// talk over a pipe, with no ssh and no fsync.
pub fn rsync_command(src: &Path, dst: &Path) -> Command {
    let mut command = Command::new("rsync");
    command
        .arg("-a")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()));
    command
}

/// One batch run of unison between two local roots, with its archives
/// under `state` instead of the user's `~/.unison`.
pub fn unison_command(src: &Path, dst: &Path, state: &Path) -> Command {
    let mut command = Command::new("unison");
    command
        .arg(src)
        .arg(dst)
        .args(["-batch", "-silent", "-confirmbigdel=false"])
        .env("UNISON", state)
        .env("HOME", state);
    command
}

/// Why unison's watch mode cannot run here, if it cannot: Debian's
/// package ships no `unison-fsmonitor`, which `-repeat watch` needs.
pub fn unison_watch_problem() -> Option<String> {
    if on_path("unison-fsmonitor") {
        None
    } else {
        Some(
            "unison -repeat watch fails with \"Fatal error: No file monitoring helper \
             program found\": Debian's unison 2.52 packages ship no unison-fsmonitor"
                .into(),
        )
    }
}

/// One Syncthing instance.
pub struct Syncthing {
    child: Child,
    pub gui: u16,
    apikey: String,
    pub id: String,
    home: PathBuf,
}

/// The settings of one side of a two-instance Syncthing pair.
struct Side {
    home: PathBuf,
    id: String,
    gui: u16,
    listen: u16,
    folder: PathBuf,
    paused: bool,
}

pub const ST_FOLDER: &str = "bench";

impl Syncthing {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        tcp_json(self.gui, "GET", path, &[("X-API-Key", &self.apikey)], b"")
    }

    pub fn send(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        let body = serde_json::to_vec(body)?;
        tcp_json(
            self.gui,
            method,
            path,
            &[
                ("X-API-Key", &self.apikey),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
    }

    /// The folder's status: state, needFiles, globalFiles, localFiles…
    pub fn folder_status(&self) -> Result<Value> {
        self.get(&format!("/rest/db/status?folder={ST_FOLDER}"))
    }

    pub fn stop(mut self) -> Result<()> {
        stop_child(&mut self.child, "syncthing")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.home.join("syncthing.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "; syncthing's log ends with:\n{}",
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }
}

impl Drop for Syncthing {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Two Syncthing instances sharing one folder over 127.0.0.1.
pub struct SyncthingPair {
    pub a: Syncthing,
    pub b: Syncthing,
    /// B's VmRSS once connected, its folder still paused.
    pub b_empty_rss: u64,
    /// From unpausing B's folder until B holds every file and is idle.
    pub initial: Duration,
}

impl SyncthingPair {
    pub fn stop(self) -> Result<()> {
        let b = self.b.stop();
        let a = self.a.stop();
        b.and(a)
    }
}

/// Generates keys for a Syncthing home and returns its device id.
fn generate(home: &Path) -> Result<String> {
    let mut command = Command::new("syncthing");
    command
        .arg("generate")
        .arg(format!("--home={}", home.display()))
        .args(["--no-default-folder", "--skip-port-probing"])
        .env("HOME", home)
        .env("STNOUPGRADE", "1");
    let out = run_bounded(command, None, Duration::from_secs(60))?;
    let text = format!("{}{}", out.stdout, out.stderr);
    text.lines()
        .find_map(|l| l.split("Device ID:").nth(1))
        .map(|id| id.trim().to_string())
        .context("syncthing generate printed no device id")
}

/// A config that keeps Syncthing on loopback: no discovery, relays, NAT,
/// usage reports or upgrades. The file watcher waits `watch_delay` seconds
/// (Syncthing's default is 10; 1 is its smallest) and the periodic rescan
/// is an hour away.
fn config(me: &Side, other: &Side, apikey: &str, watch_delay: u32) -> String {
    let device = |side: &Side, name: &str| {
        format!(
            r#"    <device id="{}" name="{name}" compression="never" introducer="false">
        <address>tcp://127.0.0.1:{}</address>
        <paused>false</paused>
        <autoAcceptFolders>false</autoAcceptFolders>
    </device>
"#,
            side.id, side.listen
        )
    };
    format!(
        r#"<configuration version="36">
    <folder id="{ST_FOLDER}" label="{ST_FOLDER}" path="{folder}" type="sendreceive" rescanIntervalS="3600" fsWatcherEnabled="true" fsWatcherDelayS="{watch_delay}" ignorePerms="false" autoNormalize="true">
        <device id="{me_id}"></device>
        <device id="{other_id}"></device>
        <paused>{paused}</paused>
    </folder>
{me_device}{other_device}    <gui enabled="true" tls="false" debugging="false">
        <address>127.0.0.1:{gui}</address>
        <apikey>{apikey}</apikey>
    </gui>
    <options>
        <listenAddress>tcp://127.0.0.1:{listen}</listenAddress>
        <globalAnnounceEnabled>false</globalAnnounceEnabled>
        <localAnnounceEnabled>false</localAnnounceEnabled>
        <relaysEnabled>false</relaysEnabled>
        <natEnabled>false</natEnabled>
        <urAccepted>-1</urAccepted>
        <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
        <crashReportingEnabled>false</crashReportingEnabled>
        <startBrowser>false</startBrowser>
        <setLowPriority>false</setLowPriority>
        <reconnectionIntervalS>1</reconnectionIntervalS>
    </options>
</configuration>
"#,
        folder = me.folder.display(),
        me_id = me.id,
        other_id = other.id,
        paused = me.paused,
        me_device = device(me, "self"),
        other_device = device(other, "other"),
        gui = me.gui,
        listen = me.listen,
    )
}

fn start_instance(side: &Side, apikey: &str) -> Result<Syncthing> {
    let log = std::fs::File::create(side.home.join("syncthing.log"))?;
    let child = Command::new("syncthing")
        .arg("serve")
        .arg(format!("--home={}", side.home.display()))
        .args(["--no-browser", "--no-restart", "--no-upgrade"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &side.home)
        .env("STNOUPGRADE", "1")
        .env("STNORESTART", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawning syncthing")?;
    let instance = Syncthing {
        child,
        gui: side.gui,
        apikey: apikey.to_string(),
        id: side.id.clone(),
        home: side.home.clone(),
    };
    wait_for(
        "syncthing's REST API answers",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || Ok(instance.get("/rest/system/ping").ok().map(|_| ())),
    )
    .with_context(|| instance.log_tail())?;
    Ok(instance)
}

/// Starts A on `src` (filled with `files` files) and waits for its scan,
/// starts B on the empty `dst` with the folder paused and waits for the
/// two to connect, then unpauses B's folder and times B's initial sync.
pub fn syncthing_pair(
    scratch: &Path,
    src: &Path,
    dst: &Path,
    files: u64,
    watch_delay: u32,
    limit: Duration,
) -> Result<SyncthingPair> {
    let apikey = "sidekey-bench-api-key";
    let mut sides = Vec::new();
    for (name, folder, paused) in [("a", src, false), ("b", dst, true)] {
        let home = scratch.join(format!("syncthing-{name}"));
        std::fs::create_dir_all(&home)?;
        std::fs::create_dir_all(folder.join(".stfolder"))?;
        let id = generate(&home)?;
        sides.push(Side {
            home,
            id,
            gui: free_port()?,
            listen: free_port()?,
            folder: folder.to_path_buf(),
            paused,
        });
    }
    for (me, other) in [(0, 1), (1, 0)] {
        std::fs::write(
            sides[me].home.join("config.xml"),
            config(&sides[me], &sides[other], apikey, watch_delay),
        )?;
    }
    let a = start_instance(&sides[0], apikey)?;
    wait_for(
        "syncthing A scans its folder",
        limit,
        Duration::from_millis(20),
        || {
            let s = a.folder_status()?;
            Ok((s["state"] == "idle" && s["localFiles"].as_u64() >= Some(files)).then_some(()))
        },
    )
    .with_context(|| a.log_tail())?;
    let b = start_instance(&sides[1], apikey)?;
    let a_id = a.id.clone();
    wait_for(
        "the Syncthing instances connect",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let c = b.get("/rest/system/connections")?;
            Ok((c["connections"][&a_id]["connected"] == true).then_some(()))
        },
    )
    .with_context(|| b.log_tail())?;
    std::thread::sleep(Duration::from_secs(2));
    let b_empty_rss = crate::sysinfo::rss_bytes(b.pid())?;

    let begun = Instant::now();
    b.send(
        "PATCH",
        &format!("/rest/config/folders/{ST_FOLDER}"),
        &serde_json::json!({ "paused": false }),
    )?;
    wait_for(
        "syncthing B's initial sync",
        limit,
        Duration::from_millis(5),
        || {
            let s = b.folder_status()?;
            let done = s["state"] == "idle"
                && s["needTotalItems"].as_u64() == Some(0)
                && s["globalFiles"].as_u64() >= Some(files)
                && s["localFiles"] == s["globalFiles"];
            Ok(done.then_some(()))
        },
    )
    .with_context(|| b.log_tail())?;
    let initial = begun.elapsed();
    Ok(SyncthingPair {
        a,
        b,
        b_empty_rss,
        initial,
    })
}
