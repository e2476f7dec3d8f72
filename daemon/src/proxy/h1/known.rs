//! The key a connection presented last. Its later requests present the same
//! one, so while no key or connection has changed it is looked up again
//! without decoding and hashing it.

use zeroize::Zeroizing;

use crate::keys::Secret;
use crate::proxy::Proxy;
use crate::proxy::auth;
use crate::registry::{KeyUse, Lookup};

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

/// Which connection a request's key names; `None` leaves the request to the
/// full proxy, which answers the refusal.
pub fn look_up<'k>(
    daemon: &Proxy,
    known: &'k mut Option<KnownKey>,
    presented: Presented,
) -> Option<&'k Lookup> {
    let registry = &daemon.registry;
    let header = match presented {
        Presented::Header(header) => header,
        Presented::Tunnel(_) => &[],
    };
    let holds = |k: &KnownKey| *k.header == header && registry.still_holds(&k.lookup);
    if !known.as_ref().is_some_and(holds) {
        let key = match presented {
            Presented::Header(header) => Secret::new(auth::proxy_key_from(header)?),
            Presented::Tunnel(key) => key.clone(),
        };
        let lookup = registry.look_up(key.expose(), KeyUse::Proxy).ok()?;
        *known = Some(KnownKey {
            header: Zeroizing::new(header.to_vec()),
            lookup,
        });
    }
    known.as_ref().map(|k| &k.lookup)
}
