//! The HTTP/1.1 wire, shared by the forwarder and the hyper path: limits,
//! the one hop-by-hop list, body framing, the smuggling guard. Each rule of
//! the wire is written here once.

pub mod framing;
pub mod headers;
pub mod rewind;
pub mod smuggling;
pub mod websocket;

use std::time::Duration;

pub use crate::http_util::{HOP_BY_HOP, is_hop_by_hop};

/// Request heads over this size get 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// hyper's read buffer: a hard memory bound a little above the 431 limit,
/// which the proxy checks exactly.
pub const READ_BUFFER_BYTES: usize = 2 * MAX_HEADER_BYTES;
/// hyper's limit too: a head with more fields than this is left to hyper to
/// refuse.
pub const MAX_FIELDS: usize = 100;
/// Opening an upstream connection, TLS included, takes at most this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle upstream connections older than this are closed, in either pool.
pub const POOL_IDLE_FOR: Duration = Duration::from_secs(90);
/// Idle upstream connections kept per origin, in either pool.
pub const POOL_IDLE_PER_HOST: usize = 256;

/// A `Content-Length` value: `1*DIGIT` between optional whitespace, and
/// nothing else. Rust's own parser takes `+5`, which one engine would read as
/// 5 and another refuse: a body framed two ways is how requests are smuggled.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

pub fn push_field(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}
