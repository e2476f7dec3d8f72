//! The peer's role: sessions that keep a local folder in sync with a share
//! on a hub, their pinned connection to it, and the loops that drive them.
//! A peer never serves anything.

pub(crate) mod client;
pub(crate) mod runner;
pub(crate) mod session;
