//! Connections: create, rotate, disable, remove, and `last_used`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sidekey_api::{Conn, ConnCreate, ConnKind, ConnWithKey, GrantToken};

use crate::error::ApiError;
use crate::keys::{self, KeyHash, KeyPrefix};
use crate::store::{ConnRecord, GrantRecord, PreviousKey};

use super::*;

impl Registry {
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
            grant_tokens: Vec::new(),
        })
    }

    pub fn reveal_key(&self, reference: &str) -> Result<ConnWithKey, ApiError> {
        let (record, live) = self.find_conn_record(reference)?;
        let key = self.store.open_conn_key(&record)?;
        Ok(ConnWithKey {
            conn: self.read().view(&record, &live),
            key: key.expose().to_string(),
            grant_tokens: Vec::new(),
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
        // Without grace, a leaked key's grant tokens retire with it.
        let grants: Vec<GrantRecord> = match record.previous {
            Some(_) => Vec::new(),
            None => self.read().grants_of(&record.id).cloned().collect(),
        };
        let reissued = grants
            .iter()
            .map(|grant| self.reissue(grant))
            .collect::<Result<Vec<_>, _>>()?;
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
        let grant_tokens = reissued
            .into_iter()
            .map(|(grant, token)| {
                let cred = grant.cred.clone();
                index.replace_grant(grant);
                GrantToken {
                    cred,
                    token: token.expose().to_string(),
                }
            })
            .collect();
        tracing::info!(conn = %record.id, grace_secs = grace_secs.unwrap_or(0), "key rotated");
        Ok(ConnWithKey {
            conn: index.view(&record, &live),
            key: key.expose().to_string(),
            grant_tokens,
        })
    }

    pub async fn set_disabled(&self, reference: &str, disabled: bool) -> Result<Conn, ApiError> {
        let _change = self.change.lock().await;
        let (mut record, live) = self.find_conn_record(reference)?;
        record.disabled = disabled;
        self.store.put_conn(&record)?;
        self.store.flush().await?;
        live.disabled.store(disabled, Ordering::Release);
        self.changed.send_replace(());
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
}

pub(super) fn conn_not_found(reference: &str) -> ApiError {
    ApiError::not_found(format!(
        "No connection has the id or name '{reference}'; list them with: sidekeyctl conn ls"
    ))
}

pub(super) fn hex_of(hash: Option<KeyHash>) -> String {
    hash.map(KeyHash::to_hex).unwrap_or_default()
}
