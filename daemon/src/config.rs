//! The daemon's configuration: an optional TOML file in the platform config
//! dir, overridden by `SIDEKEY_*` env, overridden by flags. Everything is
//! validated here, before any file is opened or any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::{Deserialize, Serialize, Serializer};
use sidekey_api::paths::{self, PlatformDirs, Sources};

use crate::proxy::dial::UpstreamProxy;

/// Flags. Each config key has a flag and a `SIDEKEY_*` variable.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "sidekeyd",
    version,
    about = "sidekey's daemon: injecting proxy, folder sync and control API"
)]
pub struct Args {
    /// Config file (default: config.toml in the platform config dir).
    #[arg(long, env = "SIDEKEY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Create a new master key (32 random bytes, mode 0600) where sidekeyd
    /// will read it, then exit. An existing key is never replaced.
    #[arg(long, conflicts_with_all = ["print_config", "daemonize"])]
    pub init_master_key: bool,
    /// With --init-master-key: the file to create (default: where sidekeyd
    /// would look for the key).
    #[arg(long, value_name = "PATH", requires = "init_master_key")]
    pub master_key_file: Option<PathBuf>,
    /// Detach from the terminal and run in the background.
    #[arg(long)]
    pub daemonize: bool,
    /// With --daemonize: where to write the (locked) pid file.
    #[arg(long, requires = "daemonize")]
    pub pid_file: Option<PathBuf>,
    /// With --daemonize: where to write the log.
    #[arg(long, requires = "daemonize")]
    pub log_file: Option<PathBuf>,
    #[arg(long, env = "SIDEKEY_PROXY_LISTEN")]
    pub proxy_listen: Option<String>,
    #[arg(long, env = "SIDEKEY_SYNC_LISTEN")]
    pub sync_listen: Option<String>,
    #[arg(long, env = "SIDEKEY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "SIDEKEY_SOCKET_PATH")]
    pub socket_path: Option<PathBuf>,
    #[arg(long, env = "SIDEKEY_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
    #[arg(long, env = "SIDEKEY_UPSTREAM_PROXY")]
    pub upstream_proxy: Option<String>,
    /// Hosts reached without upstream_proxy, comma-separated.
    #[arg(long, env = "SIDEKEY_UPSTREAM_NO_PROXY", value_delimiter = ',')]
    pub upstream_no_proxy: Option<Vec<String>>,
    #[arg(long, env = "SIDEKEY_EGRESS")]
    pub egress: Option<Egress>,
    #[arg(long, env = "SIDEKEY_INTERCEPT")]
    pub intercept: Option<Intercept>,
    #[arg(long, env = "SIDEKEY_AUDIT_RETENTION")]
    pub audit_retention: Option<String>,
    /// The rate limit of agent connections that have none of their own, like 600/min.
    #[arg(long, env = "SIDEKEY_DEFAULT_RATE")]
    pub default_rate: Option<String>,
    #[arg(long, env = "SIDEKEY_LOG_LEVEL")]
    pub log_level: Option<String>,
    #[arg(long, env = "SIDEKEY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    #[arg(long, env = "SIDEKEY_LAST_USED_FLUSH")]
    pub last_used_flush: Option<String>,
    #[arg(long, env = "SIDEKEY_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    #[default]
    Tunnel,
    Deny,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Intercept {
    #[default]
    Bound,
    All,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The file's shape: every key optional, unknown keys refused by name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    proxy_listen: Option<String>,
    sync_listen: Option<String>,
    data_dir: Option<PathBuf>,
    socket_path: Option<PathBuf>,
    upstream_ca_file: Option<PathBuf>,
    upstream_proxy: Option<String>,
    upstream_no_proxy: Option<Vec<String>>,
    egress: Option<Egress>,
    intercept: Option<Intercept>,
    audit_retention: Option<String>,
    default_rate: Option<String>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    last_used_flush: Option<String>,
    shutdown_timeout: Option<String>,
}

/// The effective configuration, every default filled in.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub proxy_listen: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub socket_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_proxy: Option<UpstreamProxy>,
    /// Names (each with every name under it) and IPs reached directly.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstream_no_proxy: Vec<String>,
    pub egress: Egress,
    pub intercept: Intercept,
    #[serde(serialize_with = "serialize_duration")]
    pub audit_retention: Duration,
    /// Applies to agent connections without a rate of their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_rate: Option<String>,
    pub log_level: String,
    pub log_format: LogFormat,
    #[serde(serialize_with = "serialize_duration")]
    pub last_used_flush: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub shutdown_timeout: Duration,
    /// Where the file came from, if there was one.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

impl Config {
    pub fn load(args: &Args) -> Result<Config> {
        let platform = platform_dirs();
        let (file, config_file) = read_file(args.config.clone(), platform.as_ref())?;

        let proxy_listen = args
            .proxy_listen
            .clone()
            .or(file.proxy_listen)
            .unwrap_or_else(|| "127.0.0.1:8787".into());
        let proxy_listen: SocketAddr = proxy_listen.parse().with_context(|| {
            format!("proxy_listen '{proxy_listen}' is not an address like 127.0.0.1:8787")
        })?;
        let sync_listen = args
            .sync_listen
            .clone()
            .or(file.sync_listen)
            .map(|s| {
                s.parse::<SocketAddr>().with_context(|| {
                    format!("sync_listen '{s}' is not an address like 0.0.0.0:7443")
                })
            })
            .transpose()?;

        let sources = Sources {
            data_dir: args.data_dir.clone(),
            socket_path: args.socket_path.clone(),
            file_data_dir: file.data_dir,
            file_socket_path: file.socket_path,
            runtime_dir: std::env::var_os(paths::RUNTIME_DIR_ENV).map(PathBuf::from),
            platform,
        };
        let data_dir = absolute(&sources.data_dir()?)?;
        let socket_path = absolute(&sources.socket_path()?)?;

        let config = Config {
            proxy_listen,
            sync_listen,
            data_dir,
            socket_path,
            upstream_ca_file: args.upstream_ca_file.clone().or(file.upstream_ca_file),
            upstream_proxy: args
                .upstream_proxy
                .clone()
                .or(file.upstream_proxy)
                .map(|url| url.parse::<UpstreamProxy>().map_err(anyhow::Error::msg))
                .transpose()?,
            upstream_no_proxy: args
                .upstream_no_proxy
                .clone()
                .or(file.upstream_no_proxy)
                .unwrap_or_default()
                .iter()
                .filter(|entry| !entry.trim().is_empty())
                .map(|entry| no_proxy_entry(entry))
                .collect::<Result<_>>()?,
            egress: args.egress.or(file.egress).unwrap_or_default(),
            intercept: args.intercept.or(file.intercept).unwrap_or_default(),
            audit_retention: duration(
                "audit_retention",
                args.audit_retention.clone().or(file.audit_retention),
                "30d",
            )?,
            default_rate: args.default_rate.clone().or(file.default_rate),
            log_level: args
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            last_used_flush: duration(
                "last_used_flush",
                args.last_used_flush.clone().or(file.last_used_flush),
                "10s",
            )?,
            shutdown_timeout: duration(
                "shutdown_timeout",
                args.shutdown_timeout.clone().or(file.shutdown_timeout),
                "10s",
            )?,
            config_file,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if self.last_used_flush.is_zero() {
            bail!(
                "last_used_flush: must be at least 1s; it is how often last_used is written, and 0s is no interval at all"
            );
        }
        if let Some(rate) = &self.default_rate {
            rate.parse::<sidekey_api::RateLimit>()
                .map_err(|e| anyhow::anyhow!("default_rate: {e}"))?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).with_context(|| {
            format!(
                "log_level '{}' is not a level or filter like info or sidekeyd=debug",
                self.log_level
            )
        })?;
        if let Some(proxy) = &self.upstream_proxy
            && proxy.is(self.proxy_listen)
        {
            bail!(
                "upstream_proxy {proxy} is this daemon's own proxy_listen, which would loop; name the proxy sidekeyd itself should go through"
            );
        }
        if let Some(ca) = &self.upstream_ca_file
            && !ca.is_file()
        {
            bail!(
                "upstream_ca_file {} does not exist or is not a file",
                ca.display()
            );
        }
        Ok(())
    }

    /// The parsed `default_rate`; [`Config::load`] has already checked it.
    pub fn default_rate(&self) -> Option<sidekey_api::RateLimit> {
        self.default_rate.as_deref().and_then(|r| r.parse().ok())
    }

    /// What a SIGHUP may change: `new` with every key that needs a restart
    /// put back to its running value, and the names of those that differed.
    pub fn reloaded(&self, mut new: Config) -> (Config, Vec<&'static str>) {
        let mut restart = Vec::new();
        macro_rules! keep {
            ($($key:ident),*) => {$(
                if new.$key != self.$key {
                    restart.push(stringify!($key));
                    new.$key = self.$key.clone();
                }
            )*};
        }
        keep!(
            proxy_listen,
            sync_listen,
            data_dir,
            socket_path,
            upstream_ca_file,
            upstream_proxy,
            upstream_no_proxy,
            intercept,
            log_format,
            last_used_flush,
            shutdown_timeout
        );
        (new, restart)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("Config serializes")
    }
}

/// An `upstream_no_proxy` entry as hosts are compared: `.corp.example` and
/// `*.corp.example` mean `corp.example`, which also covers every name under it.
fn no_proxy_entry(entry: &str) -> Result<String> {
    let name = entry.trim();
    let name = name
        .strip_prefix("*.")
        .or_else(|| name.strip_prefix('.'))
        .unwrap_or(name);
    crate::hosts::HostPattern::parse(name)
        .map(|pattern| pattern.to_string())
        .map_err(|why| {
            anyhow::anyhow!("upstream_no_proxy entry {why}; use a name like corp.example or an IP")
        })
}

/// A duration key's value, parsed once here so that a bad one is refused by
/// name at load and every later use is a plain [`Duration`].
fn duration(key: &str, value: Option<String>, default: &str) -> Result<Duration> {
    let text = value.as_deref().unwrap_or(default);
    let secs = sidekey_api::parse_duration_secs(text).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    Ok(Duration::from_secs(secs))
}

/// The form [`sidekey_api::parse_duration_secs`] reads back, in the largest
/// unit that divides it exactly: `30d`, `90m`, `10s`.
pub(crate) fn render_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match [(86_400, 'd'), (3600, 'h'), (60, 'm')]
        .into_iter()
        .find(|(unit, _)| secs != 0 && secs.is_multiple_of(*unit))
    {
        Some((unit, suffix)) => format!("{}{suffix}", secs / unit),
        None => format!("{secs}s"),
    }
}

fn serialize_duration<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&render_duration(*duration))
}

/// sidekey's dirs for this user, as `directories` finds them.
fn platform_dirs() -> Option<PlatformDirs> {
    let (qualifier, organization, application) = paths::PROJECT;
    directories::ProjectDirs::from(qualifier, organization, application).map(|d| PlatformDirs {
        config_dir: d.config_dir().to_path_buf(),
        data_dir: d.data_dir().to_path_buf(),
    })
}

/// An explicit file must exist; the platform one is optional.
fn read_file(
    explicit: Option<PathBuf>,
    platform: Option<&PlatformDirs>,
) -> Result<(FileConfig, Option<PathBuf>)> {
    let must_exist = explicit.is_some();
    let path = match paths::config_file(explicit, platform) {
        Some(path) if must_exist || path.exists() => path,
        _ => return Ok((FileConfig::default(), None)),
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let file: FileConfig = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.message()))?;
    Ok((file, Some(path)))
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve path {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err =
            toml::from_str::<FileConfig>("proxy_listen = \"127.0.0.1:1\"\nprxy = 1\n").unwrap_err();
        assert!(err.message().contains("prxy"), "{}", err.message());
    }

    #[test]
    fn enums_parse_from_their_names() {
        let file: FileConfig =
            toml::from_str("egress = \"deny\"\nintercept = \"all\"\nlog_format = \"json\"")
                .unwrap();
        assert_eq!(file.egress, Some(Egress::Deny));
        assert_eq!(file.intercept, Some(Intercept::All));
        assert_eq!(file.log_format, Some(LogFormat::Json));
        assert!(toml::from_str::<FileConfig>("egress = \"maybe\"").is_err());
    }

    fn sample() -> Config {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "").unwrap();
        Config::load(&Args {
            config: Some(file),
            data_dir: Some(dir.path().join("data")),
            socket_path: Some(dir.path().join("sidekeyd.sock")),
            ..Args::default()
        })
        .unwrap()
    }

    #[test]
    fn reload_takes_reloadable_keys_and_names_the_rest() {
        let old = sample();
        let mut new = old.clone();
        new.log_level = "debug".into();
        new.egress = Egress::Deny;
        new.audit_retention = Duration::from_secs(7 * 86_400);
        new.default_rate = Some("600/min".into());
        new.proxy_listen = "127.0.0.1:9999".parse().unwrap();
        new.data_dir = "/elsewhere".into();
        let (next, restart) = old.reloaded(new);
        assert_eq!(next.log_level, "debug");
        assert_eq!(next.egress, Egress::Deny);
        assert_eq!(next.audit_retention, Duration::from_secs(7 * 86_400));
        assert_eq!(
            next.default_rate(),
            Some(sidekey_api::RateLimit {
                count: 600,
                per_secs: 60
            })
        );
        assert_eq!(next.proxy_listen, old.proxy_listen);
        assert_eq!(next.data_dir, old.data_dir);
        assert_eq!(restart, ["proxy_listen", "data_dir"]);
    }

    #[test]
    fn default_rate_is_validated() {
        let mut config = sample();
        config.default_rate = Some("lots".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("default_rate:"), "{err}");
    }

    #[test]
    fn durations_render_in_a_form_that_parses_back() {
        for (text, secs, rendered) in [
            ("10s", 10, "10s"),
            ("30d", 30 * 86_400, "30d"),
            ("2w", 14 * 86_400, "14d"),
            ("90m", 5400, "90m"),
            ("120m", 7200, "2h"),
            ("61", 61, "61s"),
            ("0s", 0, "0s"),
        ] {
            let parsed = duration("audit_retention", Some(text.into()), "30d").unwrap();
            assert_eq!(parsed, Duration::from_secs(secs), "{text}");
            assert_eq!(render_duration(parsed), rendered, "{text}");
            let again = duration("audit_retention", Some(rendered.into()), "30d").unwrap();
            assert_eq!(again, parsed, "{rendered} reads back");
        }
        assert_eq!(
            duration("shutdown_timeout", None, "10s").unwrap(),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn a_bad_duration_is_refused_by_its_key() {
        for key in ["audit_retention", "last_used_flush", "shutdown_timeout"] {
            let err = duration(key, Some("forever".into()), "10s")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&format!("{key}: ")), "{err}");
            assert!(err.contains("'forever'"), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "").unwrap();
        let err = Config::load(&Args {
            config: Some(file),
            data_dir: Some(dir.path().join("data")),
            shutdown_timeout: Some("soon".into()),
            ..Args::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("shutdown_timeout: "), "{err}");
    }

    #[test]
    fn print_config_shows_durations_as_written() {
        let text = sample().to_toml();
        for line in [
            "audit_retention = \"30d\"",
            "last_used_flush = \"10s\"",
            "shutdown_timeout = \"10s\"",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn a_zero_last_used_flush_is_refused() {
        let mut config = sample();
        config.last_used_flush = Duration::ZERO;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("last_used_flush:"), "{err}");
    }
}
