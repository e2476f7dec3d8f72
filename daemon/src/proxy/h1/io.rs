//! Reading without a buffer per connection, and the forwarder's own answers.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::ApiError;

/// The most one read takes: a relayed body moves in steps of this size.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Buffers a thread keeps for its next exchanges, and the largest it keeps.
const SPARE_BUFFERS: usize = 8;
const SPARE_BYTES: usize = 8 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `bytes`, reused when one is spare.
pub fn buffer(bytes: usize) -> Vec<u8> {
    let mut buf = SPARE.with_borrow_mut(Vec::pop).unwrap_or_default();
    buf.reserve(bytes);
    buf
}

/// Keeps a buffer that is done with for the next exchange on this thread.
pub fn recycle(mut buf: Vec<u8>) {
    if (1..=SPARE_BYTES).contains(&buf.capacity()) {
        buf.clear();
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < SPARE_BUFFERS {
                spare.push(buf);
            }
        });
    }
}

/// Appends what `stream` has to `buf`; 0 is the end of the stream. Reads go
/// through a per-thread scratch buffer, so a connection waiting for its next
/// request holds no buffer of its own.
pub async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut read = ReadBuf::new(scratch);
            ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
            if buf.capacity() == 0 {
                *buf = buffer(read.filled().len());
            }
            buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        })
    })
    .await
}

/// Appends what `stream` has to `buf`, read straight into it: a body relay
/// keeps a buffer of its own while it runs, which saves a copy per read.
pub async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    buf.reserve(SCRATCH_BYTES);
    stream.read_buf(buf).await
}

/// Writes all of `data` and pushes it out (TLS holds records until flushed).
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, data: &[u8]) -> io::Result<()> {
    stream.write_all(data).await?;
    stream.flush().await
}

/// An error answer as HTTP/1.1 bytes; the connection closes after it.
pub fn error_response(e: &ApiError) -> Vec<u8> {
    let body = serde_json::to_vec(&e.body()).expect("ErrorBody serializes");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        e.status.as_u16(),
        e.status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}
