//! sidekeyctl without a daemon. (Being an integration test of this package
//! also makes `cargo test --workspace` build the real binary.)

use std::process::Command;

#[test]
fn says_when_the_daemon_is_not_running_and_exits_3() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sidekeyctl"))
        .env_clear()
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", home.path().join("run"))
        .args(["conn", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8(out.stderr).unwrap();
    let socket = home.path().join("run/sidekey/sidekeyd.sock");
    assert!(err.contains("sidekeyd is not running"), "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    assert!(err.contains("start it with: sidekeyd"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_sidekeyctl"))
        .args(["conn", "create", "--name", "x", "--kind", "robot"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
