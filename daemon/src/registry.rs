//! Connections, credentials and grants: every change goes to the store first
//! (flushed), then to the in-memory index that verifies keys. A change is
//! acknowledged only after both, so a rotation that returned is in force.
//!
//! Verification is a read lock and a hash lookup; it never writes the store.
//! The index holds only what verification needs: control operations read a
//! connection's full record from the store. `last_used` is kept in memory and
//! written in batches by [`Registry::flush_last_used`].

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sidekey_api::{
    Conn, ConnCreate, ConnKind, ConnState, ConnWithKey, Cred, CredCreate, GrantCreated,
};

use crate::error::ApiError;
use crate::hosts::HostPattern;
use crate::keys::{self, KeyHash, KeyPrefix, Secret};
use crate::ratelimit::{DefaultRates, TokenBucket};
use crate::store::{ConnRecord, CredRecord, GrantRecord, PreviousKey, Store};

/// What a valid key resolves to.
#[derive(Clone)]
pub struct Verified {
    pub conn: Arc<LiveConn>,
    /// Set when the key was a `pxr_` grant token: the one credential it unlocks.
    pub grant_cred: Option<String>,
}

/// The hot-path view of a connection.
pub struct LiveConn {
    pub id: String,
    pub name: String,
    pub kind: ConnKind,
    pub expires_at: Option<u64>,
    /// A sync key's share, and whether it may only pull.
    pub share: Option<Box<str>>,
    pub read_only: bool,
    disabled: AtomicBool,
    /// Boxed: most connections have no rate of their own.
    limiter: Option<Box<TokenBucket>>,
    last_used_at: AtomicU64,
    last_used_by: Mutex<String>,
    dirty: AtomicBool,
}

enum Holder {
    /// A connection's key. `until_ms` is set for a rotated-out key in its grace period.
    Conn {
        conn: Arc<LiveConn>,
        until_ms: Option<u64>,
    },
    Grant {
        conn: Arc<LiveConn>,
        cred: String,
    },
}

/// A credential ready for injection: parsed host patterns and the secret.
pub struct LiveCred {
    pub name: String,
    pub cred_type: sidekey_api::CredType,
    patterns: Vec<HostPattern>,
    path_prefix: Option<String>,
    pub secret: Secret,
    /// The header fields it sets, rendered once rather than per request.
    pub fields: Vec<(http::HeaderName, http::HeaderValue)>,
    needles: Vec<String>,
}

impl LiveCred {
    pub(crate) fn new(record: &CredRecord, secret: Secret) -> LiveCred {
        LiveCred {
            name: record.name.clone(),
            cred_type: record.cred_type,
            patterns: record
                .hosts
                .iter()
                .filter_map(|h| HostPattern::parse(h).ok())
                .collect(),
            path_prefix: record.path_prefix.clone(),
            needles: crate::inject::needles(record.cred_type, &secret),
            fields: crate::inject::header_fields(record.cred_type, &secret),
            secret,
        }
    }

    /// `host` must be normalized.
    pub fn binds_host(&self, host: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(host))
    }

    /// Whether its secret, or a common encoding of it, is in one of `texts`.
    pub fn appears_in<'t>(&self, mut texts: impl Iterator<Item = &'t [u8]>) -> bool {
        texts.any(|text| {
            self.needles
                .iter()
                .any(|needle| contains(text, needle.as_bytes()))
        })
    }

    pub fn binds(&self, host: &str, path: &str) -> bool {
        self.binds_host(host)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| path_under(path, prefix))
    }
}

/// `/v1/x` is under `/v1`; `/v10` is not.
fn path_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

#[derive(Default)]
struct Index {
    by_hash: HashMap<KeyHash, Holder>,
    /// A name is found by a scan: only control operations look one up.
    conns: ConnSet,
    creds: BTreeMap<String, CredRecord>,
    live_creds: HashMap<String, Arc<LiveCred>>,
    grants: BTreeMap<(String, String), GrantRecord>,
}

/// Connections by id, keyed by each connection's own `id` field: at 10,000
/// connections a map would hold a second copy of every id.
#[derive(Default)]
struct ConnSet(HashSet<ById>);

struct ById(Arc<LiveConn>);

impl ConnSet {
    fn get(&self, id: &str) -> Option<&Arc<LiveConn>> {
        self.0.get(id).map(|conn| &conn.0)
    }

    fn insert(&mut self, conn: Arc<LiveConn>) {
        self.0.replace(ById(conn));
    }

    fn remove(&mut self, id: &str) {
        self.0.remove(id);
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<LiveConn>> {
        self.0.iter().map(|conn| &conn.0)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &ById) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.as_str().hash(state);
    }
}

pub struct Registry {
    store: Store,
    index: RwLock<Index>,
    /// Serializes changes so that store and index move together.
    change: tokio::sync::Mutex<()>,
    /// The config's `default_rate`, for agent connections without their own.
    default_rates: DefaultRates,
    /// Moves on with every change to the index, so a [`Lookup`] can tell
    /// that it still holds.
    generation: AtomicU64,
}

/// Which connection a key names, as of one state of the index.
pub struct Lookup {
    verified: Verified,
    /// The end of a rotated key's grace.
    until_ms: Option<u64>,
    generation: u64,
}

impl Lookup {
    /// The connection, not yet admitted: see [`Registry::admit`].
    pub fn conn(&self) -> &Arc<LiveConn> {
        &self.verified.conn
    }
}

pub fn now_secs() -> u64 {
    now_ms() / 1000
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const MAX_NAME_LEN: usize = 64;

impl Registry {
    /// Loads every record into the index. Revoked keys and grants of missing
    /// connections are left out, so a half-finished delete stays deleted.
    pub fn load(store: Store) -> Result<Registry, ApiError> {
        let revoked: HashSet<KeyHash> = store.revoked()?.into_iter().collect();
        let mut index = Index::default();
        let now = now_ms();
        for record in store.conns() {
            let record = record?;
            let Some(hash) = KeyHash::from_hex(&record.key_hash) else {
                continue;
            };
            if revoked.contains(&hash) {
                continue;
            }
            index.insert_conn(&record, now, &revoked);
        }
        for record in store.creds()? {
            let secret = store.open_cred_secret(&record)?;
            index.live_creds.insert(
                record.name.clone(),
                Arc::new(LiveCred::new(&record, secret)),
            );
            index.creds.insert(record.name.clone(), record);
        }
        for record in store.grants()? {
            index.insert_grant(record, &revoked);
        }
        Ok(Registry {
            store,
            index: RwLock::new(index),
            change: tokio::sync::Mutex::new(()),
            default_rates: DefaultRates::default(),
            generation: AtomicU64::new(0),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Sets the rate of agent connections that have none of their own.
    pub fn set_default_rate(&self, limit: Option<sidekey_api::RateLimit>) {
        self.default_rates.set(limit);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Moving the generation on while holding the lock: a lookup that read
    /// the old generation either finished before this change or waits for it.
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        let index = self.index.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        index
    }

    pub fn counts(&self) -> (u64, u64, u64) {
        let index = self.read();
        (
            index.conns.len() as u64,
            index.creds.len() as u64,
            index.grants.len() as u64,
        )
    }

    // --- verification (hot path)

    /// Checks a presented key. `used_by` says what used it, for `last_used`.
    pub fn verify(&self, presented: Option<&str>, used_by: &str) -> Result<Verified, ApiError> {
        let presented = presented.ok_or_else(ApiError::token_missing)?;
        self.admit(&self.look_up(presented)?, used_by)
    }

    /// Finds the connection a key names, without admitting a request yet.
    pub fn look_up(&self, presented: &str) -> Result<Lookup, ApiError> {
        if keys::parse(presented).is_none() {
            return Err(ApiError::invalid_access_key());
        }
        let hash = KeyHash::of(presented);
        let generation = self.generation.load(Ordering::Acquire);
        let index = self.read();
        match index.by_hash.get_key_value(&hash) {
            Some((stored, holder)) if stored.ct_eq(&hash) => Ok(match holder {
                Holder::Conn { conn, until_ms } => Lookup {
                    verified: Verified {
                        conn: conn.clone(),
                        grant_cred: None,
                    },
                    until_ms: *until_ms,
                    generation,
                },
                Holder::Grant { conn, cred } => Lookup {
                    verified: Verified {
                        conn: conn.clone(),
                        grant_cred: Some(cred.clone()),
                    },
                    until_ms: None,
                    generation,
                },
            }),
            _ => Err(ApiError::invalid_access_key()),
        }
    }

    /// Whether nothing has changed since `lookup`, so that the key it was
    /// made for still names the same connection.
    pub fn still_holds(&self, lookup: &Lookup) -> bool {
        lookup.generation == self.generation.load(Ordering::Acquire)
    }

    /// Admits one request on a looked-up key: its grace, the connection's
    /// state, expiry and rate, then marks it used.
    pub fn admit(&self, lookup: &Lookup, used_by: &str) -> Result<Verified, ApiError> {
        if lookup.until_ms.is_some_and(|until| now_ms() >= until) {
            return Err(ApiError::invalid_access_key());
        }
        let conn = &lookup.verified.conn;
        if conn.disabled.load(Ordering::Acquire) {
            return Err(ApiError::connection_disabled());
        }
        if conn.expires_at.is_some_and(|at| now_secs() >= at) {
            return Err(ApiError::key_expired());
        }
        if let Some(limiter) = &conn.limiter {
            limiter
                .check(Instant::now())
                .map_err(ApiError::rate_limited)?;
        } else if conn.kind == ConnKind::Agent {
            self.default_rates
                .check(&conn.id, Instant::now())
                .map_err(ApiError::rate_limited)?;
        }
        conn.mark_used(used_by);
        Ok(lookup.verified.clone())
    }

    // --- credential lookups for the proxy (hot path: read lock only)

    /// The credential `name`, if it is granted to the connection.
    pub fn granted_cred(&self, conn_id: &str, name: &str) -> Option<Arc<LiveCred>> {
        let index = self.read();
        index
            .grants
            .contains_key(&(conn_id.to_string(), name.to_string()))
            .then(|| index.live_creds.get(name).cloned())
            .flatten()
    }

    /// The first credential granted to the connection that is bound to this
    /// host and path. `host` must be normalized.
    pub fn cred_for(&self, conn_id: &str, host: &str, path: &str) -> Option<Arc<LiveCred>> {
        let index = self.read();
        index
            .granted_names(conn_id)
            .filter_map(|name| index.live_creds.get(name))
            .find(|cred| cred.binds(host, path))
            .cloned()
    }

    /// Whether any credential granted to the connection is bound to `host`.
    pub fn host_is_bound(&self, conn_id: &str, host: &str) -> bool {
        let index = self.read();
        index
            .granted_names(conn_id)
            .filter_map(|name| index.live_creds.get(name))
            .any(|cred| cred.binds_host(host))
    }

    /// The name of a credential whose secret appears in `texts` while the
    /// request goes to a host that credential is not bound to.
    pub fn leaked_secret<'t>(
        &self,
        texts: impl Iterator<Item = &'t [u8]> + Clone,
        host: &str,
    ) -> Option<String> {
        let index = self.read();
        index
            .live_creds
            .values()
            .filter(|cred| !cred.binds_host(host))
            .find(|cred| cred.appears_in(texts.clone()))
            .map(|cred| cred.name.clone())
    }

    // --- connections

    /// In id order. Records the index left out at load (revoked keys) are skipped.
    pub fn list_conns(&self) -> Result<Vec<Conn>, ApiError> {
        let mut conns = Vec::new();
        for record in self.store.conns() {
            let record = record?;
            let index = self.read();
            if let Some(live) = index.conns.get(&record.id) {
                conns.push(index.view(&record, live));
            }
        }
        Ok(conns)
    }

    pub fn conn(&self, reference: &str) -> Result<Conn, ApiError> {
        let (record, live) = self.find_conn_record(reference)?;
        Ok(self.read().view(&record, &live))
    }

    /// The sync connections whose key opens `share`, in id order.
    pub fn share_conns(&self, share: &str) -> Vec<Arc<LiveConn>> {
        let mut conns: Vec<Arc<LiveConn>> = self
            .read()
            .conns
            .iter()
            .filter(|conn| conn.share.as_deref() == Some(share))
            .cloned()
            .collect();
        conns.sort_by(|a, b| a.id.cmp(&b.id));
        conns
    }

    pub fn conn_name_taken(&self, name: &str) -> bool {
        self.read().conn_named(name).is_some()
    }

    /// The connection with this name or id, and its stored record.
    fn find_conn_record(&self, reference: &str) -> Result<(ConnRecord, Arc<LiveConn>), ApiError> {
        let live = self.read().find_conn(reference)?.clone();
        let record = self
            .store
            .conn(&live.id)?
            .ok_or_else(|| conn_not_found(reference))?;
        Ok((record, live))
    }

    pub async fn create_conn(&self, req: ConnCreate) -> Result<ConnWithKey, ApiError> {
        validate_name(&req.name, "connection")?;
        if req.expires_in_secs == Some(0) {
            return Err(ApiError::bad_request(
                "An expiry must be in the future, like --expires 30d.",
            ));
        }
        let _change = self.change.lock().await;
        if self.read().conn_named(&req.name).is_some() {
            return Err(ApiError::conflict(format!(
                "A connection named '{}' already exists; pick another name, or remove it first with: sidekeyctl conn rm {}",
                req.name, req.name
            )));
        }
        let id = self.fresh_conn_id();
        let prefix = match req.kind {
            ConnKind::Agent => KeyPrefix::Live,
            ConnKind::Sync => KeyPrefix::Cli,
        };
        let key = keys::mint(prefix);
        let now = now_secs();
        let record = ConnRecord {
            key_hash: KeyHash::of(key.expose()).to_hex(),
            key_last4: keys::last4(&key),
            key_sealed: self.store.seal_conn_key(&id, &key),
            id,
            name: req.name,
            kind: req.kind,
            created_at: now,
            rotated_at: None,
            expires_at: req.expires_in_secs.map(|secs| now.saturating_add(secs)),
            rate: req.rate,
            disabled: false,
            last_used_at: None,
            last_used_by: None,
            previous: None,
            share: req.share.filter(|_| req.kind == ConnKind::Sync),
            read_only: req.read_only.unwrap_or(false),
        };
        self.store.put_conn(&record)?;
        self.store.flush().await?;
        let mut index = self.write();
        let live = index.insert_conn(&record, now_ms(), &HashSet::new());
        tracing::info!(conn = %record.id, name = %record.name, kind = record.kind.as_str(), "connection created");
        Ok(ConnWithKey {
            conn: index.view(&record, &live),
            key: key.expose().to_string(),
        })
    }

    pub fn reveal_key(&self, reference: &str) -> Result<ConnWithKey, ApiError> {
        let (record, live) = self.find_conn_record(reference)?;
        let key = self.store.open_conn_key(&record)?;
        Ok(ConnWithKey {
            conn: self.read().view(&record, &live),
            key: key.expose().to_string(),
        })
    }

    /// Atomic rotation: once this returns, the old key fails (or, with a
    /// grace period, fails from `grace_secs` on) and the new key works.
    pub async fn rotate_key(
        &self,
        reference: &str,
        grace_secs: Option<u64>,
    ) -> Result<ConnWithKey, ApiError> {
        let _change = self.change.lock().await;
        let (mut record, live) = self.find_conn_record(reference)?;
        let prefix = match record.kind {
            ConnKind::Agent => KeyPrefix::Live,
            ConnKind::Sync => KeyPrefix::Cli,
        };
        let old_hash = KeyHash::from_hex(&record.key_hash);
        let old_previous = record.previous.take();
        let key = keys::mint(prefix);
        record.key_hash = KeyHash::of(key.expose()).to_hex();
        record.key_last4 = keys::last4(&key);
        record.key_sealed = self.store.seal_conn_key(&record.id, &key);
        record.rotated_at = Some(now_secs());
        record.previous = grace_secs.filter(|s| *s > 0).map(|secs| PreviousKey {
            key_hash: hex_of(old_hash),
            until: now_ms().saturating_add(secs.saturating_mul(1000)),
        });
        if record.previous.is_none()
            && let Some(hash) = old_hash
        {
            self.store.revoke(&hash)?;
        }
        self.store.put_conn(&record)?;
        self.store.flush().await?;

        let mut index = self.write();
        if let Some(hash) = old_hash {
            index.by_hash.remove(&hash);
        }
        if let Some(hash) = old_previous.and_then(|p| KeyHash::from_hex(&p.key_hash)) {
            index.by_hash.remove(&hash);
        }
        index.link_keys(&record.key_hash, record.previous.as_ref(), &live, now_ms());
        tracing::info!(conn = %record.id, grace_secs = grace_secs.unwrap_or(0), "key rotated");
        Ok(ConnWithKey {
            conn: index.view(&record, &live),
            key: key.expose().to_string(),
        })
    }

    pub async fn set_disabled(&self, reference: &str, disabled: bool) -> Result<Conn, ApiError> {
        let _change = self.change.lock().await;
        let (mut record, live) = self.find_conn_record(reference)?;
        record.disabled = disabled;
        self.store.put_conn(&record)?;
        self.store.flush().await?;
        live.disabled.store(disabled, Ordering::Release);
        tracing::info!(conn = %record.id, disabled, "connection state changed");
        Ok(self.read().view(&record, &live))
    }

    /// Deletes a connection and revokes its key (and any grace-period key and
    /// grant tokens) for good: the hashes are kept so a restore cannot revive them.
    pub async fn remove_conn(&self, reference: &str) -> Result<Conn, ApiError> {
        let _change = self.change.lock().await;
        let (record, live) = self.find_conn_record(reference)?;
        let grants: Vec<GrantRecord> = self
            .read()
            .grants
            .values()
            .filter(|g| g.conn_id == record.id)
            .cloned()
            .collect();
        let mut hashes: Vec<KeyHash> = KeyHash::from_hex(&record.key_hash).into_iter().collect();
        hashes.extend(
            record
                .previous
                .as_ref()
                .and_then(|p| KeyHash::from_hex(&p.key_hash)),
        );
        hashes.extend(
            grants
                .iter()
                .filter_map(|g| KeyHash::from_hex(&g.token_hash)),
        );
        for hash in &hashes {
            self.store.revoke(hash)?;
        }
        // Revocations are durable before the record goes, so a crash in
        // between leaves the key dead rather than alive.
        self.store.flush().await?;
        for grant in &grants {
            self.store.remove_grant(&grant.conn_id, &grant.cred)?;
        }
        self.store.remove_conn(&record.id)?;
        self.store.flush().await?;

        let mut index = self.write();
        let view = index.view(&record, &live);
        for hash in &hashes {
            index.by_hash.remove(hash);
        }
        for grant in &grants {
            index
                .grants
                .remove(&(grant.conn_id.clone(), grant.cred.clone()));
        }
        index.conns.remove(&record.id);
        tracing::info!(conn = %record.id, "connection deleted and its key revoked");
        Ok(view)
    }

    /// Writes the `last_used` of every connection used since the last call, in
    /// one batch. Returns how many records it wrote.
    pub async fn flush_last_used(&self) -> Result<usize, ApiError> {
        let _change = self.change.lock().await;
        let dirty: Vec<Arc<LiveConn>> = self
            .read()
            .conns
            .iter()
            .filter(|live| live.dirty.swap(false, Ordering::AcqRel))
            .cloned()
            .collect();
        let mut count = 0;
        for live in dirty {
            let Some(mut record) = self.store.conn(&live.id)? else {
                continue;
            };
            record.last_used_at = Some(live.last_used_at.load(Ordering::Relaxed));
            record.last_used_by = Some(
                live.last_used_by
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            );
            self.store.put_conn(&record)?;
            count += 1;
        }
        if count > 0 {
            self.store.flush().await?;
        }
        Ok(count)
    }

    fn fresh_conn_id(&self) -> String {
        let index = self.read();
        loop {
            let mut bytes = [0u8; 4];
            getrandom::fill(&mut bytes).expect("the OS random number generator failed");
            let id = format!("conn_{}", hex::encode(bytes));
            if index.conns.get(&id).is_none() {
                return id;
            }
        }
    }

    // --- credentials

    pub fn list_creds(&self) -> Vec<Cred> {
        let index = self.read();
        index.creds.values().map(|r| index.cred_view(r)).collect()
    }

    pub fn cred(&self, name: &str) -> Result<Cred, ApiError> {
        let index = self.read();
        let record = index.find_cred(name)?;
        Ok(index.cred_view(record))
    }

    pub async fn add_cred(&self, req: CredCreate) -> Result<Cred, ApiError> {
        validate_name(&req.name, "credential")?;
        let hosts = validate_hosts(&req.hosts)?;
        let path_prefix = validate_path_prefix(req.path_prefix.as_deref())?;
        let secret = Secret::new(req.secret);
        crate::inject::validate_secret(req.cred_type, &secret).map_err(ApiError::bad_request)?;
        let _change = self.change.lock().await;
        if self.read().creds.contains_key(&req.name) {
            return Err(ApiError::conflict(format!(
                "A credential named '{0}' already exists; replace its secret with: sidekeyctl cred set {0}",
                req.name
            )));
        }
        let now = now_secs();
        let record = CredRecord {
            secret_sealed: self.store.seal_cred_secret(&req.name, &secret),
            name: req.name,
            cred_type: req.cred_type,
            hosts,
            path_prefix,
            created_at: now,
            updated_at: now,
        };
        self.store.put_cred(&record)?;
        self.store.flush().await?;
        let mut index = self.write();
        index.live_creds.insert(
            record.name.clone(),
            Arc::new(LiveCred::new(&record, secret)),
        );
        index.creds.insert(record.name.clone(), record.clone());
        tracing::info!(cred = %record.name, "credential added");
        Ok(index.cred_view(&record))
    }

    /// Replaces a credential's secret; the very next request uses the new one.
    pub async fn set_cred_secret(&self, name: &str, secret: Secret) -> Result<Cred, ApiError> {
        let _change = self.change.lock().await;
        let mut record = self.read().find_cred(name)?.clone();
        crate::inject::validate_secret(record.cred_type, &secret).map_err(ApiError::bad_request)?;
        record.secret_sealed = self.store.seal_cred_secret(&record.name, &secret);
        record.updated_at = now_secs();
        self.store.put_cred(&record)?;
        self.store.flush().await?;
        let mut index = self.write();
        index.live_creds.insert(
            record.name.clone(),
            Arc::new(LiveCred::new(&record, secret)),
        );
        index.creds.insert(record.name.clone(), record.clone());
        tracing::info!(cred = %record.name, "credential secret replaced");
        Ok(index.cred_view(&record))
    }

    /// Removes a credential and every grant of it.
    pub async fn remove_cred(&self, name: &str) -> Result<Cred, ApiError> {
        let _change = self.change.lock().await;
        let (record, grants) = {
            let index = self.read();
            let record = index.find_cred(name)?.clone();
            let grants: Vec<GrantRecord> = index
                .grants
                .values()
                .filter(|g| g.cred == record.name)
                .cloned()
                .collect();
            (record, grants)
        };
        for grant in &grants {
            if let Some(hash) = KeyHash::from_hex(&grant.token_hash) {
                self.store.revoke(&hash)?;
            }
            self.store.remove_grant(&grant.conn_id, &grant.cred)?;
        }
        self.store.remove_cred(&record.name)?;
        self.store.flush().await?;
        let mut index = self.write();
        let view = index.cred_view(&record);
        for grant in &grants {
            index.remove_grant(&grant.conn_id, &grant.cred);
        }
        index.creds.remove(&record.name);
        index.live_creds.remove(&record.name);
        tracing::info!(cred = %record.name, "credential removed");
        Ok(view)
    }

    // --- grants

    pub async fn grant(&self, conn_ref: &str, cred: &str) -> Result<GrantCreated, ApiError> {
        let _change = self.change.lock().await;
        let (conn_id, conn_name) = {
            let index = self.read();
            let conn = index.find_conn(conn_ref)?;
            index.find_cred(cred)?;
            if conn.kind != ConnKind::Agent {
                return Err(ApiError::bad_request(format!(
                    "'{}' is a sync connection; only agent connections use credentials. Create one with: sidekeyctl conn create --name <name> --kind agent",
                    conn.name
                )));
            }
            if index
                .grants
                .contains_key(&(conn.id.clone(), cred.to_string()))
            {
                return Err(ApiError::conflict(format!(
                    "'{0}' already has '{cred}'; to issue a new token, run: sidekeyctl revoke {0} {cred} && sidekeyctl grant {0} {cred}",
                    conn.name
                )));
            }
            (conn.id.clone(), conn.name.clone())
        };
        let token = keys::mint(KeyPrefix::Pxr);
        let record = GrantRecord {
            conn_id: conn_id.clone(),
            cred: cred.to_string(),
            token_hash: KeyHash::of(token.expose()).to_hex(),
            created_at: now_secs(),
        };
        self.store.put_grant(&record)?;
        self.store.flush().await?;
        self.write().insert_grant(record, &HashSet::new());
        tracing::info!(conn = %conn_id, cred, "credential granted");
        Ok(GrantCreated {
            conn_id,
            conn: conn_name,
            cred: cred.to_string(),
            token: token.expose().to_string(),
        })
    }

    pub async fn revoke_grant(&self, conn_ref: &str, cred: &str) -> Result<(), ApiError> {
        let _change = self.change.lock().await;
        let grant = {
            let index = self.read();
            let conn = index.find_conn(conn_ref)?;
            index
                .grants
                .get(&(conn.id.clone(), cred.to_string()))
                .cloned()
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "'{}' has no grant of '{cred}'; see its grants with: sidekeyctl conn info {}",
                        conn.name, conn.name
                    ))
                })?
        };
        if let Some(hash) = KeyHash::from_hex(&grant.token_hash) {
            self.store.revoke(&hash)?;
        }
        self.store.remove_grant(&grant.conn_id, &grant.cred)?;
        self.store.flush().await?;
        self.write().remove_grant(&grant.conn_id, &grant.cred);
        tracing::info!(conn = %grant.conn_id, cred, "grant revoked");
        Ok(())
    }
}

impl Index {
    fn granted_names<'a>(&'a self, conn_id: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.grants
            .range((conn_id.to_string(), String::new())..)
            .take_while(move |((id, _), _)| id == conn_id)
            .map(|((_, cred), _)| cred)
    }

    fn insert_conn(
        &mut self,
        record: &ConnRecord,
        now_ms: u64,
        revoked: &HashSet<KeyHash>,
    ) -> Arc<LiveConn> {
        let live = Arc::new(LiveConn {
            id: record.id.clone(),
            name: record.name.clone(),
            kind: record.kind,
            expires_at: record.expires_at,
            share: record.share.as_deref().map(Box::from),
            read_only: record.read_only,
            disabled: AtomicBool::new(record.disabled),
            limiter: record.rate.map(|rate| Box::new(TokenBucket::new(rate))),
            last_used_at: AtomicU64::new(record.last_used_at.unwrap_or(0)),
            last_used_by: Mutex::new(record.last_used_by.clone().unwrap_or_default()),
            dirty: AtomicBool::new(false),
        });
        let previous = record
            .previous
            .as_ref()
            .filter(|p| KeyHash::from_hex(&p.key_hash).is_none_or(|hash| !revoked.contains(&hash)));
        self.link_keys(&record.key_hash, previous, &live, now_ms);
        self.conns.insert(live.clone());
        live
    }

    fn link_keys(
        &mut self,
        key_hash: &str,
        previous: Option<&PreviousKey>,
        live: &Arc<LiveConn>,
        now_ms: u64,
    ) {
        if let Some(hash) = KeyHash::from_hex(key_hash) {
            self.by_hash.insert(
                hash,
                Holder::Conn {
                    conn: live.clone(),
                    until_ms: None,
                },
            );
        }
        if let Some(previous) = previous
            && previous.until > now_ms
            && let Some(hash) = KeyHash::from_hex(&previous.key_hash)
        {
            self.by_hash.insert(
                hash,
                Holder::Conn {
                    conn: live.clone(),
                    until_ms: Some(previous.until),
                },
            );
        }
    }

    fn insert_grant(&mut self, record: GrantRecord, revoked: &HashSet<KeyHash>) {
        let Some(live) = self.conns.get(&record.conn_id) else {
            return;
        };
        if !self.creds.contains_key(&record.cred) {
            return;
        }
        if let Some(hash) = KeyHash::from_hex(&record.token_hash).filter(|h| !revoked.contains(h)) {
            self.by_hash.insert(
                hash,
                Holder::Grant {
                    conn: live.clone(),
                    cred: record.cred.clone(),
                },
            );
        }
        self.grants
            .insert((record.conn_id.clone(), record.cred.clone()), record);
    }

    fn remove_grant(&mut self, conn_id: &str, cred: &str) {
        if let Some(grant) = self.grants.remove(&(conn_id.to_string(), cred.to_string()))
            && let Some(hash) = KeyHash::from_hex(&grant.token_hash)
        {
            self.by_hash.remove(&hash);
        }
    }

    fn find_conn(&self, reference: &str) -> Result<&Arc<LiveConn>, ApiError> {
        self.conn_named(reference)
            .or_else(|| self.conns.get(reference))
            .ok_or_else(|| conn_not_found(reference))
    }

    fn conn_named(&self, name: &str) -> Option<&Arc<LiveConn>> {
        self.conns.iter().find(|conn| conn.name == name)
    }

    fn find_cred(&self, name: &str) -> Result<&CredRecord, ApiError> {
        self.creds.get(name).ok_or_else(|| {
            ApiError::not_found(format!(
                "No credential is named '{name}'; list them with: sidekeyctl cred ls"
            ))
        })
    }

    fn view(&self, record: &ConnRecord, live: &LiveConn) -> Conn {
        let prefix = match record.kind {
            ConnKind::Agent => KeyPrefix::Live,
            ConnKind::Sync => KeyPrefix::Cli,
        };
        let disabled = live.disabled.load(Ordering::Acquire);
        let state = if disabled {
            ConnState::Disabled
        } else if record.expires_at.is_some_and(|at| now_secs() >= at) {
            ConnState::Expired
        } else {
            ConnState::Active
        };
        let last_used = live.last_used_at.load(Ordering::Relaxed);
        let last_used_by = live
            .last_used_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Conn {
            id: record.id.clone(),
            name: record.name.clone(),
            kind: record.kind,
            key: keys::display(prefix, &record.key_last4),
            state,
            created_at: record.created_at,
            rotated_at: record.rotated_at,
            last_used_at: (last_used > 0).then_some(last_used),
            last_used_by: (!last_used_by.is_empty()).then_some(last_used_by),
            expires_at: record.expires_at,
            rate: record.rate,
            share: record.share.clone(),
            read_only: record.read_only,
            grace_until: record
                .previous
                .as_ref()
                .filter(|p| p.until > now_ms())
                .map(|p| p.until / 1000),
            grants: self.granted_names(&record.id).cloned().collect(),
        }
    }

    fn cred_view(&self, record: &CredRecord) -> Cred {
        Cred {
            name: record.name.clone(),
            cred_type: record.cred_type,
            hosts: record.hosts.clone(),
            path_prefix: record.path_prefix.clone(),
            created_at: record.created_at,
            updated_at: record.updated_at,
            granted_to: self
                .grants
                .keys()
                .filter(|(_, cred)| *cred == record.name)
                .filter_map(|(conn_id, _)| self.conns.get(conn_id).map(|conn| conn.name.clone()))
                .collect(),
        }
    }
}

impl LiveConn {
    /// Stores only what changed: every proxy thread marks the same busy
    /// connection, and a store to a shared line costs each of them.
    fn mark_used(&self, used_by: &str) {
        let now = now_secs();
        let mut changed = self.last_used_at.load(Ordering::Relaxed) != now;
        if changed {
            self.last_used_at.store(now, Ordering::Relaxed);
        }
        // Busy: another use is being recorded this instant, and of two uses
        // at once either may count as the last.
        if let Ok(mut by) = self.last_used_by.try_lock()
            && by.as_str() != used_by
        {
            by.clear();
            by.push_str(used_by);
            changed = true;
        }
        if changed && !self.dirty.load(Ordering::Acquire) {
            self.dirty.store(true, Ordering::Release);
        }
    }
}

fn conn_not_found(reference: &str) -> ApiError {
    ApiError::not_found(format!(
        "No connection has the id or name '{reference}'; list them with: sidekeyctl conn ls"
    ))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex_of(hash: Option<KeyHash>) -> String {
    hash.map(KeyHash::to_hex).unwrap_or_default()
}

fn validate_name(name: &str, what: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        return Err(ApiError::bad_request(format!(
            "The {what} name '{name}' is not valid; use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.', starting with a letter or digit."
        )));
    }
    if name.starts_with("conn_") {
        return Err(ApiError::bad_request(format!(
            "The {what} name '{name}' starts with 'conn_', which is reserved for ids; pick another name."
        )));
    }
    Ok(())
}

fn validate_hosts(hosts: &[String]) -> Result<Vec<String>, ApiError> {
    if hosts.is_empty() {
        return Err(ApiError::bad_request(
            "A credential needs at least one host to be bound to, like --host api.resend.com.",
        ));
    }
    let mut out = Vec::with_capacity(hosts.len());
    for host in hosts {
        let pattern = HostPattern::parse(host)
            .map_err(|why| ApiError::bad_request(format!("Invalid host pattern {why}.")))?;
        let text = pattern.to_string();
        if !out.contains(&text) {
            out.push(text);
        }
    }
    Ok(out)
}

fn validate_path_prefix(prefix: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(prefix) = prefix else {
        return Ok(None);
    };
    let ok = prefix.starts_with('/')
        && !prefix.split('/').any(|seg| seg == ".." || seg == ".")
        && prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#' && b != b'%');
    if !ok {
        return Err(ApiError::bad_request(format!(
            "The path prefix '{prefix}' is not valid; give an absolute path like /v1, without '..', '?', '#' or '%'."
        )));
    }
    Ok(Some(prefix.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(data_dir: &std::path::Path) -> Registry {
        let master = crate::store::master_key::load_or_create(data_dir).unwrap();
        Registry::load(Store::open(data_dir, &master).unwrap()).unwrap()
    }

    fn agent(name: &str) -> ConnCreate {
        ConnCreate {
            name: name.to_string(),
            kind: ConnKind::Agent,
            expires_in_secs: None,
            rate: None,
            share: None,
            read_only: None,
        }
    }

    #[tokio::test]
    async fn changes_to_a_connection_are_read_back_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let registry = open(dir.path());
        let first = registry.create_conn(agent("first")).await.unwrap();
        let second = registry.create_conn(agent("second")).await.unwrap();
        registry.verify(Some(&first.key), "test").unwrap();
        assert_eq!(registry.flush_last_used().await.unwrap(), 1);
        let rotated = registry.rotate_key("first", None).await.unwrap();
        assert!(registry.verify(Some(&first.key), "test").is_err());
        registry.set_disabled(&second.conn.id, true).await.unwrap();
        drop(registry);

        let registry = open(dir.path());
        let conn = registry.conn("first").unwrap();
        assert_eq!(conn.last_used_by.as_deref(), Some("test"));
        assert!(conn.rotated_at.is_some());
        assert_eq!(registry.reveal_key(&conn.id).unwrap().key, rotated.key);
        assert_eq!(
            registry.conn(&second.conn.id).unwrap().state,
            ConnState::Disabled
        );
        let mut ids = vec![first.conn.id, second.conn.id];
        ids.sort();
        let listed: Vec<String> = registry
            .list_conns()
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(listed, ids, "listed in id order");
        registry.remove_conn("second").await.unwrap();
        assert!(registry.conn("second").is_err());
        assert!(!registry.conn_name_taken("second"));
    }
}
