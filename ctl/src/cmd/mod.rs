//! One module per command group.

pub mod agent;
pub mod audit;
pub mod conn;
pub mod cred;
pub mod service;
pub mod status;
pub mod sync;
