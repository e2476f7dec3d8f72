//! Upstream connections for the forwarder. They are opened with the same
//! checks as every other path (forbidden addresses dropped, TLS verified
//! with http/1.1 by ALPN), and idle ones are kept per proxy thread: a
//! connection, its requests and its upstreams all live on one thread, so
//! the pool needs no lock and an idle upstream costs no task.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustix::net::RecvFlags;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::super::upstream::Upstream;
use crate::proxy::target::Target;
use crate::proxy::wire::{CONNECT_TIMEOUT, POOL_IDLE_FOR, POOL_IDLE_PER_HOST};

/// A connection reused sooner than this is not checked for a close first:
/// upstreams close idle connections after seconds, and a request whole in
/// hand that meets a closed one anyway is sent again on a new one.
const CHECK_AFTER: Duration = Duration::from_secs(1);

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Which upstream a connection reaches.
#[derive(PartialEq, Eq)]
struct Origin {
    tls: bool,
    host: String,
    port: u16,
}

impl Origin {
    fn is(&self, target: &Target) -> bool {
        self.tls == (target.scheme == "https")
            && self.port == target.port
            && self.host == target.host
    }
}

/// An origin's idle connections, most recently used last.
type Idle = (Origin, Vec<(Stream, Instant)>);

thread_local! {
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// An idle connection to `target`'s origin that is still open, if any. One
/// idle only briefly is taken unchecked when `can_resend`: the request, if
/// it meets the connection closed, can be sent again on a new one.
pub fn checkout(target: &Target, can_resend: bool) -> Option<Stream> {
    IDLE.with_borrow_mut(|idle| {
        let (_, streams) = idle.iter_mut().find(|(origin, _)| origin.is(target))?;
        while let Some((stream, since)) = streams.pop() {
            let idle = since.elapsed();
            let trusted = can_resend && idle < CHECK_AFTER;
            if trusted || (idle < POOL_IDLE_FOR && stream.still_open()) {
                return Some(stream);
            }
        }
        None
    })
}

/// Keeps a connection whose last exchange ended cleanly, for the next one.
pub fn checkin(target: &Target, stream: Stream) {
    IDLE.with_borrow_mut(|idle| {
        let index = match idle.iter().position(|(origin, _)| origin.is(target)) {
            Some(index) => index,
            None => {
                let origin = Origin {
                    tls: target.scheme == "https",
                    host: target.host.clone(),
                    port: target.port,
                };
                idle.push((origin, Vec::new()));
                idle.len() - 1
            }
        };
        let streams = &mut idle[index].1;
        if streams.len() < POOL_IDLE_PER_HOST {
            streams.push((stream, Instant::now()));
        }
    });
}

/// Closes connections idle too long, or closed by their upstream.
pub fn sweep() {
    IDLE.with_borrow_mut(|idle| {
        for (_, streams) in idle.iter_mut() {
            streams
                .retain(|(stream, since)| since.elapsed() < POOL_IDLE_FOR && stream.still_open());
        }
        idle.retain(|(_, streams)| !streams.is_empty());
    });
}

/// Opens a connection to `target`, with TLS for https.
pub async fn connect(upstream: &Upstream, target: &Target) -> io::Result<Stream> {
    let timed_out = |_| io::Error::from(io::ErrorKind::TimedOut);
    let tcp = upstream.dialer.dial(&target.host, target.port).await?;
    if target.scheme != "https" {
        return Ok(Stream::Plain(tcp));
    }
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let handshake = TlsConnector::from(upstream.tls_http1.clone()).connect(name, tcp);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(timed_out)??;
    Ok(Stream::Tls(Box::new(stream)))
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether the upstream has not closed this idle connection. Bytes
    /// waiting on a plain one are a broken upstream; on TLS they are
    /// usually a session ticket.
    fn still_open(&self) -> bool {
        let mut byte = [0u8; 1];
        match rustix::net::recv(self.tcp(), &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((_, 0)) => false,
            Ok(_) => matches!(self, Stream::Tls(_)),
            Err(e) => e == rustix::io::Errno::AGAIN,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
