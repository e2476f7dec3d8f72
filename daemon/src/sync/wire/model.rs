//! What replicas say to each other, and what each keeps per path. Plain
//! data: no I/O.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A file's SHA-256. Held as bytes, since a hex string would cost a heap
/// block for each of a replica's files; written as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of(hasher: sha2::Sha256) -> Digest {
        use sha2::Digest as _;
        Digest(hasher.finalize().into())
    }

    /// A stand-in digest for tests that never hash anything.
    #[cfg(test)]
    pub fn repeat(byte: u8) -> Digest {
        Digest([byte; 32])
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.as_bytes(), &mut bytes)
            .map_err(|_| serde::de::Error::custom("a SHA-256 is 64 hex characters"))?;
        Ok(Digest(bytes))
    }
}

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
    pub sha256: Option<Digest>,
    pub size: u64,
    pub exec: bool,
    pub version: u64,
}

/// A path's last-synced state on a replica: the hub's entry plus the stat
/// data that lets a scan skip hashing unchanged files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    pub kind: Kind,
    pub sha256: Option<Digest>,
    pub size: u64,
    pub exec: bool,
    pub version: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

impl Synced {
    /// A path's tombstone; the hub's journal sets its version.
    pub fn deleted(version: u64) -> Synced {
        Synced {
            kind: Kind::Deleted,
            sha256: None,
            size: 0,
            exec: false,
            version,
            mtime_ns: 0,
            inode: 0,
        }
    }

    pub fn entry(&self, path: &str) -> Entry {
        Entry {
            path: path.to_string(),
            kind: self.kind,
            sha256: self.sha256,
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
    pub sha256: Option<Digest>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_64_hex_characters_on_the_wire_and_nothing_else_parses() {
        let hex = "ab".repeat(32);
        let digest: Digest = serde_json::from_value(serde_json::json!(hex)).unwrap();
        assert_eq!(
            serde_json::to_value(digest).unwrap(),
            serde_json::json!(hex)
        );
        for bad in ["ab".repeat(31), "zz".repeat(32), String::new()] {
            assert!(serde_json::from_value::<Digest>(serde_json::json!(bad)).is_err());
        }
    }
}
