use crate::client::{Client, ClientResult};
use crate::output::{fields, print_json};

pub async fn run(client: &Client, json: bool) -> ClientResult<()> {
    let status = client.status().await?;
    if json {
        print_json(&status);
        return Ok(());
    }
    let upstream = match status.upstream_proxy {
        Some(via) => format!("through {via}"),
        None => "direct".into(),
    };
    fields(&[
        (
            "sidekeyd",
            format!(
                "{} running (pid {}, up {} s)",
                status.version, status.pid, status.uptime_secs
            ),
        ),
        ("data dir", status.data_dir),
        ("control", status.socket),
        ("proxy", format!("http://{}", status.proxy_listen)),
        ("upstream", upstream),
        ("connections", status.conns.to_string()),
        ("credentials", status.creds.to_string()),
        ("grants", status.grants.to_string()),
    ]);
    Ok(())
}
