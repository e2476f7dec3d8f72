use anyhow::anyhow;
use sidekey_api::{Conn, ConnCreate, ConnKind, KeyRegenerate, RateLimit, parse_duration_secs};

use crate::cli::ConnCommand;
use crate::client::{Client, ClientError, ClientResult};
use crate::output::{fields, print_json, table, time};
use crate::prompt::confirm;

pub async fn run(client: &Client, command: ConnCommand) -> ClientResult<()> {
    match command {
        ConnCommand::Create {
            name,
            kind,
            expires,
            rate,
            json,
        } => {
            let kind = if kind == "sync" {
                ConnKind::Sync
            } else {
                ConnKind::Agent
            };
            let expires_in_secs = expires
                .as_deref()
                .map(parse_duration_secs)
                .transpose()
                .map_err(usage)?;
            let rate = rate
                .as_deref()
                .map(str::parse::<RateLimit>)
                .transpose()
                .map_err(usage)?;
            let created = client
                .conn_create(&ConnCreate {
                    name,
                    kind,
                    expires_in_secs,
                    rate,
                    share: None,
                    read_only: None,
                })
                .await?;
            if json {
                print_json(&created);
            } else {
                fields(&[
                    ("id", created.conn.id.clone()),
                    ("name", created.conn.name.clone()),
                    ("kind", kind.as_str().into()),
                    ("key", created.key.clone()),
                ]);
                eprintln!(
                    "Keep the key safe; reveal it again with: sidekeyctl conn key {}",
                    created.conn.name
                );
            }
        }
        ConnCommand::Ls { json } => {
            let conns = client.conns().await?;
            if json {
                print_json(&conns);
            } else if conns.is_empty() {
                println!(
                    "No connections yet; create one with: sidekeyctl conn create --name <name> --kind agent"
                );
            } else {
                let mut t = table(&[
                    "id",
                    "name",
                    "kind",
                    "key",
                    "state",
                    "created",
                    "rotated",
                    "last used",
                ]);
                for c in &conns {
                    t.add_row(vec![
                        c.id.clone(),
                        c.name.clone(),
                        c.kind.as_str().into(),
                        c.key.clone(),
                        c.state.as_str().into(),
                        time(Some(c.created_at)),
                        time(c.rotated_at),
                        time(c.last_used_at),
                    ]);
                }
                println!("{t}");
            }
        }
        ConnCommand::Info { conn, json } => {
            let conn = client.conn(&conn).await?;
            if json {
                print_json(&conn);
            } else {
                print_conn(&conn);
            }
        }
        ConnCommand::Key {
            conn,
            regenerate,
            grace,
            json,
        } => {
            let revealed = if regenerate {
                let grace_secs = grace
                    .as_deref()
                    .map(parse_duration_secs)
                    .transpose()
                    .map_err(usage)?;
                client
                    .conn_rotate(&conn, &KeyRegenerate { grace_secs })
                    .await?
            } else {
                client.conn_key(&conn).await?
            };
            if json {
                print_json(&revealed);
            } else {
                println!("{}", revealed.key);
                if regenerate {
                    match revealed.conn.grace_until {
                        Some(until) => eprintln!(
                            "Rotated. The previous key works until {} UTC.",
                            time(Some(until))
                        ),
                        None => eprintln!("Rotated. The previous key no longer works."),
                    }
                    if !revealed.grant_tokens.is_empty() {
                        eprintln!(
                            "Its pxr_ grant tokens retired with it; the new ones, shown once:"
                        );
                        for grant in &revealed.grant_tokens {
                            eprintln!("  {}  {}", grant.cred, grant.token);
                        }
                    }
                }
            }
        }
        ConnCommand::Disable { conn } => {
            let conn = client.conn_set_enabled(&conn, false).await?;
            println!(
                "Disabled {} ({}); its key is refused until: sidekeyctl conn enable {}",
                conn.name, conn.id, conn.name
            );
        }
        ConnCommand::Enable { conn } => {
            let conn = client.conn_set_enabled(&conn, true).await?;
            println!("Enabled {} ({}).", conn.name, conn.id);
        }
        ConnCommand::Rm { conn, yes } => {
            if !yes {
                let question = format!("Delete connection '{conn}' and revoke its key for good?");
                if !confirm(&question, "--yes")? {
                    return Err(ClientError::Other(anyhow!("not deleted")));
                }
            }
            let conn = client.conn_remove(&conn).await?;
            println!(
                "Deleted {} ({}); its key is revoked for good.",
                conn.name, conn.id
            );
        }
    }
    Ok(())
}

fn print_conn(c: &Conn) {
    let rate = c
        .rate
        .map(|r| format!("{} per {} s", r.count, r.per_secs))
        .unwrap_or_else(|| "-".into());
    let mut rows = vec![
        ("id", c.id.clone()),
        ("name", c.name.clone()),
        ("kind", c.kind.as_str().into()),
        ("key", c.key.clone()),
        ("state", c.state.as_str().into()),
        ("created", time(Some(c.created_at))),
        ("rotated", time(c.rotated_at)),
        ("expires", time(c.expires_at)),
        ("rate", rate),
        ("last used", time(c.last_used_at)),
        (
            "last used by",
            c.last_used_by.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "grants",
            if c.grant_tokens.is_empty() {
                "-".into()
            } else {
                c.grant_tokens
                    .iter()
                    .map(|g| format!("{} ({})", g.cred, g.token))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
    ];
    if let Some(until) = c.grace_until {
        rows.push(("previous key valid until", time(Some(until))));
    }
    fields(&rows);
}

fn usage(message: String) -> ClientError {
    ClientError::Other(anyhow!(message))
}
