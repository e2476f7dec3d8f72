//! Local upstream "APIs" for proxy tests: `upstream/recorder.py` on
//! 127.0.0.1, plain or TLS, recording every request it receives. Test
//! certificates come from rcgen; test host names come from /etc/hosts.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Names the tests use for upstreams, so clients that skip the proxy for
/// `localhost` and `127.x` still use it.
pub const TEST_HOSTS: &[&str] = &[
    "api.sidekey.test",
    "other.sidekey.test",
    "elsewhere.sidekey.test",
];

/// Names only the test's upstream proxy resolves: never in /etc/hosts, so
/// a request to one arrives only if it went through that proxy.
pub const BEHIND_PROXY_HOSTS: &[&str] = &["corp.sidekey.test", "corp-other.sidekey.test"];

/// Adds the test names to /etc/hosts once (the tests run as root).
pub fn ensure_test_hosts() {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let missing: Vec<&str> = TEST_HOSTS
        .iter()
        .copied()
        .filter(|h| !hosts.split_whitespace().any(|w| w == *h))
        .collect();
    if missing.is_empty() {
        return;
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open("/etc/hosts")
        .expect("/etc/hosts is writable (run the tests as root)");
    writeln!(file, "127.0.0.1 {}", missing.join(" ")).unwrap();
}

/// A CA and a server certificate for the test host names and 127.0.0.1.
pub struct TestCerts {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCerts {
    pub fn new() -> TestCerts {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sidekey test upstream CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut names: Vec<String> = TEST_HOSTS
            .iter()
            .chain(BEHIND_PROXY_HOSTS)
            .map(|h| h.to_string())
            .collect();
        names.push("127.0.0.1".into());
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let paths = TestCerts {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            _dir: dir,
        };
        std::fs::write(&paths.ca, ca_cert.pem()).unwrap();
        std::fs::write(&paths.cert, cert.pem()).unwrap();
        std::fs::write(&paths.key, key.serialize_pem()).unwrap();
        paths
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        TestCerts::new()
    }
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: Option<String>,
    pub sni: Option<String>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A running recorder.
pub struct Upstream {
    script: Script,
    pub port: u16,
}

impl Upstream {
    pub fn http() -> Upstream {
        Upstream::start(None, 0)
    }

    /// A plain upstream on a fixed port (for CONNECT to port 80), run under
    /// `wrap` (such as [`crate::Daemon::netns_enter`], so that the port is
    /// free whatever the host listens on).
    pub fn http_on_in(wrap: &[String], port: u16) -> Upstream {
        Upstream::start_in(wrap, None, port)
    }

    pub fn https(certs: &TestCerts) -> Upstream {
        Upstream::start(Some(certs), 0)
    }

    fn start(certs: Option<&TestCerts>, port: u16) -> Upstream {
        Upstream::start_in(&[], certs, port)
    }

    fn start_in(wrap: &[String], certs: Option<&TestCerts>, port: u16) -> Upstream {
        ensure_test_hosts();
        let script = Script::start_in(wrap, "recorder.py", |cmd| {
            cmd.arg("--port").arg(port.to_string());
            if let Some(certs) = certs {
                cmd.arg("--cert")
                    .arg(&certs.cert)
                    .arg("--key")
                    .arg(&certs.key);
            }
        });
        Upstream {
            port: script.port,
            script,
        }
    }

    /// Every request so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.script
            .records()
            .into_iter()
            .map(|v| Seen {
                method: v["method"].as_str().unwrap_or_default().to_string(),
                path: v["path"].as_str().unwrap_or_default().to_string(),
                headers: v["headers"]
                    .as_array()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (
                                    h[0].as_str().unwrap_or_default().to_string(),
                                    h[1].as_str().unwrap_or_default().to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                body_len: v["body_len"].as_u64().unwrap_or(0),
                body_sha256: v["body_sha256"].as_str().map(str::to_string),
                sni: v["sni"].as_str().map(str::to_string),
            })
            .collect()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received a request")
    }

    pub fn count(&self) -> usize {
        self.seen().len()
    }
}

/// One CONNECT as the upstream proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub target: String,
    pub proxy_authorization: Option<String>,
}

/// `upstream/chain_proxy.py`: a "corporate" proxy that resolves
/// [`BEHIND_PROXY_HOSTS`] to 127.0.0.1 and records each CONNECT.
pub struct ChainProxy {
    script: Script,
    pub port: u16,
}

impl ChainProxy {
    /// `auth` is the `user:password` it demands; `refuse` the hosts it forbids.
    pub fn start(auth: Option<&str>, refuse: &[&str]) -> ChainProxy {
        let script = Script::start("chain_proxy.py", |cmd| {
            if let Some(auth) = auth {
                cmd.args(["--auth", auth]);
            }
            for host in refuse {
                cmd.args(["--refuse", host]);
            }
            for host in BEHIND_PROXY_HOSTS {
                cmd.arg("--map").arg(format!("{host}=127.0.0.1"));
            }
        });
        ChainProxy {
            port: script.port,
            script,
        }
    }

    /// Every CONNECT so far, oldest first.
    pub fn tunnels(&self) -> Vec<Tunnel> {
        self.script
            .records()
            .into_iter()
            .map(|v| Tunnel {
                target: v["target"].as_str().unwrap_or_default().to_string(),
                proxy_authorization: v["proxy_authorization"].as_str().map(str::to_string),
            })
            .collect()
    }
}

/// A test server script under `upstream/`, killed on drop. It records a
/// JSON line per event in its `--log`.
struct Script {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Script {
    /// Starts `name` and waits for its `READY <port>` line.
    fn start(name: &str, args: impl FnOnce(&mut Command)) -> Script {
        Script::start_in(&[], name, args)
    }

    /// [`Script::start`] under `wrap`, a command that ends by exec'ing the
    /// rest of its argv (empty: none).
    fn start_in(wrap: &[String], name: &str, args: impl FnOnce(&mut Command)) -> Script {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("records.jsonl");
        std::fs::write(&log, "").unwrap();
        let mut cmd = match wrap.split_first() {
            Some((program, wrap_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(wrap_args).arg("python3");
                cmd
            }
            None => Command::new("python3"),
        };
        cmd.arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("upstream")
                .join(name),
        )
        .arg("--log")
        .arg(&log);
        args(&mut cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .expect("the script printed READY <port>");
        Script {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn records(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
