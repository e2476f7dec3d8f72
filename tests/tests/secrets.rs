//! No secret ever leaves: credential values, key plaintexts and the master
//! key never appear in logs (at trace level), error bodies, argv, the
//! environment of the daemon, or the raw bytes of anything in the data dir.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use sidekey_tests::http;
use sidekey_tests::{Home, contains_bytes, read_tree};

#[test]
fn secrets_never_appear_in_logs_errors_argv_or_the_data_dir() {
    let home = Home::new();
    let keydir = tempfile::tempdir().unwrap();
    let master_hex = "5e".repeat(16) + &"c7".repeat(16);
    let master_file = keydir.path().join("master.key");
    std::fs::write(&master_file, &master_hex).unwrap();
    let d = home
        .start_with(
            &[],
            &[("SIDEKEY_MASTER_KEY_FILE", master_file.to_str().unwrap())],
        )
        .unwrap();

    let mut needles: Vec<String> = Vec::new();
    let mut observed = String::new();

    let (_, agent) = home.create_conn("agent-1", "agent", &[]);
    let (_, sync) = home.create_conn("sync-1", "sync", &[]);
    needles.extend([agent.clone(), sync.clone()]);

    let creds = [
        ("k", "api-key", "sk-proj-LEAKCANARYapikey0001"),
        ("b", "basic-auth", "alice:LEAKCANARYpassword0002"),
        ("c", "cookie", "session=LEAKCANARYcookie0003; theme=dark"),
        ("h", "custom-header", "X-Api-Key: LEAKCANARYheader0004"),
        ("q", "query-param", "api_key=LEAKCANARYquery0005"),
    ];
    for (name, kind, secret) in creds {
        let out = home.ctl_stdin(
            &[
                "cred",
                "add",
                "--name",
                name,
                "--type",
                kind,
                "--host",
                "api.example.com",
            ],
            Some(secret),
        );
        observed.push_str(&out.success().stdout);
        needles.push(secret.to_string());
    }
    // A secret of the wrong shape is refused without being echoed.
    let bad = home.ctl_stdin(
        &[
            "cred",
            "add",
            "--name",
            "bad",
            "--type",
            "basic-auth",
            "--host",
            "api.example.com",
        ],
        Some("LEAKCANARYnocolon0006"),
    );
    observed.push_str(&bad.failure().stderr);
    needles.push("LEAKCANARYnocolon0006".into());

    let replaced = "sk-proj-LEAKCANARYreplaced0007";
    observed.push_str(
        &home
            .ctl_stdin(&["cred", "set", "k"], Some(replaced))
            .success()
            .stdout,
    );
    needles.push(replaced.into());
    let token = home
        .ctl(&["grant", "agent-1", "k"])
        .success()
        .stdout
        .trim()
        .to_string();
    assert!(token.starts_with("pxr_"));
    needles.push(token.clone());

    // Good and bad keys against the proxy, keeping every error body.
    assert_eq!(http::whoami(d.proxy, &agent).status, 200);
    let last = if agent.ends_with('0') { '1' } else { '0' };
    let near_miss = format!("{}{last}", &agent[..agent.len() - 1]);
    for presented in [
        near_miss.as_str(),
        &format!("{agent}x"),
        &sync.replace("cli_", "sk_live_"),
    ] {
        let r = http::whoami(d.proxy, presented);
        assert_eq!(r.status, 401);
        observed.push_str(&r.body);
        needles.push(presented.to_string());
    }
    let rotated = home
        .ctl(&["conn", "key", "agent-1", "--regenerate", "--grace", "1h"])
        .success()
        .stdout
        .trim()
        .to_string();
    needles.push(rotated.clone());
    assert_eq!(http::whoami(d.proxy, &rotated).status, 200);
    observed.push_str(
        &home
            .ctl(&["conn", "rm", "sync-1", "--yes"])
            .success()
            .stdout,
    );
    observed.push_str(&http::whoami(d.proxy, &sync).body);
    observed.push_str(&home.ctl(&["conn", "ls"]).success().stdout);
    observed.push_str(&home.ctl(&["cred", "ls", "--json"]).success().stdout);
    observed.push_str(
        &home
            .ctl(&["conn", "info", "agent-1", "--json"])
            .success()
            .stdout,
    );

    let pid = d.pid();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    d.stop();
    let logs = home.all_logs();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the daemon should have logged at trace level"
    );

    let mut master_raw = [0u8; 32];
    for (i, byte) in master_raw.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&master_hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let data = read_tree(&home.data_dir());
    assert!(!data.is_empty());
    for needle in needles
        .iter()
        .map(String::as_bytes)
        .chain([master_hex.as_bytes(), &master_raw[..]])
    {
        let shown = String::from_utf8_lossy(&needle[..needle.len().min(12)]).into_owned();
        assert!(
            !contains_bytes(logs.as_bytes(), needle),
            "{shown}… is in the log"
        );
        assert!(
            !contains_bytes(observed.as_bytes(), needle),
            "{shown}… is in an answer"
        );
        assert!(!contains_bytes(&cmdline, needle), "{shown}… is in argv");
        assert!(
            !contains_bytes(&environ, needle),
            "{shown}… is in the environment"
        );
        for (path, bytes) in &data {
            assert!(
                !contains_bytes(bytes, needle),
                "{shown}… is in {}",
                path.display()
            );
        }
    }
    // The canaries' distinctive part, in case of a partial or re-encoded leak.
    for (path, bytes) in &data {
        assert!(
            !contains_bytes(bytes, b"LEAKCANARY"),
            "a canary is in {}",
            path.display()
        );
    }
    assert!(!logs.contains("LEAKCANARY") && !observed.contains("LEAKCANARY"));
}

/// Agents usually run as the daemon's own user. Such a process must not be
/// able to read the daemon's memory, where secrets lie unsealed, and a crash
/// must not write that memory to a core file.
#[test]
fn processes_of_the_daemons_own_user_cannot_read_its_memory() {
    const AS_NOBODY: [&str; 4] = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"];
    let home = Home::new();
    let chown = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(home.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let wrap: Vec<&str> = std::iter::once("setpriv").chain(AS_NOBODY).collect();
    let d = home
        .start_wrapped(&wrap, &[], &[])
        .unwrap_or_else(|e| panic!("sidekeyd did not start as nobody: {e}"));
    // The neighbour says so once it runs as nobody: until its exec, setpriv
    // is briefly root and then non-dumpable, which would fail the control.
    let mut neighbour = Command::new("setpriv")
        .args(AS_NOBODY)
        .args(["sh", "-c", "echo up; read _"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = String::new();
    BufReader::new(neighbour.stdout.take().unwrap())
        .read_line(&mut up)
        .unwrap();
    assert_eq!(up, "up\n");
    let opens_as_nobody = |pid: u32, file: &str| {
        Command::new("setpriv")
            .args(AS_NOBODY)
            .args(["head", "-c", "0", &format!("/proc/{pid}/{file}")])
            .output()
            .unwrap()
            .status
            .success()
    };

    // An ordinary process of the same user is open to it: the check is real.
    let np = neighbour.id();
    assert!(opens_as_nobody(np, "mem") && opens_as_nobody(np, "environ"));
    assert!(!opens_as_nobody(d.pid(), "mem"), "the daemon's memory");
    assert!(!opens_as_nobody(d.pid(), "environ"));

    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let core = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().take(2).collect::<Vec<_>>(),
        ["0", "0"]
    );
    let _ = neighbour.kill();
    let _ = neighbour.wait();
    d.stop();
}
