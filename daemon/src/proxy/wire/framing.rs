//! Where an HTTP/1.1 body ends, read from its raw bytes. The forwarder
//! passes a body on exactly as it came, so it only needs to know where the
//! next message begins; a body it cannot frame ends the connection.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// A response that ends when the upstream closes.
    UntilClose,
}

/// Where a chunked body's scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size {
        value: u64,
        digits: u8,
    },
    /// Whitespace after the size, which must lead to `;`.
    SizeBws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    LineStart,
    /// In a trailer field's name: its first bytes, and how many there were.
    Name(TrailerName),
    Line,
    LineLf,
    EndLf,
    Done,
}

/// The beginning of a trailer field's name: long enough for every reserved
/// name, and for the `proxy-` prefix of longer ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailerName {
    first: [u8; TrailerName::KEPT],
    /// Saturates past `KEPT`: all that matters then is that it is longer.
    len: u8,
}

impl TrailerName {
    const KEPT: usize = 20;

    fn new(byte: u8) -> TrailerName {
        let mut first = [0; TrailerName::KEPT];
        first[0] = byte;
        TrailerName { first, len: 1 }
    }

    fn push(mut self, byte: u8) -> TrailerName {
        if let Some(slot) = self.first.get_mut(usize::from(self.len)) {
            *slot = byte;
        }
        self.len = self.len.saturating_add(1);
        self
    }

    /// Whether the field may not be a trailer. Framing fields there would
    /// reframe the message for an upstream that reads trailers as headers.
    fn is_reserved(&self) -> bool {
        let len = usize::from(self.len);
        let name = std::str::from_utf8(&self.first[..len.min(TrailerName::KEPT)]).unwrap_or("");
        if len > TrailerName::KEPT {
            // Longer than every reserved name; only the prefix can matter.
            return name
                .get(..6)
                .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"));
        }
        crate::http_util::is_reserved_field(name)
    }
}

/// A stream whose data bytes can be told from its framing, for the scrub.
pub trait Frames {
    /// Takes bytes from the front of `data`, telling `on_data` which are
    /// data: how many were taken, and whether the message is now whole.
    fn advance_data(
        &mut self,
        data: &[u8],
        on_data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<(usize, bool), Malformed>;

    /// Whether the stream may end when its connection closes.
    fn ends_with_close(&self) -> bool;
}

impl Frames for Framing {
    fn advance_data(
        &mut self,
        data: &[u8],
        on_data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<(usize, bool), Malformed> {
        Framing::advance_data(self, data, on_data)
    }

    fn ends_with_close(&self) -> bool {
        *self == Framing::UntilClose
    }
}

/// A body whose framing is broken: neither side can be trusted after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// Hex digits in a chunk size; more would overflow, and no body is that big.
const MAX_SIZE_DIGITS: u8 = 15;

impl Framing {
    pub fn chunked() -> Framing {
        Framing::Chunked(Chunk::Size {
            value: 0,
            digits: 0,
        })
    }

    /// Takes this body's bytes from the front of `data`: how many are its,
    /// and whether it is now whole.
    pub fn advance(&mut self, data: &[u8]) -> Result<(usize, bool), Malformed> {
        self.advance_data(data, |_| {})
    }

    /// [`Framing::advance`], telling `on_data` which of the bytes taken are
    /// the body's data rather than chunk framing: the scrub matches those only.
    pub fn advance_data(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<(usize, bool), Malformed> {
        let (take, whole) = match self {
            Framing::Empty => return Ok((0, true)),
            Framing::Length(left) => {
                let take = (*left).min(data.len() as u64);
                *left -= take;
                (take as usize, *left == 0)
            }
            Framing::Chunked(chunk) => return chunk.advance(data, on_data),
            Framing::UntilClose => (data.len(), false),
        };
        if take > 0 {
            on_data(0..take);
        }
        Ok((take, whole))
    }
}

impl Chunk {
    fn advance(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<(usize, bool), Malformed> {
        let mut i = 0;
        while i < data.len() && *self != Chunk::Done {
            if let Chunk::Data(left) = self {
                let take = (*left).min((data.len() - i) as u64);
                *left -= take;
                if take > 0 {
                    on_data(i..i + take as usize);
                }
                i += take as usize;
                if *left == 0 {
                    *self = Chunk::DataCr;
                }
                continue;
            }
            *self = self.step(data[i])?;
            i += 1;
        }
        Ok((i, *self == Chunk::Done))
    }

    fn step(self, byte: u8) -> Result<Chunk, Malformed> {
        let next = match (self, byte) {
            (Chunk::Size { value, digits }, _) if byte.is_ascii_hexdigit() => {
                if digits == MAX_SIZE_DIGITS {
                    return Err(Malformed);
                }
                let digit = (byte as char).to_digit(16).ok_or(Malformed)?;
                Chunk::Size {
                    value: value << 4 | u64::from(digit),
                    digits: digits + 1,
                }
            }
            // Whitespace after the size may only lead to an extension
            // (RFC 9112's BWS before `;`), never end the line.
            (Chunk::Size { value, digits }, b' ' | b'\t') if digits > 0 => Chunk::SizeBws(value),
            (Chunk::SizeBws(value), b' ' | b'\t') => Chunk::SizeBws(value),
            (Chunk::Size { value, digits }, b';') if digits > 0 => Chunk::Extension(value),
            (Chunk::SizeBws(value), b';') => Chunk::Extension(value),
            (Chunk::Size { value, digits }, b'\r') if digits > 0 => Chunk::SizeLf(value),
            (Chunk::Extension(value), b'\r') => Chunk::SizeLf(value),
            (Chunk::Extension(_), b'\n') => return Err(Malformed),
            (Chunk::Extension(value), _) => Chunk::Extension(value),
            (Chunk::SizeLf(0), b'\n') => Chunk::LineStart,
            (Chunk::SizeLf(value), b'\n') => Chunk::Data(value),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Size {
                value: 0,
                digits: 0,
            },
            (Chunk::LineStart, b'\r') => Chunk::EndLf,
            (Chunk::LineStart | Chunk::Name(_) | Chunk::Line, b'\n') => return Err(Malformed),
            (Chunk::Name(_), b'\r') => return Err(Malformed),
            (Chunk::Name(name), b':') if name.is_reserved() => return Err(Malformed),
            (Chunk::Name(_), b':') => Chunk::Line,
            (Chunk::Name(name), _) => Chunk::Name(name.push(byte)),
            (Chunk::LineStart, _) => Chunk::Name(TrailerName::new(byte)),
            (Chunk::Line, b'\r') => Chunk::LineLf,
            (Chunk::Line, _) => Chunk::Line,
            (Chunk::LineLf, b'\n') => Chunk::LineStart,
            (Chunk::EndLf, b'\n') => Chunk::Done,
            _ => return Err(Malformed),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(framing: &mut Framing, data: &[u8]) -> Result<(usize, bool), Malformed> {
        framing.advance(data)
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let mut f = Framing::Length(5);
        assert_eq!(feed(&mut f, b"abc"), Ok((3, false)));
        assert_eq!(feed(&mut f, b"deGET /"), Ok((2, true)));
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1";
        let mut f = Framing::chunked();
        let (taken, done) = feed(&mut f, body).unwrap();
        assert!(done);
        assert_eq!(&body[taken..], b"GET / HTTP/1.1");
    }

    #[test]
    fn a_chunked_body_can_arrive_a_byte_at_a_time() {
        let body = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut f = Framing::chunked();
        for (i, byte) in body.iter().enumerate() {
            let (taken, done) = feed(&mut f, std::slice::from_ref(byte)).unwrap();
            assert_eq!(taken, 1);
            assert_eq!(done, i == body.len() - 1);
        }
    }

    #[test]
    fn whitespace_may_only_lead_to_an_extension() {
        let body = b"5 ;ext\r\nhello\r\n0\r\n\r\n";
        let mut f = Framing::chunked();
        assert_eq!(feed(&mut f, body), Ok((body.len(), true)));
    }

    #[test]
    fn header_like_lines_inside_chunks_are_data() {
        let data = b"Transfer-Encoding: chunked\r\n\r\n";
        let body = [
            format!("{:x}\r\n", data.len()).as_bytes(),
            data,
            b"\r\n0\r\n\r\n",
        ]
        .concat();
        let mut f = Framing::chunked();
        assert_eq!(feed(&mut f, &body), Ok((body.len(), true)));
    }

    #[test]
    fn only_data_bytes_are_reported_as_data() {
        let body = b"4;x=1\r\nWiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\n";
        let mut f = Framing::chunked();
        let mut data = Vec::new();
        let (taken, done) = f
            .advance_data(body, |r| data.extend_from_slice(&body[r]))
            .unwrap();
        assert!(done && taken == body.len());
        assert_eq!(data, b"Wikipedia");
    }

    #[test]
    fn framing_fields_in_trailers_are_refused_and_others_pass() {
        for trailer in [
            "Content-Length: 5",
            "transfer-encoding: chunked",
            "Host: elsewhere",
            "Proxy-Authorization: Basic x",
            "proxy-a-name-longer-than-twenty-bytes: 1",
            "Connection: close",
        ] {
            let body = format!("1\r\na\r\n0\r\n{trailer}\r\n\r\n");
            let mut f = Framing::chunked();
            assert_eq!(feed(&mut f, body.as_bytes()), Err(Malformed), "{trailer}");
        }
        for trailer in [
            "Server-Timing: db;dur=53",
            "a-name-much-longer-than-twenty: 1",
        ] {
            let body = format!("1\r\na\r\n0\r\n{trailer}\r\n\r\n");
            let mut f = Framing::chunked();
            assert_eq!(feed(&mut f, body.as_bytes()), Ok((body.len(), true)));
        }
    }

    #[test]
    fn broken_chunking_is_refused() {
        for body in [
            &b"x\r\n"[..],
            b"\r\n",
            b"4\nWiki",
            b"4\r\nWikiX",
            b"ffffffffffffffff\r\n",
            b"0\r\nbad\ntrailer",
            b"5 \r\nhello\r\n",
            b"5\t\r\nhello\r\n",
            b"+5\r\nhello\r\n",
        ] {
            let mut f = Framing::chunked();
            assert_eq!(feed(&mut f, body), Err(Malformed), "{body:?}");
        }
    }
}
