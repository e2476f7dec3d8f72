//! What replicas say to each other, and what each keeps per path.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    Dir,
    Deleted,
}

/// One path's state on the hub. `version` is the hub's journal sequence
/// number at the change, so it orders changes and names a state exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub sha256: Option<String>,
    pub size: u64,
    pub exec: bool,
    pub version: u64,
}

/// A path's last-synced state on a replica: the hub's entry plus the stat
/// data that lets a scan skip hashing unchanged files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    pub kind: Kind,
    pub sha256: Option<String>,
    pub size: u64,
    pub exec: bool,
    pub version: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

impl Synced {
    pub fn entry(&self, path: &str) -> Entry {
        Entry {
            path: path.to_string(),
            kind: self.kind,
            sha256: self.sha256.clone(),
            size: self.size,
            exec: self.exec,
            version: self.version,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Changes {
    /// Pass this as `since` next time.
    pub cursor: u64,
    pub entries: Vec<Entry>,
    /// More changes wait past this page.
    pub more: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub share: String,
    pub replica: String,
    pub read_only: bool,
}

/// One change a peer pushes: a file's content follows it on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushHead {
    pub path: String,
    pub kind: Kind,
    /// The hub version this change was made on (0: the path was new).
    pub base: u64,
    pub sha256: Option<String>,
    pub size: u64,
    pub exec: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PushResult {
    Accepted {
        path: String,
        version: u64,
    },
    /// The hub moved on from `base`; here is what it has now.
    Conflict {
        path: String,
        current: Entry,
    },
    Refused {
        path: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchRequest {
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotatedKey {
    pub key: String,
}
