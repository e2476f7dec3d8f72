//! What an agent needs to go through the proxy: `ca`, `env` and `run`.
//! The agent's environment carries its own `sk_live_` key in the proxy URL,
//! never an upstream secret.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;

use anyhow::anyhow;
use sidekey_api::ConnKind;

use crate::client::{Client, ClientError, ClientResult};

/// Every variable a TLS stack or HTTP client might read for its CA bundle.
const CA_VARIABLES: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "DENO_CERT",
    "PIP_CERT",
];

/// Inherited values that would send traffic around the proxy.
const STALE_VARIABLES: &[&str] = &["ALL_PROXY", "all_proxy", "SSL_CERT_DIR"];

pub async fn ca(client: &Client, bundle: bool) -> ClientResult<()> {
    let status = client.status().await?;
    println!(
        "{}",
        if bundle {
            status.ca_bundle
        } else {
            status.ca_path
        }
    );
    Ok(())
}

pub async fn env(client: &Client, conn: &str) -> ClientResult<()> {
    for (name, value) in agent_env(client, conn).await? {
        println!("export {name}={}", shell_quote(&value));
    }
    println!("unset {}", STALE_VARIABLES.join(" "));
    Ok(())
}

pub async fn run(client: &Client, conn: &str, command: Vec<String>) -> ClientResult<()> {
    let vars = agent_env(client, conn).await?;
    let (program, args) = command
        .split_first()
        .ok_or_else(|| ClientError::Other(anyhow!("no command given after --")))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).envs(vars);
    for name in STALE_VARIABLES {
        cmd.env_remove(name);
    }
    let error = cmd.exec();
    Err(ClientError::Other(anyhow!("cannot run {program}: {error}")))
}

/// The variables DESIGN.md lists, for this connection.
async fn agent_env(client: &Client, conn: &str) -> ClientResult<Vec<(String, String)>> {
    let status = client.status().await?;
    let revealed = client.conn_key(conn).await?;
    if revealed.conn.kind != ConnKind::Agent {
        return Err(ClientError::Other(anyhow!(
            "'{}' is a sync connection; give an agent connection (sidekeyctl conn create --kind agent)",
            revealed.conn.name
        )));
    }
    let mut addr: SocketAddr = status.proxy_listen.parse().map_err(|_| {
        ClientError::Other(anyhow!(
            "the daemon reported a proxy address that does not parse"
        ))
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let proxy = format!("http://{}:{}@{addr}", revealed.conn.name, revealed.key);
    let mut vars: Vec<(String, String)> =
        ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
            .iter()
            .map(|name| (name.to_string(), proxy.clone()))
            .collect();
    let no_proxy = "localhost,127.0.0.1,::1".to_string();
    vars.push(("NO_PROXY".into(), no_proxy.clone()));
    vars.push(("no_proxy".into(), no_proxy));
    vars.extend(
        CA_VARIABLES
            .iter()
            .map(|name| (name.to_string(), status.ca_bundle.clone())),
    );
    vars.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    Ok(vars)
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}
