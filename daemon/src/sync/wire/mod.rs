//! What replicas say to each other: the records, the batch framing and the
//! hub's TLS identity. Pure formats: nothing here touches a replica's folder.

pub(crate) mod frames;
pub(crate) mod identity;
pub(crate) mod model;
