//! Batches on the wire: a stream of frames, each a 4-byte big-endian length,
//! a JSON head of that length, then the head's `size` bytes of content (for
//! files). One request carries many small files; a large file streams. A
//! head is never read past 64 KiB, whatever its length says.

use std::path::Path;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::sync::replica::beneath;
use crate::sync::replica::fsops::blocking;

/// Heads are small JSON; anything larger is a broken or hostile stream.
const MAX_HEAD: usize = 64 * 1024;
const CHUNK: usize = 1024 * 1024;

pub struct FrameReader {
    body: Incoming,
    buf: BytesMut,
    done: bool,
}

impl FrameReader {
    pub fn new(body: Incoming) -> FrameReader {
        FrameReader {
            body,
            buf: BytesMut::new(),
            done: false,
        }
    }

    async fn fill(&mut self, want: usize) -> std::io::Result<bool> {
        while self.buf.len() < want {
            if self.done {
                return Ok(false);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => self.done = true,
            }
        }
        Ok(true)
    }

    /// The next head, or `None` at a clean end of stream.
    pub async fn head<T: DeserializeOwned>(&mut self) -> std::io::Result<Option<T>> {
        if !self.fill(4).await? {
            return if self.buf.is_empty() {
                Ok(None)
            } else {
                Err(truncated())
            };
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a frame head is too large",
            ));
        }
        if !self.fill(4 + len).await? {
            return Err(truncated());
        }
        self.buf.advance(4);
        let head = self.buf.split_to(len);
        serde_json::from_slice(&head)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
    }

    /// The next piece of content, at most `max` bytes (and at least one).
    pub async fn piece(&mut self, max: u64) -> std::io::Result<Bytes> {
        if self.buf.is_empty() && !self.fill(1).await? {
            return Err(truncated());
        }
        let n = (self.buf.len() as u64).min(max) as usize;
        Ok(self.buf.split_to(n).freeze())
    }

    /// Streams `size` content bytes into a file being received. Write errors
    /// are returned after the bytes are consumed, so the stream stays in step.
    pub async fn receive(
        &mut self,
        mut size: u64,
        file: &mut crate::sync::replica::fsops::Incoming,
    ) -> std::io::Result<std::io::Result<()>> {
        let mut failed = Ok(());
        while size > 0 {
            let piece = self.piece(size).await?;
            size -= piece.len() as u64;
            if failed.is_ok() {
                failed = file.write(&piece).await;
            }
        }
        Ok(failed)
    }

    /// Reads and drops `size` content bytes.
    pub async fn skip(&mut self, mut size: u64) -> std::io::Result<()> {
        while size > 0 {
            size -= self.piece(size).await?.len() as u64;
        }
        Ok(())
    }
}

fn truncated() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the batch stream ended mid-frame",
    )
}

/// Sends frames into a channel that feeds a [`crate::http_util::ChannelBody`].
pub struct FrameWriter {
    tx: mpsc::Sender<Bytes>,
}

impl FrameWriter {
    pub fn new(tx: mpsc::Sender<Bytes>) -> FrameWriter {
        FrameWriter { tx }
    }

    pub async fn head<T: Serialize>(&self, head: &T) -> std::io::Result<()> {
        let json = serde_json::to_vec(head).expect("heads serialize");
        let mut frame = Vec::with_capacity(4 + json.len());
        frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
        frame.extend_from_slice(&json);
        self.send(Bytes::from(frame)).await
    }

    /// Streams exactly `size` bytes of the file. If it shrank or vanished
    /// while being sent, the rest is zeros: the stream stays in step, and only
    /// this file fails its hash check at the other end.
    pub async fn file(&self, root: &Path, relative: &Path, size: u64) -> std::io::Result<()> {
        use std::io::Read;
        let mut left = size;
        if let Ok(mut file) = blocking(|| beneath::open_file(root, relative)) {
            while left > 0 {
                let mut buf = vec![0u8; (left as usize).min(CHUNK)];
                let n = blocking(|| file.read(&mut buf)).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                left -= n as u64;
                self.send(Bytes::from(buf)).await?;
            }
        }
        if left > 0 {
            tracing::debug!(path = %relative.display(), "a file shrank while being sent; padding it");
        }
        while left > 0 {
            let n = (left as usize).min(CHUNK);
            left -= n as u64;
            self.send(Bytes::from(vec![0u8; n])).await?;
        }
        Ok(())
    }

    async fn send(&self, bytes: Bytes) -> std::io::Result<()> {
        self.tx.send(bytes).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the other side stopped reading",
            )
        })
    }
}
