//! `upstream/ws_client.py`, a WebSocket client written out by hand, run
//! through the daemon's intercepting proxy.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::agent::Setup;
use crate::{output_within, text};

/// Runs the client against `host:port` through `setup`'s proxy in `mode`
/// (`echo` or `probe`) and returns what it printed.
pub fn client(setup: &Setup, host: &str, port: u16, mode: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("upstream")
        .join("ws_client.py");
    let mut cmd = Command::new(crate::deps::python());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg(&script)
        .arg(setup.proxy().port().to_string())
        .arg(host)
        .arg(port.to_string())
        .arg(&setup.key)
        .arg(&setup.bundle)
        .arg(mode)
        .stdin(Stdio::null());
    let out = output_within(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}
