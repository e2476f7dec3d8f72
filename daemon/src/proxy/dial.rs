//! Opening TCP connections to real hosts: straight there, with DNS answers
//! on forbidden addresses dropped, or through `upstream_proxy` with CONNECT.
//! Through a proxy, the proxy resolves names; forbidden names and IP
//! literals are refused before any dialing, on every path.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::target::forbidden_ip;
use super::wire::CONNECT_TIMEOUT;

/// The most of a CONNECT answer's head read before giving up on it.
const MAX_ANSWER: usize = 16 * 1024;

/// How this daemon reaches real hosts.
#[derive(Clone, Default)]
pub struct Dialer {
    via: Option<Arc<UpstreamProxy>>,
    /// Names reached directly despite `via`, each with every name under it.
    direct: Arc<[String]>,
}

impl Dialer {
    pub fn new(via: Option<UpstreamProxy>, direct: &[String]) -> Dialer {
        Dialer {
            via: via.map(Arc::new),
            direct: direct.into(),
        }
    }

    /// A TCP stream to `host:port`, or the proxy's tunnel to it.
    pub async fn dial(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        let via = self.via.as_deref().filter(|_| !self.goes_direct(host));
        let stream = match via {
            None => {
                let addrs = resolve(host, port).await?;
                within_timeout(TcpStream::connect(&addrs[..])).await?
            }
            Some(proxy) => proxy.tunnel(host, port).await?,
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// This machine's own loopback is out of any proxy's reach; `host` is
    /// normalized, as every target's is.
    fn goes_direct(&self, host: &str) -> bool {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return ip.is_loopback() || self.direct.iter().any(|listed| listed == host);
        }
        let under = |name: &str| {
            host.strip_suffix(name)
                .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
        };
        under("localhost") || self.direct.iter().any(|name| under(name))
    }
}

async fn within_timeout<T>(work: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(CONNECT_TIMEOUT, work)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Resolves with the system resolver, then drops forbidden addresses, so a
/// name cannot smuggle a request to a metadata service.
pub async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await?
        .filter(|a| !forbidden_ip(a.ip()))
        .collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{host} resolves only to link-local or metadata addresses"),
        ));
    }
    Ok(addrs)
}

/// `upstream_proxy`: an HTTP proxy, like a corporate one, that every
/// upstream connection goes through. Its user info is a secret: it shows
/// only as `***`, and only in [`UpstreamProxy::redacted`].
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamProxy {
    host: String,
    port: u16,
    user: Option<String>,
    /// `Basic …`, sent on each CONNECT.
    authorization: Option<String>,
}

impl UpstreamProxy {
    /// Whether the proxy is this address, which would loop.
    pub fn is(&self, addr: SocketAddr) -> bool {
        let local = |ip: std::net::IpAddr| ip.is_loopback() || ip.is_unspecified();
        let same_host = match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip == addr.ip() || (ip.is_loopback() && local(addr.ip())),
            Err(_) => self.host == "localhost" && local(addr.ip()),
        };
        self.port == addr.port() && same_host
    }

    /// The URL with any password shown as `***`.
    pub fn redacted(&self) -> String {
        match &self.user {
            Some(user) => format!("http://{user}:***@{}", authority(&self.host, self.port)),
            None => self.to_string(),
        }
    }

    async fn tunnel(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        let to = authority(host, port);
        let via = authority(&self.host, self.port);
        let mut stream = within_timeout(TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|e| {
                refused(format!(
                    "Could not reach the upstream proxy {via} ({e}); check upstream_proxy and that the proxy is up."
                ))
            })?;
        let mut head = format!("CONNECT {to} HTTP/1.1\r\nHost: {to}\r\n");
        if let Some(authorization) = &self.authorization {
            head.push_str("Proxy-Authorization: ");
            head.push_str(authorization);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        let status = within_timeout(read_answer(&mut stream)).await.map_err(|e| {
            refused(format!(
                "The upstream proxy {via} gave no usable answer to CONNECT {to} ({e}); check that upstream_proxy names an HTTP proxy."
            ))
        })?;
        match status {
            200..=299 => Ok(stream),
            407 if self.authorization.is_some() => Err(refused(format!(
                "The upstream proxy {via} did not accept the credentials in upstream_proxy (407); check its user and password."
            ))),
            407 => Err(refused(format!(
                "The upstream proxy {via} asks for credentials (407); put them in upstream_proxy as http://user:password@{via}."
            ))),
            502..=504 => Err(refused(format!(
                "The upstream proxy {via} could not reach {to} ({status}); check the host name and that it is up."
            ))),
            _ => Err(refused(format!(
                "The upstream proxy {via} refused CONNECT {to} with {status}; ask its administrator to allow that host and port."
            ))),
        }
    }
}

/// Reads a CONNECT answer's head and returns its status. A byte past the
/// head would belong to the tunnel, so the head is read a byte at a time.
async fn read_answer(stream: &mut TcpStream) -> io::Result<u16> {
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_ANSWER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the answer's head is too long",
            ));
        }
        head.push(stream.read_u8().await?);
    }
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut answer = httparse::Response::new(&mut fields);
    match answer.parse(&head) {
        Ok(httparse::Status::Complete(_)) => answer
            .code
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the answer has no status")),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the answer is not HTTP",
        )),
    }
}

/// Why the upstream proxy did not open a tunnel, as a sentence for the agent.
#[derive(Debug)]
pub struct ProxyRefusal(pub String);

impl fmt::Display for ProxyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProxyRefusal {}

fn refused(message: String) -> io::Error {
    io::Error::other(ProxyRefusal(message))
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl FromStr for UpstreamProxy {
    type Err = String;

    fn from_str(url: &str) -> Result<UpstreamProxy, String> {
        let example =
            "like http://proxy.example.com:3128 or http://user:password@proxy.example.com:3128";
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("upstream_proxy must be an http:// URL, {example}"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (user_info, host_port) = match rest.rsplit_once('@') {
            Some((user_info, host_port)) => (Some(user_info), host_port),
            None => (None, rest),
        };
        let parsed: http::uri::Authority = host_port
            .parse()
            .ok()
            .filter(|a: &http::uri::Authority| !a.host().is_empty() && !host_port.contains('/'))
            .ok_or_else(|| format!("upstream_proxy has no host:port, {example}"))?;
        let port = match host_port[parsed.host().len()..].strip_prefix(':') {
            None => 80,
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| format!("upstream_proxy's port '{port}' is not a port, {example}"))?,
        };
        let host = parsed.host().trim_start_matches('[').trim_end_matches(']');
        let (user, authorization) = match user_info {
            None => (None, None),
            Some(user_info) => {
                let decoded = percent_decode(user_info).ok_or_else(|| {
                    format!(
                        "upstream_proxy's user info is not valid percent-encoded UTF-8, {example}"
                    )
                })?;
                let user = decoded.split(':').next().unwrap_or_default().to_string();
                let basic = base64::engine::general_purpose::STANDARD.encode(&decoded);
                (Some(user), Some(format!("Basic {basic}")))
            }
        };
        Ok(UpstreamProxy {
            host: host.to_string(),
            port,
            user,
            authorization,
        })
    }
}

/// `%XX` escapes decoded, as URL user info carries them.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

impl fmt::Display for UpstreamProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", authority(&self.host, self.port))
    }
}

impl serde::Serialize for UpstreamProxy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl fmt::Debug for UpstreamProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_proxy_urls_parse_and_never_show_the_password() {
        let proxy: UpstreamProxy = "http://alice:p%40ss:w0rd@proxy.corp:3128/".parse().unwrap();
        assert_eq!(proxy.to_string(), "http://proxy.corp:3128");
        assert_eq!(proxy.redacted(), "http://alice:***@proxy.corp:3128");
        assert_eq!(format!("{proxy:?}"), "http://alice:***@proxy.corp:3128");
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:p@ss:w0rd");
        assert_eq!(proxy.authorization, Some(format!("Basic {basic}")));

        let plain: UpstreamProxy = "http://[::1]:8080".parse().unwrap();
        assert_eq!(plain.to_string(), "http://[::1]:8080");
        assert_eq!(plain.authorization, None);
        assert_eq!("http://p.corp".parse::<UpstreamProxy>().unwrap().port, 80);

        for bad in [
            "proxy.corp:3128",
            "https://proxy.corp:3128",
            "http://",
            "http://proxy.corp:3128/path",
            "http://user:%zz@proxy.corp",
            "http://proxy.corp:99999",
        ] {
            assert!(bad.parse::<UpstreamProxy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_and_listed_names_skip_the_proxy() {
        let via = "http://proxy.corp:3128".parse().ok();
        let dialer = Dialer::new(via, &["corp.internal".into(), "10.1.2.3".into()]);
        for host in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "localhost",
            "app.localhost",
            "corp.internal",
            "git.corp.internal",
            "a.b.corp.internal",
            "10.1.2.3",
        ] {
            assert!(dialer.goes_direct(host), "{host}");
        }
        let dialer = Dialer::new(None, &["corp.internal".into(), "2.3".into()]);
        assert!(!dialer.goes_direct("10.1.2.3"), "an IP matches only itself");
        for host in [
            "api.openai.com",
            "xcorp.internal",
            "corp.internal.evil.com",
            "10.1.2.4",
        ] {
            assert!(!dialer.goes_direct(host), "{host}");
        }
    }

    #[test]
    fn a_proxy_on_our_own_listen_address_is_recognised() {
        let ours: SocketAddr = "127.0.0.1:8787".parse().unwrap();
        assert!(
            "http://127.0.0.1:8787"
                .parse::<UpstreamProxy>()
                .unwrap()
                .is(ours)
        );
        assert!(
            !"http://127.0.0.1:3128"
                .parse::<UpstreamProxy>()
                .unwrap()
                .is(ours)
        );
        assert!(
            !"http://proxy.corp:8787"
                .parse::<UpstreamProxy>()
                .unwrap()
                .is(ours)
        );
        assert!(
            "http://localhost:8787"
                .parse::<UpstreamProxy>()
                .unwrap()
                .is(ours)
        );
    }
}
