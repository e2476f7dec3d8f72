//! The injecting proxy against the real daemon and real curl: every
//! credential type over every path, header hygiene, host binding, upstream
//! TLS verification, keys, bad input and the audit log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sidekey_tests::agent::{Setup, curl};
use sidekey_tests::disk::SmallDisk;
use sidekey_tests::upstream::{TestCerts, Upstream};
use sidekey_tests::{Home, contains_bytes, read_tree, wait_until};

/// Every credential type: (name, --type, secret, where the upstream sees it).
const TYPES: &[(&str, &str, &str)] = &[
    ("key", "api-key", "sk-proj-INJECTEDapikey000001"),
    ("basic", "basic-auth", "alice:INJECTEDpassword000002"),
    (
        "cookie",
        "cookie",
        "session=INJECTEDcookie000003; theme=dark",
    ),
    ("header", "custom-header", "X-Api-Key: INJECTEDheader000004"),
    ("query", "query-param", "api_key=INJECTEDquery000005"),
];

fn assert_injected(kind: &str, secret: &str, seen: &sidekey_tests::upstream::Seen) {
    match kind {
        "api-key" => assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {secret}").as_str())
        ),
        "basic-auth" => assert_eq!(
            seen.header("authorization"),
            Some("Basic YWxpY2U6SU5KRUNURURwYXNzd29yZDAwMDAwMg==")
        ),
        "cookie" => assert_eq!(seen.header("cookie"), Some(secret)),
        "custom-header" => assert_eq!(seen.header("x-api-key"), Some("INJECTEDheader000004")),
        "query-param" => assert!(
            seen.path.ends_with("api_key=INJECTEDquery000005"),
            "{}",
            seen.path
        ),
        _ => unreachable!(),
    }
    assert!(
        seen.header("proxy-authorization").is_none(),
        "Proxy-Authorization reached upstream"
    );
    assert_eq!(
        seen.headers_named("authorization").len().max(1),
        1,
        "one Authorization only"
    );
}

#[test]
fn every_credential_type_injects_over_every_path() {
    let s = Setup::new();
    let http = Upstream::http();
    let tls = Upstream::https(&s.certs);
    let mut pxr_tokens = Vec::new();
    for (name, kind, secret) in TYPES {
        let pxr = s.cred(name, kind, &["api.sidekey.test"], secret);
        pxr_tokens.push(pxr.clone());
        let placeholder = [
            "-H",
            "Authorization: Bearer placeholder",
            "-H",
            "Cookie: mine=1",
            "-H",
            "X-Api-Key: fake",
        ];

        // http:// in absolute form.
        let r = s.curl(
            &format!(
                "http://api.sidekey.test:{}/echo?q=1&api_key=fake",
                http.port
            ),
            &placeholder,
        );
        assert_eq!(r.status, 200, "{kind} over http: {}{}", r.body, r.stderr);
        assert_injected(kind, secret, &http.last());

        // CONNECT + TLS, intercepted, over http/1.1 and h2.
        for version in ["--http1.1", "--http2"] {
            let mut args = placeholder.to_vec();
            args.push(version);
            let r = s.curl(
                &format!("https://api.sidekey.test:{}/echo?api_key=fake", tls.port),
                &args,
            );
            assert_eq!(
                r.status, 200,
                "{kind} over https {version}: {}{}",
                r.body, r.stderr
            );
            let seen = tls.last();
            assert_injected(kind, secret, &seen);
            assert_eq!(
                seen.sni.as_deref(),
                Some("api.sidekey.test"),
                "the SNI upstream names the real target"
            );
            assert_eq!(
                seen.header("host"),
                Some(format!("api.sidekey.test:{}", tls.port).as_str())
            );
        }

        // /v1/proxy with the pxr_ token, then with the sk_live_ key (with and without X-Credential-Name).
        let target = format!(
            "X-Target-Url: https://api.sidekey.test:{}/echo?api_key=fake",
            tls.port
        );
        let v1 = format!("http://{}/v1/proxy", s.proxy());
        let bearer_pxr = format!("Authorization: Bearer {pxr}");
        let r = curl(&[
            "-X",
            "POST",
            "-H",
            &bearer_pxr,
            "-H",
            &target,
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"to\":\"x\"}",
            &v1,
        ]);
        assert_eq!(r.status, 200, "{kind} via /v1/proxy pxr: {}", r.body);
        let seen = tls.last();
        assert_injected(kind, secret, &seen);
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.body_len, 10);
        assert!(
            seen.header("x-target-url").is_none() && seen.header("x-credential-name").is_none()
        );

        let bearer_key = format!("Authorization: Bearer {}", s.key);
        let named = format!("X-Credential-Name: {name}");
        let r = curl(&[
            "-H",
            &bearer_key,
            "-H",
            &target,
            "-H",
            &named,
            "-H",
            "X-Target-Method: PUT",
            &v1,
        ]);
        assert_eq!(
            r.status, 200,
            "{kind} via /v1/proxy sk_live + name: {}",
            r.body
        );
        assert_eq!(tls.last().method, "PUT");
        assert_injected(kind, secret, &tls.last());
        // Without X-Credential-Name the first granted credential bound to the host is used.
        let r = curl(&["-H", &bearer_key, "-H", &target, &v1]);
        assert_eq!(r.status, 200, "{kind} via /v1/proxy sk_live: {}", r.body);
        // Revoke so the next type is the only one bound.
        s.home.ctl(&["revoke", "agent-1", name]).success();
    }

    // After all of that at trace level: no secret, key or token anywhere.
    let audit = s
        .home
        .ctl(&["audit", "--json", "--limit", "1000"])
        .success()
        .stdout;
    assert!(
        audit.lines().count() >= TYPES.len() * 6,
        "every request was audited"
    );
    let logs = s.home.all_logs();
    let data = read_tree(&s.home.data_dir());
    let mut needles: Vec<String> = TYPES
        .iter()
        .map(|(_, _, secret)| secret.to_string())
        .collect();
    needles.extend([
        "INJECTEDpassword000002".to_string(),
        "YWxpY2U6SU5KRUNURURwYXNzd29yZDAwMDAwMg".to_string(),
    ]);
    needles.push(s.key.clone());
    needles.extend(pxr_tokens);
    for needle in &needles {
        let shown = &needle[..needle.len().min(14)];
        assert!(!logs.contains(needle.as_str()), "{shown}… is in the log");
        assert!(!audit.contains(needle.as_str()), "{shown}… is in the audit");
        for (path, bytes) in &data {
            assert!(
                !contains_bytes(bytes, needle.as_bytes()),
                "{shown}… is in {}",
                path.display()
            );
        }
    }
}

#[test]
fn connect_to_port_80_is_handled_like_plain_http() {
    // Port 80 is fixed, so the daemon, its upstream and curl all run in a
    // network namespace of their own: the test passes whatever the host
    // already serves on port 80.
    let s = Setup::in_own_netns(&[]);
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-port80-INJECTED0001",
    );
    let netns = s.daemon.netns_enter();
    let upstream = Upstream::http_on_in(&netns, 80);
    let r = s.curl_in(
        &netns,
        "http://api.sidekey.test/echo",
        &["--proxytunnel", "-H", "Authorization: Bearer placeholder"],
    );
    assert_eq!(r.status, 200, "{}{}", r.body, r.stderr);
    assert_eq!(
        upstream.last().header("authorization"),
        Some("Bearer sk-port80-INJECTED0001")
    );
}

#[test]
fn hop_by_hop_headers_and_proxy_authorization_never_reach_upstream() {
    let s = Setup::new();
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-hygiene-INJECTED0001",
    );
    let http = Upstream::http();
    let r = s.curl(
        &format!("http://API.Sidekey.Test.:{}/echo", http.port),
        &[
            "-H",
            "Connection: keep-alive, X-Hop",
            "-H",
            "X-Hop: 1",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "Proxy-Connection: keep-alive",
            "-H",
            "X-End-To-End: kept",
        ],
    );
    assert_eq!(r.status, 200, "{}", r.stderr);
    let seen = http.last();
    for hop in [
        "proxy-authorization",
        "x-hop",
        "keep-alive",
        "proxy-connection",
    ] {
        assert!(seen.header(hop).is_none(), "{hop} reached upstream");
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    assert_eq!(
        seen.header("host"),
        Some(format!("api.sidekey.test:{}", http.port).as_str())
    );
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-hygiene-INJECTED0001"),
        "mixed case and a trailing dot still match"
    );
}

#[test]
fn a_credential_never_goes_to_a_host_it_is_not_bound_to() {
    let s = Setup::new();
    let pxr = s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-binding-INJECTED0001",
    );
    let tls = Upstream::https(&s.certs);
    let http = Upstream::http();

    // /v1/proxy toward an unbound host: refused, nothing sent.
    let v1 = format!("http://{}/v1/proxy", s.proxy());
    let bearer = format!("Authorization: Bearer {pxr}");
    let before = tls.count();
    let r = curl(&[
        "-H",
        &bearer,
        "-H",
        &format!(
            "X-Target-Url: https://other.sidekey.test:{}/steal",
            tls.port
        ),
        &v1,
    ]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "permission_denied");
    assert_eq!(tls.count(), before);

    // A Host header that differs from the CONNECT target: 403.
    let r = s.curl(
        &format!("https://api.sidekey.test:{}/echo", tls.port),
        &[
            "-H",
            &format!("Host: other.sidekey.test:{}", tls.port),
            "--http1.1",
        ],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(tls.count(), before);

    // A redirect is handed back, not followed: the credential never reaches elsewhere.
    let r = s.curl(
        &format!("https://api.sidekey.test:{}/redirect", tls.port),
        &[],
    );
    assert_eq!(r.status, 302);
    assert_eq!(tls.count(), before + 1);

    // An IP literal is not the bound name: forwarded untouched.
    let r = s.curl(
        &format!("http://127.0.0.1:{}/echo", http.port),
        &["-H", "Authorization: Bearer mine"],
    );
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert_eq!(http.last().header("authorization"), Some("Bearer mine"));

    // Unbound hosts are tunnelled untouched: the client sees the real certificate.
    let r = s.curl(
        &format!("https://other.sidekey.test:{}/echo", tls.port),
        &["-H", "Authorization: Bearer mine"],
    );
    assert_ne!(
        r.status, 200,
        "the sidekey CA must not have been used for an unbound host"
    );
    let r = curl(&[
        "--proxy",
        &s.proxy_url(),
        "--cacert",
        s.certs.ca.to_str().unwrap(),
        &format!("https://other.sidekey.test:{}/echo", tls.port),
    ]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert!(tls.last().header("authorization").is_none());

    // The secret's value itself is refused toward any other host.
    let r = s.curl(
        &format!("http://other.sidekey.test:{}/echo", http.port),
        &["-H", "X-Smuggle: sk-binding-INJECTED0001"],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        !r.body.contains("sk-binding"),
        "the refusal must not echo the secret"
    );
}

#[test]
fn egress_deny_refuses_unbound_hosts() {
    let s = Setup::with_args(&["--egress=deny"]);
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-egress-INJECTED0001",
    );
    let tls = Upstream::https(&s.certs);
    let http = Upstream::http();
    assert_eq!(
        s.curl(&format!("https://api.sidekey.test:{}/echo", tls.port), &[])
            .status,
        200
    );
    let r = s.curl(
        &format!("http://other.sidekey.test:{}/echo", http.port),
        &[],
    );
    assert_eq!(r.status, 403);
    let r = s.curl(
        &format!("https://other.sidekey.test:{}/echo", tls.port),
        &[],
    );
    assert_ne!(
        r.exit,
        Some(0),
        "CONNECT to an unbound host must be refused"
    );
    assert!(r.headers.contains("403"), "{}", r.headers);
    assert_eq!(http.count(), 0);
}

#[test]
fn a_bad_upstream_certificate_is_a_502_that_names_the_host() {
    let s = Setup::new();
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-tls-INJECTED0001",
    );
    let untrusted = TestCerts::new();
    let tls = Upstream::https(&untrusted);
    let r = s.curl(&format!("https://api.sidekey.test:{}/echo", tls.port), &[]);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "upstream_tls");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("api.sidekey.test")
    );
    assert_eq!(
        tls.count(),
        0,
        "no request may be sent over an unverified connection"
    );
}

#[test]
fn bad_keys_get_407_on_the_forward_proxy_and_401_on_v1_proxy() {
    let s = Setup::new();
    let pxr = s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-keys-INJECTED0001",
    );
    let http = Upstream::http();
    let url = format!("http://api.sidekey.test:{}/echo", http.port);
    let target = format!("X-Target-Url: {url}");
    let v1 = format!("http://{}/v1/proxy", s.proxy());
    let through = |key: &str| {
        curl(&[
            "--proxy",
            &format!("http://agent:{key}@{}", s.proxy()),
            &url,
        ])
    };
    let direct = |key: &str| {
        curl(&[
            "-H",
            &format!("Authorization: Bearer {key}"),
            "-H",
            &target,
            &v1,
        ])
    };

    let r = curl(&["--proxy", &format!("http://{}", s.proxy()), &url]);
    assert_eq!(r.status, 407);
    assert_eq!(
        r.header("proxy-authenticate").as_deref(),
        Some("Basic realm=\"sidekey\"")
    );
    assert_eq!(r.json()["error"], "token_missing");
    let r = through("sk_live_nope");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (407, Some("invalid_access_key"))
    );
    assert_eq!(direct("sk_live_nope").status, 401);

    // Rotated: fails on the very next request, on both paths.
    // The grant token retires with the key (DESIGN: a leaked key's tokens
    // must not outlive its rotation); the new one is printed with the key.
    let old = s.key.clone();
    let rotated = s
        .home
        .ctl(&["conn", "key", "agent-1", "--regenerate", "--json"])
        .success()
        .json();
    let new = rotated["key"].as_str().unwrap().to_string();
    let new_pxr = rotated["grant_tokens"][0]["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(through(&old).status, 407);
    assert_eq!(direct(&old).json()["error"], "invalid_access_key");
    assert_eq!(through(&new).status, 200);
    assert_eq!(direct(&pxr).json()["error"], "invalid_access_key");
    assert_eq!(direct(&new_pxr).status, 200);

    // Disabled, expired, revoked.
    s.home.ctl(&["conn", "disable", "agent-1"]).success();
    assert_eq!(through(&new).json()["error"], "connection_disabled");
    assert_eq!(direct(&new).status, 403);
    s.home.ctl(&["conn", "enable", "agent-1"]).success();
    let (_, short) = s.home.create_conn("short", "agent", &["--expires", "1s"]);
    wait_until("the key expires", Duration::from_secs(5), || {
        through(&short).status != 200
    });
    let r = through(&short);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (407, Some("key_expired"))
    );
    s.home.ctl(&["revoke", "agent-1", "key"]).success();
    assert_eq!(direct(&new_pxr).json()["error"], "invalid_access_key");
    s.home.ctl(&["conn", "rm", "agent-1", "--yes"]).success();
    assert_eq!(through(&new).status, 407);
}

#[test]
fn a_replaced_credential_is_used_by_the_very_next_request() {
    let s = Setup::new();
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-first-INJECTED0001",
    );
    let tls = Upstream::https(&s.certs);
    let url = format!("https://api.sidekey.test:{}/echo", tls.port);
    assert_eq!(s.curl(&url, &[]).status, 200);
    assert_eq!(
        tls.last().header("authorization"),
        Some("Bearer sk-first-INJECTED0001")
    );
    s.home
        .ctl_stdin(&["cred", "set", "key"], Some("sk-second-INJECTED0002"))
        .success();
    assert_eq!(s.curl(&url, &[]).status, 200);
    assert_eq!(
        tls.last().header("authorization"),
        Some("Bearer sk-second-INJECTED0002")
    );
}

fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response with a `Content-Length` body, leaving the connection open.
fn one_response(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "the connection closed");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

#[test]
fn bad_input_gets_clear_errors_and_is_never_forwarded() {
    let s = Setup::new();
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-bad-INJECTED0001",
    );
    let http = Upstream::http();
    let auth = format!(
        "Proxy-Authorization: Bearer {}\r\nConnection: close\r\n",
        s.key
    );
    let url = format!("http://api.sidekey.test:{}/echo", http.port);

    let answer = raw(s.proxy(), b"GARBAGE\r\n\r\n");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    let huge = "a".repeat(70 * 1024);
    let answer = raw(
        s.proxy(),
        format!("GET {url} HTTP/1.1\r\nHost: x\r\n{auth}X-Big: {huge}\r\n\r\n").as_bytes(),
    );
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );

    let smuggle = format!(
        "POST {url} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let answer = raw(s.proxy(), smuggle.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(
        http.count(),
        0,
        "a conflicting request must never be forwarded"
    );

    // A keep-alive connection may idle past the head timeout; only a head
    // that has begun is timed.
    let mut idle = TcpStream::connect(s.proxy()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let get = format!(
        "GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {}\r\n\r\n",
        s.key
    );
    idle.write_all(get.as_bytes()).unwrap();
    assert!(one_response(&mut idle).starts_with("HTTP/1.1 200"));
    let idle_since = std::time::Instant::now();

    // Slow headers are cut off.
    let mut slow = TcpStream::connect(s.proxy()).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(18),
        "slow headers must time out"
    );
    std::thread::sleep(Duration::from_secs(12).saturating_sub(idle_since.elapsed()));
    idle.write_all(get.as_bytes()).unwrap();
    let answer = one_response(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // CONNECT to a closed port, unsupported schemes, metadata targets.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let answer = raw(
        s.proxy(),
        format!("CONNECT api.sidekey.test:{closed} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes(),
    );
    assert!(
        answer.starts_with("HTTP/1.1 502") && answer.contains("upstream_unreachable"),
        "{answer}"
    );
    let v1 = format!("http://{}/v1/proxy", s.proxy());
    let bearer = format!("Authorization: Bearer {}", s.key);
    let r = curl(&[
        "-H",
        &bearer,
        "-H",
        "X-Target-Url: ftp://api.sidekey.test/file",
        &v1,
    ]);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_request"))
    );
    let r = curl(&["-H", &bearer, &v1]);
    assert_eq!(r.status, 400, "X-Target-Url is required");
    for target in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://metadata.google.internal/",
    ] {
        let r = s.curl(target, &[]);
        assert_eq!(r.status, 403, "{target}: {}", r.body);
    }
    let answer = raw(
        s.proxy(),
        format!("CONNECT 169.254.169.254:443 HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(!s.daemon.log().contains("panicked"));
}

/// The smuggling guard reads request heads, never bodies, and it guards
/// what an intercepted tunnel carries too.
#[test]
fn smuggling_is_refused_in_tunnels_and_bodies_are_never_read_as_heads() {
    let s = Setup::new();
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-guard-INJECTED0002",
    );
    let http = Upstream::http();
    let auth = format!("Proxy-Authorization: Bearer {}\r\n", s.key);
    let url = format!("http://api.sidekey.test:{}/echo", http.port);

    // An uploaded HTTP transcript, then another request on the same connection.
    let body = "\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
    let two = format!(
        "POST {url} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}\
         GET {url} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n",
        body.len()
    );
    let answer = raw(s.proxy(), two.as_bytes());
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    assert_eq!(http.count(), 2);

    // Plain HTTP inside an intercepted tunnel, as undici sends it.
    let tunnel = format!(
        "CONNECT api.sidekey.test:{port} HTTP/1.1\r\nHost: api.sidekey.test:{port}\r\n{auth}\r\n\
         POST /echo HTTP/1.1\r\nHost: api.sidekey.test:{port}\r\nContent-Length: 4\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        port = http.port
    );
    let answer = raw(s.proxy(), tunnel.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    assert_eq!(
        http.count(),
        2,
        "a conflicting request in a tunnel must never be forwarded"
    );
}

#[test]
fn every_request_is_audited_without_secrets_or_query_values() {
    let s = Setup::with_args(&["--audit-retention=3s"]);
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-audit-INJECTED0001",
    );
    let tls = Upstream::https(&s.certs);

    // A record exists while the request is still upstream.
    let url = format!(
        "https://api.sidekey.test:{}/slow?ms=1500&token=QUERYSECRET",
        tls.port
    );
    let slow = std::thread::scope(|scope| {
        let handle = scope.spawn(|| s.curl(&url, &[]));
        wait_until(
            "the in-flight request is audited",
            Duration::from_secs(5),
            || {
                s.home
                    .ctl(&["audit", "--json"])
                    .success()
                    .stdout
                    .contains("\"outcome\":\"started\"")
            },
        );
        handle.join().unwrap()
    });
    assert_eq!(slow.status, 200);
    let records: Vec<serde_json::Value> = s
        .home
        .ctl(&["audit", "--json"])
        .success()
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "one record per request");
    let r = &records[0];
    assert_eq!(r["conn"], "agent-1");
    assert_eq!(r["cred"], "key");
    assert_eq!(r["method"], "GET");
    assert_eq!(
        r["url"],
        format!("https://api.sidekey.test:{}/slow", tls.port)
    );
    assert_eq!(r["status"], 200);
    assert_eq!(r["outcome"], "ok");
    assert!(r["latency_ms"].as_u64().unwrap() >= 1400);
    let table = s.home.ctl(&["audit"]).success().stdout;
    assert!(
        table.contains("agent-1") && table.contains("/slow"),
        "{table}"
    );

    // --follow --json streams NDJSON as requests complete.
    let mut follow = std::process::Command::new(sidekey_tests::sidekeyctl_bin());
    follow
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in s.home.envs() {
        follow.env(k, v);
    }
    let mut child = follow
        .args(["audit", "--follow", "--json", "--limit", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("/slow"), "{first}");
    assert_eq!(
        s.curl(&format!("https://api.sidekey.test:{}/echo", tls.port), &[])
            .status,
        200
    );
    let next = lines.next().unwrap().unwrap();
    let next: serde_json::Value = serde_json::from_str(&next).unwrap();
    assert_eq!(
        next["url"],
        format!("https://api.sidekey.test:{}/echo", tls.port)
    );
    let _ = child.kill();
    let _ = child.wait();

    // Retention is bounded: with 3 s, old records go.
    wait_until(
        "old audit records are pruned",
        Duration::from_secs(15),
        || {
            s.home
                .ctl(&["audit", "--json"])
                .success()
                .stdout
                .trim()
                .is_empty()
        },
    );

    // Nothing secret anywhere.
    for (path, bytes) in read_tree(&s.home.data_dir()) {
        assert!(
            !contains_bytes(&bytes, b"sk-audit-INJECTED0001"),
            "secret in {}",
            path.display()
        );
        assert!(
            !contains_bytes(&bytes, b"QUERYSECRET"),
            "query value in {}",
            path.display()
        );
    }
    let logs = s.home.all_logs();
    assert!(!logs.contains("sk-audit-INJECTED0001") && !logs.contains("QUERYSECRET"));
    assert!(!logs.contains(&s.key));
}

#[test]
fn a_request_that_cannot_be_audited_is_refused_and_never_sent() {
    let disk = SmallDisk::mount();
    let data_arg = format!("--data-dir={}", disk.path().join("data").display());
    let s = Setup::with_args(&[&data_arg]);
    s.cred(
        "key",
        "api-key",
        &["api.sidekey.test"],
        "sk-full-INJECTED0002",
    );
    let up = Upstream::http();
    let url = format!("http://api.sidekey.test:{}/echo", up.port);
    assert_eq!(s.curl(&url, &[]).status, 200);

    disk.fill();
    // The audit file's last page may still have room for a few records.
    let mut sent = 1;
    let refused = loop {
        let r = s.curl(&url, &[]);
        if r.status != 200 || sent > 200 {
            break r;
        }
        sent += 1;
    };
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["error"], "audit_unavailable");
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("free space")
    );
    assert_eq!(
        up.count(),
        sent,
        "an unaudited request reached the upstream"
    );

    disk.free();
    assert_eq!(s.curl(&url, &[]).status, 200);
    assert_eq!(up.count(), sent + 1);
    let audited = s
        .home
        .ctl(&["audit", "--json", "--limit", "1000"])
        .success()
        .stdout;
    assert_eq!(audited.lines().count(), sent + 1, "{audited}");
    assert!(!s.daemon.log().contains("panicked"));
    assert!(!s.home.all_logs().contains("sk-full-INJECTED0002"));
}

#[test]
fn each_install_gets_its_own_ca_with_the_key_stored_encrypted() {
    let a = Setup::new();
    let b = Home::new();
    let _bd = b.start();
    let ca_a = std::fs::read_to_string(a.home.ctl(&["ca"]).success().stdout.trim()).unwrap();
    let ca_b = std::fs::read_to_string(b.ctl(&["ca"]).success().stdout.trim()).unwrap();
    assert!(ca_a.contains("BEGIN CERTIFICATE"));
    assert_ne!(ca_a, ca_b, "two installs must not share a CA");
    let bundle = std::fs::read_to_string(&a.bundle).unwrap();
    assert!(bundle.contains(&ca_a), "the bundle holds the sidekey CA");
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 1,
        "the bundle holds the system roots too"
    );
    for (path, bytes) in read_tree(&a.home.data_dir()) {
        assert!(
            !contains_bytes(&bytes, b"PRIVATE KEY"),
            "a private key is in plaintext in {}",
            path.display()
        );
    }
}
