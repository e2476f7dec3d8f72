//! Reading without a buffer per connection, and the forwarder's own answers.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::ApiError;

/// The most one read of a waiting connection takes.
const SCRATCH_BYTES: usize = 64 * 1024;
/// A relayed body gathers up to this much of what has arrived before it
/// goes on: fewer, fuller writes cost less than many small ones.
const GATHER_BYTES: usize = 256 * 1024;
/// A body read with less room than this left grows the buffer first.
const MIN_ROOM: usize = 16 * 1024;
/// Buffers a thread keeps for its next exchanges, and the largest it keeps.
const SPARE_BUFFERS: usize = 8;
const SPARE_BYTES: usize = 8 * 1024;
/// Body buffers a thread keeps: memory the allocator would hand back to the
/// system and fault in again for the next body, at every request.
const SPARE_BODIES: usize = 4;
const SPARE_BODY_BYTES: std::ops::RangeInclusive<usize> = GATHER_BYTES..=2 * GATHER_BYTES;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SPARE_BODY: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `bytes`, reused when one is spare.
pub fn buffer(bytes: usize) -> Vec<u8> {
    let mut buf = SPARE.with_borrow_mut(Vec::pop).unwrap_or_default();
    buf.reserve(bytes);
    buf
}

/// Keeps a buffer that is done with for the next exchange on this thread.
pub fn recycle(mut buf: Vec<u8>) {
    let (spares, most) = match buf.capacity() {
        1..=SPARE_BYTES => (&SPARE, SPARE_BUFFERS),
        bytes if SPARE_BODY_BYTES.contains(&bytes) => (&SPARE_BODY, SPARE_BODIES),
        _ => return,
    };
    buf.clear();
    spares.with_borrow_mut(|spare| {
        if spare.len() < most {
            spare.push(buf);
        }
    });
}

/// Gives `buf` room for a body read: a spare body buffer when it is small.
fn grow(buf: &mut Vec<u8>) {
    if buf.len() + MIN_ROOM <= GATHER_BYTES
        && let Some(mut body) = SPARE_BODY.with_borrow_mut(Vec::pop)
    {
        body.extend_from_slice(buf);
        recycle(std::mem::replace(buf, body));
        return;
    }
    buf.reserve(GATHER_BYTES.saturating_sub(buf.len()).max(MIN_ROOM));
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
    if buf.capacity() - buf.len() < MIN_ROOM {
        grow(buf);
    }
    stream.read_buf(buf).await
}

/// Appends what `stream` has to `buf`, read straight into its spare room,
/// which grows in small steps: for heads, which are small, and whose body
/// [`read_body`] goes on with.
pub async fn read_small<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    if buf.capacity() == 0 {
        *buf = buffer(SPARE_BYTES);
    } else if buf.capacity() == buf.len() {
        buf.reserve(SPARE_BYTES);
    }
    stream.read_buf(buf).await
}

/// Appends to `buf` what `stream` already has, without waiting, until it
/// holds [`GATHER_BYTES`]. The end of the stream stops it quietly: the next
/// read sees the end again.
pub fn read_arrived<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    // A no-op waker: the caller waits on this stream later with its own.
    let mut cx = Context::from_waker(Waker::noop());
    while buf.len() < GATHER_BYTES {
        // Grown only once full: most answers have all arrived with the head.
        if buf.capacity() == buf.len() {
            grow(buf);
        }
        match pin!(stream.read_buf(buf)).poll(&mut cx) {
            Poll::Ready(Ok(0)) | Poll::Pending => return Ok(()),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `data` and pushes it out (TLS holds records until flushed).
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, data: &[u8]) -> io::Result<()> {
    stream.write_all(data).await?;
    stream.flush().await
}

/// Writes `head` then `body` as [`send`] would, in one write where the
/// stream takes vectored writes, and without copying them together.
pub async fn send_pair<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut head: &[u8],
    mut body: &[u8],
) -> io::Result<()> {
    while !head.is_empty() {
        let parts = [IoSlice::new(head), IoSlice::new(body)];
        let n = stream.write_vectored(&parts).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let into_body = n.saturating_sub(head.len());
        head = &head[n.min(head.len())..];
        body = &body[into_body..];
    }
    send(stream, body).await
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
