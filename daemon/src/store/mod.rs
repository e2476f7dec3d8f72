//! The only code that knows sled. It owns the trees, the schema version and
//! the encryption of every secret at rest; callers see typed records.
//!
//! Writes that a caller acknowledges are followed by `flush`, so a change that
//! was answered survives a crash.

mod check;
mod crypto;
mod integrity;
pub mod master_key;
mod sync;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sidekey_api::{ConnKind, CredType, RateLimit};

use crate::keys::{self, KeyHash, Secret};
use crypto::Cipher;
pub use master_key::MasterKey;
pub use sync::{HubIdentity, PathTable, SessionRecord, ShareRecord, SyncTables};

pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read the master key at {path}: {source}")]
    MasterKeyRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the master key at {path}: {source}")]
    MasterKeyWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the master key at {path} is not 64 hex characters or 32 raw bytes")]
    MasterKeyFormat { path: PathBuf },
    #[error(
        "the master key at {key_path} does not open the store at {store_path}; \
         restore the master key that created this store, or move the store aside to start empty"
    )]
    WrongMasterKey {
        key_path: PathBuf,
        store_path: PathBuf,
    },
    #[error(
        "the store at {path} is corrupt or unreadable ({detail}); \
         nothing was changed: restore it from a backup, or move it aside to start empty"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the store at {path} has schema version {found}, newer than this sidekeyd understands ({SCHEMA_VERSION}); \
         run a newer sidekeyd"
    )]
    SchemaTooNew { path: PathBuf, found: u32 },
    #[error(
        "store write failed at {path}: {detail}; check free space and permissions of the data dir"
    )]
    Write { path: PathBuf, detail: String },
}

/// A connection as it is stored. The key itself is only ever sealed.
///
/// Unset fields are left out, and since schema 2 the id (the record's sled
/// key) and the key's hash and last four are filled in when the record is
/// read, not stored: sled keeps every record it has read in memory, so a
/// smaller record is a smaller daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnRecord {
    #[serde(default, skip_serializing)]
    pub id: String,
    pub name: String,
    pub kind: ConnKind,
    #[serde(default, skip_serializing)]
    pub key_hash: String,
    #[serde(default, skip_serializing)]
    pub key_last4: String,
    pub key_sealed: String,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_by: Option<String>,
    /// The key before the last rotation, valid until `until` (a grace period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousKey>,
    /// For sync connections: the one share the key opens, and whether it may push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviousKey {
    pub key_hash: String,
    pub until: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredRecord {
    pub name: String,
    pub cred_type: CredType,
    pub hosts: Vec<String>,
    pub path_prefix: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    pub secret_sealed: String,
}

/// A grant keeps only its token's hash: the token is shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantRecord {
    pub conn_id: String,
    pub cred: String,
    pub token_hash: String,
    pub created_at: u64,
    /// For the token's display form; empty in records made before it was kept.
    #[serde(default)]
    pub token_last4: String,
}

pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    /// The last flushed generation and the file that mirrors it.
    generation: tokio::sync::Mutex<(u64, integrity::GenerationFile)>,
    conns: sled::Tree,
    creds: sled::Tree,
    grants: sled::Tree,
    revoked: sled::Tree,
    cipher: Cipher,
    path: PathBuf,
    writes: AtomicU64,
}

impl Store {
    /// Opens (or creates) the store under `data_dir`. The master key is
    /// checked against `store.check` before sled opens anything, because
    /// sled writes to its files on open: a wrong key must change nothing.
    pub fn open(data_dir: &Path, master: &MasterKey) -> Result<Store, StoreError> {
        let path = data_dir.join("store");
        let check_path = data_dir.join("store.check");
        let cipher = Cipher::new(&master.bytes);
        let fresh = !path.exists() || dir_is_empty(&path);
        match std::fs::read(&check_path) {
            Ok(bytes) => check::verify(&bytes, &cipher).map_err(|failure| match failure {
                check::Failure::WrongKey => StoreError::WrongMasterKey {
                    key_path: master.path.clone(),
                    store_path: path.clone(),
                },
                check::Failure::TooNew(found) => StoreError::SchemaTooNew {
                    path: path.clone(),
                    found,
                },
                check::Failure::Unreadable => StoreError::Corrupt {
                    path: path.clone(),
                    detail: format!("{} does not parse", check_path.display()),
                },
            })?,
            Err(_) if !fresh => {
                return Err(StoreError::Corrupt {
                    path,
                    detail: format!(
                        "its master key check file {} is missing",
                        check_path.display()
                    ),
                });
            }
            Err(_) => {}
        }

        let backup = if fresh {
            None
        } else {
            integrity::back_up(&path).map_err(|e| StoreError::Write {
                path: path.clone(),
                detail: format!("cannot copy it aside before opening: {e}"),
            })?
        };
        let (generation_file, file_generation) = integrity::GenerationFile::open(data_dir)
            .map_err(|e| StoreError::Write {
                path: data_dir.join("store.gen"),
                detail: e.to_string(),
            })?;
        match Store::open_sled_store(
            path.clone(),
            fresh,
            &check_path,
            cipher,
            generation_file,
            file_generation,
        ) {
            Ok(store) => Ok(store),
            Err(e) => {
                if let Some(backup) = backup
                    && let Err(restore) = integrity::restore(&backup, &path)
                {
                    tracing::error!(error = %restore, backup = %backup.display(), "could not put the store back as it was");
                }
                Err(e)
            }
        }
    }

    fn open_sled_store(
        path: PathBuf,
        fresh: bool,
        check_path: &Path,
        cipher: Cipher,
        generation_file: integrity::GenerationFile,
        file_generation: Option<u64>,
    ) -> Result<Store, StoreError> {
        let db = open_sled(&path)?;
        let corrupt = |e: sled::Error| StoreError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        };
        let meta = db.open_tree("meta").map_err(corrupt)?;
        // Beside the store (`store.check`) and in it, so that an older
        // sidekeyd refuses a newer store before it reads a record.
        let write_version = || -> Result<(), StoreError> {
            meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())
                .map_err(corrupt)?;
            db.flush().map_err(corrupt)?;
            check::write(check_path, &cipher).map_err(|e| StoreError::Write {
                path: check_path.to_path_buf(),
                detail: e.to_string(),
            })
        };
        if fresh {
            write_version()?;
        }
        let version = meta
            .get("schema_version")
            .map_err(corrupt)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt {
                path: path.clone(),
                detail: "its schema version record is missing".into(),
            })?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path,
                found: version,
            });
        }
        if version < SCHEMA_VERSION {
            // Every older record still reads; the version goes up before
            // any record in the new form is written.
            write_version()?;
            tracing::info!(
                from = version,
                to = SCHEMA_VERSION,
                "upgraded the store's schema"
            );
        }
        let generation = meta
            .get("generation")
            .map_err(corrupt)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        if let Some(expected) = file_generation
            && generation < expected
        {
            return Err(StoreError::Corrupt {
                path,
                detail: format!(
                    "it holds generation {generation} but {expected} was flushed, so changes were lost"
                ),
            });
        }
        Ok(Store {
            meta,
            generation: tokio::sync::Mutex::new((generation, generation_file)),
            conns: db.open_tree("conns").map_err(corrupt)?,
            creds: db.open_tree("creds").map_err(corrupt)?,
            grants: db.open_tree("grants").map_err(corrupt)?,
            revoked: db.open_tree("revoked").map_err(corrupt)?,
            db,
            cipher,
            path,
            writes: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Store writes since start.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    pub fn schema_version(&self) -> u32 {
        SCHEMA_VERSION
    }

    /// Makes every write so far durable, and records a new generation both
    /// in sled and in `store.gen` (in that order, so sled is never behind).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let mut generation = self.generation.lock().await;
        let next = generation.0 + 1;
        self.meta
            .insert("generation", &next.to_be_bytes())
            .map_err(|e| self.write_error(e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| self.write_error(e))?;
        generation.1.write(next).map_err(|e| StoreError::Write {
            path: self.path.with_extension("gen"),
            detail: e.to_string(),
        })?;
        generation.0 = next;
        Ok(())
    }

    // --- connections

    /// Every connection record, in id order, read one at a time.
    pub fn conns(&self) -> impl Iterator<Item = Result<ConnRecord, StoreError>> + '_ {
        self.conns.iter().map(|entry| {
            let (id, bytes) = entry.map_err(|e| self.corrupt(e.to_string()))?;
            self.conn_from(&id, &bytes)
        })
    }

    pub fn conn(&self, id: &str) -> Result<Option<ConnRecord>, StoreError> {
        self.conns
            .get(id)
            .map_err(|e| self.corrupt(e.to_string()))?
            .map(|bytes| self.conn_from(id.as_bytes(), &bytes))
            .transpose()
    }

    /// Fills in what schema 2 leaves out: the id from the sled key, the
    /// hash and last four from the sealed key. Schema 1 records hold them.
    fn conn_from(&self, id: &[u8], bytes: &[u8]) -> Result<ConnRecord, StoreError> {
        let mut record: ConnRecord = self.parse(bytes)?;
        if record.id.is_empty() {
            record.id = String::from_utf8(id.to_vec())
                .map_err(|_| self.corrupt("a connection id is not UTF-8".into()))?;
        }
        if record.key_hash.is_empty() || record.key_last4.is_empty() {
            let key = self.open_conn_key(&record)?;
            record.key_hash = KeyHash::of(key.expose()).to_hex();
            record.key_last4 = keys::last4(&key);
        }
        Ok(record)
    }

    pub fn put_conn(&self, record: &ConnRecord) -> Result<(), StoreError> {
        self.put(&self.conns, &record.id, record)
    }

    pub fn remove_conn(&self, id: &str) -> Result<(), StoreError> {
        self.remove(&self.conns, id)
    }

    pub fn seal_conn_key(&self, id: &str, key: &Secret) -> String {
        hex::encode(
            self.cipher
                .seal(conn_aad(id).as_bytes(), key.expose().as_bytes()),
        )
    }

    pub fn open_conn_key(&self, record: &ConnRecord) -> Result<Secret, StoreError> {
        self.open_secret(&conn_aad(&record.id), &record.key_sealed)
    }

    // --- credentials

    pub fn creds(&self) -> Result<Vec<CredRecord>, StoreError> {
        self.records(&self.creds).collect()
    }

    pub fn put_cred(&self, record: &CredRecord) -> Result<(), StoreError> {
        self.put(&self.creds, &record.name, record)
    }

    pub fn remove_cred(&self, name: &str) -> Result<(), StoreError> {
        self.remove(&self.creds, name)
    }

    pub fn seal_cred_secret(&self, name: &str, secret: &Secret) -> String {
        hex::encode(
            self.cipher
                .seal(cred_aad(name).as_bytes(), secret.expose().as_bytes()),
        )
    }

    pub fn open_cred_secret(&self, record: &CredRecord) -> Result<Secret, StoreError> {
        self.open_secret(&cred_aad(&record.name), &record.secret_sealed)
    }

    // --- grants

    pub fn grants(&self) -> Result<Vec<GrantRecord>, StoreError> {
        self.records(&self.grants).collect()
    }

    pub fn put_grant(&self, record: &GrantRecord) -> Result<(), StoreError> {
        self.put(
            &self.grants,
            &grant_id(&record.conn_id, &record.cred),
            record,
        )
    }

    pub fn remove_grant(&self, conn_id: &str, cred: &str) -> Result<(), StoreError> {
        self.remove(&self.grants, &grant_id(conn_id, cred))
    }

    // --- revoked key hashes: a deleted connection's key is never valid again

    pub fn revoke(&self, hash: &KeyHash) -> Result<(), StoreError> {
        self.revoked
            .insert(hash.0, &[])
            .map_err(|e| self.write_error(e))?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn revoked(&self) -> Result<Vec<KeyHash>, StoreError> {
        self.revoked
            .iter()
            .keys()
            .map(|k| {
                let k = k.map_err(|e| self.corrupt(e.to_string()))?;
                <[u8; 32]>::try_from(k.as_ref())
                    .map(KeyHash)
                    .map_err(|_| self.corrupt("a revoked key hash has the wrong length".into()))
            })
            .collect()
    }

    // --- the interception CA: the certificate is public, the key is sealed

    pub fn ca(&self) -> Result<Option<(String, Secret)>, StoreError> {
        let cert = self
            .meta
            .get("ca_cert")
            .map_err(|e| self.corrupt(e.to_string()))?;
        let key = self
            .meta
            .get("ca_key")
            .map_err(|e| self.corrupt(e.to_string()))?;
        let (Some(cert), Some(key)) = (cert, key) else {
            return Ok(None);
        };
        let cert = String::from_utf8(cert.to_vec())
            .map_err(|_| self.corrupt("the CA certificate is not UTF-8".into()))?;
        let key = self.open_secret("meta:ca_key", &String::from_utf8_lossy(&key))?;
        Ok(Some((cert, key)))
    }

    pub fn put_ca(&self, cert_pem: &str, key_pem: &Secret) -> Result<(), StoreError> {
        let sealed = hex::encode(
            self.cipher
                .seal(b"meta:ca_key", key_pem.expose().as_bytes()),
        );
        self.meta
            .insert("ca_key", sealed.as_bytes())
            .map_err(|e| self.write_error(e))?;
        self.meta
            .insert("ca_cert", cert_pem.as_bytes())
            .map_err(|e| self.write_error(e))?;
        self.db.flush().map_err(|e| self.write_error(e))?;
        Ok(())
    }

    // --- helpers

    fn put<T: Serialize>(&self, tree: &sled::Tree, id: &str, record: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).expect("records always serialize");
        tree.insert(id, bytes).map_err(|e| self.write_error(e))?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn remove(&self, tree: &sled::Tree, id: &str) -> Result<(), StoreError> {
        tree.remove(id).map_err(|e| self.write_error(e))?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn records<'a, T: DeserializeOwned>(
        &'a self,
        tree: &sled::Tree,
    ) -> impl Iterator<Item = Result<T, StoreError>> + 'a {
        tree.iter().values().map(|v| {
            let v = v.map_err(|e| self.corrupt(e.to_string()))?;
            self.parse(&v)
        })
    }

    fn parse<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.corrupt(format!("a record does not parse: {e}")))
    }

    fn open_secret(&self, aad: &str, sealed_hex: &str) -> Result<Secret, StoreError> {
        let sealed = hex::decode(sealed_hex)
            .map_err(|_| self.corrupt(format!("the sealed value of {aad} is not hex")))?;
        let plain = self
            .cipher
            .open(aad.as_bytes(), &sealed)
            .map_err(|_| self.corrupt(format!("the sealed value of {aad} does not decrypt")))?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|_| self.corrupt(format!("the sealed value of {aad} is not UTF-8")))?;
        Ok(Secret::new(text))
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn write_error(&self, e: sled::Error) -> StoreError {
        StoreError::Write {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }
}

fn conn_aad(id: &str) -> String {
    format!("conn:{id}:key")
}

fn cred_aad(name: &str) -> String {
    format!("cred:{name}:secret")
}

fn grant_id(conn_id: &str, cred: &str) -> String {
    format!("{conn_id}/{cred}")
}

fn dir_is_empty(path: &Path) -> bool {
    std::fs::read_dir(path)
        .map(|mut entries| entries.next().is_none())
        .unwrap_or(false)
}

/// sled 0.34 can panic on some corrupt files rather than return an error, so
/// the open is fenced and either outcome becomes a clear `Corrupt` error.
fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    // sled's default page cache is 1 GiB. Its LRU weighs accesses in batches
    // of 64 per shard over 256 shards, so the pages the registry reads while
    // loading stay cached whatever the cap (5-6 MB at 10,000 connections, and
    // still all at 100,000); the cap only bounds a store that is read more.
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(4 * 1024 * 1024);
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
    std::panic::set_hook(previous_hook);
    match outcome {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(corrupt(e.to_string())),
        Err(_) => Err(corrupt("reading it failed".into())),
    }
}

/// One named sled tree of JSON values, keyed by bytes. Iteration is in key order.
#[derive(Clone)]
pub struct Table {
    tree: sled::Tree,
    path: PathBuf,
}

impl Table {
    pub fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.tree.get(key).map_err(|e| self.error(e))? {
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("a sync record does not parse: {e}"),
                    })
            }
            None => Ok(None),
        }
    }

    pub fn put<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).expect("records always serialize");
        self.tree.insert(key, bytes).map_err(|e| self.error(e))?;
        Ok(())
    }

    pub fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        self.tree.remove(key).map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Every (key, value) with a key at or after `from`, in key order.
    pub fn range_from<T: DeserializeOwned>(
        &self,
        from: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        self.tree
            .range(from..)
            .map(|entry| {
                let (k, v) = entry.map_err(|e| self.error(e))?;
                let value = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("a sync record does not parse: {e}"),
                })?;
                Ok((k.to_vec(), value))
            })
            .collect()
    }

    pub fn all<T: DeserializeOwned>(&self) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        self.range_from(&[])
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush_async().await.map_err(|e| self.error(e))?;
        Ok(())
    }

    fn error(&self, e: sled::Error) -> StoreError {
        StoreError::Write {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_records_leave_out_unset_fields_and_read_older_ones() {
        let older = r#"{"id":"conn_4cd66066","name":"a","kind":"agent","key_hash":"00","key_last4":"c058","key_sealed":"00","created_at":1,"rotated_at":null,"expires_at":null,"rate":null,"disabled":false,"last_used_at":null,"last_used_by":null,"previous":null}"#;
        let record: ConnRecord = serde_json::from_str(older).unwrap();
        assert_eq!(record.key_hash, "00", "a schema-1 record's hash is read");
        let written = serde_json::to_string(&record).unwrap();
        assert_eq!(
            written,
            r#"{"name":"a","kind":"agent","key_sealed":"00","created_at":1}"#
        );
        let back: ConnRecord = serde_json::from_str(&written).unwrap();
        assert!(back.id.is_empty() && back.key_hash.is_empty() && back.key_last4.is_empty());
    }

    fn open(dir: &Path) -> Store {
        let master = master_key::load_or_create(dir).unwrap();
        Store::open(dir, &master).unwrap()
    }

    #[test]
    fn the_id_hash_and_last4_are_filled_in_and_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let key = Secret::new(format!("sk_live_{}", "ab".repeat(32)));
        let record = ConnRecord {
            id: "conn_00000001".into(),
            name: "a".into(),
            kind: ConnKind::Agent,
            key_hash: KeyHash::of(key.expose()).to_hex(),
            key_last4: "abab".into(),
            key_sealed: store.seal_conn_key("conn_00000001", &key),
            created_at: 1,
            rotated_at: None,
            expires_at: None,
            rate: None,
            disabled: false,
            last_used_at: None,
            last_used_by: None,
            previous: None,
            share: None,
            read_only: false,
        };
        store.put_conn(&record).unwrap();
        let raw = store.conns.get(&record.id).unwrap().unwrap();
        let raw = String::from_utf8_lossy(&raw);
        for field in ["\"id\"", "key_hash", "key_last4"] {
            assert!(!raw.contains(field), "{field} in {raw}");
        }
        let read = store.conn(&record.id).unwrap().unwrap();
        let listed: Vec<ConnRecord> = store.conns().collect::<Result<_, _>>().unwrap();
        for read in [read, listed[0].clone()] {
            assert_eq!(
                (read.id, read.key_hash, read.key_last4),
                (
                    record.id.clone(),
                    record.key_hash.clone(),
                    record.key_last4.clone()
                )
            );
        }
    }

    #[test]
    fn a_schema_1_store_is_upgraded_so_older_daemons_refuse_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .meta
            .insert("schema_version", &1u32.to_be_bytes())
            .unwrap();
        store.db.flush().unwrap();
        drop(store);
        let check = dir.path().join("store.check");
        let text = std::fs::read_to_string(&check).unwrap();
        std::fs::write(
            &check,
            text.replacen(&format!("{SCHEMA_VERSION} "), "1 ", 1),
        )
        .unwrap();

        let store = open(dir.path());
        let version = store.meta.get("schema_version").unwrap().unwrap();
        assert_eq!(version.as_ref(), SCHEMA_VERSION.to_be_bytes());
        let text = std::fs::read_to_string(&check).unwrap();
        assert!(text.starts_with(&format!("{SCHEMA_VERSION} ")), "{text}");
    }
}
