//! The scrub against the real daemon and real clients: an upstream that
//! echoes its request never hands the agent the injected secret (heads and
//! bodies, every engine), server-sent events still stream, and an upload
//! that carries a credential's secret toward a host it is not bound to is
//! cut before the whole secret leaves.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sidekey_tests::agent::{Curl, Setup};
use sidekey_tests::upstream::Upstream;

const HOST: &str = "api.sidekey.test";
const OTHER: &str = "other.sidekey.test";

/// Every way a request reaches the upstream: (what, scheme, curl flags).
/// `Expect: 100-continue` sends the request the hyper way; `--http2` over
/// intercepted TLS is hyper's h2.
const PATHS: &[(&str, &str, &[&str])] = &[
    ("http, forwarder", "http", &[]),
    (
        "http, hyper",
        "http",
        &["-H", "Expect: 100-continue", "--data-binary", "body"],
    ),
    ("https, forwarder", "https", &["--http1.1"]),
    (
        "https, hyper",
        "https",
        &[
            "--http1.1",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "body",
        ],
    ),
    ("https, h2", "https", &["--http2"]),
];

/// The texts the agent must never see, and that some `*` mask must show.
fn assert_scrubbed(what: &str, r: &Curl, hidden: &[String]) {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    let all = format!("{}\n{}", r.headers, r.body);
    for secret in hidden {
        assert!(
            !all.contains(secret.as_str()),
            "{what}: the secret reached the agent:\n{all}"
        );
    }
    assert!(
        all.contains("********"),
        "{what}: nothing was masked:\n{all}"
    );
    assert!(
        r.header("x-echo-host").is_some(),
        "{what}: the echo came back: {all}"
    );
}

/// One credential of `kind` injected on every path, against `/mirror`,
/// which echoes the request into its response headers and, a few bytes a
/// chunk, its body: a secret straddles chunks there.
fn echo_is_scrubbed(kind: &str, secret: &str, hidden: &[String]) {
    let s = Setup::new();
    let http = Upstream::http();
    let tls = Upstream::https(&s.certs);
    s.cred("cred", kind, &[HOST], secret);
    for (what, scheme, flags) in PATHS {
        let port = if *scheme == "https" {
            tls.port
        } else {
            http.port
        };
        for chunk in [3, 64] {
            let url = format!("{scheme}://{HOST}:{port}/mirror?chunk={chunk}");
            let r = s.curl(&url, flags);
            assert_scrubbed(&format!("{kind}, {what}, chunk {chunk}"), &r, hidden);
        }
    }
    // The upstream did get the secret: the scrub is on the way back only.
    let seen = http.last();
    assert!(
        seen.header("authorization").is_some() || seen.path.contains(secret),
        "{seen:?}"
    );
    assert_eq!(seen.header("accept-encoding"), Some("identity"));
}

#[test]
fn an_echoed_api_key_never_reaches_the_agent() {
    let key = "sk-proj-SCRUBapikeyVALUE0001";
    echo_is_scrubbed("api-key", key, &[key.to_string()]);
}

#[test]
fn an_echoed_basic_auth_password_never_reaches_the_agent_in_either_form() {
    let secret = "alice:SCRUBpasswordVALUE0002";
    let hidden = [
        "SCRUBpasswordVALUE0002".to_string(),
        STANDARD.encode(secret),
    ];
    echo_is_scrubbed("basic-auth", secret, &hidden);
}

#[test]
fn an_echoed_query_key_never_reaches_the_agent() {
    echo_is_scrubbed(
        "query-param",
        "api_key=SCRUBqueryVALUE0003",
        &["SCRUBqueryVALUE0003".to_string()],
    );
}

/// Each `data:` line from curl -N, with when it arrived.
fn sse_lines(s: &Setup, url: &str, extra: &[&str]) -> Vec<(String, Instant)> {
    let proxy = s.proxy_url();
    let mut child = Command::new("curl")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args([
            "-sS",
            "-N",
            "--max-time",
            "20",
            "--proxy",
            &proxy,
            "--cacert",
        ])
        .arg(&s.bundle)
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((line, Instant::now()));
        }
    });
    let mut lines = Vec::new();
    while let Ok((line, at)) = rx.recv_timeout(Duration::from_secs(20)) {
        if line.starts_with("data:") {
            lines.push((line, at));
        }
    }
    let _ = child.wait();
    lines
}

#[test]
fn server_sent_events_that_echo_the_secret_are_masked_and_still_arrive_one_by_one() {
    let key = "sk-proj-SCRUBsseVALUE00000004";
    let s = Setup::new();
    let http = Upstream::http();
    let tls = Upstream::https(&s.certs);
    s.cred("cred", "api-key", &[HOST], key);
    for (scheme, port, extra) in [
        ("http", http.port, &[][..]),
        ("https", tls.port, &["--http2"][..]),
        ("https", tls.port, &["--http1.1"][..]),
    ] {
        let url = format!("{scheme}://{HOST}:{port}/sse-echo?gap_ms=400");
        let events = sse_lines(&s, &url, extra);
        assert_eq!(events.len(), 2, "{scheme} {extra:?}: {events:?}");
        for (line, _) in &events {
            assert!(!line.contains(key), "{scheme}: {line}");
            assert!(line.contains("Bearer ****"), "{scheme}: {line}");
        }
        let gap = events[1].1 - events[0].1;
        assert!(
            gap >= Duration::from_millis(250),
            "{scheme} {extra:?}: the events arrived {gap:?} apart, not one by one"
        );
    }
}

/// The secret the upload tests carry, with bytes that percent-encoding changes.
const UPLOAD_KEY: &str = "sk/upload+SCRUB=key0005";

fn percent(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// 200 KiB of filler, the form, then more filler: the secret arrives well
/// after the first bytes went upstream. Returns the body and where the
/// secret's form ends.
fn upload_body(form: &str) -> (Vec<u8>, usize) {
    let mut body = vec![b'x'; 200 * 1024];
    body.extend_from_slice(form.as_bytes());
    let end = body.len();
    body.extend_from_slice(&[b'y'; 4096]);
    (body, end)
}

fn post(s: &Setup, url: &str, body: &[u8], extra: &[&str]) -> Curl {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let data = format!("@{}", file.display());
    let mut args = vec!["--data-binary", data.as_str()];
    args.extend_from_slice(extra);
    s.curl(url, &args)
}

#[test]
fn an_upload_carrying_a_secret_toward_an_unbound_host_is_cut_before_the_secret_leaves() {
    let s = Setup::new();
    let http = Upstream::http();
    s.cred("upload-key", "api-key", &[HOST], UPLOAD_KEY);
    let wrapped = format!("token={UPLOAD_KEY}&more");
    let forms = [
        ("exact", UPLOAD_KEY.to_string()),
        ("percent-encoded", percent(UPLOAD_KEY)),
        ("base64", STANDARD.encode(&wrapped)),
        (
            "upper-case hex",
            UPLOAD_KEY.bytes().map(|b| format!("{b:02X}")).collect(),
        ),
    ];
    let engines: [(&str, &[&str]); 3] = [
        ("forwarder", &[]),
        ("forwarder, chunked", &["-H", "Transfer-Encoding: chunked"]),
        ("hyper", &["-H", "Expect: 100-continue"]),
    ];
    for (form_name, form) in &forms {
        let (body, end) = upload_body(form);
        for (engine, extra) in engines {
            let what = format!("{form_name}, {engine}");
            let before = http.count();
            let url = format!("http://{OTHER}:{}/upload", http.port);
            let r = post(&s, &url, &body, extra);
            assert_eq!(r.status, 403, "{what}: {r:?}");
            assert!(
                r.body.contains("upload-key") && r.body.contains("permission_denied"),
                "{what}: {}",
                r.body
            );
            for seen in http.seen().iter().skip(before) {
                assert!(
                    (seen.body_len as usize) < end,
                    "{what}: the upstream received {} bytes, the whole secret",
                    seen.body_len
                );
            }
            // Toward its own host the same body goes through.
            let url = format!("http://{HOST}:{}/upload", http.port);
            let r = post(&s, &url, &body, extra);
            assert_eq!(r.status, 200, "{what}, bound host: {r:?}");
            assert_eq!(r.json()["len"], body.len(), "{what}, bound host");
        }
    }
}

/// The audit records of the requests to `path`, oldest first.
fn records_of(s: &Setup, path: &str) -> Vec<serde_json::Value> {
    let out = s
        .home
        .ctl(&["audit", "--json", "--limit", "1000"])
        .success();
    (out.stdout.lines())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["url"].as_str().is_some_and(|u| u.ends_with(path)))
        .collect()
}

#[test]
fn each_scrub_is_in_the_audit_record_and_clean_answers_are_not_marked() {
    let s = Setup::new();
    let http = Upstream::http();
    let key = "sk-proj-AUDITEDscrubVALUE01";
    s.cred("cred", "api-key", &[HOST], key);
    for (what, _, flags) in PATHS.iter().filter(|(_, scheme, _)| *scheme == "http") {
        let r = s.curl(&format!("http://{HOST}:{}/mirror", http.port), flags);
        assert_scrubbed(what, &r, &[key.to_string()]);
        let r = s.curl(&format!("http://{HOST}:{}/status/200", http.port), flags);
        assert_eq!(r.status, 200, "{what}: {r:?}");
    }
    let mirrored = records_of(&s, "/mirror");
    let plain = records_of(&s, "/status/200");
    assert_eq!(mirrored.len(), 2, "{mirrored:?}");
    assert_eq!(plain.len(), 2, "{plain:?}");
    assert!(
        mirrored.iter().all(|r| r["scrubbed"] == true),
        "{mirrored:?}"
    );
    assert!(
        plain.iter().all(|r| r.get("scrubbed").is_none()),
        "{plain:?}"
    );
    let audit = s
        .home
        .ctl(&["audit", "--json", "--limit", "1000"])
        .success();
    assert!(!audit.stdout.contains(key), "the audit holds the secret");
}

#[test]
fn a_compressed_answer_that_could_hide_the_secret_is_refused_on_every_engine() {
    let s = Setup::new();
    let http = Upstream::http();
    let tls = Upstream::https(&s.certs);
    let key = "sk-proj-GZIPPEDechoVALUE001";
    s.cred("cred", "api-key", &[HOST], key);
    for (what, scheme, flags) in PATHS {
        let port = if *scheme == "https" {
            tls.port
        } else {
            http.port
        };
        let url = format!("{scheme}://{HOST}:{port}/gzip");
        let r = s.curl(&url, flags);
        assert_eq!(r.status, 502, "{what}: {r:?}");
        assert!(
            r.body.contains("upstream_encoding") && r.body.contains("identity"),
            "{what}: {}",
            r.body
        );
    }
    // Without a credential there is nothing to scrub, and gzip passes.
    let r = s.curl(
        &format!("http://{OTHER}:{}/gzip", http.port),
        &["--compressed"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("headers"), "{r:?}");
}

#[test]
fn websocket_frames_from_the_upstream_are_scrubbed_even_across_fragments() {
    let s = Setup::new();
    let tls = Upstream::https(&s.certs);
    let key = "sk-proj-WEBSOCKETechoVALUE1";
    s.cred("cred", "api-key", &[HOST], key);
    let result = sidekey_tests::websocket::client(&s, HOST, tls.port, "probe");
    assert!(
        result["status"]
            .as_str()
            .unwrap_or_default()
            .starts_with("HTTP/1.1 101"),
        "{result}"
    );
    let frames: Vec<&str> = (result["frames"].as_array().unwrap().iter())
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(frames.len(), 3, "{result}");
    let whole = frames[0];
    let fragmented = format!("{}{}", frames[1], frames[2]);
    for said in [whole, fragmented.as_str()] {
        assert!(!said.contains(key), "the secret reached the agent: {said}");
        assert_eq!(said, format!("auth=Bearer {}", "*".repeat(key.len())));
    }
    assert_eq!(
        result["fins"],
        serde_json::json!([true, false, true]),
        "{result}"
    );
    // The upstream did get it, on the handshake, with no compression offered.
    let seen = tls.last();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
    assert_eq!(seen.header("sec-websocket-extensions"), None);
}

#[test]
fn framing_fields_in_trailers_never_reach_the_upstream() {
    let s = Setup::new();
    let http = Upstream::http();
    s.cred("cred", "api-key", &[HOST], "sk-proj-TRAILERSvalue00001");
    let proxy_auth = format!("Basic {}", STANDARD.encode(format!("agent:{}", s.key)));
    let send = |trailer: &str| {
        let raw = format!(
            "POST http://{HOST}:{}/upload HTTP/1.1\r\nHost: {HOST}:{}\r\nProxy-Authorization: {proxy_auth}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n{trailer}\r\n\r\n",
            http.port, http.port
        );
        let mut conn = sidekey_tests::http::Conn::open(s.proxy());
        conn.send_raw(raw.as_bytes())
    };
    for trailer in [
        "Content-Length: 2",
        "Transfer-Encoding: chunked",
        "Host: elsewhere",
    ] {
        let before = http.count();
        let answer = send(trailer);
        assert!(
            answer.as_ref().is_ok_and(|r| r.status == 400) || answer.is_err(),
            "{trailer}: {answer:?}"
        );
        assert_eq!(
            http.count(),
            before,
            "{trailer}: the upstream took the request"
        );
    }
    let r = send("Server-Timing: db;dur=5").expect("an answer");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["len"], 5);
}

#[test]
fn a_secret_in_the_head_toward_an_unbound_host_is_refused_in_any_form_or_split() {
    let s = Setup::new();
    let http = Upstream::http();
    s.cred("upload-key", "api-key", &[HOST], UPLOAD_KEY);
    let half = UPLOAD_KEY.len() / 2;
    let (first, second) = UPLOAD_KEY.split_at(half);
    let b64 = STANDARD.encode(format!("k={UPLOAD_KEY}"));
    let lower_hex: String = UPLOAD_KEY.bytes().map(|b| format!("{b:02x}")).collect();
    let header_a = format!("X-Note: {}", percent(UPLOAD_KEY));
    let header_b = format!("X-Part-1: {first}");
    let header_c = format!("X-Part-2: {second}");
    let cases: [(&str, String, Vec<&str>); 4] = [
        ("percent-encoded header", "/h".into(), vec!["-H", &header_a]),
        ("base64 query", format!("/q?d={b64}"), vec![]),
        ("hex query", format!("/q?d={lower_hex}"), vec![]),
        (
            "split over two headers",
            "/s".into(),
            vec!["-H", &header_b, "-H", &header_c],
        ),
    ];
    for (what, path, flags) in &cases {
        for engine in [
            &[][..],
            &["-H", "Expect: 100-continue", "--data-binary", "x"][..],
        ] {
            let before = http.count();
            let mut args = flags.clone();
            args.extend_from_slice(engine);
            let r = s.curl(&format!("http://{OTHER}:{}{path}", http.port), &args);
            assert_eq!(r.status, 403, "{what} {engine:?}: {r:?}");
            assert!(r.body.contains("upload-key"), "{what}: {}", r.body);
            assert!(
                !r.body.contains(UPLOAD_KEY),
                "{what}: the refusal holds the secret"
            );
            assert_eq!(http.count(), before, "{what}: the upstream got the request");
        }
    }
}
