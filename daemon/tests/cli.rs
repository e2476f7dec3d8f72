//! sidekeyd's command line on its own. (Being an integration test of this
//! package also makes `cargo test --workspace` build the real binary that
//! the tests/ crate drives.)

use std::process::Command;

fn sidekeyd(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekeyd"));
    cmd.env_clear()
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_RUNTIME_DIR", home.join("run"));
    cmd
}

#[test]
fn print_config_shows_defaults_and_overrides_in_order() {
    let home = tempfile::tempdir().unwrap();
    let out = sidekeyd(home.path())
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("proxy_listen = \"127.0.0.1:8787\""), "{text}");
    assert!(text.contains("egress = \"tunnel\""), "{text}");
    assert!(
        text.contains(&format!(
            "socket_path = \"{}",
            home.path().join("run/sidekey").display()
        )),
        "{text}"
    );

    // file < env < flag
    let config = home.path().join("config/sidekey/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        "proxy_listen = \"127.0.0.1:1111\"\negress = \"deny\"\nlog_level = \"debug\"\n",
    )
    .unwrap();
    let out = sidekeyd(home.path())
        .env("SIDEKEY_PROXY_LISTEN", "127.0.0.1:2222")
        .env("SIDEKEY_LOG_LEVEL", "warn")
        .args(["--print-config", "--log-level", "trace"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("proxy_listen = \"127.0.0.1:2222\""),
        "env beats file: {text}"
    );
    assert!(
        text.contains("egress = \"deny\""),
        "file beats default: {text}"
    );
    assert!(
        text.contains("log_level = \"trace\""),
        "flag beats env: {text}"
    );
}

#[test]
fn unknown_or_invalid_config_is_an_error_that_names_the_key() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("custom.toml");
    std::fs::write(
        &config,
        "proxy_listen = \"127.0.0.1:1\"\nprxy_listen = \"x\"\n",
    )
    .unwrap();
    let out = sidekeyd(home.path())
        .args(["--config", config.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("prxy_listen") && err.contains(&config.display().to_string()),
        "{err}"
    );

    for (bad, key) in [
        ("proxy_listen = \"localhost\"", "proxy_listen"),
        ("egress = \"sometimes\"", "egress"),
        ("audit_retention = \"forever\"", "audit_retention"),
    ] {
        std::fs::write(&config, bad).unwrap();
        let out = sidekeyd(home.path())
            .args(["--config", config.to_str().unwrap(), "--print-config"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} was accepted");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains(key) || err.contains("sometimes"),
            "{bad}: {err}"
        );
    }
}
