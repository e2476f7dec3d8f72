//! The in-memory index: keys by hash, connections, credentials and grants.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sidekey_api::{Conn, ConnKind, ConnState, Cred, GrantToken};

use crate::error::ApiError;
use crate::keys::{self, KeyHash, KeyPrefix};
use crate::ratelimit::TokenBucket;
use crate::store::{ConnRecord, CredRecord, GrantRecord, PreviousKey};

use super::*;

#[derive(Default)]
pub(super) struct Index {
    pub(super) by_hash: HashMap<KeyHash, Holder>,
    /// A name is found by a scan: only control operations look one up.
    pub(super) conns: ConnSet,
    pub(super) creds: BTreeMap<String, CredRecord>,
    pub(super) live_creds: HashMap<String, Arc<LiveCred>>,
    pub(super) grants: BTreeMap<(String, String), GrantRecord>,
}

/// Connections by id, keyed by each connection's own `id` field: at 10,000
/// connections a map would hold a second copy of every id.
#[derive(Default)]
pub(super) struct ConnSet(HashSet<ById>);

pub(super) struct ById(Arc<LiveConn>);

impl ConnSet {
    pub(super) fn get(&self, id: &str) -> Option<&Arc<LiveConn>> {
        self.0.get(id).map(|conn| &conn.0)
    }

    pub(super) fn insert(&mut self, conn: Arc<LiveConn>) {
        self.0.replace(ById(conn));
    }

    pub(super) fn remove(&mut self, id: &str) {
        self.0.remove(id);
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<LiveConn>> {
        self.0.iter().map(|conn| &conn.0)
    }

    pub(super) fn len(&self) -> usize {
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

impl Index {
    pub(super) fn grants_of<'a>(
        &'a self,
        conn_id: &'a str,
    ) -> impl Iterator<Item = &'a GrantRecord> + 'a {
        self.grants
            .range((conn_id.to_string(), String::new())..)
            .take_while(move |((id, _), _)| id == conn_id)
            .map(|(_, grant)| grant)
    }

    /// Refuses `cred` for a connection where another granted credential
    /// would be chosen for exactly the same requests: neither could win.
    pub(super) fn refuse_tie(&self, conn_id: &str, cred: &LiveCred) -> Result<(), ApiError> {
        for other in self.granted_names(conn_id) {
            if *other == cred.name {
                continue;
            }
            if let Some(binding) = self
                .live_creds
                .get(other)
                .and_then(|other| cred.ties_with(other))
            {
                return Err(ApiError::conflict(format!(
                    "'{}' and '{other}' are both bound to {binding} with the same path prefix, so neither could be chosen over the other; narrow one with: sidekeyctl cred set <name> --host …",
                    cred.name
                )));
            }
        }
        Ok(())
    }

    /// A grant whose token was reissued: the old token no longer opens it.
    pub(super) fn replace_grant(&mut self, record: GrantRecord) {
        self.remove_grant(&record.conn_id, &record.cred);
        self.insert_grant(record, &HashSet::new());
    }

    pub(super) fn granted_names<'a>(
        &'a self,
        conn_id: &'a str,
    ) -> impl Iterator<Item = &'a String> + 'a {
        self.grants
            .range((conn_id.to_string(), String::new())..)
            .take_while(move |((id, _), _)| id == conn_id)
            .map(|((_, cred), _)| cred)
    }

    pub(super) fn insert_conn(
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

    pub(super) fn link_keys(
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

    pub(super) fn insert_grant(&mut self, record: GrantRecord, revoked: &HashSet<KeyHash>) {
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

    pub(super) fn remove_grant(&mut self, conn_id: &str, cred: &str) {
        if let Some(grant) = self.grants.remove(&(conn_id.to_string(), cred.to_string()))
            && let Some(hash) = KeyHash::from_hex(&grant.token_hash)
        {
            self.by_hash.remove(&hash);
        }
    }

    pub(super) fn find_conn(&self, reference: &str) -> Result<&Arc<LiveConn>, ApiError> {
        self.conn_named(reference)
            .or_else(|| self.conns.get(reference))
            .ok_or_else(|| conn_not_found(reference))
    }

    pub(super) fn conn_named(&self, name: &str) -> Option<&Arc<LiveConn>> {
        self.conns.iter().find(|conn| conn.name == name)
    }

    pub(super) fn find_cred(&self, name: &str) -> Result<&CredRecord, ApiError> {
        self.creds.get(name).ok_or_else(|| {
            ApiError::not_found(format!(
                "No credential is named '{name}'; list them with: sidekeyctl cred ls"
            ))
        })
    }

    pub(super) fn view(&self, record: &ConnRecord, live: &LiveConn) -> Conn {
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
            grant_tokens: self
                .grants_of(&record.id)
                .map(|grant| GrantToken {
                    cred: grant.cred.clone(),
                    token: keys::display(KeyPrefix::Pxr, &grant.token_last4),
                })
                .collect(),
        }
    }

    pub(super) fn cred_view(&self, record: &CredRecord) -> Cred {
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
