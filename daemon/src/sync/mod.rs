//! Two-way folder sync, hub and spoke. A hub serves shares; a peer keeps a
//! folder in sync with one share. notify events are only hints: every round
//! compares stat data with the last-synced state and hashes only what changed.
//!
//! - this module: the engine that adds, lists and removes shares and sessions
//! - `hub`: the hub's listener (`server`) and its shared folders (`share`)
//! - `peer`: a peer's rounds (`session`), its pinned connection (`client`), its loops (`runner`)
//! - `replica`: one folder: `scan`, `watcher`, `fsops`, `paths`, `ignore`, and `journal`
//!   (per-path state with versions: the hub's journal, a peer's index)
//! - `wire`: what goes between replicas (`model`), batch framing (`frames`), the hub's TLS `identity`

pub mod hub;
mod peer;
mod replica;
mod wire;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sidekey_api::{ConnCreate, ConnKind, Invite, InviteCreate, SessionState};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::Daemon;
use crate::error::{ApiError, ErrorCode};
use crate::keys::Secret;
use crate::registry::now_secs;
use crate::store::Store;
use hub::share::{self, Share, ShareRecord};
use peer::client::{HubClient, SyncError, parse_invite};
use peer::runner;
use peer::session::{Session, SessionRecord};
use replica::ignore;
use replica::journal::Journal;
pub use wire::identity::Identity;

struct Running {
    session: Arc<Session>,
    /// Bumped by user actions (resume, set-key, pause), which restart a
    /// session that stopped itself.
    user: watch::Sender<u64>,
    stop: CancellationToken,
}

pub struct Engine {
    pub identity: Identity,
    shares: RwLock<BTreeMap<String, (Arc<Share>, CancellationToken)>>,
    sessions: RwLock<BTreeMap<String, Running>>,
    host: String,
    sync_listen: Option<std::net::SocketAddr>,
    data_dir: PathBuf,
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

fn api_error(e: crate::store::StoreError) -> ApiError {
    ApiError::from(e)
}

impl Engine {
    pub fn new(store: &Store, config: &crate::Config) -> anyhow::Result<Engine> {
        Ok(Engine {
            identity: Identity::load_or_create(store)?,
            shares: RwLock::new(BTreeMap::new()),
            sessions: RwLock::new(BTreeMap::new()),
            host: hostname(),
            sync_listen: config.sync_listen,
            data_dir: config.data_dir.clone(),
        })
    }

    /// Starts every stored share and session.
    pub fn start(daemon: &Arc<Daemon>) {
        let store = daemon.registry.store();
        let shares: Vec<ShareRecord> = store
            .table("shares")
            .and_then(|t| t.all())
            .map(|v| v.into_iter().map(|(_, r)| r).collect())
            .unwrap_or_default();
        for record in shares {
            if let Err(e) = Engine::start_share(daemon, record) {
                tracing::error!(error = %e.message, "cannot start a share");
            }
        }
        let sessions: Vec<SessionRecord> = store
            .table("sessions")
            .and_then(|t| t.all())
            .map(|v| v.into_iter().map(|(_, r)| r).collect())
            .unwrap_or_default();
        for record in sessions {
            if let Err(e) = Engine::start_session(daemon, record) {
                tracing::error!(error = %e.message, "cannot start a sync session");
            }
        }
    }

    /// The address the sync listener actually bound (port 0 becomes real).
    pub fn set_listen(&mut self, addr: Option<std::net::SocketAddr>) {
        self.sync_listen = addr;
    }

    pub fn listen(&self) -> Option<std::net::SocketAddr> {
        self.sync_listen
    }

    pub fn share(&self, name: &str) -> Result<Arc<Share>, ApiError> {
        self.shares
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "No share is named '{name}'; list them with: sidekeyctl share ls"
                ))
            })
    }

    // --- hub side

    pub fn add_share(
        daemon: &Arc<Daemon>,
        name: &str,
        path: &str,
    ) -> Result<sidekey_api::Share, ApiError> {
        let engine = &daemon.sync;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ApiError::bad_request(format!(
                "The share name '{name}' is not valid; use letters, digits, '-', '_' or '.'."
            )));
        }
        let root = hub::server::share_path(path)?;
        engine.check_folder(&root)?;
        if !root.is_dir() {
            return Err(ApiError::bad_request(format!(
                "{} is not a directory; create it first.",
                root.display()
            )));
        }
        if engine
            .shares
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
        {
            return Err(ApiError::conflict(format!(
                "A share named '{name}' exists; pick another name."
            )));
        }
        let replica = random_id("r");
        Share::write_marker(&root, &replica).map_err(|e| {
            ApiError::bad_request(format!(
                "Cannot write the marker in {}: {e}.",
                root.display()
            ))
        })?;
        let record = ShareRecord {
            name: name.to_string(),
            path: root.display().to_string(),
            replica,
            created_at: now_secs(),
        };
        daemon
            .registry
            .store()
            .table("shares")
            .and_then(|t| t.put(name.as_bytes(), &record))
            .map_err(api_error)?;
        Engine::start_share(daemon, record)?;
        engine.share_view(daemon, name)
    }

    fn start_share(daemon: &Arc<Daemon>, record: ShareRecord) -> Result<(), ApiError> {
        let journal =
            Journal::for_share(daemon.registry.store(), &record.name).map_err(api_error)?;
        let share = Arc::new(Share::new(record.clone(), journal));
        let stop = daemon.tasks.token().child_token();
        daemon
            .sync
            .shares
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.name.clone(), (share.clone(), stop.clone()));
        daemon.tasks.spawn(share::run_share(share, stop));
        Ok(())
    }

    pub async fn remove_share(daemon: &Arc<Daemon>, name: &str) -> Result<(), ApiError> {
        let (_, stop) = daemon
            .sync
            .shares
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .ok_or_else(|| ApiError::not_found(format!("No share is named '{name}'.")))?;
        stop.cancel();
        for conn in daemon.registry.share_conns(name) {
            daemon.registry.remove_conn(&conn.id).await?;
        }
        let store = daemon.registry.store();
        store
            .table("shares")
            .and_then(|t| t.remove(name.as_bytes()))
            .map_err(api_error)?;
        Journal::drop_tables_for_share(store, name).map_err(api_error)?;
        store.flush().await?;
        Ok(())
    }

    pub fn shares(&self, daemon: &Daemon) -> Vec<sidekey_api::Share> {
        let names: Vec<String> = self
            .shares
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        names
            .iter()
            .filter_map(|n| self.share_view(daemon, n).ok())
            .collect()
    }

    pub fn share_view(&self, daemon: &Daemon, name: &str) -> Result<sidekey_api::Share, ApiError> {
        let share = self.share(name)?;
        let report = share.report.lock().unwrap_or_else(|p| p.into_inner());
        Ok(sidekey_api::Share {
            name: share.record.name.clone(),
            path: share.record.path.clone(),
            files: share.journal.live_count() as u64,
            version: share.journal.last_version(),
            peers: daemon
                .registry
                .share_conns(name)
                .iter()
                .map(|c| c.name.clone())
                .collect(),
            halted: share.halted(),
            skipped: report.skipped.clone(),
            case_collisions: report.case_collisions.clone(),
        })
    }

    pub async fn invite(
        daemon: &Arc<Daemon>,
        share: &str,
        req: InviteCreate,
    ) -> Result<Invite, ApiError> {
        let engine = &daemon.sync;
        engine.share(share)?;
        let Some(listen) = engine.sync_listen else {
            return Err(ApiError::bad_request(
                "This daemon serves no shares over the network yet: set sync_listen (like \"0.0.0.0:7443\") in the config and restart it.",
            ));
        };
        let name = match req.name {
            Some(name) => name,
            None => (1..)
                .map(|n| format!("{share}-peer-{n}"))
                .find(|n| !daemon.registry.conn_name_taken(n))
                .expect("a free name"),
        };
        let created = daemon
            .registry
            .create_conn(ConnCreate {
                name,
                kind: ConnKind::Sync,
                expires_in_secs: None,
                rate: None,
                share: Some(share.to_string()),
                read_only: Some(req.read_only),
            })
            .await?;
        let host = req.host.unwrap_or_else(|| {
            if listen.ip().is_unspecified() {
                engine.host.clone()
            } else {
                listen.ip().to_string()
            }
        });
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Invite {
            invite: format!(
                "sidekey://{host}:{}/{share}#key={}&fp={}",
                listen.port(),
                created.key,
                engine.identity.fingerprint
            ),
            conn_id: created.conn.id,
            conn_name: created.conn.name,
        })
    }

    // --- peer side

    pub async fn add_session(
        daemon: &Arc<Daemon>,
        folder: &str,
        invite: &str,
    ) -> Result<sidekey_api::Session, ApiError> {
        let parts = parse_invite(invite)
            .map_err(|why| ApiError::bad_request(format!("The invite is not valid: {why}.")))?;
        let root = hub::server::share_path(folder)?;
        daemon.sync.check_folder(&root)?;
        std::fs::create_dir_all(&root).map_err(|e| {
            ApiError::bad_request(format!("Cannot create {}: {e}.", root.display()))
        })?;
        if daemon
            .sync
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|r| r.session.root == root)
        {
            return Err(ApiError::conflict(format!(
                "{} is already synced; see: sidekeyctl sync ls",
                root.display()
            )));
        }
        // Check the hub, its fingerprint and the key now, so mistakes surface here.
        let client = HubClient::new(
            parts.addr.clone(),
            parts.share.clone(),
            parts.fingerprint.clone(),
            parts.key.clone(),
        );
        client.hello().await.map_err(|e| match e {
            SyncError::Auth(m) | SyncError::Refused(m) | SyncError::Forbidden(m) => {
                ApiError::permission_denied(format!("The hub refused the invite's key: {m}."))
            }
            SyncError::Fingerprint(m) => ApiError::permission_denied(format!("{m}.")),
            SyncError::Transport(m) => ApiError::new(
                ErrorCode::UpstreamUnreachable,
                http::StatusCode::BAD_GATEWAY,
                format!("{m}; check the address and that the hub's sync_listen is reachable."),
            ),
        })?;
        let id = random_id("s");
        let store = daemon.registry.store();
        let record = SessionRecord {
            key_sealed: store.seal(&format!("session:{id}:key"), &parts.key),
            id: id.clone(),
            folder: root.display().to_string(),
            addr: parts.addr,
            share: parts.share,
            fingerprint: parts.fingerprint,
            cursor: 0,
            paused: false,
            replica: random_id("r"),
            created_at: now_secs(),
            initial_sync_done: false,
        };
        store
            .table("sessions")
            .and_then(|t| t.put(id.as_bytes(), &record))
            .map_err(api_error)?;
        store.flush().await?;
        Engine::start_session(daemon, record)?;
        daemon.sync.session_view(&id)
    }

    fn start_session(daemon: &Arc<Daemon>, record: SessionRecord) -> Result<(), ApiError> {
        let store = daemon.registry.store();
        let key = store
            .unseal(&format!("session:{}:key", record.id), &record.key_sealed)
            .map_err(api_error)?;
        let index = Journal::for_session(store, &record.id).map_err(api_error)?;
        let client = HubClient::new(
            record.addr.clone(),
            record.share.clone(),
            record.fingerprint.clone(),
            key,
        );
        let session = Arc::new(Session::new(
            record.clone(),
            index,
            client,
            daemon.sync.host.clone(),
        ));
        let wake = Arc::new(Notify::new());
        let stop = daemon.tasks.token().child_token();
        let (user, user_rx) = watch::channel(0u64);
        daemon
            .sync
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                record.id.clone(),
                Running {
                    session: session.clone(),
                    user,
                    stop: stop.clone(),
                },
            );
        daemon.tasks.spawn(runner::run_session(
            daemon.clone(),
            session,
            wake,
            user_rx,
            stop,
        ));
        Ok(())
    }

    fn running<T>(&self, id: &str, f: impl FnOnce(&Running) -> T) -> Result<T, ApiError> {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        let running = sessions.get(id).ok_or_else(|| {
            ApiError::not_found(format!(
                "No sync session has the id '{id}'; list them with: sidekeyctl sync ls"
            ))
        })?;
        Ok(f(running))
    }

    pub fn sessions(&self) -> Vec<sidekey_api::Session> {
        let ids: Vec<String> = self
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        ids.iter()
            .filter_map(|id| self.session_view(id).ok())
            .collect()
    }

    pub fn session_view(&self, id: &str) -> Result<sidekey_api::Session, ApiError> {
        let session = self.running(id, |r| r.session.clone())?;
        let record = session.record();
        let status = session.status();
        Ok(sidekey_api::Session {
            id: record.id.clone(),
            folder: record.folder.clone(),
            hub: format!("{}/{}", record.addr, record.share),
            share: record.share.clone(),
            state: status.state,
            message: status.message,
            files: session.index.live_count() as u64,
            pending: status.pending,
            conflicts: status.conflicts,
            bytes_moved: session
                .bytes_moved
                .load(std::sync::atomic::Ordering::Relaxed),
            last_sync: status.last_sync,
            progress_done: status.progress_done,
            progress_total: status.progress_total,
            initial_sync_done: record.initial_sync_done,
            skipped: status.skipped,
            case_collisions: status.case_collisions,
        })
    }

    pub async fn set_paused(
        daemon: &Arc<Daemon>,
        id: &str,
        paused: bool,
    ) -> Result<sidekey_api::Session, ApiError> {
        let (session, user) = daemon
            .sync
            .running(id, |r| (r.session.clone(), r.user.clone()))?;
        session
            .record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paused = paused;
        save(daemon.registry.store(), &session).await?;
        if paused {
            session.set_state(
                SessionState::Paused,
                Some(format!("Paused; resume with: sidekeyctl sync resume {id}")),
            );
        } else {
            session.set_state(SessionState::Scanning, None);
        }
        user.send_modify(|v| *v += 1);
        daemon.sync.session_view(id)
    }

    pub async fn remove_session(daemon: &Arc<Daemon>, id: &str) -> Result<(), ApiError> {
        let running = daemon
            .sync
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .ok_or_else(|| ApiError::not_found(format!("No sync session has the id '{id}'.")))?;
        running.stop.cancel();
        let store = daemon.registry.store();
        store
            .table("sessions")
            .and_then(|t| t.remove(id.as_bytes()))
            .map_err(api_error)?;
        Journal::drop_tables_for_session(store, id).map_err(api_error)?;
        let _ = std::fs::remove_file(running.session.root.join(ignore::MARKER));
        store.flush().await?;
        Ok(())
    }

    /// The peer rotates its own key over its session.
    pub async fn rotate_session_key(
        daemon: &Arc<Daemon>,
        id: &str,
    ) -> Result<sidekey_api::Session, ApiError> {
        let session = daemon.sync.running(id, |r| r.session.clone())?;
        let key = session.client.rotate().await.map_err(|e| {
            ApiError::new(
                ErrorCode::UpstreamUnreachable,
                http::StatusCode::BAD_GATEWAY,
                format!("The hub did not rotate the key: {e}."),
            )
        })?;
        Engine::store_key(daemon, &session, key).await?;
        daemon.sync.session_view(id)
    }

    /// A new key pasted by the user, after the hub's owner rotated or revoked the old one.
    pub async fn set_session_key(
        daemon: &Arc<Daemon>,
        id: &str,
        key: Secret,
    ) -> Result<sidekey_api::Session, ApiError> {
        if crate::keys::parse(key.expose()) != Some(crate::keys::KeyPrefix::Cli) {
            return Err(ApiError::bad_request(
                "A sync key is cli_ followed by 64 hex characters; paste it again.",
            ));
        }
        let (session, user) = daemon
            .sync
            .running(id, |r| (r.session.clone(), r.user.clone()))?;
        Engine::store_key(daemon, &session, key).await?;
        session.set_state(SessionState::Scanning, None);
        user.send_modify(|v| *v += 1);
        daemon.sync.session_view(id)
    }

    async fn store_key(daemon: &Daemon, session: &Session, key: Secret) -> Result<(), ApiError> {
        let store = daemon.registry.store();
        {
            let mut record = session.record.lock().unwrap_or_else(|p| p.into_inner());
            record.key_sealed = store.seal(&format!("session:{}:key", record.id), &key);
        }
        save(store, session).await?;
        session.client.set_key(key);
        Ok(())
    }

    /// Folders inside the data dir (the store lives there) are refused.
    fn check_folder(&self, root: &Path) -> Result<(), ApiError> {
        if root.starts_with(&self.data_dir) || self.data_dir.starts_with(root) {
            return Err(ApiError::bad_request(format!(
                "{} overlaps the daemon's data dir {}; sync a folder outside it.",
                root.display(),
                self.data_dir.display()
            )));
        }
        Ok(())
    }
}

pub(super) async fn save(store: &Store, session: &Session) -> Result<(), ApiError> {
    let record = session.record();
    store
        .table("sessions")
        .and_then(|t| t.put(record.id.as_bytes(), &record))
        .map_err(api_error)?;
    session.index.flush().await.map_err(api_error)?;
    store.flush().await?;
    Ok(())
}

fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    format!("{prefix}_{}", hex::encode(bytes))
}
