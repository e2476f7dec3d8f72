//! Rules of the proxy's one policy that every entry path obeys, against the
//! real daemon with curl and a recording upstream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sidekey_tests::agent::{Setup, curl};
use sidekey_tests::upstream::Upstream;

#[test]
fn sync_keys_never_open_the_proxy() {
    let s = Setup::new();
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-kinds-INJECTED0001",
    );
    let (_, cli_key) = s.home.create_conn("peer-1", "sync", &[]);
    assert!(cli_key.starts_with("cli_"), "{cli_key}");
    let http = Upstream::http();
    let url = format!("http://api.sidekey.test:{}/echo", http.port);
    let proxy = format!("http://peer:{cli_key}@{}", s.proxy());
    let forward = curl(&["--proxy", &proxy, &url]);
    assert_eq!(forward.status, 407, "{}", forward.body);
    assert_eq!(forward.json()["error"], "invalid_access_key");
    let agentkeys = curl(&[
        "-H",
        &format!("Authorization: Bearer {cli_key}"),
        "-H",
        &format!("X-Target-Url: {url}"),
        &format!("http://{}/v1/proxy", s.proxy()),
    ]);
    assert_eq!(agentkeys.status, 401, "{}", agentkeys.body);
    assert_eq!(agentkeys.json()["error"], "invalid_access_key");
    assert_eq!(http.count(), 0, "nothing reached the upstream");

    // The agent's own key still works, on the same daemon.
    let ok = s.curl(&url, &[]);
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[test]
fn trace_is_refused_on_every_engine_and_never_echoes_the_secret() {
    let s = Setup::new();
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-trace-INJECTED0001",
    );
    let http = Upstream::http();
    let tls = Upstream::https(&s.certs);
    for url in [
        format!("http://api.sidekey.test:{}/echo", http.port),
        format!("https://api.sidekey.test:{}/echo", tls.port),
    ] {
        let r = s.curl(&url, &["-X", "TRACE"]);
        assert_eq!(r.status, 405, "{url}: {}", r.body);
        assert_eq!(r.json()["error"], "method_not_allowed");
        assert!(!r.body.contains("INJECTED"), "{}", r.body);
        // A method nobody registered is refused the same way.
        let r = s.curl(&url, &["-X", "BREW"]);
        assert_eq!(r.status, 405, "{url}: {}", r.body);
    }
    let agentkeys = curl(&[
        "-H",
        &format!("Authorization: Bearer {}", s.key),
        "-H",
        &format!("X-Target-Url: http://api.sidekey.test:{}/echo", http.port),
        "-H",
        "X-Target-Method: TRACE",
        &format!("http://{}/v1/proxy", s.proxy()),
    ]);
    assert_eq!(agentkeys.status, 405, "{}", agentkeys.body);
    assert_eq!(
        http.count() + tls.count(),
        0,
        "nothing reached the upstreams"
    );
    // PATCH is what APIs use to update; it goes through.
    let patch = s.curl(
        &format!("http://api.sidekey.test:{}/echo", http.port),
        &["-X", "PATCH"],
    );
    assert_eq!(patch.status, 200, "{}", patch.body);
}

/// Sends `head` to the proxy as raw bytes and returns the response's status
/// line and body.
fn raw(s: &Setup, head: &str) -> String {
    let mut stream = TcpStream::connect(s.proxy()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn two_proxy_keys_in_one_request_are_refused_on_every_engine() {
    let s = Setup::new();
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-twokeys-INJECTED0001",
    );
    let http = Upstream::http();
    let key = format!("Proxy-Authorization: Bearer {}", s.key);
    let other = "Proxy-Authorization: Bearer sk_live_0000000000000000000000000000000000000000000000000000000000000000";
    let forward = format!(
        "GET http://api.sidekey.test:{port}/echo HTTP/1.1\r\nHost: api.sidekey.test:{port}\r\n{key}\r\n{other}\r\nConnection: close\r\n\r\n",
        port = http.port
    );
    let connect = format!(
        "CONNECT api.sidekey.test:{port} HTTP/1.1\r\nHost: api.sidekey.test:{port}\r\n{other}\r\n{key}\r\n\r\n",
        port = http.port
    );
    for head in [forward, connect] {
        let answer = raw(&s, &head);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(
            answer.contains("two Proxy-Authorization headers"),
            "{answer}"
        );
    }
    assert_eq!(http.count(), 0);
}

#[test]
fn custom_header_credentials_cannot_set_the_proxys_own_fields() {
    let s = Setup::new();
    for (field, value) in [
        ("Content-Length", "5"),
        ("Transfer-Encoding", "chunked"),
        ("Host", "evil.test"),
        ("Connection", "close"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("Upgrade", "websocket"),
    ] {
        let secret = format!("X-Api-Key: fine-value-0001\n{field}: {value}");
        let failed = s
            .home
            .ctl_stdin(
                &[
                    "cred",
                    "add",
                    "--name",
                    "hdr",
                    "--type",
                    "custom-header",
                    "--host",
                    "api.sidekey.test",
                ],
                Some(&secret),
            )
            .failure();
        assert!(
            failed.stderr.contains(&format!("cannot set {field}"))
                && failed.stderr.contains("X-Api-Key"),
            "{field}: {}",
            failed.stderr
        );
    }
    assert_eq!(
        s.home.ctl(&["cred", "ls", "--json"]).success().json(),
        serde_json::json!([])
    );
}

#[test]
fn a_grant_token_used_as_a_proxy_key_opens_its_credential_and_no_other() {
    let s = Setup::new();
    let resend_token = s.cred(
        "resend",
        "api-key",
        &["api.sidekey.test"],
        "re-token-INJECTED0001",
    );
    s.cred(
        "gh",
        "api-key",
        &["other.sidekey.test"],
        "gh-token-INJECTED0002",
    );
    assert!(resend_token.starts_with("pxr_"), "{resend_token}");
    let http = Upstream::http();
    let proxy = format!("http://agent:{resend_token}@{}", s.proxy());
    let placeholder = "Authorization: Bearer placeholder";
    // Plain requests go through the forwarder; `Expect` sends them through
    // the hyper path instead. Both ask the same policy.
    for extra in [
        &["-H", placeholder][..],
        &["-H", placeholder, "-H", "Expect: 100-continue", "-d", "x"],
    ] {
        let mut args = vec!["--proxy", proxy.as_str()];
        args.extend_from_slice(extra);
        let own = format!("http://api.sidekey.test:{}/echo", http.port);
        let r = curl(&[&args[..], &[own.as_str()]].concat());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            http.last().header("authorization"),
            Some("Bearer re-token-INJECTED0001")
        );

        let other = format!("http://other.sidekey.test:{}/echo", http.port);
        let r = curl(&[&args[..], &[other.as_str()]].concat());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            http.last().header("authorization"),
            Some("Bearer placeholder"),
            "the resend token must not open the gh credential"
        );
    }
    // The agent's own key opens both.
    let r = s.curl(
        &format!("http://other.sidekey.test:{}/echo", http.port),
        &["-H", placeholder],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        http.last().header("authorization"),
        Some("Bearer gh-token-INJECTED0002")
    );
}

/// `/v1/proxy` with a `pxr_` token: the status it answers.
fn agentkeys_status(s: &Setup, token: &str, url: &str) -> u16 {
    curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        &format!("X-Target-Url: {url}"),
        &format!("http://{}/v1/proxy", s.proxy()),
    ])
    .status
}

#[test]
fn rotating_a_key_without_grace_retires_its_grant_tokens_and_issues_new_ones() {
    let mut s = Setup::new();
    let http = Upstream::http();
    let url = format!("http://api.sidekey.test:{}/echo", http.port);
    let old_resend = s.cred(
        "resend",
        "api-key",
        &["api.sidekey.test"],
        "re-rotate-INJECTED0001",
    );
    let old_gh = s.cred(
        "gh",
        "api-key",
        &["other.sidekey.test"],
        "gh-rotate-INJECTED0002",
    );
    assert_eq!(agentkeys_status(&s, &old_resend, &url), 200);

    // With grace, the tokens stay as they are.
    let graced = s
        .home
        .ctl(&[
            "conn",
            "key",
            "agent-1",
            "--regenerate",
            "--grace",
            "60s",
            "--json",
        ])
        .success()
        .json();
    assert!(graced.get("grant_tokens").is_none(), "{graced}");
    assert_eq!(agentkeys_status(&s, &old_resend, &url), 200);

    // Without grace, they retire with the key, and new ones are printed once.
    let rotated = s
        .home
        .ctl(&["conn", "key", "agent-1", "--regenerate"])
        .success();
    assert!(
        rotated.stderr.contains("grant tokens retired"),
        "{}",
        rotated.stderr
    );
    let new: Vec<(String, String)> = rotated
        .stderr
        .lines()
        .filter_map(|line| {
            let (cred, token) = line.trim().split_once("  ")?;
            token
                .starts_with("pxr_")
                .then(|| (cred.to_string(), token.trim().to_string()))
        })
        .collect();
    let token_of = |cred: &str| {
        new.iter()
            .find(|(c, _)| c == cred)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    let (new_resend, new_gh) = (token_of("resend"), token_of("gh"));
    assert_ne!(new_resend, old_resend);
    for old in [&old_resend, &old_gh] {
        assert_eq!(
            agentkeys_status(&s, old, &url),
            401,
            "an old token still works"
        );
    }
    assert_eq!(agentkeys_status(&s, &new_resend, &url), 200);
    let other = format!("http://other.sidekey.test:{}/echo", http.port);
    assert_eq!(agentkeys_status(&s, &new_gh, &other), 200);

    // One token alone, and the display forms `conn info` lists.
    let regenerated = s
        .home
        .ctl(&["grant", "agent-1", "resend", "--regenerate"])
        .success();
    let newest = regenerated.stdout.trim().to_string();
    assert!(
        newest.starts_with("pxr_") && newest != new_resend,
        "{newest}"
    );
    assert_eq!(agentkeys_status(&s, &new_resend, &url), 401);
    assert_eq!(agentkeys_status(&s, &newest, &url), 200);
    assert_eq!(
        agentkeys_status(&s, &new_gh, &other),
        200,
        "the other token is untouched"
    );
    let info = s
        .home
        .ctl(&["conn", "info", "agent-1", "--json"])
        .success()
        .json();
    let shown: Vec<String> = info["grant_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            format!(
                "{}={}",
                g["cred"].as_str().unwrap(),
                g["token"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            format!("gh=pxr_…{}", &new_gh[new_gh.len() - 4..]),
            format!("resend=pxr_…{}", &newest[newest.len() - 4..]),
        ]
    );

    // Retired tokens stay retired across a restart.
    s.daemon.signal("TERM");
    assert!(
        s.daemon
            .exit_within(Duration::from_secs(15))
            .is_some_and(|e| e.success())
    );
    s.daemon = s.home.start();
    assert_eq!(agentkeys_status(&s, &old_resend, &url), 401);
    assert_eq!(agentkeys_status(&s, &new_resend, &url), 401);
    assert_eq!(agentkeys_status(&s, &newest, &url), 200);
}

#[test]
fn every_spelling_of_a_metadata_address_is_refused_with_or_without_an_upstream_proxy() {
    // Nothing listens on the upstream proxy's port: a request that got past
    // the refusal would end as a 502, not a 403.
    let direct = Setup::new();
    let chained =
        Setup::with_args_and_env(&[], &[("SIDEKEY_UPSTREAM_PROXY", "http://127.0.0.1:9")]);
    for s in [&direct, &chained] {
        for host in [
            "169.254.169.254",
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
        ] {
            let plain = s.curl(&format!("http://{host}/latest/meta-data/"), &[]);
            assert_eq!(plain.status, 403, "{host}: {}", plain.body);
            assert!(
                plain.body.contains("169.254.169.254"),
                "{host}: {}",
                plain.body
            );
            let tunnel = s.curl(&format!("https://{host}/latest/meta-data/"), &[]);
            assert!(
                tunnel.stderr.contains("403") || tunnel.status == 403,
                "{host} over CONNECT: {} {}",
                tunnel.status,
                tunnel.stderr
            );
        }
    }
}

#[test]
fn a_path_prefix_holds_on_the_path_the_upstream_would_serve() {
    let s = Setup::new();
    s.home
        .ctl_stdin(
            &[
                "cred",
                "add",
                "--name",
                "v1",
                "--type",
                "api-key",
                "--host",
                "http://api.sidekey.test:*",
                "--path-prefix",
                "/v1",
            ],
            Some("sk-prefix-INJECTED0001"),
        )
        .success();
    s.home.ctl(&["grant", "agent-1", "v1"]).success();
    let http = Upstream::http();
    let at = |path: &str| format!("http://api.sidekey.test:{}{path}", http.port);
    let placeholder = ["--path-as-is", "-H", "Authorization: Bearer placeholder"];

    let r = s.curl(&at("/v1/emails"), &placeholder);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        http.last().header("authorization"),
        Some("Bearer sk-prefix-INJECTED0001")
    );

    for escape in [
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1/./../admin",
        "/v1/%2E%2E/admin",
    ] {
        let r = s.curl(&at(escape), &placeholder);
        assert_eq!(r.status, 200, "{escape}: {}", r.body);
        assert_eq!(
            http.last().header("authorization"),
            Some("Bearer placeholder"),
            "{escape} got the secret"
        );
    }
    let before = http.count();
    for ambiguous in ["/v1/..%2fadmin", "/v1/..;/admin", "/v1/%5c../admin"] {
        let r = s.curl(&at(ambiguous), &placeholder);
        assert_eq!(r.status, 400, "{ambiguous}: {}", r.body);
        assert!(r.body.contains("path prefix"), "{}", r.body);
    }
    assert_eq!(
        http.count(),
        before,
        "nothing ambiguous reached the upstream"
    );
}

/// Adds a credential with exactly these bindings and grants it to the agent.
fn bound_cred(s: &Setup, name: &str, bindings: &[&str], secret: &str) {
    let mut args = vec!["cred", "add", "--name", name, "--type", "api-key"];
    for binding in bindings {
        args.extend(["--host", binding]);
    }
    s.home.ctl_stdin(&args, Some(secret)).success();
    s.home.ctl(&["grant", "agent-1", name]).success();
}

#[test]
fn bindings_name_scheme_and_port_and_a_bare_host_means_https_on_443() {
    let s = Setup::new();
    let http = Upstream::http();
    bound_cred(&s, "bare", &["api.sidekey.test"], "sk-bare-INJECTED0001");
    let placeholder = ["-H", "Authorization: Bearer placeholder"];
    let api = format!("http://api.sidekey.test:{}/echo", http.port);

    // Cleartext, another port: the bare binding does not reach it.
    let r = s.curl(&api, &placeholder);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        http.last().header("authorization"),
        Some("Bearer placeholder")
    );
    // Nor may the agent send that secret there itself.
    let r = s.curl(&api, &["-H", "Authorization: Bearer sk-bare-INJECTED0001"]);
    assert_eq!(r.status, 403, "{}", r.body);

    // `cred set --host` rebinds it: this port, in cleartext, now.
    let exact = format!("http://api.sidekey.test:{}", http.port);
    let set = s
        .home
        .ctl(&["cred", "set", "bare", "--host", &exact])
        .success();
    assert!(set.stdout.contains(&exact), "{}", set.stdout);
    let r = s.curl(&api, &placeholder);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        http.last().header("authorization"),
        Some("Bearer sk-bare-INJECTED0001")
    );
    let info = s
        .home
        .ctl(&["cred", "info", "bare", "--json"])
        .success()
        .json();
    assert_eq!(info["hosts"], serde_json::json!([exact]));

    // Another port of the same host is not this binding.
    let other = Upstream::http();
    let r = s.curl(
        &format!("http://api.sidekey.test:{}/echo", other.port),
        &placeholder,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        other.last().header("authorization"),
        Some("Bearer placeholder")
    );

    for bad in [
        "ftp://api.sidekey.test",
        "api.sidekey.test:0",
        "https://api.sidekey.test/v1",
    ] {
        let failed = s
            .home
            .ctl(&["cred", "set", "bare", "--host", bad])
            .failure();
        assert!(
            failed.stderr.contains("Invalid binding"),
            "{bad}: {}",
            failed.stderr
        );
    }
}

#[test]
fn the_most_specific_binding_wins_and_ties_are_refused_at_grant_time() {
    let s = Setup::new();
    let http = Upstream::http();
    // Named so that name order would pick the wildcard.
    bound_cred(
        &s,
        "basic",
        &["http://*.sidekey.test:*"],
        "sk-wild-INJECTED0001",
    );
    bound_cred(
        &s,
        "qp",
        &["http://api.sidekey.test:*"],
        "sk-exact-INJECTED0002",
    );
    let placeholder = ["-H", "Authorization: Bearer placeholder"];
    let r = s.curl(
        &format!("http://api.sidekey.test:{}/echo", http.port),
        &placeholder,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        http.last().header("authorization"),
        Some("Bearer sk-exact-INJECTED0002")
    );
    let r = s.curl(
        &format!("http://other.sidekey.test:{}/echo", http.port),
        &placeholder,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        http.last().header("authorization"),
        Some("Bearer sk-wild-INJECTED0001")
    );

    // A longer path prefix beats a shorter one on the same host.
    s.home
        .ctl_stdin(
            &[
                "cred",
                "add",
                "--name",
                "deep",
                "--type",
                "api-key",
                "--host",
                "http://api.sidekey.test:*",
                "--path-prefix",
                "/echo",
            ],
            Some("sk-deep-INJECTED0003"),
        )
        .success();
    s.home.ctl(&["grant", "agent-1", "deep"]).success();
    let r = s.curl(
        &format!("http://api.sidekey.test:{}/echo/x", http.port),
        &placeholder,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        http.last().header("authorization"),
        Some("Bearer sk-deep-INJECTED0003")
    );

    // Same binding, same prefix: neither could win.
    s.home
        .ctl_stdin(
            &[
                "cred",
                "add",
                "--name",
                "twin",
                "--type",
                "api-key",
                "--host",
                "http://api.sidekey.test:*",
            ],
            Some("sk-twin-INJECTED0004"),
        )
        .success();
    let refused = s.home.ctl(&["grant", "agent-1", "twin"]).failure();
    assert!(
        refused.stderr.contains("'qp'") && refused.stderr.contains("conflict"),
        "{}",
        refused.stderr
    );
    // Rebinding into a tie is refused the same way.
    let refused = s
        .home
        .ctl(&[
            "cred",
            "set",
            "basic",
            "--host",
            "http://api.sidekey.test:*",
        ])
        .failure();
    assert!(refused.stderr.contains("'qp'"), "{}", refused.stderr);
}

#[test]
fn wildcards_directly_under_a_public_suffix_are_refused() {
    let s = Setup::new();
    for wildcard in ["*.github.io", "*.herokuapp.com", "*.co.uk", "*.com"] {
        let failed = s
            .home
            .ctl_stdin(
                &[
                    "cred", "add", "--name", "w", "--type", "api-key", "--host", wildcard,
                ],
                Some("sk-wild-0000001"),
            )
            .failure();
        assert!(
            failed.stderr.contains("public suffix"),
            "{wildcard}: {}",
            failed.stderr
        );
    }
    s.home
        .ctl_stdin(
            &[
                "cred",
                "add",
                "--name",
                "ok",
                "--type",
                "api-key",
                "--host",
                "*.github.com",
            ],
            Some("sk-wild-0000001"),
        )
        .success();
}

/// Opens an untouched tunnel to `target` with `key` and returns its socket,
/// after the proxy's 200.
fn untouched_tunnel(s: &Setup, key: &str, target: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(s.proxy()).unwrap();
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Bearer {key}\r\n\r\n").as_bytes())
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    let mut rest = [0u8; 1];
    let mut tail = Vec::new();
    while !tail.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut rest).unwrap();
        tail.push(rest[0]);
    }
    stream
}

/// How long until the proxy closes `tunnel` after `revoke` runs: bytes still
/// pass before it.
fn closed_after(tunnel: &mut TcpStream, revoke: impl FnOnce()) -> Duration {
    tunnel.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    tunnel.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping", "the tunnel carries bytes before");
    let started = std::time::Instant::now();
    revoke();
    tunnel
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    match tunnel.read(&mut byte) {
        Ok(0) => started.elapsed(),
        other => panic!("the tunnel stayed open after its key stopped working: {other:?}"),
    }
}

#[test]
fn a_key_that_stops_working_closes_its_untouched_tunnels_within_a_second() {
    let s = Setup::new();
    // An echo server nothing is bound to: tunnels to it are untouched.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in echo.incoming().take(8).flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let within = Duration::from_millis(1500);

    let mut rotated = untouched_tunnel(&s, &s.key, target);
    let took = closed_after(&mut rotated, || {
        s.home
            .ctl(&["conn", "key", "agent-1", "--regenerate"])
            .success();
    });
    assert!(took < within, "rotation closed the tunnel after {took:?}");

    let (_, key) = s.home.create_conn("agent-2", "agent", &[]);
    let mut disabled = untouched_tunnel(&s, &key, target);
    let took = closed_after(&mut disabled, || {
        s.home.ctl(&["conn", "disable", "agent-2"]).success();
    });
    assert!(took < within, "disable closed the tunnel after {took:?}");

    let (_, key) = s.home.create_conn("agent-3", "agent", &[]);
    let mut deleted = untouched_tunnel(&s, &key, target);
    let took = closed_after(&mut deleted, || {
        s.home.ctl(&["conn", "rm", "agent-3", "--yes"]).success();
    });
    assert!(took < within, "delete closed the tunnel after {took:?}");

    let (_, key) = s.home.create_conn("agent-4", "agent", &["--expires", "3s"]);
    let mut expiring = untouched_tunnel(&s, &key, target);
    let took = closed_after(&mut expiring, || {});
    assert!(
        took < Duration::from_secs(4) + within,
        "expiry closed the tunnel after {took:?}"
    );
}

#[test]
fn framing_is_strict_on_every_engine() {
    let s = Setup::new();
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-framing-INJECTED0001",
    );
    let http = Upstream::http();
    let key = format!("Proxy-Authorization: Bearer {}", s.key);
    let head = |fields: &str| {
        format!(
            "POST http://api.sidekey.test:{port}/echo HTTP/1.1\r\nHost: api.sidekey.test:{port}\r\n{key}\r\n{fields}Connection: close\r\n\r\n",
            port = http.port
        )
    };
    for (what, request) in [
        ("a signed length", head("Content-Length: +5\r\n") + "hello"),
        (
            "a length with letters",
            head("Content-Length: 5x\r\n") + "hello",
        ),
        (
            "a chunk size ending in a space",
            head("Transfer-Encoding: chunked\r\n") + "5 \r\nhello\r\n0\r\n\r\n",
        ),
        (
            "a signed chunk size",
            head("Transfer-Encoding: chunked\r\n") + "+5\r\nhello\r\n0\r\n\r\n",
        ),
    ] {
        let answer = raw(&s, &request);
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
    }
    assert_eq!(
        http.count(),
        0,
        "no malformed request reached the upstream whole"
    );
    // The same bodies, framed properly, go through.
    let ok = raw(
        &s,
        &(head("Transfer-Encoding: chunked\r\n") + "5 ;ext=1\r\nhello\r\n0\r\n\r\n"),
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}
