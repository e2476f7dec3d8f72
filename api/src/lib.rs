//! Request and response types of the control API, shared by `sidekeyd` and
//! `sidekeyctl`. Types only: no I/O, no logic beyond parsing small enums.
//!
//! Times are Unix seconds (UTC).

mod codes;
pub mod paths;

pub use codes::{ErrorCode, Outcome};
use serde::{Deserialize, Serialize};

/// The one error shape every route returns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub message: String,
    pub status: u16,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConnKind {
    Agent,
    Sync,
}

impl ConnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnKind::Agent => "agent",
            ConnKind::Sync => "sync",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    Active,
    Disabled,
    Expired,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Active => "active",
            ConnState::Disabled => "disabled",
            ConnState::Expired => "expired",
        }
    }
}

/// A request budget: `count` requests per `per_secs` seconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub count: u32,
    pub per_secs: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Conn {
    pub id: String,
    pub name: String,
    pub kind: ConnKind,
    /// The key's display form, `sk_live_…x7z9`.
    pub key: String,
    pub state: ConnState,
    pub created_at: u64,
    pub rotated_at: Option<u64>,
    pub last_used_at: Option<u64>,
    pub last_used_by: Option<String>,
    pub expires_at: Option<u64>,
    pub rate: Option<RateLimit>,
    /// While a rotation grace period runs: when the previous key stops working.
    pub grace_until: Option<u64>,
    pub grants: Vec<String>,
    /// Each grant's token, in display form.
    #[serde(default)]
    pub grant_tokens: Vec<GrantToken>,
    /// For sync connections: the share the key opens, and whether it is read-only.
    pub share: Option<String>,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnCreate {
    pub name: String,
    pub kind: ConnKind,
    pub expires_in_secs: Option<u64>,
    pub rate: Option<RateLimit>,
    /// Sync connections only: the share the key opens.
    #[serde(default)]
    pub share: Option<String>,
    #[serde(default)]
    pub read_only: Option<bool>,
}

/// A connection with its full key: returned once on create, on rotation, and
/// to the owner on request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnWithKey {
    pub conn: Conn,
    pub key: String,
    /// After a rotation without grace: the connection's new `pxr_` grant
    /// tokens, shown once (the old ones retired with the old key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_tokens: Vec<GrantToken>,
}

/// A grant's `pxr_` token: in full where it is shown once, else its display
/// form, `pxr_…x7z9`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantToken {
    pub cred: String,
    pub token: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRegenerate {
    pub grace_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CredType {
    ApiKey,
    BasicAuth,
    Cookie,
    CustomHeader,
    QueryParam,
}

impl CredType {
    pub const ALL: [CredType; 5] = [
        CredType::ApiKey,
        CredType::BasicAuth,
        CredType::Cookie,
        CredType::CustomHeader,
        CredType::QueryParam,
    ];

    /// The CLI spelling: `api-key`, `basic-auth`, ...
    pub fn cli_name(self) -> &'static str {
        match self {
            CredType::ApiKey => "api-key",
            CredType::BasicAuth => "basic-auth",
            CredType::Cookie => "cookie",
            CredType::CustomHeader => "custom-header",
            CredType::QueryParam => "query-param",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Cred {
    pub name: String,
    #[serde(rename = "type")]
    pub cred_type: CredType,
    pub hosts: Vec<String>,
    pub path_prefix: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    /// Names of the connections granted this credential.
    pub granted_to: Vec<String>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredCreate {
    pub name: String,
    #[serde(rename = "type")]
    pub cred_type: CredType,
    pub hosts: Vec<String>,
    pub path_prefix: Option<String>,
    pub secret: String,
}

/// Hand-written so that a debug print of a request never shows the secret.
impl std::fmt::Debug for CredCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredCreate")
            .field("name", &self.name)
            .field("cred_type", &self.cred_type)
            .field("hosts", &self.hosts)
            .field("path_prefix", &self.path_prefix)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// New bindings for a credential, replacing the old ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredHosts {
    pub hosts: Vec<String>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredSecret {
    pub secret: String,
}

impl std::fmt::Debug for CredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredSecret([redacted])")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantCreate {
    pub conn: String,
    pub cred: String,
    /// Issue a new token for an existing grant; the old one stops working.
    #[serde(default)]
    pub regenerate: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantCreated {
    pub conn_id: String,
    pub conn: String,
    pub cred: String,
    /// The `pxr_` token, shown once.
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub data_dir: String,
    pub socket: String,
    pub proxy_listen: String,
    /// The proxy upstream connections go through, without its credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_proxy: Option<String>,
    pub conns: u64,
    pub creds: u64,
    pub grants: u64,
    pub schema_version: u32,
    /// Store writes since start; lets tests prove `last_used` is batched.
    pub store_writes: u64,
    /// The local CA that intercepted hosts are signed by.
    pub ca_path: String,
    /// The system roots plus the local CA: what agents should trust.
    pub ca_bundle: String,
}

/// One proxied request, as the audit log keeps it: never a header, a
/// secret or a query value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: u64,
    pub time_ms: u64,
    pub conn_id: String,
    pub conn: String,
    pub cred: Option<String>,
    pub method: String,
    /// `scheme://host[:port]/path`, without the query.
    pub url: String,
    pub status: Option<u16>,
    pub latency_ms: Option<u64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub outcome: Outcome,
    /// The response carried the injected secret, and sidekey masked it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scrubbed: bool,
}

/// What `/v1/whoami` on the proxy port answers for a valid key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Whoami {
    pub id: String,
    pub name: String,
    pub kind: ConnKind,
    pub expires_at: Option<u64>,
}

// --- sync: shares (hub side) and sessions (peer side)

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareCreate {
    pub name: String,
    /// An absolute path.
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Share {
    pub name: String,
    pub path: String,
    pub files: u64,
    pub version: u64,
    /// Names of the sync connections that open this share.
    pub peers: Vec<String>,
    /// Why the share stopped accepting changes, if it did.
    pub halted: Option<String>,
    pub skipped: Vec<String>,
    pub case_collisions: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteCreate {
    #[serde(default)]
    pub read_only: bool,
    /// The sync connection's name (default: `<share>-peer-N`).
    pub name: Option<String>,
    /// The host name peers reach this hub by (default: from sync_listen, or this machine's name).
    pub host: Option<String>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    /// `sidekey://host:port/<share>#key=cli_…&fp=sha256:…`: holds the key.
    pub invite: String,
    pub conn_id: String,
    pub conn_name: String,
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite")
            .field("conn_id", &self.conn_id)
            .field("invite", &"[redacted]")
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCreate {
    /// An absolute path.
    pub folder: String,
    pub invite: String,
}

impl std::fmt::Debug for SessionCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCreate")
            .field("folder", &self.folder)
            .field("invite", &"[redacted]")
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionKey {
    pub key: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Watching,
    Scanning,
    Syncing,
    Paused,
    Halted,
    AuthFailed,
    Error,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Watching => "watching",
            SessionState::Scanning => "scanning",
            SessionState::Syncing => "syncing",
            SessionState::Paused => "paused",
            SessionState::Halted => "halted",
            SessionState::AuthFailed => "auth_failed",
            SessionState::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub folder: String,
    /// `host:port/share`
    pub hub: String,
    pub share: String,
    pub state: SessionState,
    /// What to do about the state, when it is not a healthy one.
    pub message: Option<String>,
    pub files: u64,
    pub pending: u64,
    pub conflicts: u64,
    pub bytes_moved: u64,
    pub last_sync: Option<u64>,
    /// The initial sync: paths done and to do.
    pub progress_done: u64,
    pub progress_total: u64,
    pub initial_sync_done: bool,
    pub skipped: Vec<String>,
    pub case_collisions: Vec<String>,
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    /// Parses `600/min`, `10/s`, `1000/hour`, `5000/day`.
    fn from_str(text: &str) -> Result<RateLimit, String> {
        let (count, unit) = text
            .split_once('/')
            .ok_or_else(|| format!("rate '{text}' should look like 600/min"))?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("rate '{text}': the count must be a positive whole number"))?;
        let per_secs = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            other => {
                return Err(format!(
                    "rate '{text}': unknown unit '{other}'; use s, min, hour or day"
                ));
            }
        };
        Ok(RateLimit { count, per_secs })
    }
}

/// Parses a duration such as `60s`, `15m`, `12h`, `30d` or `2w` into seconds.
/// A bare number is seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("duration '{text}' should look like 60s, 15m, 12h, 30d or 2w"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => {
            return Err(format!(
                "duration '{text}': unknown unit '{other}'; use s, m, h, d or w"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("duration '{text}' is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(
            "600/min".parse::<RateLimit>().unwrap(),
            RateLimit {
                count: 600,
                per_secs: 60
            }
        );
        assert_eq!(
            "10/s".parse::<RateLimit>().unwrap(),
            RateLimit {
                count: 10,
                per_secs: 1
            }
        );
        assert!("0/min".parse::<RateLimit>().is_err());
        assert!("10/fortnight".parse::<RateLimit>().is_err());
        assert!("ten/min".parse::<RateLimit>().is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_secs("60s"), Ok(60));
        assert_eq!(parse_duration_secs("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert!(parse_duration_secs("3 parsecs").is_err());
        assert!(parse_duration_secs("").is_err());
        assert!(parse_duration_secs("99999999999999999999w").is_err());
    }
}
