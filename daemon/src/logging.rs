//! tracing setup: `RUST_LOG` wins over `log_level`; JSON when asked. The
//! filter can be swapped on SIGHUP through [`LogHandle`].
//! Log lines carry ids and names, never header values or secrets.

use anyhow::{Context, Result};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{Config, LogFormat};

/// Changes the running log filter.
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start, and it keeps winning over `log_level`.
    from_env: bool,
}

pub fn init(config: &Config) -> LogHandle {
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, true),
        Err(_) => (EnvFilter::new(&config.log_level), false),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
    LogHandle { handle, from_env }
}

impl LogHandle {
    /// Applies a new `log_level`, unless `RUST_LOG` overrides it.
    pub fn set_level(&self, level: &str) -> Result<()> {
        if self.from_env {
            tracing::warn!("RUST_LOG is set, so it keeps overriding log_level '{level}'");
            return Ok(());
        }
        let filter = EnvFilter::try_new(level)
            .with_context(|| format!("log_level '{level}' is not a level or filter"))?;
        self.handle
            .reload(filter)
            .context("cannot swap the log filter")
    }
}
