use sidekey_api::{Cred, CredCreate, CredHosts, CredSecret, CredType, GrantCreate};

use crate::cli::CredCommand;
use crate::client::{Client, ClientResult};
use crate::output::{fields, print_json, table, time};
use crate::prompt::read_secret;

pub async fn run(client: &Client, command: CredCommand) -> ClientResult<()> {
    match command {
        CredCommand::Add {
            name,
            cred_type,
            hosts,
            path_prefix,
            json,
        } => {
            let cred_type = CredType::ALL
                .into_iter()
                .find(|t| t.cli_name() == cred_type)
                .expect("clap checked the value");
            let secret = read_secret(&format!("Secret for {name}"))?;
            let cred = client
                .cred_add(&CredCreate {
                    name,
                    cred_type,
                    hosts,
                    path_prefix,
                    secret,
                })
                .await?;
            if json {
                print_json(&cred);
            } else {
                println!(
                    "Added credential {} ({}) for {}. Grant it with: sidekeyctl grant <conn> {}",
                    cred.name,
                    cred.cred_type.cli_name(),
                    cred.hosts.join(", "),
                    cred.name
                );
            }
        }
        CredCommand::Ls { json } => {
            let creds = client.creds().await?;
            if json {
                print_json(&creds);
            } else if creds.is_empty() {
                println!(
                    "No credentials yet; add one with: sidekeyctl cred add --name <name> --type api-key --host <host>"
                );
            } else {
                let mut t = table(&[
                    "name",
                    "type",
                    "hosts",
                    "path prefix",
                    "granted to",
                    "updated",
                ]);
                for c in &creds {
                    t.add_row(vec![
                        c.name.clone(),
                        c.cred_type.cli_name().into(),
                        c.hosts.join(","),
                        c.path_prefix.clone().unwrap_or_else(|| "-".into()),
                        list(&c.granted_to),
                        time(Some(c.updated_at)),
                    ]);
                }
                println!("{t}");
            }
        }
        CredCommand::Info { name, json } => {
            let cred = client.cred(&name).await?;
            if json {
                print_json(&cred);
            } else {
                print_cred(&cred);
            }
        }
        CredCommand::Set { name, hosts } if !hosts.is_empty() => {
            let cred = client.cred_set_hosts(&name, &CredHosts { hosts }).await?;
            println!(
                "{} is now bound to {}; the next request follows them.",
                cred.name,
                cred.hosts.join(", ")
            );
        }
        CredCommand::Set { name, .. } => {
            let secret = read_secret(&format!("New secret for {name}"))?;
            let cred = client.cred_set(&name, &CredSecret { secret }).await?;
            println!(
                "Replaced the secret of {}; the next request uses it.",
                cred.name
            );
        }
        CredCommand::Rm { name } => {
            let cred = client.cred_remove(&name).await?;
            println!("Removed credential {} and its grants.", cred.name);
        }
    }
    Ok(())
}

pub async fn grant(
    client: &Client,
    conn: String,
    cred: String,
    regenerate: bool,
    json: bool,
) -> ClientResult<()> {
    let granted = client
        .grant(&GrantCreate {
            conn,
            cred,
            regenerate,
        })
        .await?;
    if json {
        print_json(&granted);
    } else {
        println!("{}", granted.token);
        let what = if regenerate {
            "Issued a new token for"
        } else {
            "Granted"
        };
        eprintln!(
            "{what} {} to {}. The pxr_ token above is shown once; use it with /v1/proxy.",
            granted.cred, granted.conn
        );
        if regenerate {
            eprintln!("The previous token no longer works.");
        }
    }
    Ok(())
}

pub async fn revoke(client: &Client, conn: String, cred: String) -> ClientResult<()> {
    client.revoke(&conn, &cred).await?;
    println!("Revoked {cred} from {conn}; its pxr_ token no longer works.");
    Ok(())
}

fn print_cred(c: &Cred) {
    fields(&[
        ("name", c.name.clone()),
        ("type", c.cred_type.cli_name().into()),
        ("hosts", c.hosts.join(", ")),
        (
            "path prefix",
            c.path_prefix.clone().unwrap_or_else(|| "-".into()),
        ),
        ("granted to", list(&c.granted_to)),
        ("created", time(Some(c.created_at))),
        ("updated", time(Some(c.updated_at))),
    ]);
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}
