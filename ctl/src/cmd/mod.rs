//! One module per command group.

pub mod conn;
pub mod cred;
pub mod status;
