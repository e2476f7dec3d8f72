//! `upstream_proxy`: sidekeyd behind a "corporate" proxy. The test proxy
//! alone resolves the `corp*.sidekey.test` names, so an answer from them
//! proves the request went through it.

use sidekey_tests::agent::{Setup, curl};
use sidekey_tests::http::Conn;
use sidekey_tests::upstream::{ChainProxy, Tunnel, Upstream};
use sidekey_tests::{Home, contains_bytes, read_tree};

const PROXY_USER: &str = "corp-user";
const PROXY_PASSWORD: &str = "Pr0xyPa55-not-for-logs";
const SECRET: &str = "sk-proj-CHAINEDsecret000001";

fn behind(proxy: &ChainProxy, user_info: &str) -> Setup {
    let url = format!("http://{user_info}127.0.0.1:{}", proxy.port);
    Setup::with_args_and_env(&[], &[("SIDEKEY_UPSTREAM_PROXY", &url)])
}

fn basic(user_info: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_info)
    )
}

#[test]
fn every_path_reaches_its_host_through_the_upstream_proxy() {
    let user_info = format!("{PROXY_USER}:{PROXY_PASSWORD}");
    let chain = ChainProxy::start(Some(&user_info), &[]);
    let s = behind(&chain, &format!("{user_info}@"));
    let http = Upstream::http();
    let tls = Upstream::https(&s.certs);
    let pxr = s.cred("corp", "api-key", &["corp.sidekey.test"], SECRET);
    let tunnel = |port: u16| Tunnel {
        target: format!("corp.sidekey.test:{port}"),
        proxy_authorization: Some(basic(&user_info)),
    };
    let injected = |seen: &sidekey_tests::upstream::Seen| {
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {SECRET}").as_str())
        );
        assert!(seen.header("proxy-authorization").is_none());
    };

    let r = s.curl(&format!("http://corp.sidekey.test:{}/echo", http.port), &[]);
    assert_eq!(r.status, 200, "plain http: {}{}", r.body, r.stderr);
    injected(&http.last());
    assert_eq!(chain.tunnels().last(), Some(&tunnel(http.port)));

    for version in ["--http1.1", "--http2"] {
        let r = s.curl(
            &format!("https://corp.sidekey.test:{}/echo", tls.port),
            &[version, "-H", "Authorization: Bearer placeholder"],
        );
        assert_eq!(r.status, 200, "https {version}: {}{}", r.body, r.stderr);
        let seen = tls.last();
        injected(&seen);
        assert_eq!(seen.sni.as_deref(), Some("corp.sidekey.test"));
    }

    let r = curl(&[
        "-H",
        &format!("Authorization: Bearer {pxr}"),
        "-H",
        &format!("X-Target-Url: https://corp.sidekey.test:{}/echo", tls.port),
        &format!("http://{}/v1/proxy", s.proxy()),
    ]);
    assert_eq!(r.status, 200, "/v1/proxy: {}", r.body);
    injected(&tls.last());

    // A host no credential is bound to is tunnelled through it untouched:
    // curl sees the upstream's own certificate.
    let r = s.curl(
        &format!("https://corp-other.sidekey.test:{}/echo", tls.port),
        &["--cacert", s.certs.ca.to_str().unwrap()],
    );
    assert_eq!(r.status, 200, "tunnel: {}{}", r.body, r.stderr);
    assert_eq!(tls.last().header("authorization"), None);
    assert!(
        chain
            .tunnels()
            .iter()
            .any(|t| t.target == format!("corp-other.sidekey.test:{}", tls.port))
    );

    let tunnels = chain.tunnels();
    assert!(tunnels.len() >= 5, "{tunnels:?}");
    assert!(
        tunnels
            .iter()
            .all(|t| t.proxy_authorization == Some(basic(&user_info))),
        "every CONNECT carries the proxy's credentials: {tunnels:?}"
    );

    // The proxy's password is a secret like any other.
    let leaked = |bytes: &[u8]| contains_bytes(bytes, PROXY_PASSWORD.as_bytes());
    assert!(!leaked(s.home.all_logs().as_bytes()));
    let audit = s.home.ctl(&["audit", "--json"]).success().stdout;
    assert!(!leaked(audit.as_bytes()));
    for (path, bytes) in read_tree(&s.home.data_dir()) {
        assert!(!leaked(&bytes), "{}", path.display());
    }
    let status = s.home.ctl(&["status", "--json"]).success();
    assert!(!leaked(status.stdout.as_bytes()));
    assert_eq!(
        status.json()["upstream_proxy"],
        format!("http://127.0.0.1:{}", chain.port)
    );
}

/// The daemon's answer to a CONNECT from the agent.
fn connect(s: &Setup, target: &str) -> sidekey_tests::http::Response {
    let raw = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Bearer {}\r\n\r\n",
        s.key
    );
    Conn::open(s.proxy()).send_raw(raw.as_bytes()).unwrap()
}

#[test]
fn an_upstream_proxy_that_opens_no_tunnel_is_a_502_that_says_why() {
    let chain = ChainProxy::start(Some("corp-user:right"), &["corp-other.sidekey.test"]);
    let tls = Upstream::https(&sidekey_tests::upstream::TestCerts::new());
    let refused = |body: &serde_json::Value, what: &str| {
        assert_eq!(body["error"], "upstream_unreachable", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(what), "{message}");
    };

    // Wrong credentials for the proxy: the agent hears what to fix, on
    // /v1/proxy, plain http, intercepted and tunnelled CONNECT alike.
    let s = behind(&chain, "corp-user:wrong@");
    s.cred("corp", "api-key", &["corp.sidekey.test"], SECRET);
    let r = curl(&[
        "-H",
        &format!("Authorization: Bearer {}", s.key),
        "-H",
        &format!("X-Target-Url: https://corp.sidekey.test:{}/echo", tls.port),
        &format!("http://{}/v1/proxy", s.proxy()),
    ]);
    assert_eq!(r.status, 502, "{}", r.body);
    refused(
        &r.json(),
        "did not accept the credentials in upstream_proxy (407)",
    );
    assert!(!r.body.contains("wrong"), "{}", r.body);
    let r = s.curl(&format!("http://corp.sidekey.test:{}/echo", tls.port), &[]);
    assert_eq!(r.status, 502, "{}", r.body);
    refused(
        &r.json(),
        "did not accept the credentials in upstream_proxy (407)",
    );
    for host in ["corp.sidekey.test", "corp-other.sidekey.test"] {
        let r = connect(&s, &format!("{host}:{}", tls.port));
        assert_eq!(r.status, 502, "{}", r.body);
        refused(
            &r.json(),
            "did not accept the credentials in upstream_proxy (407)",
        );
    }
    assert_eq!(tls.count(), 0);

    // No credentials at all: the agent hears how to give them.
    let s = behind(&chain, "");
    let r = connect(&s, &format!("corp-other.sidekey.test:{}", tls.port));
    assert_eq!(r.status, 502, "{}", r.body);
    refused(
        &r.json(),
        "asks for credentials (407); put them in upstream_proxy",
    );

    // The proxy forbids a host.
    let s = behind(&chain, "corp-user:right@");
    let r = connect(&s, &format!("corp-other.sidekey.test:{}", tls.port));
    assert_eq!(r.status, 502, "{}", r.body);
    refused(
        &r.json(),
        &format!(
            "refused CONNECT corp-other.sidekey.test:{} with 403",
            tls.port
        ),
    );

    // The proxy cannot reach the host.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = connect(&s, &format!("corp.sidekey.test:{closed}"));
    assert_eq!(r.status, 502, "{}", r.body);
    refused(
        &r.json(),
        &format!("could not reach corp.sidekey.test:{closed} (502)"),
    );
}

#[test]
fn loopback_and_upstream_no_proxy_hosts_are_reached_directly() {
    let chain = ChainProxy::start(None, &[]);
    let url = format!("http://127.0.0.1:{}", chain.port);
    let s = Setup::with_args_and_env(
        &[],
        &[
            ("SIDEKEY_UPSTREAM_PROXY", &url),
            ("SIDEKEY_UPSTREAM_NO_PROXY", ".sidekey.test"),
        ],
    );
    let http = Upstream::http();
    s.cred(
        "local",
        "api-key",
        &["127.0.0.1", "api.sidekey.test", "corp.sidekey.test"],
        SECRET,
    );
    for host in ["127.0.0.1", "api.sidekey.test"] {
        let r = s.curl(&format!("http://{host}:{}/echo", http.port), &[]);
        assert_eq!(r.status, 200, "{host}: {}{}", r.body, r.stderr);
        assert_eq!(
            http.last().header("authorization"),
            Some(format!("Bearer {SECRET}").as_str())
        );
    }
    // corp.sidekey.test is under the listed name too, so it is dialed
    // directly, and only the proxy could have resolved it.
    let r = s.curl(&format!("http://corp.sidekey.test:{}/echo", http.port), &[]);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(chain.tunnels(), []);

    let s = Setup::with_args_and_env(
        &[],
        &[
            ("SIDEKEY_UPSTREAM_PROXY", &url),
            ("SIDEKEY_UPSTREAM_NO_PROXY", "api.sidekey.test"),
        ],
    );
    s.cred("corp", "api-key", &["corp.sidekey.test"], SECRET);
    let r = s.curl(&format!("http://corp.sidekey.test:{}/echo", http.port), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(chain.tunnels().len(), 1);
}

#[test]
fn a_missing_upstream_proxy_is_named_in_the_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{closed}");
    let s = Setup::with_args_and_env(&[], &[("SIDEKEY_UPSTREAM_PROXY", &url)]);
    s.cred("corp", "api-key", &["corp.sidekey.test"], SECRET);
    let r = s.curl("http://corp.sidekey.test/echo", &[]);
    assert_eq!(r.status, 502, "{}", r.body);
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&format!("upstream proxy 127.0.0.1:{closed}")),
        "{message}"
    );
}

#[test]
fn upstream_proxy_settings_that_cannot_work_stop_the_daemon_at_start() {
    let home = Home::new();
    for (url, expect) in [
        ("https://proxy.corp:3128", "must be an http:// URL"),
        ("http://proxy.corp:3128/path", "no host:port"),
        ("http://proxy.corp:nope", "is not a port"),
        ("http://127.0.0.1:8787", "would loop"),
    ] {
        let err = match home.start_with(
            &["--proxy-listen", "127.0.0.1:8787"],
            &[("SIDEKEY_UPSTREAM_PROXY", url)],
        ) {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => e,
        };
        assert!(err.contains(expect), "{url}: {err}");
    }

    let err = match home.start_with(&[], &[("SIDEKEY_UPSTREAM_NO_PROXY", "corp.example,a b")]) {
        Ok(_) => panic!("a bad upstream_no_proxy entry was accepted"),
        Err(e) => e,
    };
    assert!(err.contains("upstream_no_proxy entry 'a b'"), "{err}");

    // --print-config shows where the proxy is, never its password.
    let out = home
        .command(&sidekey_tests::sidekeyd_bin())
        .arg("--print-config")
        .env(
            "SIDEKEY_UPSTREAM_PROXY",
            "http://me:hunter2secret@proxy.corp:3128",
        )
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("upstream_proxy = \"http://me:***@proxy.corp:3128\""),
        "{printed}"
    );
    assert!(!printed.contains("hunter2secret"));
}
