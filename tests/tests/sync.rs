//! Two-way sync between real daemons on loopback: everyday changes converge,
//! every conflict keeps both sides, unsafe input is refused, and keys and
//! the hub's pinned certificate are enforced.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sidekey_tests::sync::World;
use sidekey_tests::wait_until;

const SOON: Duration = Duration::from_secs(20);

fn conflict_copies(
    files: &std::collections::BTreeMap<String, Option<Vec<u8>>>,
    stem: &str,
) -> Vec<String> {
    files
        .keys()
        .filter(|k| k.starts_with(stem) && k.contains(".sync-conflict-"))
        .cloned()
        .collect()
}

#[test]
fn everyday_changes_converge_both_ways() {
    let w = World::new(1, &[("start.txt", b"hello")]);
    w.converge(SOON);
    let (hub, peer) = (&w.hub, &w.peers[0]);

    // Created on the peer: files, binary and empty files, odd names, deep nesting, an empty dir.
    peer.write("notes/plain.md", b"# notes\n");
    peer.write(
        "bin/blob.dat",
        &(0..=255u8).cycle().take(70_000).collect::<Vec<u8>>(),
    );
    peer.write("empty.txt", b"");
    peer.write("with space/ünïcødé ✓.txt", b"unicode");
    let deep = (0..10)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/");
    peer.write(&format!("{deep}/leaf.txt"), b"deep");
    std::fs::create_dir_all(peer.path("just/an/empty/dir")).unwrap();
    peer.write("run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(peer.path("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    w.converge(SOON);
    assert_eq!(hub.read("with space/ünïcødé ✓.txt").unwrap(), b"unicode");
    assert!(hub.path("just/an/empty/dir").is_dir());
    let mode = std::fs::metadata(hub.path("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the exec bit travels");

    // Modified and created on the hub.
    hub.write("notes/plain.md", b"# notes\nedited on the hub\n");
    hub.write("hub-made/new.txt", b"from hub");
    w.converge(SOON);
    assert_eq!(
        w.peers[0].read("notes/plain.md").unwrap(),
        b"# notes\nedited on the hub\n"
    );

    // Renames (of a file and a directory) and deletes.
    let (hub, peer) = (&w.hub, &w.peers[0]);
    std::fs::rename(peer.path("notes/plain.md"), peer.path("notes/renamed.md")).unwrap();
    std::fs::rename(peer.path("hub-made"), peer.path("moved-dir")).unwrap();
    std::fs::remove_file(peer.path("empty.txt")).unwrap();
    std::fs::remove_dir_all(peer.path("just")).unwrap();
    std::fs::set_permissions(peer.path("run.sh"), std::fs::Permissions::from_mode(0o644)).unwrap();
    w.converge(SOON);
    assert!(!hub.exists("notes/plain.md") && hub.exists("notes/renamed.md"));
    assert!(!hub.exists("hub-made") && hub.read("moved-dir/new.txt").unwrap() == b"from hub");
    assert!(!hub.exists("empty.txt") && !hub.exists("just"));
    let mode = std::fs::metadata(hub.path("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0, "clearing the exec bit travels too");

    // Deleted on the hub.
    std::fs::remove_dir_all(hub.path("d0")).unwrap();
    w.converge(SOON);
    assert!(!w.peers[0].exists("d0"));

    // A watcher-triggered round may be running; the state settles to watching.
    wait_until("the session is watching", SOON, || {
        w.peers[0].session_status()["state"] == "watching"
    });
    let status = w.peers[0].session_status();
    assert_eq!(status["conflicts"], 0);
    assert!(status["bytes_moved"].as_u64().unwrap() > 70_000);
    assert!(status["last_sync"].as_u64().is_some());
    let listed = w.peers[0].ctl(&["sync", "ls", "--json"]).success().json();
    assert_eq!(
        listed[0]["id"],
        w.peers[0].session.clone().unwrap().as_str()
    );
}

/// Rounds look only at the paths the watcher names. A tree moved in from
/// outside the folder, or out of it, is named by its top directory alone.
#[test]
fn trees_moved_into_and_out_of_the_folder_sync_whole() {
    let w = World::new(1, &[("start.txt", b"hello")]);
    w.converge(SOON);
    let (hub, peer) = (&w.hub, &w.peers[0]);
    let outside = tempfile::tempdir_in(peer.path("..")).unwrap();
    let tree = outside.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/b/deep.txt"), b"deep").unwrap();
    std::fs::write(tree.join("top.txt"), b"top").unwrap();

    std::fs::rename(&tree, peer.path("moved-in")).unwrap();
    w.converge(SOON);
    assert_eq!(hub.read("moved-in/a/b/deep.txt").unwrap(), b"deep");
    assert_eq!(hub.read("moved-in/top.txt").unwrap(), b"top");

    std::fs::rename(hub.path("moved-in"), outside.path().join("back")).unwrap();
    w.converge(SOON);
    assert!(!peer.exists("moved-in"));
    assert_eq!(peer.read("start.txt").unwrap(), b"hello");

    // And back in on the hub, under another name.
    std::fs::rename(outside.path().join("back"), hub.path("returned")).unwrap();
    w.converge(SOON);
    assert_eq!(peer.read("returned/a/b/deep.txt").unwrap(), b"deep");
}

#[test]
fn an_edit_on_one_peer_reaches_every_other_replica() {
    let mut w = World::new(2, &[]);
    w.peers[0].write("from-peer-0.txt", b"zero");
    w.converge(SOON);
    assert_eq!(w.peers[1].read("from-peer-0.txt").unwrap(), b"zero");
    w.peers[1].write("from-peer-0.txt", b"one wrote over it");
    w.converge(SOON);
    assert_eq!(w.hub.read("from-peer-0.txt").unwrap(), b"one wrote over it");
    w.add_peer("rw");
    w.converge(SOON);
    assert_eq!(
        w.peers[2].read("from-peer-0.txt").unwrap(),
        b"one wrote over it"
    );
}

/// Pauses the peer, lets both sides act, resumes, and waits for convergence.
fn while_paused(w: &World, both: impl FnOnce(&World)) {
    let id = w.peers[0].session.clone().unwrap();
    w.peers[0].ctl(&["sync", "pause", &id]).success();
    both(w);
    // Let the hub journal its side first, as a hub edit made earlier would be.
    std::thread::sleep(Duration::from_millis(300));
    w.peers[0].ctl(&["sync", "resume", &id]).success();
    w.converge(SOON);
}

#[test]
fn edit_edit_keeps_both_sides_on_every_replica() {
    let w = World::new(1, &[("doc.md", b"base")]);
    w.converge(SOON);
    while_paused(&w, |w| {
        w.hub.write("doc.md", b"hub version");
        w.peers[0].write("doc.md", b"peer version");
    });
    let files = w.hub.snapshot();
    assert_eq!(
        files["doc.md"].as_deref(),
        Some(&b"hub version"[..]),
        "the hub's edit keeps the name"
    );
    let copies = conflict_copies(&files, "doc.");
    assert_eq!(copies.len(), 1, "{files:?}");
    assert!(
        copies[0].ends_with(".md"),
        "the extension is kept: {}",
        copies[0]
    );
    assert_eq!(files[&copies[0]].as_deref(), Some(&b"peer version"[..]));
    assert_eq!(w.peers[0].session_status()["conflicts"], 1);
}

#[test]
fn edit_beats_delete_in_both_directions() {
    let w = World::new(1, &[("a.txt", b"base a"), ("b.txt", b"base b")]);
    w.converge(SOON);
    while_paused(&w, |w| {
        // a: edited on the peer, deleted on the hub. b: deleted on the peer, edited on the hub.
        w.peers[0].write("a.txt", b"peer edited a");
        std::fs::remove_file(w.hub.path("a.txt")).unwrap();
        std::fs::remove_file(w.peers[0].path("b.txt")).unwrap();
        w.hub.write("b.txt", b"hub edited b");
    });
    assert_eq!(w.hub.read("a.txt").unwrap(), b"peer edited a");
    assert_eq!(w.peers[0].read("b.txt").unwrap(), b"hub edited b");
}

#[test]
fn create_create_with_different_content_keeps_both() {
    let w = World::new(1, &[]);
    while_paused(&w, |w| {
        w.hub.write("new.json", b"{\"from\":\"hub\"}");
        w.peers[0].write("new.json", b"{\"from\":\"peer\"}");
    });
    let files = w.hub.snapshot();
    assert_eq!(
        files["new.json"].as_deref(),
        Some(&b"{\"from\":\"hub\"}"[..])
    );
    let copies = conflict_copies(&files, "new.");
    assert_eq!(copies.len(), 1, "{files:?}");
    assert_eq!(
        files[&copies[0]].as_deref(),
        Some(&b"{\"from\":\"peer\"}"[..])
    );
}

#[test]
fn a_file_and_a_directory_with_the_same_name_keep_both() {
    let w = World::new(1, &[]);
    while_paused(&w, |w| {
        w.hub.write("thing/inside.txt", b"hub dir");
        w.peers[0].write("thing", b"peer file");
    });
    let files = w.hub.snapshot();
    assert_eq!(files["thing/inside.txt"].as_deref(), Some(&b"hub dir"[..]));
    let copies = conflict_copies(&files, "thing.");
    assert_eq!(copies.len(), 1, "{files:?}");
    assert_eq!(files[&copies[0]].as_deref(), Some(&b"peer file"[..]));
}

#[test]
fn edits_on_both_sides_while_offline_converge_on_reconnect() {
    let mut w = World::new(
        1,
        &[
            ("shared.txt", b"v0"),
            ("hub-only-edit.txt", b"x"),
            ("peer-only-edit.txt", b"y"),
        ],
    );
    w.converge(SOON);
    w.peers[0].stop(false);
    w.hub.write("shared.txt", b"hub offline edit");
    w.hub.write("hub-only-edit.txt", b"hub changed");
    w.hub.write("hub-new.txt", b"hub new");
    w.peers[0].write("shared.txt", b"peer offline edit");
    w.peers[0].write("peer-only-edit.txt", b"peer changed");
    w.peers[0].write("peer-new.txt", b"peer new");
    w.peers[0].restart();
    w.converge(SOON);
    let files = w.hub.snapshot();
    assert_eq!(
        files["hub-only-edit.txt"].as_deref(),
        Some(&b"hub changed"[..])
    );
    assert_eq!(
        files["peer-only-edit.txt"].as_deref(),
        Some(&b"peer changed"[..])
    );
    assert!(files.contains_key("hub-new.txt") && files.contains_key("peer-new.txt"));
    let copies = conflict_copies(&files, "shared.");
    assert_eq!(copies.len(), 1, "{files:?}");
    let mut both = vec![
        files["shared.txt"].clone().unwrap(),
        files[&copies[0]].clone().unwrap(),
    ];
    both.sort();
    assert_eq!(
        both,
        vec![b"hub offline edit".to_vec(), b"peer offline edit".to_vec()],
        "no bytes lost"
    );
}

#[test]
fn a_vanished_marker_or_a_suddenly_empty_folder_halts_and_deletes_nothing() {
    let w = World::new(1, &[("keep/1.txt", b"1"), ("keep/2.txt", b"2")]);
    w.converge(SOON);
    // The peer's folder is emptied (say, an unmounted disk): halt, delete nothing on the hub.
    for entry in std::fs::read_dir(&w.peers[0].dir).unwrap().flatten() {
        if entry.file_name() != ".sidekey-replica" {
            std::fs::remove_dir_all(entry.path()).unwrap();
        }
    }
    wait_until("the session halts", SOON, || {
        w.peers[0].session_status()["state"] == "halted"
    });
    let status = w.peers[0].session_status();
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("nothing was deleted"),
        "{status}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(w.hub.exists("keep/1.txt") && w.hub.exists("keep/2.txt"));

    // The hub's marker vanishes: the share halts; the peer keeps its files.
    let w = World::new(1, &[("x.txt", b"x")]);
    w.converge(SOON);
    std::fs::remove_file(w.hub.path(".sidekey-replica")).unwrap();
    std::fs::remove_file(w.hub.path("x.txt")).unwrap();
    wait_until("the share halts", SOON, || {
        w.hub.ctl(&["share", "ls", "--json"]).success().json()[0]["halted"].is_string()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        w.peers[0].exists("x.txt"),
        "a halted share must not propagate deletes"
    );
}

#[test]
fn symlinks_are_skipped_and_case_collisions_reported_never_merged() {
    let w = World::new(1, &[]);
    let peer = &w.peers[0];
    std::os::unix::fs::symlink("/etc/hostname", peer.path("link-out")).unwrap();
    peer.write("Readme.md", b"one");
    peer.write("README.md", b"two");
    peer.write("plain.txt", b"synced");
    wait_until("plain.txt arrives", SOON, || w.hub.exists("plain.txt"));
    wait_until("the status reports them", SOON, || {
        let s = peer.session_status();
        s["skipped"].as_array().is_some_and(|a| !a.is_empty())
            && s["case_collisions"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
    });
    let s = peer.session_status();
    assert_eq!(s["skipped"][0], "link-out");
    assert!(!w.hub.exists("link-out"), "symlinks are never synced");
    let synced: Vec<bool> = ["Readme.md", "README.md"]
        .iter()
        .map(|n| w.hub.exists(n))
        .collect();
    assert_eq!(
        synced.iter().filter(|b| **b).count(),
        1,
        "only one of two colliding names syncs"
    );
    assert!(
        w.peers[0].exists("Readme.md") && w.peers[0].exists("README.md"),
        "nothing is merged or lost"
    );
}

#[test]
fn ignores_apply_and_the_ignore_file_itself_syncs() {
    let w = World::new(1, &[]);
    let peer = &w.peers[0];
    peer.write(".sidekeyignore", b"build/\n*.log\n");
    wait_until("the ignore file syncs", SOON, || {
        w.hub.exists(".sidekeyignore")
    });
    peer.write("build/out.o", b"obj");
    peer.write("debug.log", b"log");
    peer.write(".DS_Store", b"finder");
    peer.write("src/main.rs", b"fn main() {}");
    wait_until("src/main.rs arrives", SOON, || w.hub.exists("src/main.rs"));
    std::thread::sleep(Duration::from_millis(300));
    for ignored in ["build/out.o", "debug.log", ".DS_Store"] {
        assert!(!w.hub.exists(ignored), "{ignored} should be ignored");
    }
}

#[test]
fn a_read_only_key_cannot_push_but_still_pulls() {
    let mut w = World::new(0, &[("a.txt", b"a")]);
    w.add_peer("ro");
    let peer = &w.peers[0];
    peer.write("from-ro.txt", b"must not reach the hub");
    wait_until("the refusal is reported", SOON, || {
        peer.session_status()["message"]
            .as_str()
            .is_some_and(|m| m.contains("read-only"))
    });
    assert!(!w.hub.exists("from-ro.txt"));
    w.hub.write("a.txt", b"a2");
    wait_until("hub edits still arrive", SOON, || {
        peer.read("a.txt").as_deref() == Some(&b"a2"[..])
    });
}

#[test]
fn rotating_the_key_from_the_peer_keeps_syncing() {
    let w = World::new(1, &[]);
    let id = w.peers[0].session.clone().unwrap();
    let conn = w.hub.ctl(&["conn", "ls", "--json"]).success().json()[0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    w.peers[0].ctl(&["sync", "rotate-key", &id]).success();
    let rotated = w.hub.ctl(&["conn", "ls", "--json"]).success().json()[0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(conn, rotated, "the hub's connection has a new key");
    w.peers[0].write("after-rotation.txt", b"still syncing");
    wait_until("the edit arrives", SOON, || {
        w.hub.exists("after-rotation.txt")
    });
}

#[test]
fn a_key_regenerated_or_removed_by_the_hub_owner_stops_the_peer_with_auth_failed() {
    for action in ["regenerate", "rm"] {
        let w = World::new(1, &[]);
        let id = w.peers[0].session.clone().unwrap();
        let conn = w.hub.ctl(&["conn", "ls", "--json"]).success().json()[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let new_key = if action == "regenerate" {
            Some(
                w.hub
                    .ctl(&["conn", "key", &conn, "--regenerate"])
                    .success()
                    .stdout
                    .trim()
                    .to_string(),
            )
        } else {
            w.hub.ctl(&["conn", "rm", &conn, "--yes"]).success();
            None
        };
        w.peers[0].write("poke.txt", b"trigger a round");
        wait_until("the session reports auth_failed", SOON, || {
            w.peers[0].session_status()["state"] == "auth_failed"
        });
        let status = w.peers[0].session_status();
        let message = status["message"].as_str().unwrap();
        assert!(
            message.contains("sidekeyctl sync set-key") && message.contains(&id),
            "{message}"
        );
        // It stops: no retry storm against the hub.
        let log_before = w.hub.daemon.as_ref().unwrap().log().matches("sync").count();
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(w.peers[0].session_status()["state"], "auth_failed");
        let log_after = w.hub.daemon.as_ref().unwrap().log().matches("sync").count();
        assert!(log_after - log_before < 10, "the peer keeps retrying");
        let key = match new_key {
            Some(key) => key,
            // The connection is gone: the hub's owner sends a new invite.
            None => {
                let invite = w.invite("rw");
                let elsewhere = invite.replace("/work#", "/other#");
                let refused = w.peers[0]
                    .home
                    .ctl_stdin(&["sync", "set-key", &id], Some(&elsewhere))
                    .failure();
                assert!(
                    refused.stderr.contains("'other'") && refused.stderr.contains("sync add"),
                    "{}",
                    refused.stderr
                );
                invite
            }
        };
        w.peers[0]
            .home
            .ctl_stdin(&["sync", "set-key", &id], Some(&key))
            .success();
        wait_until("syncing resumes with the new key", SOON, || {
            w.hub.exists("poke.txt")
        });
    }
}

#[test]
fn a_wrong_fingerprint_refuses_to_connect_with_a_clear_error() {
    let w = World::new(0, &[]);
    let invite = w.invite("rw");
    let (head, fp) = invite.split_once("fp=sha256:").unwrap();
    let wrong = format!(
        "{head}fp=sha256:{}",
        if fp.starts_with('0') {
            "1".repeat(64)
        } else {
            "0".repeat(64)
        }
    );
    let home = sidekey_tests::Home::new();
    let _d = home.start();
    let out = home
        .ctl_stdin(
            &["sync", "add", home.path().join("f").to_str().unwrap()],
            Some(&wrong),
        )
        .failure();
    assert!(
        out.stderr
            .contains("does not match the invite's fingerprint"),
        "{}",
        out.stderr
    );
    let bad = home
        .ctl_stdin(
            &["sync", "add", home.path().join("g").to_str().unwrap()],
            Some("sidekey://nope"),
        )
        .failure();
    assert!(bad.stderr.contains("invite is not valid"), "{}", bad.stderr);
}

#[test]
fn a_directory_symlink_in_the_hub_share_gives_a_peer_nothing_outside() {
    let w = World::new(1, &[("keep.txt", b"k")]);
    let outside = tempfile::tempdir().unwrap();
    let secret = b"outside the share: never sent";
    std::fs::write(outside.path().join("secret.txt"), secret).unwrap();
    std::fs::write(outside.path().join("victim.txt"), b"must survive").unwrap();
    std::os::unix::fs::symlink(outside.path(), w.hub.path("link")).unwrap();
    let peer = &w.peers[0];
    // On the peer, `link` is an ordinary directory with the same names.
    peer.write("link/secret.txt", b"the peer's own");
    peer.write("link/victim.txt", b"the peer's own");
    peer.write("marker-1.txt", b"1");
    wait_until("marker-1 arrives", SOON, || w.hub.exists("marker-1.txt"));
    std::fs::remove_file(peer.path("link/victim.txt")).unwrap();
    std::fs::remove_file(peer.path("link/secret.txt")).unwrap();
    std::fs::remove_dir(peer.path("link")).unwrap();
    peer.write("marker-2.txt", b"2");
    wait_until("marker-2 arrives", SOON, || w.hub.exists("marker-2.txt"));
    // And a peer that never had `link` asks for everything again.
    let mut w = w;
    let second = w.add_peer("rw");
    let second = &w.peers[second];
    assert!(second.exists("keep.txt") && second.exists("marker-2.txt"));

    assert_eq!(
        std::fs::read(outside.path().join("secret.txt")).unwrap(),
        secret
    );
    assert_eq!(
        std::fs::read(outside.path().join("victim.txt")).unwrap(),
        b"must survive"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 2);
    for replica in [&w.peers[0], second] {
        for (path, content) in replica.snapshot() {
            let content = content.unwrap_or_default();
            assert!(
                !content.windows(secret.len()).any(|w| w == secret),
                "{path} holds bytes from outside the share"
            );
        }
        assert!(!replica.exists("link"), "the hub's symlink is never synced");
    }
    assert!(
        w.hub.path("link").symlink_metadata().unwrap().is_symlink(),
        "the symlink itself is left alone"
    );
}

#[test]
fn a_folder_already_shared_or_synced_cannot_be_added_twice() {
    let w = World::new(1, &[("a.txt", b"a")]);
    let hub_dir = w.hub.dir.to_str().unwrap().to_string();
    std::fs::create_dir_all(w.hub.path("inner")).unwrap();
    let inner = w.hub.path("inner");
    for (folder, name) in [
        (hub_dir.as_str(), "again"),
        (inner.to_str().unwrap(), "inside"),
    ] {
        let out = w
            .hub
            .ctl(&["share", "add", folder, "--name", name])
            .failure();
        assert!(
            out.stderr.contains("overlaps the share 'work'")
                && out.stderr.contains("sidekeyctl share ls"),
            "{folder}: {}",
            out.stderr
        );
    }
    let listed = w.hub.ctl(&["share", "ls", "--json"]).success().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    let peer = &w.peers[0];
    let invite = w.invite("rw");
    let inside = peer.path("sub");
    for folder in [peer.dir.clone(), inside] {
        let out = peer
            .home
            .ctl_stdin(
                &["sync", "add", folder.to_str().unwrap(), "--no-wait"],
                Some(&invite),
            )
            .failure();
        assert!(
            out.stderr.contains("overlaps the folder of sync session")
                && out.stderr.contains("sidekeyctl sync ls"),
            "{}: {}",
            folder.display(),
            out.stderr
        );
    }
    assert!(!peer.exists("sub"), "a refused folder is not created");
}

#[test]
fn share_rm_asks_first_and_takes_yes_as_conn_rm_does() {
    let w = World::new(0, &[("a.txt", b"a")]);
    let refused = w.hub.ctl(&["share", "rm", "work"]).failure();
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    let listed = w.hub.ctl(&["share", "ls", "--json"]).success().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    w.hub.ctl(&["share", "rm", "work", "--yes"]).success();
    let listed = w.hub.ctl(&["share", "ls", "--json"]).success().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    assert!(w.hub.exists("a.txt"), "the folder stays");
}

#[test]
fn status_watch_without_a_terminal_prints_one_json_line_per_change() {
    use std::io::BufRead;
    let w = World::new(1, &[("a.txt", b"a")]);
    let peer = &w.peers[0];
    let id = peer.session.clone().unwrap();
    let mut watch = peer
        .home
        .command(&sidekey_tests::sidekeyctl_bin())
        .args(["sync", "status", &id, "--watch", "--json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map(Result::unwrap)
            .collect::<Vec<String>>()
    });
    std::thread::sleep(Duration::from_millis(600));
    peer.write("b.txt", b"b");
    wait_until("b.txt arrives", SOON, || w.hub.exists("b.txt"));
    std::thread::sleep(Duration::from_millis(600));
    peer.ctl(&["sync", "pause", &id]).success();
    let exited = wait_until_exit(&mut watch, SOON);
    assert!(exited.success(), "watch ended with {exited}");
    let lines = reader.join().unwrap();
    let states: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(states.len() >= 2, "{lines:?}");
    // One object per change, not one per poll (about 10 polls a second).
    assert!(states.len() < 15, "{} lines: {lines:?}", states.len());
    assert_eq!(states.last().unwrap()["state"], "paused");
    assert!(states.windows(2).all(|p| p[0] != p[1]), "a line repeats");
}

fn wait_until_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("sync status --watch did not exit after the pause");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
