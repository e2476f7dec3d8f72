//! The hot-path views of connections and credentials that the index holds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sidekey_api::ConnKind;

use crate::hosts::{Binding, Place};
use crate::keys::Secret;
use crate::ratelimit::TokenBucket;
use crate::store::CredRecord;

use super::*;

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
    pub(super) disabled: AtomicBool,
    /// Boxed: most connections have no rate of their own.
    pub(super) limiter: Option<Box<TokenBucket>>,
    pub(super) last_used_at: AtomicU64,
    pub(super) last_used_by: Mutex<String>,
    pub(super) dirty: AtomicBool,
}

pub(super) enum Holder {
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

impl Holder {
    pub(super) fn conn(&self) -> &LiveConn {
        match self {
            Holder::Conn { conn, .. } | Holder::Grant { conn, .. } => conn,
        }
    }
}

/// A credential ready for injection: parsed bindings and the secret.
pub struct LiveCred {
    pub name: String,
    pub cred_type: sidekey_api::CredType,
    pub(super) bindings: Vec<Binding>,
    pub(super) path_prefix: Option<String>,
    pub secret: Secret,
    /// The header fields it sets, rendered once rather than per request.
    pub fields: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Its secret and the common encodings of it, compiled once: the
    /// policy's head scan, the response scrub and the upload leak scan use it.
    pub matcher: crate::proxy::scrub::Needles,
}

impl crate::proxy::scrub::Secrets for LiveCred {
    fn needles(&self) -> &crate::proxy::scrub::Needles {
        &self.matcher
    }
}

impl LiveCred {
    pub(crate) fn new(record: &CredRecord, secret: Secret) -> LiveCred {
        LiveCred {
            name: record.name.clone(),
            cred_type: record.cred_type,
            // A record from before bindings named schemes and ports holds bare
            // hosts, which parse as https on 443: the safe reading.
            bindings: record
                .hosts
                .iter()
                .filter_map(|h| Binding::parse(h).ok())
                .collect(),
            path_prefix: record.path_prefix.clone(),
            matcher: crate::proxy::scrub::Needles::new(&crate::inject::needles(
                record.cred_type,
                &secret,
            )),
            fields: crate::inject::header_fields(record.cred_type, &secret),
            secret,
        }
    }

    /// Whether a `CONNECT host:port` may carry requests it is bound to, over
    /// either scheme. `host` must be normalized.
    pub fn binds_host_port(&self, host: &str, port: u16) -> bool {
        self.bindings
            .iter()
            .any(|b| b.matches_host_port(host, port))
    }

    /// Whether it is bound to `place`, whatever the path.
    pub fn bound_at(&self, place: &Place) -> bool {
        self.bindings.iter().any(|b| b.matches(place))
    }

    pub fn has_path_prefix(&self) -> bool {
        self.path_prefix.is_some()
    }

    /// `path` must be normalized ([`crate::proxy`]'s `NormalPath`).
    pub fn binds(&self, place: &Place, path: &str) -> bool {
        self.specificity(place, path).is_some()
    }

    /// How specifically it is bound to a request, if at all: an exact host
    /// beats a wildcard, then a longer path prefix a shorter one, then a
    /// named port `:*`. The most specific credential is the one sent.
    pub fn specificity(&self, place: &Place, path: &str) -> Option<(bool, usize, bool)> {
        let prefix = match self.path_prefix.as_deref() {
            Some(prefix) if !path_under(path, prefix) => return None,
            Some(prefix) => prefix.trim_end_matches('/').len(),
            None => 0,
        };
        self.bindings
            .iter()
            .filter(|b| b.matches(place))
            .map(|b| {
                let (exact_host, exact_port) = b.specificity();
                (exact_host, prefix, exact_port)
            })
            .max()
    }

    /// Whether it and `other` would be chosen for exactly the same requests,
    /// so neither could win: some binding of each is the same, and so are
    /// their path prefixes.
    pub fn ties_with(&self, other: &LiveCred) -> Option<String> {
        if self.path_prefix != other.path_prefix {
            return None;
        }
        self.bindings
            .iter()
            .find(|b| other.bindings.contains(b))
            .map(|b| b.to_string())
    }
}

/// `/v1/x` is under `/v1`; `/v10` is not.
pub(super) fn path_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

impl LiveConn {
    /// Stores only what changed: every proxy thread marks the same busy
    /// connection, and a store to a shared line costs each of them.
    pub(super) fn mark_used(&self, used_by: &str) {
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
