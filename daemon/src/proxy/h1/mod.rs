//! The forwarder: sidekey's own HTTP/1.1 path for the requests agents send
//! most, on plain proxy connections and inside intercepted tunnels. It reads
//! each head, applies hygiene and the credential to it, and passes bodies
//! on as raw bytes in their own framing, with no per-connection buffers
//! while a connection idles. A request it does not take (see [`plan`]) hands
//! the connection, bytes read and all, to the full hyper-based proxy.

mod exchange;
mod io;
mod known;
mod plan;
mod pool;
mod response;
pub(crate) mod scrubbed;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

pub use plan::Front;
pub use pool::sweep as sweep_idle_upstreams;

use super::wire::rewind::Rewind;
use super::wire::smuggling::HEAD_TIMEOUT;
use crate::proxy::Proxy;
use exchange::Outcome;
use plan::Parsed;

/// How often idle upstream connections are checked.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub enum Served<S> {
    Ended,
    /// The rest of the connection is the full proxy's, from these bytes on.
    Handoff(Rewind<S>),
}

pub async fn serve<S>(daemon: &Proxy, front: &Front, mut agent: S) -> Served<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut known = None;
    loop {
        if buf.is_empty() {
            // Idle: hold no buffer until the next request begins.
            io::recycle(std::mem::take(&mut buf));
            let read = tokio::select! {
                () = daemon.tasks.cancelled() => return Served::Ended,
                read = io::read_some(&mut agent, &mut buf) => read,
            };
            if !matches!(read, Ok(1..)) {
                return Served::Ended;
            }
        }
        // A head that has begun must be whole in time.
        let mut deadline = None;
        let plan = loop {
            match plan::plan(daemon, front, &mut known, &buf) {
                Parsed::Take(plan) => break plan,
                Parsed::Leave => return Served::Handoff(Rewind::new(buf, agent)),
                Parsed::Partial => {
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + HEAD_TIMEOUT);
                    let read = io::read_some(&mut agent, &mut buf);
                    if !matches!(tokio::time::timeout_at(deadline, read).await, Ok(Ok(1..))) {
                        return Served::Ended;
                    }
                }
            }
        };
        match exchange::run(daemon, &mut agent, &mut buf, plan).await {
            Outcome::KeepAlive => {}
            Outcome::Close => {
                let _ = agent.shutdown().await;
                return Served::Ended;
            }
        }
    }
}
