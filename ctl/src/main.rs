//! sidekeyctl: the command-line client for sidekeyd's control API.
//!
//! Exit codes: 0 success, 1 error, 2 usage, 3 sidekeyd not running.

mod cli;
mod client;
mod cmd;
mod output;
mod paths;
mod prompt;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use client::{Client, ClientError};

const EXIT_NOT_RUNNING: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sidekeyctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let socket = match paths::socket_path(cli.socket.clone()) {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("sidekeyctl: cannot find sidekeyd's socket: {e}; or name it with --socket");
            return ExitCode::FAILURE;
        }
    };
    let client = Client::new(socket);
    match runtime.block_on(dispatch(&client, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError::NotRunning(message)) => {
            eprintln!("sidekeyctl: {message}");
            ExitCode::from(EXIT_NOT_RUNNING)
        }
        Err(e) => {
            eprintln!("sidekeyctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(client: &Client, command: Command) -> client::ClientResult<()> {
    match command {
        Command::Status { json } => cmd::status::run(client, json).await,
        Command::Conn(command) => cmd::conn::run(client, command).await,
        Command::Cred(command) => cmd::cred::run(client, command).await,
        Command::Grant {
            conn,
            cred,
            regenerate,
            json,
        } => cmd::cred::grant(client, conn, cred, regenerate, json).await,
        Command::Revoke { conn, cred } => cmd::cred::revoke(client, conn, cred).await,
        Command::Share(command) => cmd::sync::share(client, command).await,
        Command::Sync(command) => cmd::sync::sync(client, command).await,
        Command::Ca { bundle } => cmd::agent::ca(client, bundle).await,
        Command::Env { conn } => cmd::agent::env(client, &conn).await,
        Command::Run { conn, command } => cmd::agent::run(client, &conn, command).await,
        Command::Audit {
            follow,
            conn,
            limit,
            json,
        } => cmd::audit::run(client, follow, conn, limit, json).await,
        Command::Service(command) => cmd::service::run(command),
    }
}
