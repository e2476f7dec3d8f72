//! SIGTERM drains work in flight, within `shutdown_timeout`: a request
//! inside an intercepted HTTPS tunnel gets its whole answer, a sync transfer
//! never leaves a partial file under its real name, and the daemon exits 0
//! within the bound.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use sidekey_tests::agent::{Setup, curl};
use sidekey_tests::sync::World;
use sidekey_tests::upstream::Upstream;
use sidekey_tests::{Daemon, wait_until};

const HOST: &str = "api.sidekey.test";
const SECRET: &str = "sk-drain-INJECTED0001";

/// The `shutdown_timeout` the daemons run with. Short, so a daemon that
/// waits it out is told apart from one that drains and exits, yet long
/// enough to hold each test's work in flight.
const BOUND: &str = "5s";
const BOUND_SECS: u64 = 5;

/// What the daemon may take past the drain bound: flushing the audit log,
/// `last_used` and the store, then exiting.
const FLUSH_SLACK: Duration = Duration::from_secs(2);

/// How long the upstream holds its answer: longer than it takes to send
/// SIGTERM and watch the listener close, shorter than [`BOUND`].
const SLOW_MS: u64 = 2500;

/// Waits for the exit that `signalled_at` should lead to, within the bound,
/// and returns its status and how long it took.
fn exits_within_bound(daemon: &mut Daemon, signalled_at: Instant) -> (ExitStatus, Duration) {
    let limit = Duration::from_secs(BOUND_SECS) + FLUSH_SLACK;
    let left = limit.saturating_sub(signalled_at.elapsed());
    let status = daemon.exit_within(left).unwrap_or_else(|| {
        panic!(
            "sidekeyd still runs {:?} after SIGTERM, past shutdown_timeout = {BOUND} (+{FLUSH_SLACK:?} to flush)",
            signalled_at.elapsed()
        )
    });
    (status, signalled_at.elapsed())
}

/// Whether a new client is turned away: the connection is refused, or
/// closed before any answer. A connection the kernel accepts but nobody
/// answers (a listener left open and unserved) counts as not refused, since
/// its client would hang until the daemon exits.
fn refuses_new_connections(addr: SocketAddr) -> bool {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(stream) => stream,
        Err(e) => return e.kind() == std::io::ErrorKind::ConnectionRefused,
    };
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    if stream
        .write_all(b"GET /v1/whoami HTTP/1.1\r\nHost: sidekey.test\r\n\r\n")
        .is_err()
    {
        return true;
    }
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    }
}

/// Both ways an agent's request travels inside an intercepted tunnel:
/// HTTP/1.1 (sidekey's own forwarder) and h2 (the hyper-based proxy), as
/// curl negotiates them by ALPN.
const PROTOCOLS: &[(&str, &str)] = &[("h1", "--http1.1"), ("h2", "--http2")];

#[test]
fn sigterm_drains_a_request_in_flight_inside_an_intercepted_https_tunnel() {
    let mut s = Setup::with_args(&["--shutdown-timeout", BOUND]);
    s.cred("key", "api-key", &[HOST], SECRET);
    let upstream = Upstream::https(&s.certs);
    let clients: Vec<_> = PROTOCOLS
        .iter()
        .map(|(name, flag)| {
            let url = format!(
                "https://{HOST}:{}/slow?ms={SLOW_MS}&via={name}",
                upstream.port
            );
            let args: Vec<String> = [
                "--proxy",
                &s.proxy_url(),
                "--cacert",
                s.bundle.to_str().unwrap(),
                flag,
                "-H",
                "Authorization: Bearer placeholder",
                &url,
            ]
            .map(String::from)
            .to_vec();
            let client = std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                curl(&args)
            });
            (*name, client)
        })
        .collect();

    // The upstream records a request before it starts to wait: from then
    // on each request is in flight inside its intercepted tunnel.
    wait_until(
        "both slow requests reach the upstream",
        Duration::from_secs(20),
        || upstream.count() == PROTOCOLS.len(),
    );
    for seen in upstream.seen() {
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {SECRET}").as_str()),
            "the tunnel is intercepted (the credential was injected): {seen:?}"
        );
        assert_eq!(seen.sni.as_deref(), Some(HOST));
    }

    let signalled_at = Instant::now();
    s.daemon.signal("TERM");
    wait_until(
        "the proxy refuses new connections after SIGTERM",
        Duration::from_millis(SLOW_MS / 2),
        || refuses_new_connections(s.proxy()),
    );

    let failed: Vec<String> = clients
        .into_iter()
        .filter_map(|(name, client)| {
            let r = client.join().expect("a curl thread");
            let whole = r.status == 200
                && serde_json::from_str::<serde_json::Value>(&r.body)
                    .is_ok_and(|v| v == serde_json::json!({"slow": true}));
            (!whole).then(|| {
                format!(
                    "{name}: status {} (curl exit {:?}): {}{}",
                    r.status,
                    r.exit,
                    r.body,
                    r.stderr.trim()
                )
            })
        })
        .collect();
    assert!(
        failed.is_empty(),
        "each request in flight at SIGTERM gets its whole answer:\n{}",
        failed.join("\n")
    );
    assert!(
        signalled_at.elapsed() < Duration::from_secs(BOUND_SECS),
        "the answers came within shutdown_timeout"
    );

    let (status, took) = exits_within_bound(&mut s.daemon, signalled_at);
    assert!(
        status.success(),
        "sidekeyd exits 0 after draining, got {status} after {took:?}"
    );
    assert_eq!(
        upstream.count(),
        PROTOCOLS.len(),
        "nothing was retried upstream"
    );
}

/// A large file's content: 1 MiB blocks, each a shared pseudo-random block
/// stamped with its index (so no two blocks are alike), cheap to write and
/// to check again.
const BLOCK: usize = 1 << 20;

fn block(index: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK);
    let mut state: u64 = 0x5eed_d7a1;
    while out.len() < BLOCK {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out[..8].copy_from_slice(&index.to_le_bytes());
    out
}

/// Writes `blocks` blocks at `path` (outside any synced folder).
fn write_large(path: &Path, blocks: u64) {
    let base = block(0);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..blocks {
        file.write_all(&i.to_le_bytes()).unwrap();
        file.write_all(&base[8..]).unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();
}

/// Whether `path` holds exactly the `blocks` blocks of [`write_large`].
fn is_whole(path: &Path, blocks: u64) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size != blocks * BLOCK as u64 {
        return Err(format!("{size} bytes, expected {}", blocks * BLOCK as u64));
    }
    let base = block(0);
    let mut buf = vec![0u8; BLOCK];
    for i in 0..blocks {
        file.read_exact(&mut buf).map_err(|e| e.to_string())?;
        if buf[..8] != i.to_le_bytes() || buf[8..] != base[8..] {
            return Err(format!("block {i} differs"));
        }
    }
    Ok(())
}

/// The sync engine's temp files under `dir`, with their sizes.
fn temp_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if entry
                .file_name()
                .to_string_lossy()
                .starts_with(".sidekey-tmp-")
            {
                out.push((entry.path(), meta.len()));
            }
        }
    }
    out
}

/// SIGTERM goes to the receiving side, the peer pulling a large file from
/// the hub: the receiver is the side that turns a stream into a file under
/// its real name (temp file, verify, rename), so it is where a drain that
/// took a cut stream for a finished one would put a partial file in place;
/// its restart is also what must pick the transfer up again. Cutting the
/// sender instead only ends the stream early, which the receiver meets on
/// any network failure.
#[test]
fn sigterm_drains_a_sync_transfer_in_flight() {
    const BLOCKS: u64 = 128;
    let envs = [("SIDEKEY_SHUTDOWN_TIMEOUT", BOUND), ("RUST_LOG", "info")];
    let mut world = World::new(0, &[("small.txt", b"small")]);
    let peer = world.add_peer_started("rw", &[], &envs, |_| {});
    wait_until("the initial sync finishes", Duration::from_secs(60), || {
        let s = world.peers[peer].session_status();
        s["initial_sync_done"] == true && s["state"] == "watching"
    });

    // Written outside the share and renamed in, so the hub sees it whole.
    let staging = world.hub.home.path().join("staging-large.bin");
    write_large(&staging, BLOCKS);
    std::fs::rename(&staging, world.hub.path("large.bin")).unwrap();

    let target = world.peers[peer].path("large.bin");
    let full = BLOCKS * BLOCK as u64;
    let mut in_flight = Vec::new();
    wait_until(
        "the peer is part-way through receiving large.bin",
        Duration::from_secs(60),
        || {
            in_flight = temp_files(&world.peers[peer].dir)
                .into_iter()
                .filter(|(_, len)| *len > 0 && *len < full)
                .collect();
            !in_flight.is_empty() || target.exists()
        },
    );
    assert!(
        !target.exists(),
        "large.bin arrived before SIGTERM could be sent mid-transfer; make it larger"
    );

    let mut daemon = world.peers[peer].daemon.take().expect("the peer runs");
    let signalled_at = Instant::now();
    daemon.signal("TERM");
    let (status, took) = exits_within_bound(&mut daemon, signalled_at);
    eprintln!(
        "the peer exited {took:?} after SIGTERM, with {in_flight:?} of {full} bytes in flight"
    );
    assert!(
        status.success(),
        "the receiving sidekeyd exits 0 after SIGTERM mid-transfer, got {status} after {took:?}"
    );
    drop(daemon);
    if target.exists() {
        is_whole(&target, BLOCKS)
            .unwrap_or_else(|e| panic!("a partial large.bin is under its real name: {e}"));
    } else {
        // Draining means the transfer went on: it either finished before
        // the daemon exited, or ran out of shutdown_timeout. A daemon that
        // exits sooner with the file still missing cut it instead.
        assert!(
            took >= Duration::from_secs(BOUND_SECS),
            "the peer exited {took:?} after SIGTERM, before shutdown_timeout = {BOUND}, without finishing the transfer in flight ({in_flight:?} of {full} bytes were in its temp file)"
        );
    }

    world.peers[peer].restart_with(&envs);
    let restarted_at = Instant::now();
    wait_until(
        "large.bin arrives after the restart",
        Duration::from_secs(60),
        || target.exists(),
    );
    eprintln!(
        "large.bin arrived {:?} after the restart",
        restarted_at.elapsed()
    );
    is_whole(&target, BLOCKS).unwrap_or_else(|e| panic!("large.bin arrived but is not whole: {e}"));
    let left = temp_files(&world.peers[peer].dir);
    if !left.is_empty() {
        eprintln!("temp files left on the peer after the restart: {left:?}");
    }
}
