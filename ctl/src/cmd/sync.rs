//! `sidekeyctl share …` (the hub side) and `sidekeyctl sync …` (the peer side).

use std::io::{IsTerminal, Read};
use std::time::Duration;

use anyhow::anyhow;
use indicatif::{ProgressBar, ProgressStyle};
use sidekey_api::{
    InviteCreate, Session, SessionCreate, SessionKey, SessionState, Share, ShareCreate,
};

use crate::cli::{ShareCommand, SyncCommand};
use crate::client::{Client, ClientError, ClientResult};
use crate::output::{fields, print_json, table, time};
use crate::prompt::{confirm, read_secret};

pub async fn share(client: &Client, command: ShareCommand) -> ClientResult<()> {
    match command {
        ShareCommand::Add { path, name, json } => {
            let path = absolute(&path)?;
            let share = client.share_add(&ShareCreate { name, path }).await?;
            if json {
                print_json(&share);
            } else {
                println!(
                    "Sharing {} as '{}'. Invite a peer with: sidekeyctl share invite {}",
                    share.path, share.name, share.name
                );
            }
        }
        ShareCommand::Ls { json } => {
            let shares = client.shares().await?;
            if json {
                print_json(&shares);
            } else if shares.is_empty() {
                println!(
                    "No shares yet; add one with: sidekeyctl share add <folder> --name <name>"
                );
            } else {
                let mut t = table(&["name", "path", "files", "version", "peers", "state"]);
                for s in &shares {
                    t.add_row(vec![
                        s.name.clone(),
                        s.path.clone(),
                        s.files.to_string(),
                        s.version.to_string(),
                        if s.peers.is_empty() {
                            "-".into()
                        } else {
                            s.peers.join(",")
                        },
                        share_state(s),
                    ]);
                }
                println!("{t}");
            }
        }
        ShareCommand::Rm { name, yes } => {
            if !yes {
                let question = format!("Stop sharing '{name}' and revoke its peers' keys?");
                if !confirm(&question, "--yes")? {
                    return Err(ClientError::Other(anyhow!("not removed")));
                }
            }
            client.share_remove(&name).await?;
            println!(
                "Stopped sharing '{name}' and revoked its peers' keys; the folder is untouched."
            );
        }
        ShareCommand::Invite {
            share,
            mode,
            name,
            host,
            json,
        } => {
            let invite = client
                .share_invite(
                    &share,
                    &InviteCreate {
                        read_only: mode == "ro",
                        name,
                        host,
                    },
                )
                .await?;
            if json {
                print_json(&invite);
            } else {
                println!("{}", invite.invite);
                eprintln!(
                    "Created sync connection {} ({}, {mode}). On the peer: sidekeyctl sync add <folder>, then paste the invite on stdin.",
                    invite.conn_name, invite.conn_id
                );
            }
        }
    }
    Ok(())
}

pub async fn sync(client: &Client, command: SyncCommand) -> ClientResult<()> {
    match command {
        SyncCommand::Add {
            folder,
            invite,
            no_wait,
            json,
        } => {
            let folder = absolute(&folder)?;
            let invite = match invite {
                Some(invite) => invite,
                None => read_invite()?,
            };
            let session = client
                .session_add(&SessionCreate { folder, invite })
                .await?;
            if json {
                print_json(&session);
                return Ok(());
            }
            println!(
                "Syncing {} with {} (session {}).",
                session.folder, session.hub, session.id
            );
            if !no_wait {
                let done = follow(client, &session.id, true).await?;
                print_session(&done);
            }
        }
        SyncCommand::Ls { json } => {
            let sessions = client.sessions().await?;
            if json {
                print_json(&sessions);
            } else if sessions.is_empty() {
                println!(
                    "No sync sessions; add one with: sidekeyctl sync add <folder> (the invite on stdin)"
                );
            } else {
                let mut t = table(&[
                    "id",
                    "folder",
                    "hub",
                    "state",
                    "files",
                    "pending",
                    "conflicts",
                    "moved",
                    "last sync",
                ]);
                for s in &sessions {
                    t.add_row(vec![
                        s.id.clone(),
                        s.folder.clone(),
                        s.hub.clone(),
                        s.state.as_str().into(),
                        s.files.to_string(),
                        s.pending.to_string(),
                        s.conflicts.to_string(),
                        human_bytes(s.bytes_moved),
                        time(s.last_sync),
                    ]);
                }
                println!("{t}");
            }
        }
        SyncCommand::Status { id, watch, json } => {
            if watch && (json || !std::io::stdout().is_terminal()) {
                return watch_lines(client, &id, json).await;
            }
            if watch {
                follow(client, &id, false).await?;
            }
            let session = client.session(&id).await?;
            if json {
                print_json(&session);
            } else {
                print_session(&session);
            }
        }
        SyncCommand::Pause { id } => report(client.session_action(&id, "pause").await?),
        SyncCommand::Resume { id } => report(client.session_action(&id, "resume").await?),
        SyncCommand::Rm { id } => {
            client.session_remove(&id).await?;
            println!("Stopped syncing session {id}; its folder and files stay as they are.");
        }
        SyncCommand::RotateKey { id } => {
            client.session_action(&id, "rotate-key").await?;
            println!(
                "Rotated session {id}'s key with the hub; syncing carries on with the new one."
            );
        }
        SyncCommand::SetKey { id } => {
            let key = read_secret("New cli_ key, or an invite")?;
            report(client.session_set_key(&id, &SessionKey { key }).await?);
        }
    }
    Ok(())
}

/// Shows a progress bar until the initial sync is done (or, with
/// `until_done = false`, until interrupted), and stops on a stopped state.
async fn follow(client: &Client, id: &str, until_done: bool) -> ClientResult<Session> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    loop {
        let session = client.session(id).await?;
        bar.set_length(session.progress_total.max(session.progress_done));
        bar.set_position(session.progress_done);
        bar.set_message(format!(
            "{} {}",
            session.state.as_str(),
            human_bytes(session.bytes_moved)
        ));
        if is_stopped(&session)
            || (until_done && session.initial_sync_done && session.state == SessionState::Watching)
        {
            bar.finish_and_clear();
            return Ok(session);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a session waits for the user (resume, set-key…) before it syncs
/// again.
fn is_stopped(session: &Session) -> bool {
    matches!(
        session.state,
        SessionState::Halted | SessionState::AuthFailed | SessionState::Paused
    ) || (session.state == SessionState::Error
        && session
            .message
            .as_deref()
            .is_some_and(|m| m.contains("gave up")))
}

/// `--watch` without a terminal (or with `--json`): a line, or an NDJSON
/// object, each time the session changes, until it stops or is interrupted.
async fn watch_lines(client: &Client, id: &str, json: bool) -> ClientResult<()> {
    let mut last = None;
    loop {
        let session = client.session(id).await?;
        let now = serde_json::to_string(&session).map_err(|e| ClientError::Other(e.into()))?;
        if last.as_ref() != Some(&now) {
            if json {
                println!("{now}");
            } else {
                println!("{}", one_line(&session));
            }
            last = Some(now);
        }
        if is_stopped(&session) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn one_line(s: &Session) -> String {
    let mut line = format!(
        "{} {}: {} files, {} pending, {} conflicts, {} moved",
        s.id,
        s.state.as_str(),
        s.files,
        s.pending,
        s.conflicts,
        human_bytes(s.bytes_moved)
    );
    if !s.initial_sync_done {
        line.push_str(&format!(
            ", initial sync {}/{}",
            s.progress_done, s.progress_total
        ));
    }
    if let Some(message) = &s.message {
        line.push_str(&format!(" ({message})"));
    }
    line
}

fn report(session: Session) {
    println!("Session {}: {}.", session.id, session.state.as_str());
    if let Some(message) = session.message {
        println!("{message}");
    }
}

fn print_session(s: &Session) {
    let mut rows = vec![
        ("id", s.id.clone()),
        ("folder", s.folder.clone()),
        ("hub", s.hub.clone()),
        ("state", s.state.as_str().to_string()),
        ("files", s.files.to_string()),
        ("pending", s.pending.to_string()),
        ("conflicts", s.conflicts.to_string()),
        ("moved", human_bytes(s.bytes_moved)),
        ("last sync", time(s.last_sync)),
    ];
    if !s.initial_sync_done {
        rows.push((
            "initial sync",
            format!("{}/{}", s.progress_done, s.progress_total),
        ));
    }
    if !s.skipped.is_empty() {
        rows.push(("skipped (symlinks)", s.skipped.join(", ")));
    }
    if !s.case_collisions.is_empty() {
        rows.push(("case collisions", s.case_collisions.join("; ")));
    }
    if let Some(message) = &s.message {
        rows.push(("message", message.clone()));
    }
    fields(&rows);
}

fn share_state(s: &Share) -> String {
    match &s.halted {
        Some(_) => "halted".into(),
        None => "serving".into(),
    }
}

fn read_invite() -> ClientResult<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(read_secret("Invite (sidekey://…)")?);
    }
    let mut text = String::new();
    stdin
        .lock()
        .read_to_string(&mut text)
        .map_err(|e| ClientError::Other(anyhow!("reading the invite from stdin: {e}")))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(ClientError::Other(anyhow!(
            "no invite given; pipe it on stdin, e.g.: echo \"$INVITE\" | sidekeyctl sync add <folder>"
        )));
    }
    Ok(text)
}

fn absolute(path: &std::path::Path) -> ClientResult<String> {
    std::path::absolute(path)
        .map(|p| p.display().to_string())
        .map_err(|e| ClientError::Other(anyhow!("cannot resolve {}: {e}", path.display())))
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
