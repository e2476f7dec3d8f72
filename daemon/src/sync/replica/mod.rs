//! One replica's folder: walking it, watching it, writing into it safely,
//! checking wire paths, its ignore rules, and its record of every path.
//! Nothing here talks to another replica, and nothing follows a symlink.

pub(crate) mod apply;
pub(crate) mod beneath;
pub(crate) mod fsops;
pub(crate) mod ignore;
pub(crate) mod journal;
pub(crate) mod paths;
pub(crate) mod scan;
pub(crate) mod watcher;
