//! The forwarder's bodies under the scrub: the response masked in place in
//! its own framing, the upload scanned for other credentials' secrets. Only
//! the body's data bytes are matched, never chunk framing, and a secret
//! split across chunks is still found. Bytes that could begin a secret wait
//! unsent, with the framing after them; everything else goes as it came.

use std::ops::Range;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::io::{read_arrived, read_body, send};
use crate::proxy::scrub::{MASK, Stream};
use crate::proxy::wire::framing::{Frames, Malformed};
use crate::registry::LiveCred;

/// What the scrub does with one body.
pub enum Mode {
    /// Masks the secret injected into the request, in the response.
    Mask(Arc<LiveCred>),
    /// Stops an upload carrying the secret of a credential not bound to its host.
    Detect(Vec<Arc<LiveCred>>),
}

pub enum Stop {
    Malformed,
    /// The upload carried the secret of this credential.
    Leaked(Arc<LiveCred>),
}

impl From<Malformed> for Stop {
    fn from(_: Malformed) -> Stop {
        Stop::Malformed
    }
}

/// One body's scan on the wire.
pub struct Raw {
    scan: Scan,
    /// Raw bytes at the front of the buffer already framed but not sent.
    framed: usize,
    /// Bytes masked so far.
    pub masked: u64,
}

/// The matching half of [`Raw`]: what a data range of the buffer is
/// scanned with, borrowed apart from the framing state.
struct Scan {
    mode: Mode,
    stream: Stream,
    /// The raw ranges of the data bytes the stream holds back, oldest first;
    /// empty (and unallocated) in the common case where nothing waits.
    seen: Vec<Range<usize>>,
    /// Raw ranges to mask, gathered while the buffer is borrowed.
    masks: Vec<Range<usize>>,
}

impl Raw {
    pub fn new(mode: Mode) -> Raw {
        Raw {
            scan: Scan {
                mode,
                stream: Stream::default(),
                seen: Vec::new(),
                masks: Vec::new(),
            },
            framed: 0,
            masked: 0,
        }
    }

    /// Frames and scans what `buf` holds past the bytes already framed.
    /// Returns how many bytes from the front of `buf` may go now (the caller
    /// sends them, drains them and calls [`Raw::sent`]), and whether the body
    /// is whole, in which case every byte of it may go.
    pub fn take(
        &mut self,
        framing: &mut impl Frames,
        buf: &mut [u8],
    ) -> Result<(usize, bool), Stop> {
        let start = self.framed;
        let mut leaked = None;
        let (taken, whole) = {
            let text: &[u8] = buf;
            let scan = &mut self.scan;
            framing.advance_data(&text[start..], |r| {
                let r = start + r.start..start + r.end;
                if leaked.is_none() {
                    leaked = scan.scan(text, r, false);
                }
            })?
        };
        self.framed += taken;
        if let Some(cred) = leaked {
            return Err(Stop::Leaked(cred));
        }
        if whole {
            self.finish(buf)?;
            return Ok((self.framed, true));
        }
        self.apply(buf);
        let go = match self.scan.seen.first() {
            Some(first) => first.start,
            None => self.framed,
        };
        Ok((go, false))
    }

    /// The body ended with its connection: what was held may go too.
    pub fn end(&mut self, buf: &mut [u8]) -> Result<usize, Stop> {
        self.finish(buf)?;
        Ok(self.framed)
    }

    fn finish(&mut self, buf: &mut [u8]) -> Result<(), Stop> {
        if let Some(cred) = self.scan.scan(buf, 0..0, true) {
            return Err(Stop::Leaked(cred));
        }
        self.apply(buf);
        self.scan.seen.clear();
        Ok(())
    }

    fn apply(&mut self, buf: &mut [u8]) {
        for r in self.scan.masks.drain(..) {
            self.masked += r.len() as u64;
            buf[r].fill(MASK);
        }
    }

    /// `n` bytes were sent from the front of the buffer and drained from it.
    pub fn sent(&mut self, n: usize) {
        self.framed -= n;
        for r in &mut self.scan.seen {
            *r = r.start - n..r.end - n;
        }
    }
}

impl Scan {
    /// Scans the data bytes at `r` of `buf`: a match in detect mode is the
    /// credential leaked; in mask mode the raw ranges to mask go to `masks`.
    fn scan(&mut self, buf: &[u8], r: Range<usize>, last: bool) -> Option<Arc<LiveCred>> {
        let Scan {
            mode,
            stream,
            seen,
            masks,
        } = self;
        let data = &buf[r.clone()];
        match mode {
            Mode::Mask(cred) => {
                let step = stream.mask(std::slice::from_ref(cred), data, last);
                for m in step.masks() {
                    raw_ranges(seen, step.before, &r, m.clone(), |raw| masks.push(raw));
                }
            }
            Mode::Detect(creds) => {
                if let Err(hit) = stream.detect(creds, data, last) {
                    return Some(creds[hit.set].clone());
                }
            }
        }
        // Keep the raw places of exactly the bytes still held.
        let held = stream.held();
        if held == 0 {
            seen.clear();
            return None;
        }
        if !r.is_empty() {
            seen.push(r);
        }
        let mut keep = held;
        let mut from = seen.len();
        while from > 0 && keep > 0 {
            from -= 1;
            let len = seen[from].len();
            if len >= keep {
                seen[from].start = seen[from].end - keep;
                keep = 0;
            } else {
                keep -= len;
            }
        }
        seen.drain(..from);
        None
    }
}

/// Maps the stream's text range `m` (held bytes, then the data at `r`) to
/// raw ranges of the buffer.
fn raw_ranges(
    seen: &[Range<usize>],
    before: usize,
    r: &Range<usize>,
    m: Range<usize>,
    mut out: impl FnMut(Range<usize>),
) {
    // The held bytes are the last `before` bytes of `seen`.
    let mut end = before;
    for s in seen.iter().rev() {
        if end == 0 {
            break;
        }
        let len = s.len().min(end);
        let text = end - len..end;
        let (a, b) = (m.start.max(text.start), m.end.min(text.end));
        if a < b {
            let base = s.end - len;
            out(base + (a - text.start)..base + (b - text.start));
        }
        end -= len;
    }
    let (a, b) = (m.start.max(before), m.end.min(before + r.len()));
    if a < b {
        out(r.start + (a - before)..r.start + (b - before));
    }
}

/// What stopped a scanned body.
pub enum Relayed {
    Read,
    Write(std::io::Error),
    Stop(Stop),
}

/// Moves one body from `from` to `to` under the scan, starting with what
/// `buf` holds, and leaves in `buf` whatever follows it.
pub async fn relay<R, W>(
    from: &mut R,
    to: &mut W,
    buf: &mut Vec<u8>,
    framing: &mut impl Frames,
    raw: &mut Raw,
) -> Result<u64, Relayed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut moved = 0;
    loop {
        let (go, whole) = if buf.len() == raw.framed {
            let read = read_body(from, buf).await.map_err(|_| Relayed::Read)?;
            if read == 0 {
                if !framing.ends_with_close() {
                    return Err(Relayed::Read);
                }
                (raw.end(buf).map_err(Relayed::Stop)?, true)
            } else {
                read_arrived(from, buf).map_err(|_| Relayed::Read)?;
                raw.take(framing, buf).map_err(Relayed::Stop)?
            }
        } else {
            raw.take(framing, buf).map_err(Relayed::Stop)?
        };
        if go > 0 {
            send(to, &buf[..go]).await.map_err(Relayed::Write)?;
        }
        buf.drain(..go);
        raw.sent(go);
        moved += go as u64;
        if whole {
            return Ok(moved);
        }
    }
}
