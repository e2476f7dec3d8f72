//! A minimal client for the daemon's control socket: one keep-alive
//! HTTP/1.1 connection, request bodies typed from `sidekey-api`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sidekey_api::{ConnCreate, ConnKind};
use tokio::net::UnixStream;

pub struct Control {
    sender: SendRequest<Full<Bytes>>,
}

impl Control {
    pub async fn connect(socket: &Path) -> Result<Control> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to the control socket {}", socket.display()))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("the control socket handshake failed")?;
        tokio::spawn(connection);
        Ok(Control { sender })
    }

    /// `GET /v1/status`: the number of connections in the store.
    pub async fn status_conns(&mut self) -> Result<u64> {
        let status = self.call(Method::GET, "/v1/status", Bytes::new()).await?;
        status
            .get("conns")
            .and_then(Value::as_u64)
            .context("/v1/status has no conns count")
    }

    /// `POST /v1/conns` for an agent connection; returns its full key.
    pub async fn create_agent(&mut self, name: &str) -> Result<String> {
        let request = ConnCreate {
            name: name.to_string(),
            kind: ConnKind::Agent,
            expires_in_secs: None,
            rate: None,
            share: None,
            read_only: None,
        };
        let body = serde_json::to_vec(&request).context("encoding the create request")?;
        let created = self
            .call(Method::POST, "/v1/conns", Bytes::from(body))
            .await?;
        created
            .get("key")
            .and_then(Value::as_str)
            .map(str::to_string)
            .context("POST /v1/conns answered without a key")
    }

    async fn call(&mut self, method: Method, path: &str, body: Bytes) -> Result<Value> {
        self.sender
            .ready()
            .await
            .context("the daemon closed the control connection")?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "sidekeyd")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .context("building a control request")?;
        let response = self
            .sender
            .send_request(request)
            .await
            .with_context(|| format!("{path}: the daemon closed the control connection"))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("{path}: reading the answer"))?
            .to_bytes();
        if !status.is_success() {
            bail!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes).with_context(|| format!("{path}: the answer is not JSON"))
    }
}
