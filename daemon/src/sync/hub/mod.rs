//! The hub's role: the shares it serves and the TLS listener peers reach
//! them on. It never dials a peer: peers come to it.

pub(crate) mod server;
pub(crate) mod share;
