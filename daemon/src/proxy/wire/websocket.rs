//! Where the payload bytes are in a WebSocket stream from the upstream, so
//! that the scrub reads payloads only, never frame headers (RFC 6455 §5.2).
//! The scrub masks in place, keeping every length, so frames pass on with
//! their headers as they came.

use std::ops::Range;

use super::framing::{Frames, Malformed};

/// A frame header is at most 2 + 8 bytes (a server never masks its frames).
const MAX_HEADER: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsFrames {
    /// In a frame header: its first bytes.
    Header {
        bytes: [u8; MAX_HEADER],
        have: usize,
    },
    /// This many payload bytes are left in the frame.
    Payload(u64),
}

impl Default for WsFrames {
    fn default() -> WsFrames {
        WsFrames::Header {
            bytes: [0; MAX_HEADER],
            have: 0,
        }
    }
}

impl WsFrames {
    /// A header's length, once its first two bytes are in, and the
    /// payload's length once it is whole. A masked or compressed frame
    /// from the upstream is refused: the scrub could not read it.
    fn header(bytes: &[u8]) -> Result<Option<u64>, Malformed> {
        let [first, second, ..] = *bytes else {
            return Ok(None);
        };
        const RSV: u8 = 0x70;
        const MASKED: u8 = 0x80;
        if first & RSV != 0 || second & MASKED != 0 {
            return Err(Malformed);
        }
        let extra = match second & 0x7f {
            126 => 2,
            127 => 8,
            len => return Ok(Some(u64::from(len))),
        };
        let Some(length) = bytes.get(2..2 + extra) else {
            return Ok(None);
        };
        Ok(Some(length.iter().fold(0, |n, &b| n << 8 | u64::from(b))))
    }
}

impl Frames for WsFrames {
    fn advance_data(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<(usize, bool), Malformed> {
        let mut i = 0;
        while i < data.len() {
            match self {
                WsFrames::Header { bytes, have } => {
                    bytes[*have] = data[i];
                    *have += 1;
                    i += 1;
                    if let Some(len) = WsFrames::header(&bytes[..*have])? {
                        *self = WsFrames::Payload(len);
                    } else if *have == MAX_HEADER {
                        return Err(Malformed);
                    }
                }
                WsFrames::Payload(0) => *self = WsFrames::default(),
                WsFrames::Payload(left) => {
                    let take = (*left).min((data.len() - i) as u64) as usize;
                    *left -= take as u64;
                    on_data(i..i + take);
                    i += take;
                }
            }
        }
        if *self == WsFrames::Payload(0) {
            *self = WsFrames::default();
        }
        Ok((data.len(), false))
    }

    fn ends_with_close(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(stream: &[u8], cut: usize) -> Result<Vec<u8>, Malformed> {
        let mut frames = WsFrames::default();
        let mut out = Vec::new();
        for part in [&stream[..cut], &stream[cut..]] {
            frames.advance_data(part, |r| out.extend_from_slice(&part[r]))?;
        }
        Ok(out)
    }

    #[test]
    fn payloads_are_found_across_frames_and_any_cut() {
        let mut stream = vec![0x81, 5];
        stream.extend_from_slice(b"hello");
        stream.extend_from_slice(&[0x82, 126, 0, 3]);
        stream.extend_from_slice(b"abc");
        stream.extend_from_slice(&[0x89, 0]);
        stream.extend_from_slice(&[0x01, 127, 0, 0, 0, 0, 0, 0, 0, 2]);
        stream.extend_from_slice(b"xy");
        for cut in 0..=stream.len() {
            assert_eq!(
                payloads(&stream, cut).unwrap(),
                b"helloabcxy",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn masked_or_compressed_frames_from_the_upstream_are_refused() {
        assert_eq!(payloads(&[0x81, 0x85, 1, 2, 3, 4, 0], 0), Err(Malformed));
        assert_eq!(payloads(&[0xc1, 1, b'x'], 0), Err(Malformed));
    }
}
