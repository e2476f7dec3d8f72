//! Audit lines, written by hand in the shape `AuditRecord` parses. A
//! record's two lines share everything up to its URL, so that part is
//! rendered once, when the request begins; the derived serializer and the
//! strings a record would hold cost more than the rest of a proxied request.

use sidekey_api::Outcome;

/// Who made a request, and to where: the part of a record that does not
/// change between its two lines.
pub struct Opening<'a> {
    pub conn_id: &'a str,
    pub conn: &'a str,
    pub cred: Option<&'a str>,
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    /// The path, with any query: the query is left out of the record.
    pub path: &'a str,
}

/// How a request ended: the rest of its record.
pub struct Closing {
    pub status: Option<u16>,
    pub latency_ms: Option<u64>,
    pub bytes: (u64, u64),
    pub outcome: Outcome,
    /// The scrub masked an injected secret in the response.
    pub scrubbed: bool,
}

pub const STARTED: Closing = Closing {
    status: None,
    latency_ms: None,
    bytes: (0, 0),
    outcome: Outcome::Started,
    scrubbed: false,
};

/// `{"id":…,"url":"…"`: the record up to and including its URL.
pub fn head(id: u64, time_ms: u64, opening: &Opening) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(b"{\"id\":");
    push_u64(&mut out, id);
    out.extend_from_slice(b",\"time_ms\":");
    push_u64(&mut out, time_ms);
    out.extend_from_slice(b",\"conn_id\":");
    push_str(&mut out, &[opening.conn_id]);
    out.extend_from_slice(b",\"conn\":");
    push_str(&mut out, &[opening.conn]);
    out.extend_from_slice(b",\"cred\":");
    match opening.cred {
        Some(cred) => push_str(&mut out, &[cred]),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"method\":");
    push_str(&mut out, &[opening.method]);
    out.extend_from_slice(b",\"url\":");
    let path = opening.path.split(['?', '#']).next().unwrap_or("/");
    push_str(&mut out, &[opening.scheme, "://", opening.authority, path]);
    out
}

/// The rest of a line after its [`head`], newline included.
pub fn push_tail(out: &mut Vec<u8>, closing: &Closing) {
    out.extend_from_slice(b",\"status\":");
    push_optional(out, closing.status.map(u64::from));
    out.extend_from_slice(b",\"latency_ms\":");
    push_optional(out, closing.latency_ms);
    out.extend_from_slice(b",\"bytes_up\":");
    push_u64(out, closing.bytes.0);
    out.extend_from_slice(b",\"bytes_down\":");
    push_u64(out, closing.bytes.1);
    out.extend_from_slice(b",\"outcome\":");
    push_str(out, &[closing.outcome.as_str()]);
    if closing.scrubbed {
        out.extend_from_slice(b",\"scrubbed\":true");
    }
    out.extend_from_slice(b"}\n");
}

fn push_optional(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(value) => push_u64(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// One JSON string made of `parts`, escaped as JSON requires.
fn push_str(out: &mut Vec<u8>, parts: &[&str]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for part in parts {
        let bytes = part.as_bytes();
        let mut plain = 0;
        for (at, &b) in bytes.iter().enumerate() {
            if b >= 0x20 && b != b'"' && b != b'\\' {
                continue;
            }
            out.extend_from_slice(&bytes[plain..at]);
            match b {
                b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                _ => out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ]),
            }
            plain = at + 1;
        }
        out.extend_from_slice(&bytes[plain..]);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use sidekey_api::AuditRecord;

    fn line(opening: &Opening, closing: &Closing) -> Vec<u8> {
        let mut line = head(7 << 20 | 3, 7, opening);
        push_tail(&mut line, closing);
        line
    }

    #[test]
    fn lines_parse_as_the_records_they_stand_for_whatever_the_names_hold() {
        let odd = "a \"quoted\" \\ name\n\twith\u{1} control\u{7f} and ünïcode ✓";
        let opening = Opening {
            conn_id: "c_1",
            conn: odd,
            cred: Some(odd),
            method: "PATCH",
            scheme: "https",
            authority: "[::1]:8443",
            path: "/v1/\"x\"?key=secret#frag",
        };
        let closing = Closing {
            status: Some(502),
            latency_ms: Some(u64::MAX),
            bytes: (0, 12_345),
            outcome: Outcome::UpstreamError,
            scrubbed: true,
        };
        let record: AuditRecord = serde_json::from_slice(&line(&opening, &closing)).unwrap();
        assert_eq!(
            record,
            AuditRecord {
                id: 7 << 20 | 3,
                time_ms: 7,
                conn_id: "c_1".into(),
                conn: odd.into(),
                cred: Some(odd.into()),
                method: "PATCH".into(),
                url: "https://[::1]:8443/v1/\"x\"".into(),
                status: Some(502),
                latency_ms: Some(u64::MAX),
                bytes_up: 0,
                bytes_down: 12_345,
                outcome: Outcome::UpstreamError,
                scrubbed: true,
            }
        );
    }

    #[test]
    fn an_opening_line_is_one_line_with_no_query_value() {
        let opening = Opening {
            conn_id: "c_1",
            conn: "agent",
            cred: None,
            method: "GET",
            scheme: "http",
            authority: "h:8080",
            path: "/a?token=hunter2",
        };
        let line = line(&opening, &STARTED);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(line.ends_with(b"}\n"));
        let record: AuditRecord = serde_json::from_slice(&line).unwrap();
        assert_eq!(record.url, "http://h:8080/a");
        assert_eq!((record.cred, record.status), (None, None));
        assert_eq!(record.outcome, Outcome::Started);
        assert!(!String::from_utf8(line).unwrap().contains("hunter2"));
    }
}
