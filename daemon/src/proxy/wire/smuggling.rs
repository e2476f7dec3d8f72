//! Spots request smuggling before hyper parses the request. hyper follows
//! RFC 9112 and quietly drops `Content-Length` when `Transfer-Encoding` is
//! also present, so the service never sees both; this reader watches the raw
//! header lines and raises a flag the request handler answers with 400.
//!
//! It follows each request's framing, so a body that happens to hold header
//! lines is skipped, never read as a head. It stops at a `CONNECT`: what
//! follows is the tunnel's, guarded inside it. (After a refused `CONNECT`
//! the rest of that connection goes unscanned; hyper still frames it.)
//!
//! It also times each request head: once a head has begun it must be whole
//! within [`HEAD_TIMEOUT`]. hyper's own header timeout also runs while a
//! keep-alive connection idles between requests, and would close it under
//! an agent that is only thinking.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::framing::Framing;

/// A client that has begun a request head and not finished it by then is
/// dropped.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Enough of a header line for its name and any valid `Content-Length`.
const LINE: usize = 40;

/// Where the scan is in the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    /// A body, followed in the framing the forwarder uses too.
    Body(Framing),
    /// After a `CONNECT`, or framing too broken for hyper to go on with.
    Done,
}

pub struct HeadGuard<T> {
    inner: T,
    phase: Phase,
    line: [u8; LINE],
    line_len: usize,
    request_line: bool,
    connect: bool,
    length: Option<u64>,
    saw_encoding: bool,
    pub flag: Arc<AtomicBool>,
    /// Set while a head is open; allocated at the first one.
    deadline: Option<Pin<Box<Sleep>>>,
    timing: bool,
}

impl<T> HeadGuard<T> {
    pub fn new(inner: T) -> HeadGuard<T> {
        HeadGuard::with_flag(inner, Arc::new(AtomicBool::new(false)))
    }

    /// Raises `flag` on a head with two framings.
    pub fn with_flag(inner: T, flag: Arc<AtomicBool>) -> HeadGuard<T> {
        HeadGuard {
            inner,
            phase: Phase::Head,
            line: [0; LINE],
            line_len: 0,
            request_line: true,
            connect: false,
            length: None,
            saw_encoding: false,
            flag,
            deadline: None,
            timing: false,
        }
    }

    /// A head has begun and not yet ended.
    fn head_open(&self) -> bool {
        self.phase == Phase::Head && (self.line_len > 0 || !self.request_line)
    }

    /// Starts the deadline when a head begins, and stops it when it ends.
    fn time_head(&mut self, cx: &mut Context<'_>) {
        let open = self.head_open();
        if open && !self.timing {
            let at = Instant::now() + HEAD_TIMEOUT;
            let deadline = match &mut self.deadline {
                Some(deadline) => {
                    deadline.as_mut().reset(at);
                    deadline
                }
                None => self.deadline.insert(Box::pin(tokio::time::sleep_until(at))),
            };
            // Polled now so that it wakes this connection when it passes.
            let _ = deadline.as_mut().poll(cx);
        }
        self.timing = open;
    }

    fn scan(&mut self, mut bytes: &[u8]) {
        while let Some((&b, rest)) = bytes.split_first() {
            match &mut self.phase {
                Phase::Done => return,
                Phase::Body(framing) => {
                    let Ok((taken, whole)) = framing.advance(bytes) else {
                        self.phase = Phase::Done;
                        return;
                    };
                    if whole {
                        self.phase = Phase::Head;
                    }
                    bytes = &bytes[taken..];
                    continue;
                }
                Phase::Head => self.scan_line_byte(b),
            }
            bytes = rest;
        }
    }

    fn scan_line_byte(&mut self, b: u8) {
        if b != b'\n' {
            if self.line_len < LINE {
                self.line[self.line_len] = b.to_ascii_lowercase();
            }
            self.line_len = self.line_len.saturating_add(1);
            return;
        }
        let line = &self.line[..self.line_len.min(LINE)];
        let blank = self.line_len == 0 || line == b"\r";
        self.line_len = 0;
        if blank {
            // Blank lines before a request line are allowed and ignored.
            if !self.request_line {
                self.end_head();
            }
        } else if self.request_line {
            self.request_line = false;
            self.connect = line.starts_with(b"connect ");
        } else if let Some(value) = line.strip_prefix(b"content-length:") {
            self.length = super::content_length(value).or(Some(u64::MAX));
        } else if line.starts_with(b"transfer-encoding:") {
            self.saw_encoding = true;
        }
    }

    fn end_head(&mut self) {
        if self.length.is_some() && self.saw_encoding {
            self.flag.store(true, Ordering::Release);
        }
        self.phase = if self.connect {
            Phase::Done
        } else if self.saw_encoding {
            Phase::Body(Framing::chunked())
        } else {
            match self.length {
                None | Some(0) => Phase::Head,
                // Too long to have been read whole: hyper refuses it.
                Some(u64::MAX) => Phase::Done,
                Some(n) => Phase::Body(Framing::Length(n)),
            }
        };
        self.request_line = true;
        self.connect = false;
        self.length = None;
        self.saw_encoding = false;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let guard = self.get_mut();
        if guard.timing
            && let Some(deadline) = &mut guard.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request head was not sent in time",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut guard.inner).poll_read(cx, buf);
        if polled.is_ready() {
            guard.scan(&buf.filled()[before..]);
            guard.time_head(cx);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(chunks: &[&[u8]]) -> bool {
        let mut guard = HeadGuard::new(());
        for chunk in chunks {
            guard.scan(chunk);
        }
        guard.flag.load(Ordering::Acquire)
    }

    #[test]
    fn both_framings_in_one_head_are_flagged_even_across_reads() {
        assert!(flagged(&[
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ]));
        assert!(flagged(&[
            b"POST / HTTP/1.1\r\ntransfer-enc",
            b"oding: chunked\r\nCONTENT-LENGTH: 4\r",
            b"\n\r\n"
        ]));
    }

    #[test]
    fn one_framing_or_separate_requests_are_not() {
        assert!(!flagged(&[
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"
        ]));
        assert!(!flagged(&[b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]));
    }

    /// A body that reads like a conflicting head (an uploaded HTTP
    /// transcript, say) is skipped by its framing, in any split.
    #[test]
    fn header_lines_inside_bodies_are_not_heads() {
        let inner = b"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        let fixed = [
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", inner.len()).into_bytes(),
            inner.to_vec(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ]
        .concat();
        let chunked = [
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            format!("{:x};ext=1\r\n", inner.len()).into_bytes(),
            inner.to_vec(),
            b"\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        ]
        .concat();
        for stream in [fixed, chunked] {
            assert!(!flagged(&[&stream]));
            for split in 1..stream.len() {
                let (a, b) = stream.split_at(split);
                assert!(!flagged(&[a, b]), "split at {split}");
            }
        }
    }

    #[test]
    fn a_tunnel_is_not_scanned() {
        assert!(!flagged(&[
            b"CONNECT api.example.com:80 HTTP/1.1\r\nHost: api.example.com:80\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }

    #[test]
    fn a_conflicting_head_after_a_body_is_still_flagged() {
        assert!(flagged(&[
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n"
        ]));
        assert!(flagged(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ]));
    }
}
