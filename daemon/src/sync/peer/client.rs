//! A peer's connection to its hub: TLS 1.3 pinned to the invite's
//! fingerprint, one h2 connection shared by the long-poll and the pushes,
//! re-dialled when it drops. It never trusts another certificate, and never
//! retries a refused key on its own.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use sidekey_api::ErrorBody;

use crate::http_util::ProxyBody;
use crate::keys::Secret;
use crate::shutdown::Tasks;
use crate::sync::wire::frames::FrameReader;
use crate::sync::wire::identity::pinned_client_config;
use crate::sync::wire::model::{Changes, FetchRequest, Hello, PushResult, RotatedKey};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The hub refused the key: stop, never retry on our own.
    #[error("{0}")]
    Auth(String),
    /// The hub is not who the invite said: stop.
    #[error("{0}")]
    Fingerprint(String),
    /// The hub will not take this change from us (a read-only key).
    #[error("{0}")]
    Forbidden(String),
    /// The hub stopped serving (the share halted): wait for the user.
    #[error("{0}")]
    Refused(String),
    /// Worth retrying later.
    #[error("{0}")]
    Transport(String),
}

/// What `sidekey://host:port/share#key=…&fp=sha256:…` holds.
pub struct InviteParts {
    pub addr: String,
    pub share: String,
    pub key: Secret,
    pub fingerprint: String,
}

pub fn parse_invite(text: &str) -> Result<InviteParts, String> {
    let text = text.trim();
    let rest = text
        .strip_prefix("sidekey://")
        .ok_or("an invite starts with sidekey://")?;
    let (location, fragment) = rest
        .split_once('#')
        .ok_or("the invite has no #key=…&fp=… part")?;
    let (addr, share) = location
        .split_once('/')
        .ok_or("the invite has no share name after host:port")?;
    if addr.is_empty() || !addr.contains(':') {
        return Err("the invite's address should be host:port".into());
    }
    if share.is_empty() || share.contains('/') {
        return Err("the invite's share name is missing or malformed".into());
    }
    let mut key = None;
    let mut fingerprint = None;
    for pair in fragment.split('&') {
        match pair.split_once('=') {
            Some(("key", v)) => key = Some(v.to_string()),
            Some(("fp", v)) => fingerprint = Some(v.to_string()),
            _ => {}
        }
    }
    let key = key.ok_or("the invite has no key=")?;
    if crate::keys::parse(&key) != Some(crate::keys::KeyPrefix::Cli) {
        return Err("the invite's key is not a cli_ key".into());
    }
    let fingerprint = fingerprint.ok_or("the invite has no fp=")?;
    if !fingerprint.starts_with("sha256:") || fingerprint.len() != 7 + 64 {
        return Err("the invite's fingerprint should be sha256: and 64 hex characters".into());
    }
    Ok(InviteParts {
        addr: addr.to_string(),
        share: share.to_string(),
        key: Secret::new(key),
        fingerprint,
    })
}

pub struct HubClient {
    pub addr: String,
    pub share: String,
    fingerprint: String,
    key: std::sync::Mutex<Secret>,
    sender: tokio::sync::Mutex<Option<http2::SendRequest<ProxyBody>>>,
    /// The connection's driver runs here; its token ends it once the
    /// session is done with it.
    tasks: Tasks,
}

impl HubClient {
    pub fn new(
        addr: String,
        share: String,
        fingerprint: String,
        key: Secret,
        tasks: Tasks,
    ) -> HubClient {
        HubClient {
            addr,
            share,
            fingerprint,
            key: std::sync::Mutex::new(key),
            sender: tokio::sync::Mutex::new(None),
            tasks,
        }
    }

    pub fn set_key(&self, key: Secret) {
        *self.key.lock().unwrap_or_else(|p| p.into_inner()) = key;
    }

    fn key(&self) -> Secret {
        self.key.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn connection(&self) -> Result<http2::SendRequest<ProxyBody>, SyncError> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&self.addr),
        )
        .await
        .map_err(|_| {
            SyncError::Transport(format!("connecting to the hub at {} timed out", self.addr))
        })?
        .map_err(|e| SyncError::Transport(format!("cannot reach the hub at {}: {e}", self.addr)))?;
        let _ = tcp.set_nodelay(true);
        let config = pinned_client_config(&self.fingerprint)
            .map_err(|e| SyncError::Transport(e.to_string()))?;
        let name = ServerName::try_from("sidekey-hub").expect("a valid name");
        let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| {
            if e.to_string().contains("fingerprint") {
                SyncError::Fingerprint(format!(
                    "the hub at {} presented a certificate that does not match the invite's fingerprint; refusing to connect. Ask the hub's owner for a new invite",
                    self.addr
                ))
            } else {
                SyncError::Transport(format!("TLS with the hub at {} failed: {e}", self.addr))
            }
        })?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(8 * 1024 * 1024)
            .max_frame_size(1024 * 1024)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| {
                SyncError::Transport(format!("the hub at {} did not speak h2: {e}", self.addr))
            })?;
        let stop = self.tasks.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn send(
        &self,
        method: Method,
        action: &str,
        body: ProxyBody,
    ) -> Result<hyper::Response<Incoming>, SyncError> {
        let mut sender = self.connection().await?;
        let uri = format!("https://{}/v1/shares/{}/{action}", self.addr, self.share);
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.key().expose()),
            )
            .body(body)
            .map_err(|e| SyncError::Transport(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| {
            SyncError::Transport(format!(
                "the hub at {} dropped the connection: {e}",
                self.addr
            ))
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.message)
            .unwrap_or_else(|_| status.to_string());
        Err(match status {
            StatusCode::UNAUTHORIZED => SyncError::Auth(format!(
                "the hub refused this session's key ({message}); paste a new key or invite with: sidekeyctl sync set-key <id>"
            )),
            StatusCode::FORBIDDEN => SyncError::Forbidden(message),
            StatusCode::SERVICE_UNAVAILABLE => SyncError::Refused(message),
            // A broken stream or any other hiccup: worth another try.
            _ => SyncError::Transport(message),
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        action: &str,
        body: ProxyBody,
    ) -> Result<T, SyncError> {
        let response = self.send(method, action, body).await?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| SyncError::Transport(format!("reading the hub's answer: {e}")))?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| SyncError::Transport(format!("the hub's answer does not parse: {e}")))
    }

    pub async fn hello(&self) -> Result<Hello, SyncError> {
        self.json(Method::GET, "hello", empty()).await
    }

    pub async fn changes(&self, since: u64, wait_secs: u64) -> Result<Changes, SyncError> {
        self.json(
            Method::GET,
            &format!("changes?since={since}&wait={wait_secs}"),
            empty(),
        )
        .await
    }

    pub async fn fetch(&self, paths: Vec<String>) -> Result<FrameReader, SyncError> {
        let body = serde_json::to_vec(&FetchRequest { paths }).expect("requests serialize");
        let response = self
            .send(Method::POST, "fetch", full(Bytes::from(body)))
            .await?;
        Ok(FrameReader::new(response.into_body()))
    }

    pub async fn push(&self, body: ProxyBody) -> Result<Vec<PushResult>, SyncError> {
        self.json(Method::POST, "push", body).await
    }

    pub async fn rotate(&self) -> Result<Secret, SyncError> {
        let rotated: RotatedKey = self.json(Method::POST, "rotate-key", empty()).await?;
        Ok(Secret::new(rotated.key))
    }
}

fn empty() -> ProxyBody {
    full(Bytes::new())
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_parse_and_bad_ones_say_why() {
        let key = format!("cli_{}", "a".repeat(64));
        let fp = format!("sha256:{}", "b".repeat(64));
        let ok = parse_invite(&format!(
            "sidekey://hub.local:7443/openclaw#key={key}&fp={fp}"
        ))
        .unwrap();
        assert_eq!(
            (ok.addr.as_str(), ok.share.as_str()),
            ("hub.local:7443", "openclaw")
        );
        for bad in [
            "http://x:1/s#key=k&fp=f".to_string(),
            format!("sidekey://x:1/s#fp={fp}"),
            format!("sidekey://x:1/s#key={key}"),
            format!("sidekey://x/s#key={key}&fp={fp}"),
            format!("sidekey://x:1/#key={key}&fp={fp}"),
            format!("sidekey://x:1/s#key=sk_live_{}&fp={fp}", "a".repeat(64)),
        ] {
            assert!(parse_invite(&bad).is_err(), "{bad}");
        }
    }
}
