//! The sync tables: shares, sessions, each share's journal, each session's
//! index and the hub's identity, with the sealing of the secrets they hold.
//! Their tree names and AADs are built here and nowhere else, and are the
//! ones earlier versions wrote, so an existing data dir opens unchanged.

use std::collections::HashMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{Store, StoreError, Table};
use crate::keys::Secret;

const SHARES: &str = "shares";
const SESSIONS: &str = "sessions";
const IDENTITY: &str = "sync-identity";
const IDENTITY_KEY: &[u8] = b"hub";
const IDENTITY_AAD: &str = "sync-identity:hub";

fn journal_tree(share: &str) -> String {
    format!("share-entries:{share}")
}

fn index_tree(session: &str) -> String {
    format!("session-index:{session}")
}

fn session_key_aad(session: &str) -> String {
    format!("session:{session}:key")
}

/// A folder this daemon serves as a hub.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareRecord {
    pub name: String,
    pub path: String,
    pub replica: String,
    pub created_at: u64,
}

/// A folder this daemon keeps in sync with a share on a hub. Its key is
/// only ever sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub folder: String,
    pub addr: String,
    pub share: String,
    pub fingerprint: String,
    pub key_sealed: String,
    pub cursor: u64,
    pub paused: bool,
    pub replica: String,
    pub created_at: u64,
    #[serde(default)]
    pub initial_sync_done: bool,
}

#[derive(Serialize, Deserialize)]
struct IdentityRecord {
    cert_der_hex: String,
    key_sealed: String,
}

/// The hub's TLS certificate and its private key (DER, as hex).
pub struct HubIdentity {
    pub cert_der: Vec<u8>,
    pub key_der_hex: Secret,
}

/// A typed handle on the sync tables of one store.
pub struct SyncTables<'a> {
    store: &'a Store,
}

impl Store {
    pub fn sync_tables(&self) -> SyncTables<'_> {
        SyncTables { store: self }
    }
}

impl SyncTables<'_> {
    fn table(&self, name: &str) -> Result<Table, StoreError> {
        let tree = self
            .store
            .db
            .open_tree(name)
            .map_err(|e| self.store.write_error(e))?;
        Ok(Table {
            tree,
            path: self.store.path.clone(),
        })
    }

    fn drop(&self, name: &str) -> Result<(), StoreError> {
        self.store
            .db
            .drop_tree(name)
            .map_err(|e| self.store.write_error(e))?;
        Ok(())
    }

    pub fn shares(&self) -> Result<Vec<ShareRecord>, StoreError> {
        values(&self.table(SHARES)?)
    }

    pub fn put_share(&self, record: &ShareRecord) -> Result<(), StoreError> {
        self.table(SHARES)?.put(record.name.as_bytes(), record)
    }

    /// Forgets the share and drops its journal.
    pub fn remove_share(&self, name: &str) -> Result<(), StoreError> {
        self.table(SHARES)?.remove(name.as_bytes())?;
        self.drop(&journal_tree(name))
    }

    pub fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        values(&self.table(SESSIONS)?)
    }

    pub fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.table(SESSIONS)?.put(record.id.as_bytes(), record)
    }

    /// Forgets the session and drops its index.
    pub fn remove_session(&self, id: &str) -> Result<(), StoreError> {
        self.table(SESSIONS)?.remove(id.as_bytes())?;
        self.drop(&index_tree(id))
    }

    pub fn seal_session_key(&self, id: &str, key: &Secret) -> String {
        hex::encode(
            self.store
                .cipher
                .seal(session_key_aad(id).as_bytes(), key.expose().as_bytes()),
        )
    }

    pub fn open_session_key(&self, record: &SessionRecord) -> Result<Secret, StoreError> {
        self.store
            .open_secret(&session_key_aad(&record.id), &record.key_sealed)
    }

    /// A share's journal: per path, its state and version on the hub.
    pub fn share_journal(&self, share: &str) -> Result<PathTable, StoreError> {
        self.table(&journal_tree(share)).map(PathTable)
    }

    /// A session's index: per path, what it last synced.
    pub fn session_index(&self, session: &str) -> Result<PathTable, StoreError> {
        self.table(&index_tree(session)).map(PathTable)
    }

    pub fn hub_identity(&self) -> Result<Option<HubIdentity>, StoreError> {
        let Some(record) = self.table(IDENTITY)?.get::<IdentityRecord>(IDENTITY_KEY)? else {
            return Ok(None);
        };
        let cert_der = hex::decode(&record.cert_der_hex)
            .map_err(|_| self.store.corrupt("the hub certificate is not hex".into()))?;
        let key_der_hex = self.store.open_secret(IDENTITY_AAD, &record.key_sealed)?;
        Ok(Some(HubIdentity {
            cert_der,
            key_der_hex,
        }))
    }

    pub fn put_hub_identity(&self, identity: &HubIdentity) -> Result<(), StoreError> {
        let record = IdentityRecord {
            cert_der_hex: hex::encode(&identity.cert_der),
            key_sealed: hex::encode(self.store.cipher.seal(
                IDENTITY_AAD.as_bytes(),
                identity.key_der_hex.expose().as_bytes(),
            )),
        };
        self.table(IDENTITY)?.put(IDENTITY_KEY, &record)
    }
}

fn values<T: DeserializeOwned>(table: &Table) -> Result<Vec<T>, StoreError> {
    Ok(table.all()?.into_iter().map(|(_, v)| v).collect())
}

/// One replica's per-path records, keyed by wire path.
#[derive(Clone)]
pub struct PathTable(Table);

impl PathTable {
    /// Every record; a key that is not UTF-8 is not a wire path, and is skipped.
    pub fn load<T: DeserializeOwned>(&self) -> Result<HashMap<String, T>, StoreError> {
        Ok(self
            .0
            .all::<T>()?
            .into_iter()
            .filter_map(|(k, v)| String::from_utf8(k).ok().map(|k| (k, v)))
            .collect())
    }

    pub fn put<T: Serialize>(&self, path: &str, value: &T) -> Result<(), StoreError> {
        self.0.put(path.as_bytes(), value)
    }

    pub fn remove(&self, path: &str) -> Result<(), StoreError> {
        self.0.remove(path.as_bytes())
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.0.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_records_keep_the_tree_names_and_aads_earlier_versions_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let master = super::super::master_key::load_or_create(dir.path()).unwrap();
        let store = Store::open(dir.path(), &master).unwrap();
        let tables = store.sync_tables();
        let key = Secret::new(format!("cli_{}", "a".repeat(64)));
        let record = SessionRecord {
            id: "s_1".into(),
            folder: "/f".into(),
            addr: "h:1".into(),
            share: "sh".into(),
            fingerprint: "fp".into(),
            key_sealed: tables.seal_session_key("s_1", &key),
            cursor: 0,
            paused: false,
            replica: "r_1".into(),
            created_at: 0,
            initial_sync_done: false,
        };
        tables.put_session(&record).unwrap();
        let raw = store.db.open_tree("sessions").unwrap();
        assert!(raw.get("s_1").unwrap().is_some());
        let sealed = hex::decode(&record.key_sealed).unwrap();
        assert!(store.cipher.open(b"session:s_1:key", &sealed).is_ok());
        tables
            .session_index("s_1")
            .unwrap()
            .put("a.txt", &1u32)
            .unwrap();
        let index = store.db.open_tree("session-index:s_1").unwrap();
        assert!(index.get("a.txt").unwrap().is_some());
        tables.share_journal("sh").unwrap().put("b", &2u32).unwrap();
        assert!(
            store
                .db
                .tree_names()
                .iter()
                .any(|n| n == b"share-entries:sh")
        );
        tables.remove_session("s_1").unwrap();
        assert!(tables.sessions().unwrap().is_empty());
        assert!(
            !store
                .db
                .tree_names()
                .iter()
                .any(|n| n == b"session-index:s_1")
        );
    }
}
