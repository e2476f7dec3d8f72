//! Verification and the proxy's credential lookups: the hot path, a read
//! lock and hash lookups only; never a store write.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use sidekey_api::ConnKind;

use crate::error::ApiError;
use crate::hosts::Place;
use crate::keys::{self, KeyHash};
use crate::proxy::scrub::Stream;

use super::*;

/// What a key is presented for. Each kind of key opens one thing: agent keys
/// and their `pxr_` grant tokens the proxy, `cli_` keys sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    Proxy,
    Sync,
    /// `/v1/whoami` names the connection of any valid key.
    Whoami,
}

impl KeyUse {
    fn opened_by(self, kind: ConnKind) -> bool {
        match self {
            KeyUse::Proxy => kind == ConnKind::Agent,
            KeyUse::Sync => kind == ConnKind::Sync,
            KeyUse::Whoami => true,
        }
    }
}

impl Registry {
    /// Checks a presented key. `used_by` says what used it, for `last_used`.
    pub fn verify(
        &self,
        presented: Option<&str>,
        key_use: KeyUse,
        used_by: &str,
    ) -> Result<Verified, ApiError> {
        let presented = presented.ok_or_else(ApiError::token_missing)?;
        self.admit(&self.look_up(presented, key_use)?, used_by)
    }

    /// Finds the connection a key names, without admitting a request yet. A
    /// key of another kind than `key_use` takes is as invalid as no key.
    pub fn look_up(&self, presented: &str, key_use: KeyUse) -> Result<Lookup, ApiError> {
        if keys::parse(presented).is_none() {
            return Err(ApiError::invalid_access_key());
        }
        let hash = KeyHash::of(presented);
        let generation = self.generation.load(Ordering::Acquire);
        let index = self.read();
        match index.by_hash.get_key_value(&hash) {
            Some((stored, holder))
                if stored.ct_eq(&hash) && key_use.opened_by(holder.conn().kind) =>
            {
                Ok(match holder {
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
                })
            }
            _ => Err(ApiError::invalid_access_key()),
        }
    }

    /// Whether nothing has changed since `lookup`, so that the key it was
    /// made for still names the same connection.
    pub fn still_holds(&self, lookup: &Lookup) -> bool {
        lookup.generation == self.generation.load(Ordering::Acquire)
    }

    /// Whether a looked-up key may be used now: its grace, the connection's
    /// state and expiry. No rate token is spent.
    fn usable(&self, lookup: &Lookup) -> Result<(), ApiError> {
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
        Ok(())
    }

    /// Resolves once `key` stops working: rotated out (after any grace),
    /// revoked, disabled, expired or deleted. What the key opened (an
    /// untouched tunnel, a WebSocket) ends then, not when its user lets go.
    pub async fn retired(&self, key: &str, key_use: KeyUse) {
        let mut changes = self.changed.subscribe();
        loop {
            let Ok(lookup) = self.look_up(key, key_use) else {
                return;
            };
            if self.usable(&lookup).is_err() {
                return;
            }
            let expiry = lookup.verified.conn.expires_at.map(|at| at * 1000);
            let wake_ms = [lookup.until_ms, expiry].into_iter().flatten().min();
            let wait =
                wake_ms.map(|at| std::time::Duration::from_millis(at.saturating_sub(now_ms())));
            tokio::select! {
                _ = changes.changed() => {}
                () = sleep_or_forever(wait) => {}
            }
        }
    }

    /// Admits one request on a looked-up key: its grace, the connection's
    /// state, expiry and rate, then marks it used.
    pub fn admit(&self, lookup: &Lookup, used_by: &str) -> Result<Verified, ApiError> {
        self.usable(lookup)?;
        let conn = &lookup.verified.conn;
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

    /// The most specific credential granted to the connection that is bound
    /// to this place and path (grants never tie: see `grant`).
    pub fn cred_for(&self, conn_id: &str, place: &Place, path: &str) -> Option<Arc<LiveCred>> {
        let index = self.read();
        index
            .granted_names(conn_id)
            .filter_map(|name| index.live_creds.get(name))
            .filter_map(|cred| Some((cred.specificity(place, path)?, cred)))
            .max_by_key(|(specificity, _)| *specificity)
            .map(|(_, cred)| cred.clone())
    }

    /// Whether any credential granted to the connection is bound to
    /// `host:port`, over either scheme.
    pub fn host_is_bound(&self, conn_id: &str, host: &str, port: u16) -> bool {
        let index = self.read();
        index
            .granted_names(conn_id)
            .filter_map(|name| index.live_creds.get(name))
            .any(|cred| cred.binds_host_port(host, port))
    }

    /// Every credential not bound to `place` that has needles: the secrets an
    /// upload toward it must not carry.
    pub fn unbound_creds(&self, place: &Place) -> Vec<Arc<LiveCred>> {
        let index = self.read();
        index
            .live_creds
            .values()
            .filter(|cred| !cred.matcher.is_empty() && !cred.bound_at(place))
            .cloned()
            .collect()
    }

    /// The name of a credential whose secret appears in `texts` while the
    /// request goes to a place that credential is not bound to. The texts
    /// are read as one stream, so a secret split over two header values is
    /// found as one split over two body chunks is.
    pub fn leaked_secret<'t>(
        &self,
        texts: impl Iterator<Item = &'t [u8]>,
        place: &Place,
    ) -> Option<String> {
        let unbound = self.unbound_creds(place);
        if unbound.is_empty() {
            return None;
        }
        let mut stream = Stream::default();
        let mut texts = texts.peekable();
        while let Some(text) = texts.next() {
            let last = texts.peek().is_none();
            if let Err(hit) = stream.detect(&unbound, text, last) {
                return Some(unbound[hit.set].name.clone());
            }
        }
        None
    }
}

async fn sleep_or_forever(wait: Option<std::time::Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}
