//! Real clients through the proxy: curl, git, Python's requests and httpx,
//! and Node's fetch on undici's ProxyAgent. Each talks to a recording
//! upstream on 127.0.0.1 (reached as api.sidekey.test), and the upstream's
//! record shows what left the proxy: the real secret where the agent sent a
//! placeholder, and nothing of the agent's own key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sidekey_tests::agent::{Setup, curl};
use sidekey_tests::deps::{node_dir, python, python_path};
use sidekey_tests::http::Conn;
use sidekey_tests::upstream::{Seen, Upstream};
use sidekey_tests::{sidekeyctl_bin, text};

const SECRET: &str = "sk-proj-REALsecretVALUE0123456789";
const HOST: &str = "api.sidekey.test";
/// How long any one client run may take before the test fails.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);

/// Every variable that names a CA bundle for some TLS stack.
const CA_VARIABLES: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "DENO_CERT",
    "PIP_CERT",
];

/// A daemon with one api-key credential bound to api.sidekey.test, granted
/// to agent-1; returns the setup and the credential's `pxr_` token.
fn setup() -> (Setup, String) {
    let setup = Setup::new();
    let token = setup.cred("openai", "api-key", &[HOST], SECRET);
    assert!(token.starts_with("pxr_"), "grant printed {token:?}");
    (setup, token)
}

/// `python3 <script>`, finding the pinned requests and httpx that the tests
/// install themselves (see `sidekey_tests::deps`) before any other copy.
fn python_command(script: &Path) -> Vec<String> {
    vec![
        "env".into(),
        format!("PYTHONPATH={}", python_path().display()),
        "PYTHONNOUSERSITE=1".into(),
        python().display().to_string(),
        script.display().to_string(),
    ]
}

/// Runs `cmd` with no stdin, failing the test if it outlives `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null());
    sidekey_tests::output_within(cmd, limit)
}

/// `sidekeyctl run --conn agent-1 -- <command>`, with `parent` as extra
/// variables in sidekeyctl's own environment.
fn sidekeyctl_run(setup: &Setup, parent: &[(&str, &str)], command: &[&str]) -> Output {
    let mut cmd = setup.home.command(&sidekeyctl_bin());
    cmd.args(["run", "--conn", "agent-1", "--"]).args(command);
    for (name, value) in parent {
        cmd.env(name, value);
    }
    output_within(cmd, CLIENT_LIMIT)
}

/// Writes a client script into a temp dir that lives as long as the guard.
fn script(name: &str, body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

/// The client printed `{"status": ..., "body": ...}` as its last line.
fn client_result(out: &Output) -> (u64, String) {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "client failed ({}): {stdout}{}",
        out.status,
        text(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("client printed no JSON ({e}): {stdout}"));
    (
        v["status"].as_u64().unwrap_or(0),
        v["body"].as_str().unwrap_or_default().to_string(),
    )
}

/// What every injected request must look like at the upstream.
fn assert_injected(seen: &Seen, path: &str, agent_key: &str) {
    assert_eq!(seen.path, path, "{seen:?}");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str()),
        "the real key replaces the placeholder: {seen:?}"
    );
    assert_eq!(
        seen.headers_named("authorization").len(),
        1,
        "exactly one Authorization header: {seen:?}"
    );
    assert!(
        seen.header("proxy-authorization").is_none(),
        "Proxy-Authorization never reaches the upstream: {seen:?}"
    );
    assert!(
        seen.headers.iter().all(|(_, v)| !v.contains(agent_key)),
        "the agent's own key never reaches the upstream: {seen:?}"
    );
}

/// Runs an SDK-like client under `sidekeyctl run` against an upstream
/// reached over `scheme`, and checks what the upstream received.
fn placeholder_key_is_replaced_for(client: &[&str], scheme: &str) {
    let (setup, _) = setup();
    let upstream = match scheme {
        "https" => Upstream::https(&setup.certs),
        _ => Upstream::http(),
    };
    let url = format!("{scheme}://{HOST}:{}/v1/chat/completions", upstream.port);
    let mut command = client.to_vec();
    command.push(&url);
    let out = sidekeyctl_run(&setup, &[], &command);
    let (status, body) = client_result(&out);
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.count(), 1, "one request upstream");
    let seen = upstream.last();
    assert_eq!(seen.method, "POST");
    assert_injected(&seen, "/v1/chat/completions", &setup.key);
    assert!(seen.body_len > 0, "the request body arrived: {seen:?}");
    assert!(
        body.contains(SECRET) || body.contains("chat/completions"),
        "the upstream's answer came back: {body}"
    );
    if scheme == "https" {
        // Only an intercepting proxy can put the secret inside TLS.
        assert_eq!(
            seen.sni.as_deref(),
            Some(HOST),
            "the proxy connects upstream with the real name as SNI"
        );
    }
}

const REQUESTS_CLIENT: &str = r#"
import json, sys
import requests

# Like an OpenAI SDK: a placeholder key, the real one lives in sidekey.
session = requests.Session()
session.headers["Authorization"] = "Bearer placeholder"
r = session.post(sys.argv[1], json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
print(json.dumps({"status": r.status_code, "body": r.text}))
"#;

const HTTPX_CLIENT: &str = r#"
import json, sys
import httpx

with httpx.Client(headers={"Authorization": "Bearer placeholder"}, timeout=30) as client:
    r = client.post(sys.argv[1], json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
print(json.dumps({"status": r.status_code, "body": r.text}))
"#;

fn requests_client() -> (tempfile::TempDir, Vec<String>) {
    let (dir, path) = script("client.py", REQUESTS_CLIENT);
    (dir, python_command(&path))
}

fn httpx_client() -> (tempfile::TempDir, Vec<String>) {
    let (dir, path) = script("client.py", HTTPX_CLIENT);
    (dir, python_command(&path))
}

fn node_client() -> Vec<String> {
    vec![
        "node".into(),
        node_dir().join("proxy_fetch.mjs").display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn requests_with_placeholder_key_gets_real_key_injected_over_intercepted_https() {
    let (_dir, client) = requests_client();
    placeholder_key_is_replaced_for(&strs(&client), "https");
}

#[test]
fn requests_with_placeholder_key_gets_real_key_injected_over_http() {
    let (_dir, client) = requests_client();
    placeholder_key_is_replaced_for(&strs(&client), "http");
}

#[test]
fn httpx_with_placeholder_key_gets_real_key_injected_over_intercepted_https() {
    let (_dir, client) = httpx_client();
    placeholder_key_is_replaced_for(&strs(&client), "https");
}

#[test]
fn httpx_with_placeholder_key_gets_real_key_injected_over_http() {
    let (_dir, client) = httpx_client();
    placeholder_key_is_replaced_for(&strs(&client), "http");
}

#[test]
fn node_fetch_on_undici_proxy_agent_gets_real_key_injected_over_intercepted_https() {
    placeholder_key_is_replaced_for(&strs(&node_client()), "https");
}

/// undici tunnels every request with CONNECT, also for `http://` targets,
/// here on a port other than 80: the tunnel carries plain HTTP, not TLS.
#[test]
fn node_fetch_on_undici_proxy_agent_gets_real_key_injected_over_http() {
    placeholder_key_is_replaced_for(&strs(&node_client()), "http");
}

/// `sidekeyctl audit --json`, oldest first.
fn audit_urls(setup: &Setup) -> Vec<String> {
    let out = setup.home.ctl(&["audit", "--json"]).success();
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["url"].as_str().unwrap_or_default().to_string())
        .collect()
}

const AGENTKEYS_CLIENTS: &str = r#"
import json, sys
import httpx, requests

# HTTP_PROXY is set and NO_PROXY is not: both libraries send this request to
# the proxy in absolute form, http://127.0.0.1:<port>/v1/proxy.
endpoint, token, target = sys.argv[1:4]
headers = {"Authorization": "Bearer " + token, "X-Target-Url": target}
out = []
r = requests.post(endpoint, headers=headers, json={"via": "requests"}, timeout=30)
out.append({"client": "requests", "status": r.status_code, "body": r.text})
with httpx.Client(timeout=30) as client:
    r = client.post(endpoint, headers=headers, json={"via": "httpx"})
out.append({"client": "httpx", "status": r.status_code, "body": r.text})
print(json.dumps(out))
"#;

#[test]
fn v1_proxy_sent_through_the_forward_proxy_in_absolute_form_is_served_not_forwarded() {
    let (setup, token) = setup();
    let upstream = Upstream::https(&setup.certs);
    let target = format!("https://{HOST}:{}/v1/models", upstream.port);
    let endpoint = format!("http://127.0.0.1:{}/v1/proxy", setup.proxy().port());

    // The raw form first: exactly what the clients below put on the wire.
    let mut conn = Conn::open(setup.proxy());
    let raw = format!(
        "GET {endpoint} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nProxy-Authorization: Basic {}\r\nAuthorization: Bearer {token}\r\nX-Target-Url: {target}\r\n\r\n",
        setup.proxy().port(),
        base64(format!("agent:{}", setup.key).as_bytes()),
    );
    let response = conn.send_raw(raw.as_bytes()).expect("a response");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_injected(&upstream.last(), "/v1/models", &setup.key);

    let (_dir, path) = script("agentkeys.py", AGENTKEYS_CLIENTS);
    let mut cmd = Command::new(python());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PYTHONPATH", python_path())
        .env("PYTHONNOUSERSITE", "1")
        .env("HTTP_PROXY", setup.proxy_url())
        .env("http_proxy", setup.proxy_url())
        .arg(&path)
        .args([&endpoint, &token, &target]);
    let out = output_within(cmd, CLIENT_LIMIT);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    for result in results.as_array().unwrap() {
        assert_eq!(result["status"], 200, "{result}");
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3, "one upstream request per call: {seen:?}");
    for s in &seen {
        assert_injected(s, "/v1/models", &setup.key);
        for stripped in ["x-target-url", "x-credential-name", "x-target-method"] {
            assert!(
                s.header(stripped).is_none(),
                "{stripped} is stripped: {s:?}"
            );
        }
    }
    let methods: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(methods, ["GET", "POST", "POST"]);
    // Served by the daemon itself: one audit record per call, each for the
    // real target; a loop through its own port would add records for 127.0.0.1.
    let urls = audit_urls(&setup);
    assert_eq!(urls.len(), 3, "{urls:?}");
    for url in &urls {
        assert_eq!(url, &format!("https://{HOST}:{}/v1/models", upstream.port));
    }
}

/// Base64 for a `Proxy-Authorization: Basic` value.
fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn missing_proxy_credentials_get_407_with_basic_challenge_on_http_and_connect() {
    let (setup, _) = setup();
    let upstream = Upstream::http();
    let port = upstream.port;
    let requests = [
        format!("GET http://{HOST}:{port}/v1/models HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n"),
        format!("CONNECT {HOST}:{port} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n"),
    ];
    for raw in requests {
        let response = Conn::open(setup.proxy())
            .send_raw(raw.as_bytes())
            .expect("a response");
        assert_eq!(response.status, 407, "{raw}: {}", response.body);
        assert_eq!(
            response.header("proxy-authenticate"),
            Some("Basic realm=\"sidekey\""),
            "{raw}: {:?}",
            response.headers
        );
    }
    assert_eq!(upstream.count(), 0, "nothing went upstream without a key");
}

#[test]
fn curl_proxy_anyauth_retries_after_407_and_succeeds() {
    let (setup, _) = setup();
    let tls = Upstream::https(&setup.certs);
    let plain = Upstream::http();
    let proxy = format!("http://{}", setup.proxy());
    let user = format!("agent:{}", setup.key);
    for (upstream, scheme) in [(&tls, "https"), (&plain, "http")] {
        let url = format!("{scheme}://{HOST}:{}/v1/models", upstream.port);
        let out = curl(&[
            "-v",
            "--proxy",
            &proxy,
            "--proxy-user",
            &user,
            "--proxy-anyauth",
            "--cacert",
            setup.bundle.to_str().unwrap(),
            "-H",
            "Authorization: Bearer placeholder",
            &url,
        ]);
        assert_eq!(out.status, 200, "{scheme}: {}{}", out.body, out.stderr);
        assert!(
            out.stderr.contains(" 407"),
            "{scheme}: curl first went without credentials and got a 407: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("Proxy-Authorization: Basic"),
            "{scheme}: then retried with Basic: {}",
            out.stderr
        );
        assert_eq!(upstream.count(), 1, "{scheme}");
        assert_injected(&upstream.last(), "/v1/models", &setup.key);
    }
}

#[test]
fn git_retries_with_proxy_credentials_after_407() {
    let (setup, _) = setup();
    let tls = Upstream::https(&setup.certs);
    let plain = Upstream::http();
    let git_home = tempfile::tempdir().unwrap();
    for (upstream, scheme) in [(&tls, "https"), (&plain, "http")] {
        let url = format!("{scheme}://{HOST}:{}/team/repo.git", upstream.port);
        let mut cmd = Command::new("git");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", git_home.path())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TRACE_CURL", "1")
            .env("GIT_TRACE_CURL_NO_DATA", "1")
            .env("GIT_SSL_CAINFO", &setup.bundle)
            .env("HTTP_PROXY", setup.proxy_url())
            .env("HTTPS_PROXY", setup.proxy_url())
            .env("http_proxy", setup.proxy_url())
            .env("https_proxy", setup.proxy_url())
            .args(["ls-remote", &url]);
        let out = output_within(cmd, CLIENT_LIMIT);
        let stderr = text(&out.stderr);
        // The recorder is no git server, so ls-remote itself fails; what
        // matters is that git's request reached it with the credential.
        assert!(
            stderr.contains("HTTP/1.1 407"),
            "{scheme}: git sends no proxy credentials until challenged: {stderr}"
        );
        // git then falls back to the dumb protocol; every request it made
        // carries the credential.
        let seen = upstream.seen();
        assert!(!seen.is_empty(), "{scheme}: {stderr}");
        assert!(
            seen[0].path.starts_with("/team/repo.git/info/refs"),
            "{scheme}: {:?}",
            seen[0]
        );
        for s in &seen {
            assert_eq!(s.method, "GET");
            assert_injected(s, &s.path, &setup.key);
        }
    }
}

#[test]
fn request_without_user_agent_or_optional_headers_is_forwarded() {
    let (setup, _) = setup();
    let upstream = Upstream::http();
    let port = upstream.port;
    let raw = format!(
        "GET http://{HOST}:{port}/v1/models HTTP/1.1\r\nHost: {HOST}:{port}\r\nProxy-Authorization: Basic {}\r\n\r\n",
        base64(format!("agent:{}", setup.key).as_bytes())
    );
    let response = Conn::open(setup.proxy())
        .send_raw(raw.as_bytes())
        .expect("a response");
    assert_eq!(response.status, 200, "{}", response.body);
    let seen = upstream.last();
    assert_injected(&seen, "/v1/models", &setup.key);
    assert!(
        seen.header("user-agent").is_none(),
        "the proxy adds no User-Agent: {seen:?}"
    );
    let mut names: Vec<String> = seen
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    names.sort();
    // Accept-Encoding: identity keeps the answer readable for the scrub.
    assert_eq!(
        names,
        ["accept-encoding", "authorization", "host"].map(String::from),
        "only Host, the injected credential and the ask for an identity answer: {seen:?}"
    );
    assert_eq!(seen.header("accept-encoding"), Some("identity"), "{seen:?}");
}

/// Stale values a developer's shell may carry, each of which would break
/// an agent's TLS or send its traffic around the proxy.
fn stale_parent_env() -> Vec<(&'static str, &'static str)> {
    let mut env: Vec<(&str, &str)> = CA_VARIABLES
        .iter()
        .map(|name| (*name, "/nonexistent/stale-ca.pem"))
        .collect();
    env.extend([
        ("HTTP_PROXY", "http://127.0.0.1:9"),
        ("HTTPS_PROXY", "http://127.0.0.1:9"),
        ("http_proxy", "http://127.0.0.1:9"),
        ("https_proxy", "http://127.0.0.1:9"),
        ("NO_PROXY", "*"),
        ("no_proxy", "*"),
        ("ALL_PROXY", "http://127.0.0.1:9"),
        ("all_proxy", "http://127.0.0.1:9"),
        ("SSL_CERT_DIR", "/nonexistent/stale-certs"),
        ("NODE_USE_ENV_PROXY", "0"),
    ]);
    env
}

/// The variables every agent environment must hold, with their values.
fn expected_agent_env(setup: &Setup) -> Vec<(&'static str, String)> {
    let bundle = setup.bundle.to_str().unwrap().to_string();
    let mut want: Vec<(&str, String)> = CA_VARIABLES
        .iter()
        .map(|name| (*name, bundle.clone()))
        .collect();
    // The proxy URL names the connection as its user, and carries its key.
    let proxy = format!("http://agent-1:{}@{}", setup.key, setup.proxy());
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        want.push((name, proxy.clone()));
    }
    want.push(("NODE_USE_ENV_PROXY", "1".into()));
    want
}

#[test]
fn run_overrides_every_stale_proxy_and_ca_variable() {
    let (setup, _) = setup();
    let out = sidekeyctl_run(&setup, &stale_parent_env(), &["env"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let env: BTreeMap<String, String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    for (name, value) in expected_agent_env(&setup) {
        assert_eq!(env.get(name), Some(&value), "{name} in {env:?}");
    }
    for name in ["NO_PROXY", "no_proxy"] {
        let value = env.get(name).unwrap_or_else(|| panic!("{name} is set"));
        assert!(
            value.split(',').any(|h| h == "127.0.0.1") && !value.contains('*'),
            "{name}={value}"
        );
    }
    for name in ["ALL_PROXY", "all_proxy", "SSL_CERT_DIR"] {
        assert!(!env.contains_key(name), "stale {name} is removed: {env:?}");
    }
}

#[test]
fn env_prints_every_export_and_unsets_stale_variables() {
    let (setup, _) = setup();
    let mut cmd = setup.home.command(&sidekeyctl_bin());
    cmd.args(["env", "agent-1"]);
    for (name, value) in stale_parent_env() {
        cmd.env(name, value);
    }
    let out = output_within(cmd, CLIENT_LIMIT);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut exports = BTreeMap::new();
    let mut unset = Vec::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("export ") {
            let (name, value) = rest.split_once('=').expect("export NAME=value");
            let value = value.trim_matches('\'').to_string();
            exports.insert(name.to_string(), value);
        } else if let Some(rest) = line.strip_prefix("unset ") {
            unset.extend(rest.split_whitespace().map(str::to_string));
        }
    }
    for (name, value) in expected_agent_env(&setup) {
        assert_eq!(exports.get(name), Some(&value), "{name} in:\n{stdout}");
    }
    for name in ["NO_PROXY", "no_proxy"] {
        assert!(exports.contains_key(name), "{name} in:\n{stdout}");
    }
    for name in ["ALL_PROXY", "all_proxy", "SSL_CERT_DIR"] {
        assert!(
            unset.iter().any(|u| u == name),
            "unset {name} in:\n{stdout}"
        );
    }
}

#[test]
fn eval_env_then_curl_reaches_intercepted_host_trusting_the_bundle() {
    let (setup, _) = setup();
    let upstream = Upstream::https(&setup.certs);

    // The bundle: system roots plus the sidekey CA, so tunnelled hosts work too.
    let bundle = std::fs::read_to_string(&setup.bundle).unwrap();
    let ca_path = setup.home.ctl(&["ca"]).success().stdout.trim().to_string();
    let ca_pem = std::fs::read_to_string(&ca_path).unwrap();
    assert!(ca_pem.contains("BEGIN CERTIFICATE"), "{ca_path}: {ca_pem}");
    assert!(
        bundle.contains(ca_pem.trim()),
        "the bundle holds `sidekeyctl ca`'s certificate"
    );
    let count = bundle.matches("-----BEGIN CERTIFICATE-----").count();
    assert!(
        count > 1,
        "the bundle holds system roots too ({count} certificate)"
    );

    let script = format!(
        r#"set -e
eval "$('{ctl}' env agent-1)"
curl -sS --max-time 30 -H 'Authorization: Bearer placeholder' -o /dev/null -w '%{{http_code}}' 'https://{HOST}:{port}/v1/models'
"#,
        ctl = sidekeyctl_bin().display(),
        port = upstream.port,
    );
    let mut cmd = setup.home.command(Path::new("bash"));
    cmd.args(["-c", &script]);
    for (name, value) in stale_parent_env() {
        cmd.env(name, value);
    }
    let out = output_within(cmd, CLIENT_LIMIT);
    assert_eq!(
        text(&out.stdout).trim(),
        "200",
        "curl after eval: {}",
        text(&out.stderr)
    );
    assert_eq!(upstream.count(), 1);
    let seen = upstream.last();
    assert_injected(&seen, "/v1/models", &setup.key);
    assert_eq!(seen.sni.as_deref(), Some(HOST));
}
