//! Bodies stream through the proxy: big uploads and downloads pass with the
//! daemon's memory bounded, server-sent events arrive one by one, and a
//! WebSocket echo works inside an intercepted tunnel with the credential on
//! its handshake.
//!
//! The transfer test moves 64 MiB each way by default, and 1 GiB with
//! `SIDEKEY_SLOW_TESTS=1`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sidekey_tests::agent::Setup;
use sidekey_tests::upstream::{Seen, TestCerts, Upstream};
use sidekey_tests::{Home, output_within, text};

const SECRET: &str = "sk-proj-STREAMsecretVALUE0123456789";
const HOST: &str = "api.sidekey.test";
/// The daemon's resident memory must stay under this during transfers.
const RSS_LIMIT_KB: u64 = 64 * 1024;

/// Held by the big transfers and the timing tests, so two cores busy with a
/// gigabyte never delay the events whose spacing a test measures.
static HEAVY: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A daemon like [`Setup::new`], logging at info: trace logs of every
/// chunk of a gigabyte would fill the disk, not test the proxy.
fn setup() -> Setup {
    let home = Home::new();
    let certs = TestCerts::new();
    let ca_arg = format!("--upstream-ca-file={}", certs.ca.display());
    let daemon = home
        .start_with(&[&ca_arg], &[("RUST_LOG", "info")])
        .unwrap_or_else(|e| panic!("sidekeyd did not start: {e}"));
    let (conn, key) = home.create_conn("agent-1", "agent", &[]);
    let bundle = PathBuf::from(home.ctl(&["ca", "--bundle"]).success().stdout.trim());
    let setup = Setup {
        home,
        daemon,
        certs,
        conn,
        key,
        bundle,
    };
    let token = setup.cred("openai", "api-key", &[HOST], SECRET);
    assert!(token.starts_with("pxr_"), "grant printed {token:?}");
    setup
}

/// curl through the proxy, trusting the bundle, with a clean environment.
fn curl_command(setup: &Setup, max_time: Duration) -> Command {
    let mut cmd = Command::new("curl");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["-sS", "--fail-with-body", "--max-time"])
        .arg(max_time.as_secs().to_string())
        .arg("--proxy")
        .arg(setup.proxy_url())
        .arg("--cacert")
        .arg(&setup.bundle)
        .args(["-H", "Authorization: Bearer placeholder"]);
    cmd
}

fn assert_injected(seen: &Seen, path: &str) {
    assert_eq!(seen.path, path, "{seen:?}");
    assert_eq!(
        seen.headers_named("authorization"),
        [format!("Bearer {SECRET}").as_str()],
        "the real key replaces the placeholder: {seen:?}"
    );
    assert!(
        seen.header("proxy-authorization").is_none(),
        "Proxy-Authorization never reaches the upstream: {seen:?}"
    );
}

fn transfer_bytes() -> u64 {
    if std::env::var("SIDEKEY_SLOW_TESTS").as_deref() == Ok("1") {
        1 << 30
    } else {
        64 << 20
    }
}

/// Time allowed for one transfer: generous for a debug build on 2 cores.
fn transfer_limit(bytes: u64) -> Duration {
    Duration::from_secs(60 + bytes / (2 << 20))
}

/// Samples a process's VmRSS until stopped; yields (peak kB, samples).
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, usize)>,
}

impl RssSampler {
    fn start(pid: u32, limit: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let (mut peak, mut samples) = (0, 0);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Some(kb) = vm_rss_kb(pid) {
                    peak = peak.max(kb);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (peak, samples)
        });
        RssSampler { stop, thread }
    }

    fn finish(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the sampler ran")
    }
}

fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn sha256_of(path: &Path) -> String {
    let out = output_within(
        {
            let mut cmd = Command::new("sha256sum");
            cmd.arg(path);
            cmd
        },
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "sha256sum: {}", text(&out.stderr));
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Random bytes in a file, so no layer can compress or dedupe them.
fn random_file(dir: &Path, bytes: u64) -> PathBuf {
    let path = dir.join("upload.bin");
    let mut cmd = Command::new("head");
    cmd.args(["-c", &bytes.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(&path).unwrap());
    let status = cmd.status().expect("head runs");
    assert!(status.success());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
    path
}

/// The recorder's /bytes body: byte k is k mod 256. Returns the first bad offset.
fn first_wrong_byte(path: &Path) -> Option<u64> {
    let mut file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset: u64 = 0;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return None;
        }
        if let Some(i) = buf[..n]
            .iter()
            .enumerate()
            .position(|(i, b)| u64::from(*b) != (offset + i as u64) % 256)
        {
            return Some(offset + i as u64);
        }
        offset += n as u64;
    }
}

/// `sidekeyctl audit --json`: (url, bytes up, bytes down, outcome), oldest first.
fn audit(setup: &Setup) -> Vec<(String, u64, u64, String)> {
    let out = setup.home.ctl(&["audit", "--json"]).success();
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["url"].as_str().unwrap_or_default().to_string(),
                v["bytes_up"].as_u64().unwrap_or(0),
                v["bytes_down"].as_u64().unwrap_or(0),
                v["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Uploads then downloads `transfer_bytes()` through the proxy over
/// `scheme`, sampling the daemon's RSS throughout. With `chunked`, the
/// upload comes from curl's stdin, so it has no length up front.
fn big_transfers_keep_daemon_memory_bounded(scheme: &str, chunked: bool) {
    let _heavy = exclusive();
    let setup = setup();
    let upstream = match scheme {
        "https" => Upstream::https(&setup.certs),
        _ => Upstream::http(),
    };
    let bytes = transfer_bytes();
    let limit = transfer_limit(bytes);
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), bytes);
    let sha = sha256_of(&file);
    let base = format!("{scheme}://{HOST}:{}", upstream.port);
    let pid = setup.daemon.pid();
    let idle = vm_rss_kb(pid).expect("sidekeyd's /proc status");

    // Upload.
    let sampler = RssSampler::start(pid, limit);
    let started = Instant::now();
    let mut cmd = curl_command(&setup, limit);
    cmd.args(["-X", "POST", "-H", "Content-Type: application/octet-stream"]);
    if chunked {
        cmd.args(["-T", "-"])
            .stdin(std::fs::File::open(&file).unwrap());
    } else {
        cmd.arg("-T").arg(&file).stdin(Stdio::null());
    }
    cmd.arg(format!("{base}/upload"));
    let out = output_within(cmd, limit + Duration::from_secs(10));
    let upload_time = started.elapsed();
    let (upload_peak, upload_samples) = sampler.finish();
    assert!(
        out.status.success(),
        "upload: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("upload answer is not JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(answer["len"].as_u64(), Some(bytes), "{answer}");
    assert_eq!(answer["sha256"].as_str(), Some(sha.as_str()), "{answer}");
    let seen = upstream.last();
    assert_injected(&seen, "/upload");
    assert_eq!(seen.body_len, bytes);
    assert_eq!(seen.body_sha256.as_deref(), Some(sha.as_str()));
    if chunked {
        assert_eq!(
            seen.header("transfer-encoding"),
            Some("chunked"),
            "the upload had no length up front: {seen:?}"
        );
    }
    std::fs::remove_file(&file).unwrap();

    // Download.
    let target = dir.path().join("download.bin");
    let sampler = RssSampler::start(pid, limit);
    let started = Instant::now();
    let mut cmd = curl_command(&setup, limit);
    cmd.arg("-o")
        .arg(&target)
        .arg(format!("{base}/bytes?n={bytes}"))
        .stdin(Stdio::null());
    let out = output_within(cmd, limit + Duration::from_secs(10));
    let download_time = started.elapsed();
    let (download_peak, download_samples) = sampler.finish();
    assert!(out.status.success(), "download: {}", text(&out.stderr));
    assert_eq!(
        std::fs::metadata(&target).unwrap().len(),
        bytes,
        "the download is complete"
    );
    assert_eq!(first_wrong_byte(&target), None, "the download is intact");
    assert_injected(&upstream.last(), &format!("/bytes?n={bytes}"));

    eprintln!(
        "{scheme}: idle RSS {idle} kB; {} MiB up in {upload_time:?} (peak RSS {upload_peak} kB, {upload_samples} samples), down in {download_time:?} (peak RSS {download_peak} kB, {download_samples} samples)",
        bytes >> 20
    );
    for (what, peak, samples) in [
        ("upload", upload_peak, upload_samples),
        ("download", download_peak, download_samples),
    ] {
        assert!(samples >= 3, "{what}: RSS sampled {samples} times");
        assert!(
            peak < RSS_LIMIT_KB,
            "{what} of {bytes} bytes: sidekeyd's RSS peaked at {peak} kB, over {RSS_LIMIT_KB} kB"
        );
    }

    // The audit counted every byte each way.
    let records = audit(&setup);
    let upload = records
        .iter()
        .find(|r| r.0.ends_with("/upload"))
        .unwrap_or_else(|| panic!("an audit record for the upload: {records:?}"));
    assert_eq!((upload.1, upload.3.as_str()), (bytes, "ok"), "{upload:?}");
    let download = records
        .iter()
        .find(|r| r.0.ends_with("/bytes"))
        .unwrap_or_else(|| panic!("an audit record for the download: {records:?}"));
    assert_eq!(
        (download.2, download.3.as_str()),
        (bytes, "ok"),
        "{download:?}"
    );
}

#[test]
fn big_upload_and_download_through_intercepted_https_keep_daemon_rss_under_64_mb() {
    big_transfers_keep_daemon_memory_bounded("https", false);
}

#[test]
fn big_chunked_upload_and_download_over_plain_http_keep_daemon_rss_under_64_mb() {
    big_transfers_keep_daemon_memory_bounded("http", true);
}

/// Streams /sse through the proxy with curl -N and returns when each event
/// line arrived, relative to the first.
fn sse_arrivals(setup: &Setup, url: &str, extra: &[&str]) -> Vec<(String, Duration)> {
    let mut cmd = curl_command(setup, Duration::from_secs(30));
    let mut child = cmd
        .arg("-N")
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((line, Instant::now())).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((line, at)) if line.starts_with("data:") => events.push((line, at)),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("the SSE stream did not end within 30 s: {events:?}");
            }
        }
    }
    let out = child.wait_with_output().expect("curl exits");
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    let first = events
        .first()
        .map(|(_, at)| *at)
        .unwrap_or_else(Instant::now);
    events
        .into_iter()
        .map(|(line, at)| (line, at - first))
        .collect()
}

/// Five events 300 ms apart must reach the agent about 300 ms apart, not
/// all together when the stream ends.
fn sse_events_arrive_one_by_one(scheme: &str, extra: &[&str]) {
    let setup = setup();
    let upstream = match scheme {
        "https" => Upstream::https(&setup.certs),
        _ => Upstream::http(),
    };
    let url = format!("{scheme}://{HOST}:{}/sse?n=5&gap_ms=300", upstream.port);
    let events = {
        let _heavy = exclusive();
        sse_arrivals(&setup, &url, extra)
    };
    let lines: Vec<&str> = events.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(events.len(), 5, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.starts_with(&format!("data: event {i} ")), "{lines:?}");
    }
    for pair in events.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap >= Duration::from_millis(150),
            "events arrived {gap:?} apart, batched rather than streamed: {events:?}"
        );
    }
    assert_injected(&upstream.last(), "/sse?n=5&gap_ms=300");
}

#[test]
fn sse_events_arrive_one_by_one_through_intercepted_https_over_http1() {
    sse_events_arrive_one_by_one("https", &["--http1.1"]);
}

#[test]
fn sse_events_arrive_one_by_one_through_intercepted_https_over_h2() {
    sse_events_arrive_one_by_one("https", &["--http2"]);
}

#[test]
fn sse_events_arrive_one_by_one_over_plain_http() {
    sse_events_arrive_one_by_one("http", &[]);
}

#[test]
fn websocket_echo_works_through_intercepted_tunnel_with_credential_on_handshake() {
    let setup = setup();
    let upstream = Upstream::https(&setup.certs);
    let result = sidekey_tests::websocket::client(&setup, HOST, upstream.port, "echo");
    assert!(
        result["status"]
            .as_str()
            .unwrap_or_default()
            .starts_with("HTTP/1.1 101"),
        "{result}"
    );
    assert_eq!(result["accept_ok"], true, "{result}");
    assert!(
        result["upgrade"]
            .as_str()
            .unwrap_or_default()
            .eq_ignore_ascii_case("websocket"),
        "{result}"
    );
    assert_eq!(
        result["echoed"],
        serde_json::json!([true, true, true]),
        "{result}"
    );
    assert_eq!(result["close_opcode"], 8, "{result}");

    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_injected(&seen[0], "/ws");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].sni.as_deref(), Some(HOST));
    assert!(
        seen[0]
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
        "{seen:?}"
    );
}
