//! A typed client for the control API: one HTTP/1.1 request per call over
//! the daemon's Unix socket. No hand-built JSON.

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use serde::{Serialize, de::DeserializeOwned};
use sidekey_api::{
    AuditRecord, Conn, ConnCreate, ConnWithKey, Cred, CredCreate, CredHosts, CredSecret, ErrorBody,
    GrantCreate, GrantCreated, Invite, InviteCreate, KeyRegenerate, Session, SessionCreate,
    SessionKey, Share, ShareCreate, Status,
};

/// Why a call failed, so `main` can pick the exit code.
#[derive(Debug)]
pub enum ClientError {
    /// The daemon is not running: exit code 3.
    NotRunning(String),
    /// The daemon answered with an error body.
    Api(ErrorBody),
    Other(anyhow::Error),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotRunning(msg) => f.write_str(msg),
            ClientError::Api(body) => {
                write!(f, "{} ({}): {}", body.error, body.status, body.message)
            }
            ClientError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for ClientError {
    fn from(e: anyhow::Error) -> Self {
        ClientError::Other(e)
    }
}

pub type ClientResult<T> = std::result::Result<T, ClientError>;

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    pub async fn status(&self) -> ClientResult<Status> {
        self.call(Method::GET, "/v1/status", None::<&()>).await
    }

    pub async fn conns(&self) -> ClientResult<Vec<Conn>> {
        self.call(Method::GET, "/v1/conns", None::<&()>).await
    }

    pub async fn conn(&self, id: &str) -> ClientResult<Conn> {
        self.call(Method::GET, &format!("/v1/conns/{}", seg(id)), None::<&()>)
            .await
    }

    pub async fn conn_create(&self, req: &ConnCreate) -> ClientResult<ConnWithKey> {
        self.call(Method::POST, "/v1/conns", Some(req)).await
    }

    pub async fn conn_key(&self, id: &str) -> ClientResult<ConnWithKey> {
        self.call(
            Method::GET,
            &format!("/v1/conns/{}/key", seg(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn conn_rotate(&self, id: &str, req: &KeyRegenerate) -> ClientResult<ConnWithKey> {
        self.call(
            Method::POST,
            &format!("/v1/conns/{}/key", seg(id)),
            Some(req),
        )
        .await
    }

    pub async fn conn_set_enabled(&self, id: &str, enabled: bool) -> ClientResult<Conn> {
        let action = if enabled { "enable" } else { "disable" };
        self.call(
            Method::POST,
            &format!("/v1/conns/{}/{action}", seg(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn conn_remove(&self, id: &str) -> ClientResult<Conn> {
        self.call(
            Method::DELETE,
            &format!("/v1/conns/{}", seg(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn creds(&self) -> ClientResult<Vec<Cred>> {
        self.call(Method::GET, "/v1/creds", None::<&()>).await
    }

    pub async fn cred(&self, name: &str) -> ClientResult<Cred> {
        self.call(
            Method::GET,
            &format!("/v1/creds/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn cred_add(&self, req: &CredCreate) -> ClientResult<Cred> {
        self.call(Method::POST, "/v1/creds", Some(req)).await
    }

    pub async fn cred_set(&self, name: &str, req: &CredSecret) -> ClientResult<Cred> {
        self.call(
            Method::PUT,
            &format!("/v1/creds/{}/secret", seg(name)),
            Some(req),
        )
        .await
    }

    pub async fn cred_set_hosts(&self, name: &str, req: &CredHosts) -> ClientResult<Cred> {
        self.call(
            Method::PUT,
            &format!("/v1/creds/{}/hosts", seg(name)),
            Some(req),
        )
        .await
    }

    pub async fn cred_remove(&self, name: &str) -> ClientResult<Cred> {
        self.call(
            Method::DELETE,
            &format!("/v1/creds/{}", seg(name)),
            None::<&()>,
        )
        .await
    }

    pub async fn grant(&self, req: &GrantCreate) -> ClientResult<GrantCreated> {
        self.call(Method::POST, "/v1/grants", Some(req)).await
    }

    pub async fn revoke(&self, conn: &str, cred: &str) -> ClientResult<()> {
        let path = format!("/v1/grants/{}/{}", seg(conn), seg(cred));
        self.send(Method::DELETE, &path, None::<&()>)
            .await
            .map(|_| ())
    }

    pub async fn shares(&self) -> ClientResult<Vec<Share>> {
        self.call(Method::GET, "/v1/shares", None::<&()>).await
    }

    pub async fn share_add(&self, req: &ShareCreate) -> ClientResult<Share> {
        self.call(Method::POST, "/v1/shares", Some(req)).await
    }

    pub async fn share_remove(&self, name: &str) -> ClientResult<()> {
        self.send(
            Method::DELETE,
            &format!("/v1/shares/{}", seg(name)),
            None::<&()>,
        )
        .await
        .map(|_| ())
    }

    pub async fn share_invite(&self, name: &str, req: &InviteCreate) -> ClientResult<Invite> {
        self.call(
            Method::POST,
            &format!("/v1/shares/{}/invite", seg(name)),
            Some(req),
        )
        .await
    }

    pub async fn sessions(&self) -> ClientResult<Vec<Session>> {
        self.call(Method::GET, "/v1/sessions", None::<&()>).await
    }

    pub async fn session(&self, id: &str) -> ClientResult<Session> {
        self.call(
            Method::GET,
            &format!("/v1/sessions/{}", seg(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn session_add(&self, req: &SessionCreate) -> ClientResult<Session> {
        self.call(Method::POST, "/v1/sessions", Some(req)).await
    }

    pub async fn session_remove(&self, id: &str) -> ClientResult<()> {
        self.send(
            Method::DELETE,
            &format!("/v1/sessions/{}", seg(id)),
            None::<&()>,
        )
        .await
        .map(|_| ())
    }

    /// `pause`, `resume` or `rotate-key`.
    pub async fn session_action(&self, id: &str, action: &str) -> ClientResult<Session> {
        self.call(
            Method::POST,
            &format!("/v1/sessions/{}/{action}", seg(id)),
            None::<&()>,
        )
        .await
    }

    pub async fn session_set_key(&self, id: &str, req: &SessionKey) -> ClientResult<Session> {
        self.call(
            Method::PUT,
            &format!("/v1/sessions/{}/key", seg(id)),
            Some(req),
        )
        .await
    }

    pub async fn audit(&self, conn: Option<&str>, limit: usize) -> ClientResult<Vec<AuditRecord>> {
        self.call(Method::GET, &audit_path(conn, limit, false), None::<&()>)
            .await
    }

    /// Streams audit records to `each` until the daemon closes the stream.
    pub async fn audit_follow(
        &self,
        conn: Option<&str>,
        limit: usize,
        mut each: impl FnMut(AuditRecord),
    ) -> ClientResult<()> {
        let stream = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("the control socket handshake failed")?;
        tokio::spawn(connection);
        let request = Request::builder()
            .uri(audit_path(conn, limit, true))
            .header(http::header::HOST, "sidekeyd")
            .body(Full::new(Bytes::new()))
            .context("building the request")?;
        let response = sender
            .send_request(request)
            .await
            .context("the daemon closed the control connection")?;
        if !response.status().is_success() {
            let bytes = response
                .into_body()
                .collect()
                .await
                .context("reading the answer")?
                .to_bytes();
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::Api(body),
                Err(_) => ClientError::Other(anyhow::anyhow!(
                    "the daemon refused to stream the audit log"
                )),
            });
        }
        let mut body = response.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the audit stream broke")?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(record) = serde_json::from_slice(&line) {
                    each(record);
                }
            }
        }
        Ok(())
    }

    async fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> ClientResult<T> {
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("the daemon's answer to {path} does not parse; are sidekeyctl and sidekeyd the same version?"))
            .map_err(ClientError::Other)
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> ClientResult<Bytes> {
        let stream = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("the control socket handshake failed")?;
        tokio::spawn(connection);
        let payload = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body).context("encoding the request")?),
            None => Bytes::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "sidekeyd")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(payload))
            .context("building the request")?;
        let response = sender
            .send_request(request)
            .await
            .context("the daemon closed the control connection")?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("reading the daemon's answer")?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api(body)),
            Err(_) => Err(ClientError::Other(anyhow::anyhow!(
                "the daemon answered {} with no error body",
                StatusCode::as_u16(&status)
            ))),
        }
    }

    async fn connect(&self) -> ClientResult<Stream> {
        let not_running = || {
            ClientError::NotRunning(format!(
                "sidekeyd is not running (no socket at {}); start it with: sidekeyd",
                self.socket.display()
            ))
        };
        if !self.socket.exists() {
            return Err(not_running());
        }
        let name = self
            .socket
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .context("the socket path is not valid")?;
        match Stream::connect(name).await {
            Ok(stream) => Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                Err(not_running())
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(ClientError::Other(anyhow::anyhow!(
                    "permission denied on {}; run sidekeyctl as the user that runs sidekeyd",
                    self.socket.display()
                )))
            }
            Err(e) => Err(ClientError::Other(
                anyhow::Error::new(e)
                    .context(format!("cannot connect to {}", self.socket.display())),
            )),
        }
    }
}

fn audit_path(conn: Option<&str>, limit: usize, follow: bool) -> String {
    let mut path = format!("/v1/audit?limit={limit}");
    if let Some(conn) = conn {
        path.push_str(&format!("&conn={}", seg(conn)));
    }
    if follow {
        path.push_str("&follow=1");
    }
    path
}

/// Percent-encodes one path segment, so a name can never add a segment.
fn seg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
