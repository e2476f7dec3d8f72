//! The command line: every subcommand and flag.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sidekeyctl",
    version,
    about = "Control sidekeyd: connections, keys, credentials and grants"
)]
pub struct Cli {
    /// The daemon's control socket (default: as sidekeyd resolves it).
    #[arg(long, global = true, env = "SIDEKEY_SOCKET_PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show whether sidekeyd is running, and where everything lives.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Connections: local identities, each with one access key.
    #[command(subcommand)]
    Conn(ConnCommand),
    /// Credentials: upstream secrets bound to hosts.
    #[command(subcommand)]
    Cred(CredCommand),
    /// Allow an agent connection to use a credential; prints a pxr_ token once.
    Grant {
        conn: String,
        cred: String,
        /// Issue a new pxr_ token for an existing grant; the old one stops working.
        #[arg(long)]
        regenerate: bool,
        #[arg(long)]
        json: bool,
    },
    /// Take a credential away from a connection; its pxr_ token stops working.
    Revoke { conn: String, cred: String },
    /// Print the path of the local CA that intercepted hosts are signed by.
    Ca {
        /// Print the bundle (system roots plus the local CA) instead.
        #[arg(long)]
        bundle: bool,
    },
    /// Print the shell exports that send an agent through the proxy.
    Env {
        /// The agent connection whose key the proxy URL carries.
        conn: String,
    },
    /// Run a command with the proxy environment set, like `aws-vault exec`.
    Run {
        #[arg(long)]
        conn: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Shares: folders this daemon serves to sync peers (the hub side).
    #[command(subcommand)]
    Share(ShareCommand),
    /// Sync sessions: folders kept in two-way sync with a share on a hub.
    #[command(subcommand)]
    Sync(SyncCommand),
    /// Show proxied requests: who, which credential, host and path, status, latency.
    Audit {
        /// Keep streaming new records.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only this connection (id or name).
        #[arg(long)]
        conn: Option<String>,
        /// How many recent records to show first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// NDJSON, one record per line.
        #[arg(long)]
        json: bool,
    },
    /// Run sidekeyd as a systemd or launchd service.
    #[command(subcommand)]
    Service(ServiceCommand),
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the systemd unit (or launchd plist) for this machine, naming the
    /// sidekeyd beside this sidekeyctl, then enable and start it.
    Install(ServiceArgs),
    /// Stop and disable the service, and remove its unit (or plist).
    Uninstall(ServiceArgs),
    /// Show what the service manager says about sidekeyd. Exits 3 when it is
    /// not running.
    Status(ServiceTarget),
}

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub target: ServiceTarget,
    /// Print what would be written and run, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct ServiceTarget {
    /// A system-wide, hardened systemd service instead of the user's own (needs root).
    #[arg(long)]
    pub system: bool,
    /// The service manager to write for (default: launchd on macOS, else systemd).
    #[arg(long, value_enum)]
    pub init: Option<InitSystem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitSystem {
    Systemd,
    Launchd,
}

#[derive(Debug, Subcommand)]
pub enum ConnCommand {
    /// Create a connection and print its new key (once).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["agent", "sync"])]
        kind: String,
        /// Expire the key after this long, like 30d or 12h.
        #[arg(long)]
        expires: Option<String>,
        /// A request budget, like 600/min.
        #[arg(long)]
        rate: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List connections.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one connection.
    Info {
        conn: String,
        #[arg(long)]
        json: bool,
    },
    /// Reveal a connection's key, or rotate it with --regenerate.
    Key {
        conn: String,
        /// Replace the key atomically and print the new one.
        #[arg(long)]
        regenerate: bool,
        /// With --regenerate: keep the old key valid this long, like 60s.
        #[arg(long, requires = "regenerate")]
        grace: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Refuse the connection's key until it is enabled again.
    Disable { conn: String },
    /// Accept the connection's key again.
    Enable { conn: String },
    /// Delete a connection and revoke its key for good.
    Rm {
        conn: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredCommand {
    /// Add a credential. The secret is read from stdin or a hidden prompt.
    Add {
        #[arg(long)]
        name: String,
        /// api-key, basic-auth, cookie, custom-header or query-param.
        #[arg(long = "type", value_parser = ["api-key", "basic-auth", "cookie", "custom-header", "query-param"])]
        cred_type: String,
        /// A host it may be sent to; repeat for more. Wildcards: *.github.com.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Only inject into paths under this prefix, like /v1.
        #[arg(long)]
        path_prefix: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List credentials (never their secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one credential (never its secret).
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace a credential's secret atomically, from stdin or a hidden
    /// prompt; with --host, replace its bindings instead.
    Set {
        name: String,
        /// New bindings, `[scheme://]host[:port]`, replacing all the old ones.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Remove a credential and every grant of it.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ShareCommand {
    /// Serve a folder to sync peers.
    Add {
        path: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List shares.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Stop serving a share and revoke its peers' keys (the folder stays).
    Rm {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Create a sync connection for a peer and print the invite it pastes.
    Invite {
        share: String,
        #[arg(long, value_parser = ["rw", "ro"], default_value = "rw")]
        mode: String,
        /// The sync connection's name.
        #[arg(long)]
        name: Option<String>,
        /// The host name peers reach this hub by.
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Keep a folder in sync with a share. The invite comes from the
    /// argument or, safer (it holds a key), from stdin.
    Add {
        folder: PathBuf,
        invite: Option<String>,
        /// Return at once instead of showing the initial sync's progress.
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// List sync sessions.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one session: state, pending changes, conflicts, bytes moved.
    Status {
        id: String,
        /// Keep showing progress until interrupted.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Stop syncing this folder (its files stay).
    Rm {
        id: String,
    },
    /// Rotate this session's cli_ key over the session itself.
    RotateKey {
        id: String,
    },
    /// Use a new cli_ key, or a new invite to the same share (from stdin or a hidden prompt), after the hub's owner rotated or revoked the old one.
    SetKey {
        id: String,
    },
}
