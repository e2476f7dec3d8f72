//! The store and the daemon's life: master key lookup and permissions, wrong
//! keys, corrupt stores, one daemon per data dir, graceful shutdown.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sidekey_tests::disk::SmallDisk;
use sidekey_tests::http;
use sidekey_tests::{Home, read_tree, wait_until};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Each file's path and a digest of its bytes (the lock file aside), so a
/// failed comparison names paths rather than dumping bytes.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, u64, u64)> {
    use std::hash::{Hash, Hasher};
    let mut files: Vec<_> = read_tree(dir)
        .into_iter()
        .filter(|(p, _)| !p.ends_with("sidekeyd.lock"))
        .filter(|(p, _)| !p.to_string_lossy().contains("store.backup"))
        .map(|(p, bytes)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            (p, bytes.len() as u64, h.finish())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn first_start_creates_a_private_data_dir_and_master_key() {
    let home = Home::new();
    let d = home.start();
    let data = home.data_dir();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("master.key")), 0o600);
    let key = std::fs::read_to_string(data.join("master.key")).unwrap();
    assert_eq!(key.trim().len(), 64);
    let status = home.ctl(&["status", "--json"]).success().json();
    assert_eq!(status["schema_version"], 2);
    assert_eq!(status["data_dir"], data.display().to_string());
    let human = home.ctl(&["status"]).success().stdout;
    assert!(human.contains(&d.proxy.to_string()), "{human}");
}

#[test]
fn master_key_is_looked_up_in_the_documented_order() {
    let home = Home::new();
    let keys = tempfile::tempdir().unwrap();
    let a = keys.path().join("a.key");
    let b_dir = keys.path().join("creds");
    std::fs::create_dir(&b_dir).unwrap();
    std::fs::write(&a, format!("{}\n", "a1".repeat(32))).unwrap();
    std::fs::write(b_dir.join("sidekey-master-key"), "b2".repeat(32)).unwrap();
    let a_str = a.to_str().unwrap();
    let b_str = b_dir.to_str().unwrap();

    // SIDEKEY_MASTER_KEY_FILE beats <data_dir>/master.key, which is not created.
    let d = home
        .start_with(&[], &[("SIDEKEY_MASTER_KEY_FILE", a_str)])
        .unwrap();
    home.create_conn("c", "agent", &[]);
    d.stop();
    assert!(!home.data_dir().join("master.key").exists());

    // $CREDENTIALS_DIRECTORY beats SIDEKEY_MASTER_KEY_FILE: key b does not open a store made with a.
    let before = snapshot(&home.data_dir());
    let err = home
        .start_with(
            &[],
            &[
                ("SIDEKEY_MASTER_KEY_FILE", a_str),
                ("CREDENTIALS_DIRECTORY", b_str),
            ],
        )
        .err()
        .expect("a wrong master key must stop the daemon");
    assert!(
        err.contains("sidekey-master-key") && err.contains("does not open the store"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        before,
        snapshot(&home.data_dir()),
        "a wrong key must change nothing"
    );

    // With the right key from $CREDENTIALS_DIRECTORY it opens.
    std::fs::copy(&a, b_dir.join("sidekey-master-key")).unwrap();
    let _d = home
        .start_with(&[], &[("CREDENTIALS_DIRECTORY", b_str)])
        .unwrap();
    assert_eq!(home.conn_count(), 1);
}

#[test]
fn wrong_master_key_is_a_clear_error_that_names_the_file() {
    let home = Home::new();
    home.start().stop();
    let key_path = home.data_dir().join("master.key");
    std::fs::write(&key_path, format!("{}\n", "0f".repeat(32))).unwrap();
    let before = snapshot(&home.data_dir());
    let err = home.start_with(&[], &[]).err().expect("must refuse");
    assert!(err.contains(&key_path.display().to_string()), "{err}");
    assert!(!err.contains("panicked"));
    assert_eq!(before, snapshot(&home.data_dir()));

    std::fs::write(&key_path, "not a key").unwrap();
    let err = home.start_with(&[], &[]).err().expect("must refuse");
    assert!(err.contains("not 64 hex characters"), "{err}");
}

#[test]
fn corrupt_or_truncated_store_is_a_clear_error_and_nothing_is_overwritten() {
    let home = Home::new();
    let d = home.start();
    for i in 0..20 {
        home.create_conn(&format!("c{i}"), "agent", &[]);
    }
    d.stop();
    let store = home.data_dir().join("store");
    let mut files: Vec<_> = read_tree(&store)
        .into_iter()
        .filter(|(_, b)| b.len() > 64)
        .collect();
    files.sort_by_key(|(_, b)| std::cmp::Reverse(b.len()));
    let (biggest, bytes) = files.first().expect("sled wrote files").clone();

    for damaged in [
        bytes[..bytes.len() / 3].to_vec(),
        bytes.iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>(),
    ] {
        std::fs::write(&biggest, &damaged).unwrap();
        let before = snapshot(&home.data_dir());
        match home.start_with(&[], &[]) {
            Err(err) => {
                assert!(err.contains("corrupt or unreadable"), "{err}");
                assert!(err.contains(&store.display().to_string()), "{err}");
                assert!(!err.contains("panicked"), "{err}");
                assert_eq!(
                    before,
                    snapshot(&home.data_dir()),
                    "a failed open must leave the store as it was"
                );
            }
            // sled may rebuild everything from its other files; then nothing
            // may be missing. Losing part silently is the one wrong answer.
            Ok(d) => {
                let listed = home.ctl(&["conn", "ls", "--json"]).success().json();
                assert_eq!(
                    listed.as_array().unwrap().len(),
                    20,
                    "the store opened with changes missing"
                );
                d.stop();
            }
        }
    }

    // Put the good bytes back: everything acknowledged is there.
    std::fs::write(&biggest, &bytes).unwrap();
    let _d = home.start();
    assert_eq!(home.conn_count(), 20);
}

#[test]
fn a_second_daemon_on_the_same_data_dir_exits_and_corrupts_nothing() {
    let home = Home::new();
    let d = home.start();
    let (_, key) = home.create_conn("one", "agent", &[]);
    let err = home
        .start_with(&[], &[])
        .err()
        .expect("second daemon must refuse");
    assert!(
        err.contains("already running") && err.contains(&home.data_dir().display().to_string()),
        "{err}"
    );
    assert!(err.contains(&format!("pid {}", d.pid())), "{err}");
    assert_eq!(http::whoami(d.proxy, &key).status, 200);
    home.ctl(&["status"]).success();
}

#[test]
fn sigterm_and_sigint_are_graceful_and_every_acknowledged_change_survives() {
    for signal in ["TERM", "INT"] {
        let home = Home::new();
        let d = home.start();
        let mut keys = Vec::new();
        for i in 0..30 {
            keys.push(home.create_conn(&format!("c{i}"), "agent", &[]).1);
        }
        let rotated = home
            .ctl(&["conn", "key", "c0", "--regenerate"])
            .success()
            .stdout
            .trim()
            .to_string();
        printf_cred(&home);
        home.ctl(&["conn", "disable", "c1"]).success();
        let status = d.stop_with(signal);
        assert_eq!(status.code(), Some(0), "SIG{signal} should exit 0");

        let d = home.start();
        assert_eq!(home.conn_count(), 30);
        assert_eq!(http::whoami(d.proxy, &rotated).status, 200);
        assert_eq!(http::whoami(d.proxy, &keys[0]).status, 401);
        assert_eq!(http::whoami(d.proxy, &keys[1]).status, 403);
        assert_eq!(http::whoami(d.proxy, &keys[29]).status, 200);
        assert_eq!(
            home.ctl(&["cred", "ls", "--json"]).success().json()[0]["name"],
            "resend"
        );
        assert!(!home.socket().exists() || home.ctl(&["status"]).status.success());
    }
}

fn printf_cred(home: &Home) {
    home.ctl_stdin(
        &[
            "cred",
            "add",
            "--name",
            "resend",
            "--type",
            "api-key",
            "--host",
            "api.resend.com",
        ],
        Some("re_123"),
    )
    .success();
}

#[test]
fn a_daemon_killed_mid_write_keeps_every_acknowledged_change() {
    let home = Home::new();
    for round in 0..5u32 {
        let d = home.start();
        let socket_home = &home;
        let pid = d.pid();
        let landed = std::sync::atomic::AtomicUsize::new(0);
        let landed = &landed;
        let acked = std::thread::scope(|scope| {
            let writer = scope.spawn(move || {
                let mut acked = Vec::new();
                for i in 0..400 {
                    let name = format!("r{round}-{i}");
                    let out = socket_home.ctl(&[
                        "conn", "create", "--name", &name, "--kind", "agent", "--json",
                    ]);
                    if !out.status.success() {
                        break;
                    }
                    acked.push((name, out.json()["key"].as_str().unwrap().to_string()));
                    landed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                acked
            });
            // Let a varying number of writes land, then kill without warning
            // at a moment unrelated to any acknowledgement.
            let want = 1 + 4 * round as usize;
            wait_until(
                "some writes landed",
                std::time::Duration::from_secs(30),
                || landed.load(std::sync::atomic::Ordering::SeqCst) >= want,
            );
            std::thread::sleep(std::time::Duration::from_millis(7 * u64::from(round)));
            std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
            writer.join().unwrap()
        });
        drop(d);
        assert!(
            !acked.is_empty(),
            "round {round}: nothing was written before the kill"
        );
        let d = home.start();
        let listed = home.ctl(&["conn", "ls", "--json"]).success().json();
        let names: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        for (name, key) in &acked {
            assert!(
                names.contains(&name.as_str()),
                "round {round}: acknowledged {name} was lost"
            );
            assert_eq!(
                http::whoami(d.proxy, key).status,
                200,
                "round {round}: {name}'s key stopped working"
            );
        }
        d.stop();
    }
}

#[test]
fn a_full_disk_gives_clear_errors_and_loses_nothing_acknowledged() {
    let home = Home::new();
    let disk = SmallDisk::mount();
    let data_dir = disk.path().join("data");
    let data_arg = format!("--data-dir={}", data_dir.display());
    let d = home.start_with(&[&data_arg], &[]).unwrap();
    disk.fill();
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..2000 {
        let out = home.ctl(&[
            "conn",
            "create",
            "--name",
            &format!("f{i}"),
            "--kind",
            "agent",
            "--json",
        ]);
        if out.status.success() {
            acked.push(out.json()["key"].as_str().unwrap().to_string());
        } else {
            refusal = Some(out.stderr);
            break;
        }
    }
    let refusal = refusal.expect("a full disk must refuse writes");
    assert!(refusal.contains("check free space"), "{refusal}");
    assert!(
        !d.log().contains("panicked"),
        "sidekeyd panicked on a full disk"
    );
    if let Some(key) = acked.first() {
        assert_eq!(
            http::whoami(d.proxy, key).status,
            200,
            "reads keep working on a full disk"
        );
    }

    // Make room, restart: everything acknowledged is there.
    disk.free();
    drop(d);
    let d = home.start_with(&[&data_arg], &[]).unwrap();
    for key in &acked {
        assert_eq!(http::whoami(d.proxy, key).status, 200);
    }
}
