//! The key a connection presented last. Its later requests present the same
//! one, so while no key or connection has changed it is admitted again
//! without decoding and hashing it.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::Daemon;
use crate::keys::Secret;
use crate::proxy::auth;
use crate::registry::{LiveConn, Lookup};

/// How a request presents its key.
pub enum Presented<'a> {
    /// A raw `Proxy-Authorization` value on the forward proxy.
    Header(&'a [u8]),
    /// The key the tunnel's `CONNECT` presented.
    Tunnel(&'a Secret),
}

pub struct KnownKey {
    /// The raw value the key came in, empty in a tunnel.
    header: Zeroizing<Vec<u8>>,
    lookup: Lookup,
}

/// The connection a request's key admits it for; `None` leaves the request
/// to the full proxy, which answers the refusal.
pub fn admit(
    daemon: &Daemon,
    known: &mut Option<KnownKey>,
    presented: Presented,
) -> Option<Arc<LiveConn>> {
    let registry = &daemon.registry;
    let header = match presented {
        Presented::Header(header) => header,
        Presented::Tunnel(_) => &[],
    };
    let holds = |k: &KnownKey| *k.header == header && registry.still_holds(&k.lookup);
    let known = match known {
        Some(k) if holds(k) => k,
        _ => {
            let key = match presented {
                Presented::Header(header) => Secret::new(auth::proxy_key_from(header)?),
                Presented::Tunnel(key) => key.clone(),
            };
            let lookup = registry.look_up(key.expose()).ok()?;
            known.insert(KnownKey {
                header: Zeroizing::new(header.to_vec()),
                lookup,
            })
        }
    };
    registry
        .admit(&known.lookup, "proxy")
        .ok()
        .map(|verified| verified.conn)
}
