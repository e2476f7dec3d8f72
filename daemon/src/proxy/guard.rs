//! Spots request smuggling before hyper parses the request. hyper follows
//! RFC 9112 and quietly drops `Content-Length` when `Transfer-Encoding` is
//! also present, so the service never sees both; this reader watches the raw
//! header lines and raises a flag the request handler answers with 400.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFIX: usize = 18;

pub struct HeadGuard<T> {
    inner: T,
    line: [u8; PREFIX],
    line_len: usize,
    saw_length: bool,
    saw_encoding: bool,
    pub flag: Arc<AtomicBool>,
}

impl<T> HeadGuard<T> {
    pub fn new(inner: T) -> HeadGuard<T> {
        HeadGuard {
            inner,
            line: [0; PREFIX],
            line_len: 0,
            saw_length: false,
            saw_encoding: false,
            flag: Arc::new(AtomicBool::new(false)),
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = &self.line[..self.line_len.min(PREFIX)];
                if self.line_len == 0 || line == b"\r" {
                    // A blank line ends a header block.
                    if self.saw_length && self.saw_encoding {
                        self.flag.store(true, Ordering::Release);
                    }
                    self.saw_length = false;
                    self.saw_encoding = false;
                } else if line.starts_with(b"content-length:") {
                    self.saw_length = true;
                } else if line.starts_with(b"transfer-encoding:") {
                    self.saw_encoding = true;
                }
                self.line_len = 0;
            } else {
                if self.line_len < PREFIX {
                    self.line[self.line_len] = b.to_ascii_lowercase();
                }
                self.line_len = self.line_len.saturating_add(1);
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let guard = self.get_mut();
        let polled = Pin::new(&mut guard.inner).poll_read(cx, buf);
        if polled.is_ready() {
            guard.scan(&buf.filled()[before..]);
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
}
