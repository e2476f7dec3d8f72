//! The control socket and its routes: permissions, peer-uid refusal, and
//! the error shape for every kind of bad input.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use sidekey_tests::http::{self, Conn};
use sidekey_tests::{Home, sidekeyctl_bin};

/// One raw HTTP request on the control socket; returns (status, body).
fn control(
    socket: &Path,
    method: &str,
    path: &str,
    extra_headers: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let mut stream = UnixStream::connect(socket).expect("connect control socket");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: sidekeyd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn assert_error(resp: &(u16, serde_json::Value), status: u16, code: &str) {
    assert_eq!(resp.0, status, "{:?}", resp.1);
    assert_eq!(resp.1["error"], code, "{:?}", resp.1);
    assert_eq!(resp.1["status"], status);
    let message = resp.1["message"].as_str().expect("a message");
    assert!(
        message.len() > 15,
        "message should say what to do: {message}"
    );
}

#[test]
fn socket_is_0600_in_a_0700_directory() {
    let home = Home::new();
    let d = home.start();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.socket), 0o600);
    assert_eq!(mode(d.socket.parent().unwrap()), 0o700);
}

#[test]
fn a_caller_with_another_uid_is_refused() {
    let home = Home::new();
    let d = home.start();
    let run_as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(sidekeyctl_bin())
            .args(["--socket", d.socket.to_str().unwrap(), "conn", "ls"])
            .env("HOME", "/tmp")
            .output()
            .expect("setpriv")
    };
    // The file system stops it first: the socket's directory is 0700.
    let out = run_as_nobody();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied") || err.contains("not running"),
        "{err}"
    );

    // Open the path up, as a careless admin might: the daemon's peer-uid check still refuses.
    let mut dir = d.socket.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    while dir.starts_with(home.path()) {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        if !dir.pop() {
            break;
        }
    }
    let out = run_as_nobody();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission_denied") && err.contains("run sidekeyctl as that user"),
        "{err}"
    );
    assert!(
        d.log()
            .contains("refused a control connection from another user")
    );
    // The owner is still served.
    home.ctl(&["conn", "ls"]).success();
}

/// `sidekeyctl status` with the home's environment plus `envs`, and no `--socket`.
fn ctl_status(home: &Home, envs: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = home.command(&sidekeyctl_bin());
    cmd.args(["status", "--json"]);
    for (key, value) in envs {
        cmd.env(key, value);
    }
    cmd.output().expect("sidekeyctl runs")
}

#[test]
fn sidekeyctl_finds_the_socket_wherever_sidekeyd_put_it() {
    // The config file's socket_path.
    let home = Home::new();
    let socket = home.path().join("sockets/s.sock");
    home.write_config(&format!("socket_path = \"{}\"\n", socket.display()));
    let d = home.start();
    assert_eq!(d.socket, socket);
    let out = ctl_status(&home, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(d);

    // No runtime dir: <data_dir>/sidekeyd.sock, the data dir from SIDEKEY_DATA_DIR
    // over the file's (an empty XDG_RUNTIME_DIR is no runtime dir).
    let home = Home::new();
    let data_dir = home.path().join("elsewhere");
    home.write_config(&format!(
        "data_dir = \"{}\"\n",
        home.path().join("unused").display()
    ));
    let d = home
        .start_with(
            &[],
            &[
                ("XDG_RUNTIME_DIR", ""),
                ("SIDEKEY_DATA_DIR", data_dir.to_str().unwrap()),
            ],
        )
        .unwrap();
    assert_eq!(d.socket, data_dir.join("sidekeyd.sock"));
    let empty = Path::new("");
    let out = ctl_status(
        &home,
        &[("XDG_RUNTIME_DIR", empty), ("SIDEKEY_DATA_DIR", &data_dir)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without SIDEKEY_DATA_DIR it looks in the file's data dir, and says so.
    let out = ctl_status(&home, &[("XDG_RUNTIME_DIR", empty)]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "no socket at {}",
            home.path().join("unused/sidekeyd.sock").display()
        )),
        "{err}"
    );
}

#[test]
fn bad_input_on_every_route_gets_the_error_shape() {
    let home = Home::new();
    let d = home.start();
    let s = &d.socket;
    home.create_conn("taken", "agent", &[]);
    home.ctl_stdin(
        &[
            "cred",
            "add",
            "--name",
            "c1",
            "--type",
            "api-key",
            "--host",
            "api.example.com",
        ],
        Some("v"),
    )
    .success();

    let posts = [
        "/v1/conns",
        "/v1/creds",
        "/v1/grants",
        "/v1/conns/taken/key",
    ];
    for path in posts {
        assert_error(
            &control(s, "POST", path, "", b"{not json"),
            400,
            "bad_request",
        );
        assert_error(&control(s, "POST", path, "", b""), 400, "bad_request");
        assert_error(
            &control(s, "POST", path, "", &vec![b' '; 1024 * 1024]),
            413,
            "payload_too_large",
        );
        assert_error(
            &control(s, "POST", path, "", br#"{"surprise": 1}"#),
            400,
            "bad_request",
        );
    }
    assert_error(
        &control(s, "PUT", "/v1/creds/c1/secret", "", b"[1,2"),
        400,
        "bad_request",
    );
    let unknown = control(
        s,
        "POST",
        "/v1/conns",
        "",
        br#"{"name":"x","kind":"agent","colour":"red"}"#,
    );
    assert_error(&unknown, 400, "bad_request");
    assert!(unknown.1["message"].as_str().unwrap().contains("colour"));

    // Duplicate names, invalid names, bad hosts, missing things.
    assert_error(
        &control(
            s,
            "POST",
            "/v1/conns",
            "",
            br#"{"name":"taken","kind":"agent"}"#,
        ),
        409,
        "conflict",
    );
    assert_error(
        &control(
            s,
            "POST",
            "/v1/conns",
            "",
            br#"{"name":"../x","kind":"agent"}"#,
        ),
        400,
        "bad_request",
    );
    assert_error(
        &control(s, "POST", "/v1/conns", "", br#"{"name":"","kind":"agent"}"#),
        400,
        "bad_request",
    );
    for host in [
        "*",
        "*.com",
        "a.*.example.com",
        "**.example.com",
        "exa mple.com",
        "",
    ] {
        let body = serde_json::json!({"name": "c2", "type": "api_key", "hosts": [host], "path_prefix": null, "secret": "v"});
        let r = control(s, "POST", "/v1/creds", "", body.to_string().as_bytes());
        assert_error(&r, 400, "bad_request");
    }
    let dup = serde_json::json!({"name": "c1", "type": "api_key", "hosts": ["a.example.com"], "path_prefix": null, "secret": "v"});
    assert_error(
        &control(s, "POST", "/v1/creds", "", dup.to_string().as_bytes()),
        409,
        "conflict",
    );
    let traversal = serde_json::json!({"name": "c3", "type": "api_key", "hosts": ["a.example.com"], "path_prefix": "/v1/../admin", "secret": "v"});
    assert_error(
        &control(s, "POST", "/v1/creds", "", traversal.to_string().as_bytes()),
        400,
        "bad_request",
    );
    assert_error(
        &control(s, "GET", "/v1/conns/nope", "", b""),
        404,
        "not_found",
    );
    assert_error(
        &control(s, "GET", "/v1/conns/..%2F..%2Fetc", "", b""),
        404,
        "not_found",
    );
    assert_error(
        &control(s, "DELETE", "/v1/creds/nope", "", b""),
        404,
        "not_found",
    );
    assert_error(
        &control(s, "DELETE", "/v1/grants/taken/nope", "", b""),
        404,
        "not_found",
    );
    assert_error(
        &control(s, "GET", "/v1/nothing/here", "", b""),
        404,
        "not_found",
    );
    let grant = br#"{"conn":"taken","cred":"missing"}"#;
    assert_error(
        &control(s, "POST", "/v1/grants", "", grant),
        404,
        "not_found",
    );
    let sync = home.create_conn("a-sync", "sync", &[]);
    let grant = format!(r#"{{"conn":"{}","cred":"c1"}}"#, sync.0);
    assert_error(
        &control(s, "POST", "/v1/grants", "", grant.as_bytes()),
        400,
        "bad_request",
    );
    // A browser is refused outright.
    assert_error(
        &control(
            s,
            "GET",
            "/v1/conns",
            "Origin: http://evil.example\r\n",
            b"",
        ),
        403,
        "permission_denied",
    );

    // Still healthy afterwards.
    assert_eq!(home.conn_count(), 2);
}

#[test]
fn whoami_bad_input_gets_clear_errors_and_no_panic() {
    let home = Home::new();
    let d = home.start();
    let (_, key) = home.create_conn("w", "agent", &[]);

    let r = Conn::open(d.proxy)
        .send_raw(b"POST /v1/whoami HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"], "method_not_allowed");

    for auth in [
        "Bearer",
        "Bearer ",
        "Basic !!!",
        "Token abc",
        &format!("Bearer {key} extra"),
    ] {
        let r = http::get(d.proxy, "/v1/whoami", &[("Authorization", auth)]);
        assert!(r.status == 401, "{auth}: {}", r.status);
    }

    let huge = "a".repeat(70 * 1024);
    let r = Conn::open(d.proxy).send_raw(
        format!("GET /v1/whoami HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.expect("an answer, not a reset").status, 431);

    let r = Conn::open(d.proxy).send_raw(b"NOT HTTP AT ALL\r\n\r\n");
    assert!(
        r.map(|r| r.status == 400).unwrap_or(true),
        "a malformed request line gets 400 or a close"
    );

    let r = http::get(
        d.proxy,
        "/v1/whoami",
        &[
            ("Authorization", &format!("Bearer {key}")),
            ("Origin", "http://evil.example"),
        ],
    );
    assert_eq!(r.status, 403, "no CORS: browsers are refused");

    let r = http::get(d.proxy, "/elsewhere", &[]);
    assert_eq!(r.status, 404);
    assert!(r.json()["message"].as_str().unwrap().contains("HTTP_PROXY"));

    assert_eq!(http::whoami(d.proxy, &key).status, 200);
    assert!(!d.log().contains("panicked"));
}
