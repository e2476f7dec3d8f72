//! Relays for connections that stop being HTTP: untouched tunnels and
//! upgraded WebSockets. Each lasts only while the key that opened it works.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::h1::scrubbed::{self, Mode, Raw};
use super::wire::websocket::WsFrames;
use crate::keys::Secret;
use crate::registry::{KeyUse, LiveCred, Registry};

/// Relays bytes both ways until either side closes, or until the key that
/// opened the relay stops working: an untouched tunnel or a WebSocket of a
/// rotated, disabled, deleted or expired key ends then, not when its agent
/// lets go.
pub(crate) async fn relay_while_key_holds<A, B>(
    registry: &Registry,
    key: &Secret,
    a: &mut A,
    b: &mut B,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        _ = tokio::io::copy_bidirectional(a, b) => {}
        () = registry.retired(key.expose(), KeyUse::Proxy) => {
            tracing::info!("closed a relay whose key stopped working");
        }
    }
}

/// [`relay_while_key_holds`] for a WebSocket whose upgrade request carried
/// `cred`'s secret: the upstream's frames reach the agent with that secret
/// masked in their payloads. The agent's frames go as they are.
pub(crate) async fn relay_scrubbed_while_key_holds<A, B>(
    registry: &Registry,
    key: &Secret,
    cred: Arc<LiveCred>,
    agent: A,
    upstream: B,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut agent_read, mut agent_write) = tokio::io::split(agent);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let name = cred.name.clone();
    let up = async {
        let _ = tokio::io::copy(&mut agent_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
    };
    let down = async {
        let mut raw = Raw::new(Mode::Mask(cred));
        let mut buf = Vec::new();
        let relayed = scrubbed::relay(
            &mut upstream_read,
            &mut agent_write,
            &mut buf,
            &mut WsFrames::default(),
            &mut raw,
        )
        .await;
        if relayed.is_err() {
            tracing::info!("closed a WebSocket whose upstream frames could not be scrubbed");
        }
        if raw.masked > 0 {
            tracing::warn!(cred = %name, "a WebSocket upstream sent the injected secret; sidekey masked it");
        }
        let _ = agent_write.shutdown().await;
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        () = registry.retired(key.expose(), KeyUse::Proxy) => {
            tracing::info!("closed a relay whose key stopped working");
        }
    }
}
