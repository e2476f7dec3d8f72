//! Reads secrets from stdin or a no-echo terminal prompt (never argv), and
//! asks yes/no questions.

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::{Context, Result, bail};
use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};

/// A piped secret is taken whole, less one trailing newline.
pub fn read_secret(label: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let secret = if stdin.is_terminal() {
        eprint!("{label} (input hidden): ");
        std::io::stderr().flush().ok();
        let line = read_hidden_line(&stdin)?;
        eprintln!();
        line
    } else {
        let mut text = String::new();
        stdin
            .lock()
            .read_to_string(&mut text)
            .context("reading the secret from stdin")?;
        text
    };
    let secret = secret
        .strip_suffix("\r\n")
        .or_else(|| secret.strip_suffix('\n'))
        .unwrap_or(&secret)
        .to_string();
    if secret.is_empty() {
        bail!(
            "no secret was given; pipe it on stdin, e.g.: printf %s \"$TOKEN\" | sidekeyctl cred add ..."
        );
    }
    Ok(secret)
}

fn read_hidden_line(stdin: &std::io::Stdin) -> Result<String> {
    let original = tcgetattr(stdin).context("reading terminal settings")?;
    let mut hidden = original.clone();
    hidden.local_modes.remove(LocalModes::ECHO);
    tcsetattr(stdin, OptionalActions::Now, &hidden).context("turning off echo")?;
    let mut line = String::new();
    let outcome = stdin.lock().read_line(&mut line);
    tcsetattr(stdin, OptionalActions::Now, &original).context("restoring echo")?;
    outcome.context("reading the secret")?;
    Ok(line)
}

/// Asks on the terminal; without one, refuses and says which flag skips it.
pub fn confirm(question: &str, skip_flag: &str) -> Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("refusing without confirmation: no terminal to ask on; pass {skip_flag} to go ahead");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
