//! An agent's view of the proxy: a daemon with a credential granted to an
//! agent connection, and real clients (curl) pointed at it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use crate::upstream::TestCerts;
use crate::{Daemon, Home, netns};

/// A daemon that trusts the test CA upstream, and one agent connection.
pub struct Setup {
    /// Declared before `home`, so it drops first and can print its log
    /// before the home (log included) is deleted.
    pub daemon: Daemon,
    pub home: Home,
    pub certs: TestCerts,
    pub conn: String,
    pub key: String,
    /// The system roots plus the sidekey CA, as `sidekeyctl env` points to.
    pub bundle: PathBuf,
}

impl Setup {
    pub fn new() -> Setup {
        Setup::with_args(&[])
    }

    pub fn with_args(args: &[&str]) -> Setup {
        Setup::with_args_and_env(args, &[])
    }

    pub fn with_args_and_env(args: &[&str], envs: &[(&str, &str)]) -> Setup {
        Setup::wrapped(&[], args, envs)
    }

    /// A daemon in a network namespace of its own, with only a loopback:
    /// fixed ports there (80, say) are free whatever the host listens on.
    /// Run its upstreams and clients there with [`Daemon::netns_enter`].
    pub fn in_own_netns(args: &[&str]) -> Setup {
        let wrap = netns::new_netns_wrapper();
        let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
        Setup::wrapped(&wrap, args, &[])
    }

    fn wrapped(wrap: &[&str], args: &[&str], envs: &[(&str, &str)]) -> Setup {
        let home = Home::new();
        let certs = TestCerts::new();
        let ca_arg = format!("--upstream-ca-file={}", certs.ca.display());
        let mut all = vec![ca_arg.as_str()];
        all.extend_from_slice(args);
        let daemon = home
            .start_wrapped(wrap, &all, envs)
            .unwrap_or_else(|e| panic!("sidekeyd did not start: {e}"));
        let (conn, key) = home.create_conn("agent-1", "agent", &[]);
        let bundle = PathBuf::from(home.ctl(&["ca", "--bundle"]).success().stdout.trim());
        Setup {
            home,
            daemon,
            certs,
            conn,
            key,
            bundle,
        }
    }

    /// Adds a credential (secret on stdin) and grants it to the agent. The
    /// test upstreams listen on ephemeral ports over both schemes, so a bare
    /// host here binds `http://host:*` and `host:*` (https, any port);
    /// a binding with a scheme or a port is passed as it is.
    pub fn cred(&self, name: &str, kind: &str, hosts: &[&str], secret: &str) -> String {
        let bindings: Vec<String> = hosts
            .iter()
            .flat_map(|host| match host.contains("://") || host.contains(':') {
                true => vec![host.to_string()],
                false => vec![format!("http://{host}:*"), format!("{host}:*")],
            })
            .collect();
        let mut args = vec!["cred", "add", "--name", name, "--type", kind];
        for binding in &bindings {
            args.extend(["--host", binding.as_str()]);
        }
        self.home.ctl_stdin(&args, Some(secret)).success();
        self.home
            .ctl(&["grant", "agent-1", name])
            .success()
            .stdout
            .trim()
            .to_string()
    }

    pub fn proxy(&self) -> SocketAddr {
        self.daemon.proxy
    }

    /// `http://agent:<key>@127.0.0.1:<port>`, as HTTP_PROXY.
    pub fn proxy_url(&self) -> String {
        format!("http://agent:{}@{}", self.key, self.daemon.proxy)
    }

    /// curl through the proxy, trusting the bundle.
    pub fn curl(&self, url: &str, extra: &[&str]) -> Curl {
        self.curl_in(&[], url, extra)
    }

    /// [`Setup::curl`], run under `wrap` (such as [`Daemon::netns_enter`]).
    pub fn curl_in(&self, wrap: &[String], url: &str, extra: &[&str]) -> Curl {
        let proxy = self.proxy_url();
        let mut all = vec!["--proxy", &proxy, "--cacert", self.bundle.to_str().unwrap()];
        all.extend_from_slice(extra);
        all.push(url);
        curl_in(wrap, &all)
    }
}

impl Default for Setup {
    fn default() -> Self {
        Setup::new()
    }
}

/// A finished curl: status, response headers and body.
#[derive(Debug)]
pub struct Curl {
    pub status: u16,
    pub headers: String,
    pub body: String,
    pub stderr: String,
    pub exit: Option<i32>,
}

impl Curl {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().rev().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Runs curl with a clean environment (no inherited proxy or CA variables).
pub fn curl(args: &[&str]) -> Curl {
    curl_in(&[], args)
}

/// [`curl`] under `wrap`: a command that ends by exec'ing the rest of its
/// argv (empty: none).
pub fn curl_in(wrap: &[String], args: &[&str]) -> Curl {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let mut cmd = match wrap.split_first() {
        Some((program, wrap_args)) => {
            let mut cmd = Command::new(program);
            cmd.args(wrap_args).arg("curl");
            cmd
        }
        None => Command::new("curl"),
    };
    let out = cmd
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["-sS", "--max-time", "30", "-D"])
        .arg(&headers)
        .args(["-w", "%{http_code}", "-o"])
        .arg(dir.path().join("body"))
        .args(args)
        .output()
        .expect("curl runs");
    Curl {
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: std::fs::read_to_string(dir.path().join("body")).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit: out.status.code(),
    }
}
