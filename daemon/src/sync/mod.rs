//! Two-way folder sync, hub and spoke. A hub serves shares; a peer keeps a
//! folder in sync with one share. notify events are only hints: every round
//! compares stat data with the last-synced state and hashes only what changed.
//!
//! Sync never sees the daemon or the proxy: the engine is built from the
//! registry, the hub's identity and the task tree, and every task it starts
//! runs in that tree.
//!
//! - this module: the engine that adds, lists and removes shares and sessions
//! - `plan`: the one pure decision, `plan(local, remote, base) -> Vec<Op>`
//! - `hub`: the hub's listener (`server`) and its shared folders (`share`)
//! - `peer`: a peer's rounds (`session`), its pinned connection (`client`), its loops (`runner`)
//! - `replica`: one folder: `scan` (and gathering for the planner), `apply` (landing
//!   received files), `watcher`, `fsops`, `paths`, `ignore`, and `journal`
//!   (per-path state with versions: the hub's journal, a peer's index)
//! - `wire`: what goes between replicas (`model`), batch framing (`frames`), the hub's TLS `identity`

pub mod hub;
mod peer;
mod plan;
mod replica;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sidekey_api::{ConnCreate, ConnKind, Invite, InviteCreate, SessionState};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, ErrorCode};
use crate::keys::Secret;
use crate::registry::{Registry, now_secs};
use crate::shutdown::Tasks;
use crate::store::{SessionRecord, ShareRecord, StoreError, SyncTables};
use hub::share::{self, Share};
use peer::client::{HubClient, SyncError, parse_invite};
use peer::runner;
use peer::session::Session;
use replica::ignore;
use replica::journal::Journal;
pub use wire::identity::Identity;

struct Running {
    session: Arc<Session>,
    /// Bumped by user actions (resume, set-key, pause), which restart a
    /// session that stopped itself.
    user: watch::Sender<u64>,
    /// The session's own branch of the task tree: removing it ends them.
    tasks: Tasks,
}

/// Every share and session of this daemon, with exactly what they need:
/// the registry (sync keys are connections), the hub's identity and the
/// task tree. It never sees the proxy or the control API.
pub struct SyncEngine {
    registry: Arc<Registry>,
    identity: Identity,
    tasks: Tasks,
    shares: RwLock<BTreeMap<String, (Arc<Share>, Tasks)>>,
    sessions: RwLock<BTreeMap<String, Running>>,
    host: String,
    listen: Option<SocketAddr>,
    data_dir: PathBuf,
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

fn api_error(e: StoreError) -> ApiError {
    ApiError::from(e)
}

impl SyncEngine {
    /// Loads (or creates) the hub's identity. Nothing runs until [`SyncEngine::start`].
    pub fn new(
        registry: Arc<Registry>,
        listen: Option<SocketAddr>,
        data_dir: PathBuf,
    ) -> anyhow::Result<SyncEngine> {
        let identity = Identity::load_or_create(&registry.store().sync_tables())?;
        Ok(SyncEngine {
            registry,
            identity,
            tasks: Tasks::default(),
            shares: RwLock::new(BTreeMap::new()),
            sessions: RwLock::new(BTreeMap::new()),
            host: hostname(),
            listen,
            data_dir,
        })
    }

    /// Where the sync listener actually bound (port 0 becomes real), and
    /// the task tree every share and session runs in.
    pub fn attach(&mut self, listen: Option<SocketAddr>, tasks: Tasks) {
        self.listen = listen;
        self.tasks = tasks;
    }

    fn tables(&self) -> SyncTables<'_> {
        self.registry.store().sync_tables()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Starts every stored share and session.
    pub fn start(self: &Arc<Self>) {
        for record in self.tables().shares().unwrap_or_default() {
            if let Err(e) = self.start_share(record) {
                tracing::error!(error = %e.message, "cannot start a share");
            }
        }
        for record in self.tables().sessions().unwrap_or_default() {
            if let Err(e) = self.start_session(record) {
                tracing::error!(error = %e.message, "cannot start a sync session");
            }
        }
    }

    pub fn listen(&self) -> Option<SocketAddr> {
        self.listen
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

    pub fn add_share(&self, name: &str, path: &str) -> Result<sidekey_api::Share, ApiError> {
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
        self.check_folder(&root)?;
        if !root.is_dir() {
            return Err(ApiError::bad_request(format!(
                "{} is not a directory; create it first.",
                root.display()
            )));
        }
        if self
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
        self.tables().put_share(&record).map_err(api_error)?;
        self.start_share(record)?;
        self.share_view(name)
    }

    fn start_share(&self, record: ShareRecord) -> Result<(), ApiError> {
        let table = self
            .tables()
            .share_journal(&record.name)
            .map_err(api_error)?;
        let journal = Journal::for_share(table).map_err(api_error)?;
        let share = Arc::new(Share::new(record.clone(), journal));
        let tasks = self.tasks.child();
        self.shares
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.name.clone(), (share.clone(), tasks.clone()));
        tasks.spawn(share::run_share(share, tasks.token().clone()));
        Ok(())
    }

    pub async fn remove_share(&self, name: &str) -> Result<(), ApiError> {
        let (_, tasks) = self
            .shares
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .ok_or_else(|| ApiError::not_found(format!("No share is named '{name}'.")))?;
        tasks.token().cancel();
        for conn in self.registry.share_conns(name) {
            self.registry.remove_conn(&conn.id).await?;
        }
        self.tables().remove_share(name).map_err(api_error)?;
        self.registry.store().flush().await?;
        Ok(())
    }

    pub fn shares(&self) -> Vec<sidekey_api::Share> {
        let names: Vec<String> = self
            .shares
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        names
            .iter()
            .filter_map(|n| self.share_view(n).ok())
            .collect()
    }

    pub fn share_view(&self, name: &str) -> Result<sidekey_api::Share, ApiError> {
        let share = self.share(name)?;
        let report = share.report.lock().unwrap_or_else(|p| p.into_inner());
        Ok(sidekey_api::Share {
            name: share.record.name.clone(),
            path: share.record.path.clone(),
            files: share.journal.live_count() as u64,
            version: share.journal.last_version(),
            peers: self
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

    pub async fn invite(&self, share: &str, req: InviteCreate) -> Result<Invite, ApiError> {
        self.share(share)?;
        let Some(listen) = self.listen else {
            return Err(ApiError::bad_request(
                "This daemon serves no shares over the network yet: set sync_listen (like \"0.0.0.0:7443\") in the config and restart it.",
            ));
        };
        let name = match req.name {
            Some(name) => name,
            None => (1..)
                .map(|n| format!("{share}-peer-{n}"))
                .find(|n| !self.registry.conn_name_taken(n))
                .expect("a free name"),
        };
        let created = self
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
                self.host.clone()
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
                self.identity.fingerprint
            ),
            conn_id: created.conn.id,
            conn_name: created.conn.name,
        })
    }

    // --- peer side

    pub async fn add_session(
        self: &Arc<Self>,
        folder: &str,
        invite: &str,
    ) -> Result<sidekey_api::Session, ApiError> {
        let parts = parse_invite(invite)
            .map_err(|why| ApiError::bad_request(format!("The invite is not valid: {why}.")))?;
        let root = hub::server::share_path(folder)?;
        self.check_folder(&root)?;
        std::fs::create_dir_all(&root).map_err(|e| {
            ApiError::bad_request(format!("Cannot create {}: {e}.", root.display()))
        })?;
        // Check the hub, its fingerprint and the key now, so mistakes surface here.
        let client = HubClient::new(
            parts.addr.clone(),
            parts.share.clone(),
            parts.fingerprint.clone(),
            parts.key.clone(),
            self.tasks.child(),
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
        let record = SessionRecord {
            key_sealed: self.tables().seal_session_key(&id, &parts.key),
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
        self.tables().put_session(&record).map_err(api_error)?;
        self.registry.store().flush().await?;
        self.start_session(record)?;
        self.session_view(&id)
    }

    fn start_session(self: &Arc<Self>, record: SessionRecord) -> Result<(), ApiError> {
        let tables = self.tables();
        let key = tables.open_session_key(&record).map_err(api_error)?;
        let index = tables.session_index(&record.id).map_err(api_error)?;
        let index = Journal::for_session(index).map_err(api_error)?;
        let tasks = self.tasks.child();
        // Cancelled when the session's runner returns, after its last round.
        let connection = CancellationToken::new();
        let client = HubClient::new(
            record.addr.clone(),
            record.share.clone(),
            record.fingerprint.clone(),
            key,
            tasks.until(connection.clone()),
        );
        let session = Arc::new(Session::new(
            record.clone(),
            index,
            client,
            self.host.clone(),
            tasks.clone(),
        ));
        let wake = Arc::new(Notify::new());
        let (user, user_rx) = watch::channel(0u64);
        self.sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                record.id.clone(),
                Running {
                    session: session.clone(),
                    user,
                    tasks: tasks.clone(),
                },
            );
        tasks.spawn(runner::run_session(
            self.clone(),
            session,
            wake,
            user_rx,
            tasks.clone(),
            connection.drop_guard(),
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
        &self,
        id: &str,
        paused: bool,
    ) -> Result<sidekey_api::Session, ApiError> {
        let (session, user) = self.running(id, |r| (r.session.clone(), r.user.clone()))?;
        session
            .record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paused = paused;
        self.save(&session).await?;
        if paused {
            session.set_state(
                SessionState::Paused,
                Some(format!("Paused; resume with: sidekeyctl sync resume {id}")),
            );
        } else {
            session.set_state(SessionState::Scanning, None);
        }
        user.send_modify(|v| *v += 1);
        self.session_view(id)
    }

    pub async fn remove_session(&self, id: &str) -> Result<(), ApiError> {
        let running = self
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .ok_or_else(|| ApiError::not_found(format!("No sync session has the id '{id}'.")))?;
        running.tasks.token().cancel();
        self.tables().remove_session(id).map_err(api_error)?;
        let _ = std::fs::remove_file(running.session.root.join(ignore::MARKER));
        self.registry.store().flush().await?;
        Ok(())
    }

    /// The peer rotates its own key over its session.
    pub async fn rotate_session_key(&self, id: &str) -> Result<sidekey_api::Session, ApiError> {
        let session = self.running(id, |r| r.session.clone())?;
        let key = session.client.rotate().await.map_err(|e| {
            ApiError::new(
                ErrorCode::UpstreamUnreachable,
                http::StatusCode::BAD_GATEWAY,
                format!("The hub did not rotate the key: {e}."),
            )
        })?;
        self.store_key(&session, key).await?;
        self.session_view(id)
    }

    /// A new key pasted by the user, after the hub's owner rotated or
    /// revoked the old one: a `cli_` key, or an invite to the same share on
    /// the same hub, whose key is taken.
    pub async fn set_session_key(
        &self,
        id: &str,
        key: Secret,
    ) -> Result<sidekey_api::Session, ApiError> {
        let (session, user) = self.running(id, |r| (r.session.clone(), r.user.clone()))?;
        let key = if key.expose().trim_start().starts_with("sidekey://") {
            key_of_invite(&session.record(), key.expose())?
        } else {
            key
        };
        if crate::keys::parse(key.expose()) != Some(crate::keys::KeyPrefix::Cli) {
            return Err(ApiError::bad_request(
                "A sync key is cli_ followed by 64 hex characters, or paste a whole invite; try again.",
            ));
        }
        self.store_key(&session, key).await?;
        session.set_state(SessionState::Scanning, None);
        user.send_modify(|v| *v += 1);
        self.session_view(id)
    }

    async fn store_key(&self, session: &Session, key: Secret) -> Result<(), ApiError> {
        {
            let mut record = session.record.lock().unwrap_or_else(|p| p.into_inner());
            record.key_sealed = self.tables().seal_session_key(&record.id, &key);
        }
        self.save(session).await?;
        session.client.set_key(key);
        Ok(())
    }

    /// Makes a session's record and index durable.
    pub(crate) async fn save(&self, session: &Session) -> Result<(), ApiError> {
        self.tables()
            .put_session(&session.record())
            .map_err(api_error)?;
        session.index.flush().await.map_err(api_error)?;
        self.registry.store().flush().await?;
        Ok(())
    }

    /// Folders inside the data dir (the store lives there) are refused.
    /// A folder must lie outside the data dir, and apart from every folder
    /// already shared or synced: two replicas in one tree would each sync
    /// the other's files (and state directory) as their own.
    fn check_folder(&self, root: &Path) -> Result<(), ApiError> {
        let nested = |a: &Path, b: &Path| {
            let (a, b) = (resolved(a), resolved(b));
            a.starts_with(&b) || b.starts_with(&a)
        };
        if nested(root, &self.data_dir) {
            return Err(ApiError::bad_request(format!(
                "{} overlaps the daemon's data dir {}; sync a folder outside it.",
                root.display(),
                self.data_dir.display()
            )));
        }
        let shares = self.shares.read().unwrap_or_else(|p| p.into_inner());
        if let Some((name, (share, _))) = shares.iter().find(|(_, (s, _))| nested(root, &s.root)) {
            return Err(ApiError::conflict(format!(
                "{} overlaps the share '{name}' at {}; a folder syncs once. See: sidekeyctl share ls",
                root.display(),
                share.root.display()
            )));
        }
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        if let Some((id, running)) = sessions.iter().find(|(_, r)| nested(root, &r.session.root)) {
            return Err(ApiError::conflict(format!(
                "{} overlaps the folder of sync session {id} at {}; a folder syncs once. See: sidekeyctl sync ls",
                root.display(),
                running.session.root.display()
            )));
        }
        Ok(())
    }
}

/// The key of an invite pasted into `set-key`, which must name the
/// session's own share and hub.
fn key_of_invite(record: &SessionRecord, invite: &str) -> Result<Secret, ApiError> {
    let parts = parse_invite(invite)
        .map_err(|why| ApiError::bad_request(format!("The invite is not valid: {why}.")))?;
    if parts.share != record.share
        || parts.addr != record.addr
        || parts.fingerprint != record.fingerprint
    {
        return Err(ApiError::bad_request(format!(
            "This invite is for the share '{}' at {}, not this session's '{}' at {}; sync it as a new folder with: sidekeyctl sync add <folder>",
            parts.share, parts.addr, record.share, record.addr
        )));
    }
    Ok(parts.key)
}

/// The path with symlinks resolved, where it exists yet.
fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    format!("{prefix}_{}", hex::encode(bytes))
}
