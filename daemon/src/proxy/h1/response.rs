//! Reads an upstream response head and writes the agent's: the same status
//! and fields, without hop-by-hop ones, and the body's framing as it came.

use std::io::Write;
use std::mem::MaybeUninit;

use crate::proxy::wire::framing::{Framing, Malformed};
use crate::proxy::wire::{MAX_FIELDS, MAX_HEADER_BYTES, content_length, is_hop_by_hop, push_field};

pub struct ResponseHead {
    /// Bytes of the upstream's head.
    pub len: usize,
    pub status: u16,
    /// The head for the agent.
    pub head: Vec<u8>,
    pub body: Framing,
    /// A 1xx: the real response follows.
    pub interim: bool,
    /// The upstream connection may carry another request after this one.
    pub reusable: bool,
    /// The agent's connection closes after this response.
    pub close: bool,
    /// The body is in a content or transfer coding other than identity and
    /// chunked, which the scrub could not read.
    pub encoded: bool,
}

/// `Ok(None)` until the head is whole. `head_only` is a HEAD request, and
/// `close` the agent asking to close.
pub fn parse(buf: &[u8], head_only: bool, close: bool) -> Result<Option<ResponseHead>, Malformed> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut res = httparse::Response::new(&mut []);
    let parser = httparse::ParserConfig::default();
    let len = match parser.parse_response_with_uninit_headers(&mut res, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEADER_BYTES => return Ok(None),
        _ => return Err(Malformed),
    };
    let (Some(version), Some(status)) = (res.version, res.code) else {
        return Err(Malformed);
    };
    // The forwarder never asks for an upgrade.
    if status == 101 {
        return Err(Malformed);
    }
    let mut length: Option<u64> = None;
    let mut encoding: Option<&[u8]> = None;
    let mut upstream_closes = version == 0;
    let mut encoded = false;
    let mut named: Vec<&str> = Vec::new();
    for field in res.headers.iter() {
        let is = |wanted: &str| field.name.eq_ignore_ascii_case(wanted);
        if is("content-length") {
            let value = content_length(field.value).ok_or(Malformed)?;
            if length.is_some_and(|seen| seen != value) {
                return Err(Malformed);
            }
            length = Some(value);
        } else if is("transfer-encoding") {
            encoding = Some(field.value);
            encoded |= field.value.split(|&b| b == b',').any(|coding| {
                let coding = coding.trim_ascii();
                !coding.eq_ignore_ascii_case(b"chunked")
                    && !coding.eq_ignore_ascii_case(b"identity")
            });
        } else if is("content-encoding") {
            encoded |= !field.value.trim_ascii().eq_ignore_ascii_case(b"identity");
        } else if is("connection") {
            let value = std::str::from_utf8(field.value).map_err(|_| Malformed)?;
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    upstream_closes = true;
                } else if !token.is_empty() && !is_hop_by_hop(token) {
                    named.push(token);
                }
            }
        }
    }
    let interim = (100..200).contains(&status);
    let body = if interim || head_only || status == 204 || status == 304 {
        Framing::Empty
    } else if let Some(encoding) = encoding {
        let last = encoding.rsplit(|&b| b == b',').next().unwrap_or_default();
        if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::chunked()
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(length) => Framing::Length(length),
            None => Framing::UntilClose,
        }
    };
    let close = close || body == Framing::UntilClose;

    // Room for the body bytes that came with the head too: they follow it out.
    let mut head = super::io::buffer(buf.len() + 32);
    let _ = write!(head, "HTTP/1.1 {status} ");
    head.extend_from_slice(res.reason.unwrap_or_default().as_bytes());
    head.extend_from_slice(b"\r\n");
    for field in res.headers.iter() {
        let name = field.name;
        let hop = is_hop_by_hop(name) || named.iter().any(|n| name.eq_ignore_ascii_case(n));
        // With both, the encoding frames the body; the length must not reach the agent.
        let stale_length = encoding.is_some() && name.eq_ignore_ascii_case("content-length");
        if !hop && !stale_length {
            push_field(&mut head, name.as_bytes(), field.value);
        }
    }
    if close && !interim {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        len,
        status,
        head,
        body,
        interim,
        reusable: !upstream_closes && body != Framing::UntilClose,
        close,
        encoded: encoded && body != Framing::Empty,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> ResponseHead {
        parse(raw.as_bytes(), false, false).unwrap().unwrap()
    }

    #[test]
    fn hop_by_hop_fields_go_and_framing_stays() {
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nX-Kept: yes\r\n\r\n",
        );
        let text = String::from_utf8(h.head).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n"
        );
        assert_eq!(h.body, Framing::chunked());
        assert!(h.reusable && !h.close);
    }

    #[test]
    fn a_body_without_framing_ends_at_close_and_closes_the_agent_too() {
        let h = head("HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nbody");
        assert_eq!(h.body, Framing::UntilClose);
        assert!(!h.reusable && h.close);
        assert!(
            String::from_utf8(h.head)
                .unwrap()
                .ends_with("Connection: close\r\n\r\n")
        );
    }

    #[test]
    fn bodiless_responses_and_interim_ones() {
        assert_eq!(head("HTTP/1.1 204 No Content\r\n\r\n").body, Framing::Empty);
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false)
            .unwrap()
            .unwrap();
        assert_eq!(h.body, Framing::Empty);
        assert!(head("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n").interim);
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").reusable);
    }

    #[test]
    fn conflicting_lengths_and_upgrades_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(parse(raw.as_bytes(), false, false).is_err(), "{raw}");
        }
        assert!(
            parse(b"HTTP/1.1 200 OK\r\n", false, false)
                .unwrap()
                .is_none()
        );
    }
}
