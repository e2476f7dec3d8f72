//! Plumbing for the sync benchmark, shared by every tool it runs: test trees
//! (made, compared), child processes run with a time bound, a minimal
//! HTTP/1.1 client for control sockets and REST APIs, and free loopback ports.
//! Everything here is blocking; the sync benchmark runs on a blocking thread.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Names our tools keep at a folder's root, which are not part of the tree.
const TOOL_MARKERS: &[&str] = &[
    ".sidekey-replica",
    ".stfolder",
    ".stversions",
    ".sidekeyignore",
];

/// Deterministic bytes that do not compress: xorshift64* from a seed.
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// The relative path of small file `i`: 100 files per directory.
pub fn small_path(i: usize) -> String {
    format!("d{:04}/f{i:06}.bin", i / 100)
}

/// Writes `count` files of `size` bytes under `root`.
pub fn make_small_tree(root: &Path, count: usize, size: usize) -> Result<()> {
    let mut buf = vec![0u8; size];
    for i in 0..count {
        let path = root.join(small_path(i));
        if i % 100 == 0 {
            let parent = path.parent().context("a file path has a parent")?;
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        fill(&mut buf, i as u64 + 1);
        std::fs::write(&path, &buf).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Writes one file of `size` bytes at `root/big.bin`.
pub fn make_large_tree(root: &Path, size: u64) -> Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let path = root.join("big.bin");
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let mut seed = 7u64;
    while written < size {
        let n = (size - written).min(buf.len() as u64) as usize;
        fill(&mut buf[..n], seed);
        file.write_all(&buf[..n])?;
        written += n as u64;
        seed += 1;
    }
    file.flush()?;
    Ok(())
}

/// Every regular file under `root`, relative, sorted, without tool markers.
pub fn list_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            if rel.as_os_str().is_empty() && TOOL_MARKERS.iter().any(|m| name == *m) {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(rel.join(&name));
            } else if kind.is_file() {
                out.push(rel.join(&name));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `dst` holds exactly `src`'s files, byte for byte; the first
/// difference otherwise.
pub fn compare_trees(src: &Path, dst: &Path) -> Result<Option<String>> {
    let a = list_files(src)?;
    let b = list_files(dst)?;
    if a != b {
        let missing = a.iter().filter(|p| !b.contains(p)).count();
        return Ok(Some(format!(
            "{} files on the source, {} on the destination ({missing} missing)",
            a.len(),
            b.len()
        )));
    }
    let mut left = vec![0u8; 1 << 20];
    let mut right = vec![0u8; 1 << 20];
    for rel in &a {
        let mut fa = std::fs::File::open(src.join(rel))?;
        let mut fb = std::fs::File::open(dst.join(rel))?;
        loop {
            let n = read_full(&mut fa, &mut left)?;
            let m = read_full(&mut fb, &mut right)?;
            if n != m || left[..n] != right[..m] {
                return Ok(Some(format!("{} differs", rel.display())));
            }
            if n == 0 {
                break;
            }
        }
    }
    Ok(None)
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Flushes everything dirty, so one run's writeback does not land on the next.
pub fn sync_all() {
    rustix::fs::sync();
}

/// `syncfs` on the file system holding `dir`; returns how long it took.
pub fn syncfs_time(dir: &Path) -> Result<Duration> {
    let begun = Instant::now();
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| format!("opening {}", dir.display()))?;
    rustix::fs::syncfs(&fd).context("syncfs")?;
    Ok(begun.elapsed())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// What a bounded child run left behind.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// A child started by [`spawn_bounded`]; [`Running::finish`] waits for it.
pub struct Running {
    pid: u32,
    begun: Instant,
    done: mpsc::Receiver<(std::io::Result<ExitStatus>, Instant)>,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
    what: String,
}

/// Spawns `command` with piped output and `stdin` written to it.
pub fn spawn_bounded(mut command: Command, stdin: Option<&[u8]>) -> Result<Running> {
    let what = format!("{command:?}");
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let begun = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .context("writing to a child's stdin")?;
    }
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let pid = child.id();
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, Instant::now()));
    });
    Ok(Running {
        pid,
        begun,
        done,
        out,
        err,
        what,
    })
}

impl Running {
    /// Waits up to `limit` for the exit; kills the child after that.
    pub fn finish(self, limit: Duration) -> Result<Finished> {
        let (status, at) = match self.done.recv_timeout(limit) {
            Ok((status, at)) => (status.context("waiting for a child")?, at),
            Err(_) => {
                kill(self.pid, rustix::process::Signal::KILL);
                let _ = self.done.recv_timeout(Duration::from_secs(5));
                bail!("{} did not finish within {limit:?}; killed it", self.what);
            }
        };
        Ok(Finished {
            status,
            stdout: self.out.join().unwrap_or_default(),
            stderr: self.err.join().unwrap_or_default(),
            elapsed: at.duration_since(self.begun),
        })
    }
}

/// Runs `command` to its end within `limit`; an unsuccessful exit is an error.
pub fn run_bounded(command: Command, stdin: Option<&[u8]>, limit: Duration) -> Result<Finished> {
    let what = format!("{command:?}");
    let finished = spawn_bounded(command, stdin)?.finish(limit)?;
    if !finished.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            finished.status,
            finished.stderr.trim(),
            finished.stdout.trim()
        );
    }
    Ok(finished)
}

/// Sends `signal` to one process we started.
/// SIGTERM, then a bounded wait for the exit; SIGKILL and an error after it.
pub fn stop_child(child: &mut std::process::Child, what: &str) -> Result<()> {
    const STOP_TIMEOUT: Duration = Duration::from_secs(15);
    kill(child.id(), rustix::process::Signal::TERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("{what} did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it")
}

pub fn kill(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// One HTTP/1.1 exchange with `Connection: close`; returns the status and body.
fn exchange<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>)> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("an HTTP answer without a header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("an HTTP answer without a status")?;
    let mut payload = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        payload = dechunk(&payload)?;
    }
    Ok((status, payload))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without a size line")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("a chunk size that is not hex")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).context("a truncated chunk")?);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

fn json_answer(method: &str, path: &str, status: u16, body: &[u8]) -> Result<serde_json::Value> {
    if !(200..300).contains(&status) {
        bail!(
            "{method} {path} answered {status}: {}",
            String::from_utf8_lossy(body)
        );
    }
    if body.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(body).with_context(|| format!("{method} {path}: the answer is not JSON"))
}

/// A JSON request on a Unix socket (the daemon's control API).
pub fn unix_json(socket: &Path, method: &str, path: &str) -> Result<serde_json::Value> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    let (status, body) = exchange(stream, method, path, &[], b"")?;
    json_answer(method, path, status, &body)
}

/// A JSON request on loopback TCP (Syncthing's REST API).
pub fn tcp_json(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<serde_json::Value> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    let (status, answer) = exchange(stream, method, path, headers, body)?;
    json_answer(method, path, status, &answer)
}

/// Polls `check` every `every` until it answers `Some`, for at most `limit`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => bail!("{what}: not within {limit:?} (last error: {e:#})"),
                None => bail!("{what}: not within {limit:?}"),
            }
        }
        std::thread::sleep(every);
    }
}

/// The value at fraction `q` of a sorted list, by nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let ms: Vec<Duration> = (1..=50).map(Duration::from_millis).collect();
        assert_eq!(quantile(&ms, 0.5), Duration::from_millis(25));
        assert_eq!(quantile(&ms, 0.95), Duration::from_millis(48));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
    }

    #[test]
    fn fill_is_deterministic_and_seeded() {
        let (mut a, mut b, mut c) = ([0u8; 13], [0u8; 13], [0u8; 13]);
        fill(&mut a, 1);
        fill(&mut b, 1);
        fill(&mut c, 2);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
