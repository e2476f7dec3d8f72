//! Credentials and the grants that let connections use them.

use std::collections::HashSet;
use std::sync::Arc;

use sidekey_api::{ConnKind, Cred, CredCreate, GrantCreated};

use crate::error::ApiError;
use crate::keys::{self, KeyHash, KeyPrefix, Secret};
use crate::store::{CredRecord, GrantRecord};

use super::*;

impl Registry {
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

    /// Replaces a credential's bindings; refused when it would then tie with
    /// another credential granted to one of its connections.
    pub async fn set_cred_hosts(&self, name: &str, hosts: &[String]) -> Result<Cred, ApiError> {
        let _change = self.change.lock().await;
        let mut record = self.read().find_cred(name)?.clone();
        record.hosts = validate_hosts(hosts)?;
        record.updated_at = now_secs();
        let secret = self.read().live_creds[name].secret.clone();
        let live = Arc::new(LiveCred::new(&record, secret));
        {
            let index = self.read();
            let conns: Vec<String> = index
                .grants
                .keys()
                .filter(|(_, cred)| cred == name)
                .map(|(conn, _)| conn.clone())
                .collect();
            for conn in conns {
                index.refuse_tie(&conn, &live)?;
            }
        }
        self.store.put_cred(&record)?;
        self.store.flush().await?;
        let mut index = self.write();
        index.live_creds.insert(record.name.clone(), live);
        index.creds.insert(record.name.clone(), record.clone());
        tracing::info!(cred = %record.name, hosts = ?record.hosts, "credential bindings replaced");
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

    /// Grants `cred` to an agent connection and issues its `pxr_` token; with
    /// `regenerate`, issues a new token for an existing grant instead.
    pub async fn grant(
        &self,
        conn_ref: &str,
        cred: &str,
        regenerate: bool,
    ) -> Result<GrantCreated, ApiError> {
        let _change = self.change.lock().await;
        if regenerate {
            let (grant, conn_name) = self.find_grant(conn_ref, cred)?;
            let (record, token) = self.reissue(&grant)?;
            self.store.flush().await?;
            self.write().replace_grant(record);
            tracing::info!(conn = %grant.conn_id, cred, "grant token regenerated");
            return Ok(GrantCreated {
                conn_id: grant.conn_id,
                conn: conn_name,
                cred: cred.to_string(),
                token: token.expose().to_string(),
            });
        }
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
                    "'{0}' already has '{cred}'; to issue a new token, run: sidekeyctl grant {0} {cred} --regenerate",
                    conn.name
                )));
            }
            index.refuse_tie(&conn.id, &index.live_creds[cred])?;
            (conn.id.clone(), conn.name.clone())
        };
        let token = keys::mint(KeyPrefix::Pxr);
        let record = GrantRecord {
            conn_id: conn_id.clone(),
            cred: cred.to_string(),
            token_hash: KeyHash::of(token.expose()).to_hex(),
            created_at: now_secs(),
            token_last4: keys::last4(&token),
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

    /// Writes a new token for `grant` and revokes its old one for good. The
    /// caller holds the change lock, flushes, then updates the index.
    pub(super) fn reissue(&self, grant: &GrantRecord) -> Result<(GrantRecord, Secret), ApiError> {
        let token = keys::mint(KeyPrefix::Pxr);
        let record = GrantRecord {
            token_hash: KeyHash::of(token.expose()).to_hex(),
            token_last4: keys::last4(&token),
            ..grant.clone()
        };
        if let Some(old) = KeyHash::from_hex(&grant.token_hash) {
            self.store.revoke(&old)?;
        }
        self.store.put_grant(&record)?;
        Ok((record, token))
    }

    /// The grant of `cred` to a connection, and the connection's name.
    fn find_grant(&self, conn_ref: &str, cred: &str) -> Result<(GrantRecord, String), ApiError> {
        let index = self.read();
        let conn = index.find_conn(conn_ref)?;
        let grant = index
            .grants
            .get(&(conn.id.clone(), cred.to_string()))
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "'{}' has no grant of '{cred}'; see its grants with: sidekeyctl conn info {}",
                    conn.name, conn.name
                ))
            })?;
        Ok((grant, conn.name.clone()))
    }

    pub async fn revoke_grant(&self, conn_ref: &str, cred: &str) -> Result<(), ApiError> {
        let _change = self.change.lock().await;
        let (grant, _) = self.find_grant(conn_ref, cred)?;
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
