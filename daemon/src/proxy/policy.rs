//! The one per-request policy. Every way into the proxy (the forwarder, the
//! hyper path, CONNECT and `/v1/proxy`) asks it the same question, with the
//! authenticated connection, the target and the request head, and does what
//! it answers. It does no I/O and reads only what it is given, so a rule is
//! written here once and tested in tables without a daemon.

use std::sync::Arc;

use crate::audit::Opening;
use crate::config::{Egress, Intercept};
use crate::error::{ApiError, ErrorCode};
use crate::hosts::Place;
use crate::proxy::target::{NormalPath, Target, forbidden_name};
use crate::registry::{LiveCred, Registry};

/// How the request came in.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// An absolute-form request, or one inside an intercepted tunnel: a
    /// granted credential bound to the target, if any. A `pxr_` grant token
    /// opens its own credential and no other.
    Forward { token_cred: Option<&'a str> },
    /// `/v1/proxy`: the credential a `pxr_` token is for, or the one named
    /// in `X-Credential-Name`, or else the granted one bound to the target.
    AgentKeys {
        token_cred: Option<&'a str>,
        named: Option<&'a str>,
    },
}

/// The question every entry path asks.
pub struct Ask<'a, T> {
    pub method: &'a str,
    pub conn_id: &'a str,
    pub conn_name: &'a str,
    pub target: &'a Target,
    pub entry: Entry<'a>,
    /// Every text of the head a secret could travel in: the request target
    /// and the header values.
    pub texts: T,
}

/// The settings the policy follows; SIGHUP may change them.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub egress: Egress,
    pub intercept: Intercept,
}

impl Settings {
    pub fn of(live: &crate::live::Live) -> Settings {
        Settings {
            egress: live.egress(),
            intercept: live.intercept(),
        }
    }
}

/// What to do with a request the policy allows: send it on, with this
/// credential injected in its slot (or none).
pub struct Decision {
    pub cred: Option<Arc<LiveCred>>,
}

/// What to do with a `CONNECT` the policy allows.
#[derive(Debug, PartialEq, Eq)]
pub enum Connect {
    /// Terminate the agent's TLS with a minted leaf and decide each request
    /// inside with [`decide`].
    Intercept,
    /// Pass the bytes through untouched.
    Untouched,
}

/// What the policy may know of credentials and grants.
pub trait Grants {
    /// The credential `name`, if it is granted to the connection.
    fn granted(&self, conn_id: &str, name: &str) -> Option<Arc<LiveCred>>;
    /// The most specific granted credential bound to this place and path.
    fn bound(&self, conn_id: &str, place: &Place, path: &str) -> Option<Arc<LiveCred>>;
    /// Whether some granted credential is bound to `host:port`, either scheme.
    fn host_is_bound(&self, conn_id: &str, host: &str, port: u16) -> bool;
    /// A credential whose secret is in `texts` though it is not bound to `place`.
    fn leaked<'t>(&self, texts: impl Iterator<Item = &'t [u8]>, place: &Place) -> Option<String>;
}

impl Grants for Registry {
    fn granted(&self, conn_id: &str, name: &str) -> Option<Arc<LiveCred>> {
        self.granted_cred(conn_id, name)
    }
    fn bound(&self, conn_id: &str, place: &Place, path: &str) -> Option<Arc<LiveCred>> {
        self.cred_for(conn_id, place, path)
    }
    fn host_is_bound(&self, conn_id: &str, host: &str, port: u16) -> bool {
        Registry::host_is_bound(self, conn_id, host, port)
    }
    fn leaked<'t>(&self, texts: impl Iterator<Item = &'t [u8]>, place: &Place) -> Option<String> {
        self.leaked_secret(texts, place)
    }
}

/// RFC 9110's methods that carry a request to an API, and PATCH (RFC 5789),
/// which APIs use as much. Not TRACE: its answer echoes the request, the
/// injected secret with it. Not CONNECT: tunnels are decided on their own.
const FORWARDED_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];

/// Decides one request, or says which refusal to answer.
pub fn decide<'t, G, T>(
    grants: &G,
    settings: Settings,
    ask: Ask<'_, T>,
) -> Result<Decision, ApiError>
where
    G: Grants,
    T: Iterator<Item = &'t [u8]> + Clone,
{
    let Ask {
        method,
        conn_id,
        conn_name,
        target,
        entry,
        texts,
    } = ask;
    if !FORWARDED_METHODS.contains(&method) {
        return Err(ApiError::new(
            ErrorCode::MethodNotAllowed,
            http::StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "sidekey does not forward {method} requests; use one of {}.",
                FORWARDED_METHODS.join(", ")
            ),
        ));
    }
    let host = check_target(target)?;
    let place = target.place();
    let path = NormalPath::of(&target.path_and_query);
    let cred = match entry {
        Entry::AgentKeys { token_cred, named } => Some(agentkeys_cred(
            grants, conn_id, conn_name, target, &path.path, token_cred, named,
        )?),
        Entry::Forward { token_cred } => {
            let cred = match token_cred {
                Some(name) => grants
                    .granted(conn_id, name)
                    .filter(|cred| cred.binds(&place, &path.path)),
                None => grants.bound(conn_id, &place, &path.path),
            };
            if cred.is_none() && settings.egress == Egress::Deny {
                return Err(egress_denied(host));
            }
            cred
        }
    };
    if path.ambiguous && cred.as_ref().is_some_and(|c| c.has_path_prefix()) {
        return Err(ApiError::bad_request(format!(
            "The path {} holds %2f, %5c, '\\' or ';', which servers read differently, and the credential '{}' is bound to a path prefix; send the path without them.",
            target.path(),
            cred.as_ref().map_or("", |c| c.name.as_str())
        )));
    }
    // A secret's value may only ever travel to its own hosts.
    if let Some(leaked) = grants.leaked(texts, &place) {
        return Err(ApiError::permission_denied(format!(
            "This request carries the secret of credential '{leaked}' toward {host}, a host it is not bound to; it was not sent."
        )));
    }
    Ok(Decision { cred })
}

/// Decides a `CONNECT` to `target`, or says which refusal to answer.
pub fn decide_connect(
    grants: &impl Grants,
    settings: Settings,
    conn_id: &str,
    token_cred: Option<&str>,
    target: &Target,
) -> Result<Connect, ApiError> {
    let host = check_target(target)?;
    let bound = match token_cred {
        Some(name) => grants
            .granted(conn_id, name)
            .is_some_and(|cred| cred.binds_host_port(host, target.port)),
        None => grants.host_is_bound(conn_id, host, target.port),
    };
    if settings.intercept == Intercept::All || bound {
        return Ok(Connect::Intercept);
    }
    match settings.egress {
        Egress::Tunnel => Ok(Connect::Untouched),
        Egress::Deny => Err(egress_denied(host)),
    }
}

/// The host of a target that may be reached at all.
fn check_target(target: &Target) -> Result<&str, ApiError> {
    let host = target.host.as_str();
    if forbidden_name(host) {
        return Err(ApiError::permission_denied(format!(
            "{host} is a link-local or cloud-metadata address; sidekey never sends requests there."
        )));
    }
    Ok(host)
}

fn egress_denied(host: &str) -> ApiError {
    ApiError::permission_denied(format!(
        "egress is \"deny\" and no credential granted to this connection is bound to {host}; grant one with: sidekeyctl grant"
    ))
}

/// `/v1/proxy`'s choice: always exactly one credential, bound to the target.
fn agentkeys_cred(
    grants: &impl Grants,
    conn_id: &str,
    conn_name: &str,
    target: &Target,
    path: &str,
    token_cred: Option<&str>,
    named: Option<&str>,
) -> Result<Arc<LiveCred>, ApiError> {
    let cred = match (token_cred, named) {
        (Some(granted), Some(named)) if granted != named => {
            return Err(ApiError::permission_denied(format!(
                "This pxr_ token is for the credential '{granted}', not '{named}'; drop X-Credential-Name or use that credential's token."
            )));
        }
        (Some(name), _) | (None, Some(name)) => grants.granted(conn_id, name).ok_or_else(|| {
            ApiError::permission_denied(format!(
                "The credential '{name}' is not granted to this connection; grant it with: sidekeyctl grant {conn_name} {name}"
            ))
        })?,
        (None, None) => grants.bound(conn_id, &target.place(), path).ok_or_else(|| {
            ApiError::permission_denied(format!(
                "No credential granted to this connection is bound to {}; bind one with --host, or name it in X-Credential-Name.",
                target.host
            ))
        })?,
    };
    if !cred.binds(&target.place(), path) {
        return Err(ApiError::permission_denied(format!(
            "The credential '{}' is not bound to {}{path}; bind it with --host (and --path-prefix), or pick another credential.",
            cred.name, target.host,
        )));
    }
    Ok(cred)
}

/// The audit record's opening for a request the policy let through: built
/// here once, for every entry path.
pub fn opening<'a>(
    conn: (&'a str, &'a str),
    cred: Option<&'a LiveCred>,
    method: &'a str,
    target: &'a Target,
    authority: &'a str,
) -> Opening<'a> {
    Opening {
        conn_id: conn.0,
        conn: conn.1,
        cred: cred.map(|c| c.name.as_str()),
        method,
        scheme: target.scheme,
        authority,
        path: &target.path_and_query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Secret;
    use crate::store::CredRecord;
    use sidekey_api::CredType;

    /// Credentials granted to connections, as the registry would hold them.
    #[derive(Default)]
    struct Fixture(Vec<(&'static str, Arc<LiveCred>)>);

    impl Fixture {
        fn grant(
            mut self,
            conn: &'static str,
            name: &str,
            hosts: &[&str],
            prefix: Option<&str>,
            secret: &str,
        ) -> Fixture {
            let record = CredRecord {
                name: name.into(),
                cred_type: CredType::ApiKey,
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                path_prefix: prefix.map(str::to_string),
                created_at: 0,
                updated_at: 0,
                secret_sealed: String::new(),
            };
            self.0.push((
                conn,
                Arc::new(LiveCred::new(&record, Secret::new(secret.into()))),
            ));
            self
        }

        fn creds(&self, conn: &str) -> impl Iterator<Item = &Arc<LiveCred>> {
            self.0
                .iter()
                .filter(move |(c, _)| *c == conn)
                .map(|(_, cred)| cred)
        }
    }

    impl Grants for Fixture {
        fn granted(&self, conn_id: &str, name: &str) -> Option<Arc<LiveCred>> {
            self.creds(conn_id).find(|c| c.name == name).cloned()
        }
        fn bound(&self, conn_id: &str, place: &Place, path: &str) -> Option<Arc<LiveCred>> {
            self.creds(conn_id)
                .filter_map(|c| Some((c.specificity(place, path)?, c)))
                .max_by_key(|(specificity, _)| *specificity)
                .map(|(_, c)| c.clone())
        }
        fn host_is_bound(&self, conn_id: &str, host: &str, port: u16) -> bool {
            self.creds(conn_id).any(|c| c.binds_host_port(host, port))
        }
        fn leaked<'t>(
            &self,
            texts: impl Iterator<Item = &'t [u8]>,
            place: &Place,
        ) -> Option<String> {
            let joined: Vec<u8> = texts.flatten().copied().collect();
            self.0
                .iter()
                .map(|(_, cred)| cred)
                .find(|cred| !cred.bound_at(place) && cred.matcher.found_in(&joined))
                .map(|cred| cred.name.clone())
        }
    }

    const FORWARD: Entry = Entry::Forward { token_cred: None };
    const TUNNEL: Settings = Settings {
        egress: Egress::Tunnel,
        intercept: Intercept::Bound,
    };
    const DENY: Settings = Settings {
        egress: Egress::Deny,
        intercept: Intercept::Bound,
    };
    const ALL: Settings = Settings {
        egress: Egress::Tunnel,
        intercept: Intercept::All,
    };

    fn fixture() -> Fixture {
        Fixture::default()
            .grant(
                "agent",
                "resend",
                &["api.resend.com"],
                None,
                "re_SECRET_resend_0001",
            )
            .grant(
                "agent",
                "gh",
                &["api.github.com"],
                Some("/repos"),
                "ghp_SECRET_github_0001",
            )
            .grant(
                "other",
                "stripe",
                &["api.stripe.com"],
                None,
                "sk_SECRET_stripe_0001",
            )
    }

    /// The credential chosen for a request, or the refusal's code.
    fn ask(
        settings: Settings,
        entry: Entry,
        url: &str,
        texts: &[&str],
    ) -> Result<Option<String>, ErrorCode> {
        let target = Target::from_uri(&url.parse().unwrap()).unwrap();
        let ask = Ask {
            method: "GET",
            conn_id: "agent",
            conn_name: "agent",
            target: &target,
            entry,
            texts: texts.iter().map(|t| t.as_bytes()),
        };
        decide(&fixture(), settings, ask)
            .map(|d| d.cred.map(|c| c.name.clone()))
            .map_err(|e| e.code)
    }

    #[test]
    fn forward_requests_get_the_granted_credential_bound_to_their_target() {
        let forward = |settings, url: &str| ask(settings, FORWARD, url, &[]);
        type Chosen = Result<Option<&'static str>, ErrorCode>;
        let cases: &[(Settings, &str, Chosen)] = &[
            (TUNNEL, "https://api.resend.com/emails", Ok(Some("resend"))),
            (TUNNEL, "https://API.Resend.com./emails", Ok(Some("resend"))),
            (TUNNEL, "https://api.github.com/repos/x", Ok(Some("gh"))),
            // Outside the path prefix: no credential, and tunnelled bare.
            (TUNNEL, "https://api.github.com/user", Ok(None)),
            (TUNNEL, "https://example.com/", Ok(None)),
            // Another connection's credential is never chosen.
            (TUNNEL, "https://api.stripe.com/v1", Ok(None)),
            (
                DENY,
                "https://api.stripe.com/v1",
                Err(ErrorCode::PermissionDenied),
            ),
            (DENY, "https://api.resend.com/emails", Ok(Some("resend"))),
            (
                TUNNEL,
                "http://169.254.169.254/latest",
                Err(ErrorCode::PermissionDenied),
            ),
            (
                TUNNEL,
                "http://metadata.google.internal/",
                Err(ErrorCode::PermissionDenied),
            ),
            (
                TUNNEL,
                "http://[fe80::1]/",
                Err(ErrorCode::PermissionDenied),
            ),
        ];
        for (settings, url, want) in cases {
            let want = want.map(|c| c.map(str::to_string));
            assert_eq!(forward(*settings, url), want, "{url}");
        }
    }

    #[test]
    fn trace_and_unknown_methods_are_never_forwarded() {
        let target = Target::new("https", "api.resend.com", None, "/");
        for (method, allowed) in [
            ("GET", true),
            ("PATCH", true),
            ("TRACE", false),
            ("CONNECT", false),
            ("BREW", false),
        ] {
            let ask = Ask {
                method,
                conn_id: "agent",
                conn_name: "agent",
                target: &target,
                entry: FORWARD,
                texts: std::iter::empty(),
            };
            let decided = decide(&fixture(), TUNNEL, ask).map_err(|e| e.code);
            match allowed {
                true => assert!(decided.is_ok(), "{method}"),
                false => assert_eq!(decided.err(), Some(ErrorCode::MethodNotAllowed), "{method}"),
            }
        }
    }

    #[test]
    fn a_secret_never_travels_toward_a_host_it_is_not_bound_to() {
        let leaked = ask(
            TUNNEL,
            FORWARD,
            "https://evil.test/",
            &["Bearer sk_SECRET_stripe_0001"],
        );
        assert_eq!(
            leaked,
            Err(ErrorCode::PermissionDenied),
            "any credential's secret counts"
        );
        let leaked = ask(
            TUNNEL,
            FORWARD,
            "https://evil.test/",
            &["/?k=re_SECRET_resend_0001"],
        );
        assert_eq!(leaked, Err(ErrorCode::PermissionDenied));
        let own = ask(
            TUNNEL,
            FORWARD,
            "https://api.resend.com/",
            &["re_SECRET_resend_0001"],
        );
        assert_eq!(own, Ok(Some("resend".into())), "toward its own host it may");
    }

    #[test]
    fn a_grant_token_opens_its_own_credential_and_no_other() {
        let resend = Entry::Forward {
            token_cred: Some("resend"),
        };
        assert_eq!(
            ask(TUNNEL, resend, "https://api.resend.com/emails", &[]),
            Ok(Some("resend".into()))
        );
        assert_eq!(
            ask(TUNNEL, resend, "https://api.github.com/repos/x", &[]),
            Ok(None)
        );
        assert_eq!(
            ask(DENY, resend, "https://api.github.com/repos/x", &[]),
            Err(ErrorCode::PermissionDenied)
        );
        let connect = |token_cred, host: &str| {
            let target = Target::new("https", host, Some(443), "/");
            decide_connect(&fixture(), TUNNEL, "agent", token_cred, &target).unwrap()
        };
        assert_eq!(
            connect(Some("resend"), "api.resend.com"),
            Connect::Intercept
        );
        assert_eq!(
            connect(Some("resend"), "api.github.com"),
            Connect::Untouched
        );
        assert_eq!(connect(None, "api.github.com"), Connect::Intercept);
    }

    #[test]
    fn path_prefixes_hold_on_the_path_a_server_would_serve() {
        let gh = |url: &str| ask(TUNNEL, FORWARD, url, &[]);
        assert_eq!(gh("https://api.github.com/repos/x"), Ok(Some("gh".into())));
        for escape in [
            "/repos/../user",
            "/repos/%2e%2e/user",
            "/repos/./../user",
            "/repos/%2E./user",
        ] {
            assert_eq!(
                gh(&format!("https://api.github.com{escape}")),
                Ok(None),
                "{escape}"
            );
        }
        for ambiguous in ["/repos/..%2fuser", "/repos/..;/user", "/repos/%5cuser"] {
            assert_eq!(
                gh(&format!("https://api.github.com{ambiguous}")),
                Err(ErrorCode::BadRequest),
                "{ambiguous}"
            );
        }
        // No prefix, nothing to escape: ambiguous paths are the upstream's business.
        assert_eq!(gh("https://api.resend.com/a;b"), Ok(Some("resend".into())));
    }

    #[test]
    fn agentkeys_requests_carry_exactly_one_bound_credential() {
        let agentkeys = |token_cred, named, url: &str| {
            ask(TUNNEL, Entry::AgentKeys { token_cred, named }, url, &[])
        };
        let resend = "https://api.resend.com/emails";
        assert_eq!(agentkeys(None, None, resend), Ok(Some("resend".into())));
        assert_eq!(
            agentkeys(None, Some("resend"), resend),
            Ok(Some("resend".into()))
        );
        assert_eq!(
            agentkeys(Some("resend"), None, resend),
            Ok(Some("resend".into()))
        );
        for refused in [
            agentkeys(Some("resend"), Some("gh"), resend),
            agentkeys(None, Some("stripe"), "https://api.stripe.com/"),
            agentkeys(None, Some("resend"), "https://api.github.com/repos"),
            agentkeys(None, Some("gh"), "https://api.github.com/user"),
            agentkeys(None, None, "https://example.com/"),
        ] {
            assert_eq!(refused, Err(ErrorCode::PermissionDenied));
        }
    }

    #[test]
    fn connects_intercept_bound_hosts_and_tunnel_or_refuse_the_rest() {
        let connect = |settings, host: &str| {
            let target = Target::new("https", host, Some(443), "/");
            decide_connect(&fixture(), settings, "agent", None, &target).map_err(|e| e.code)
        };
        assert_eq!(connect(TUNNEL, "api.resend.com"), Ok(Connect::Intercept));
        assert_eq!(connect(TUNNEL, "example.com"), Ok(Connect::Untouched));
        assert_eq!(connect(ALL, "example.com"), Ok(Connect::Intercept));
        assert_eq!(
            connect(DENY, "example.com"),
            Err(ErrorCode::PermissionDenied)
        );
        assert_eq!(connect(DENY, "api.resend.com"), Ok(Connect::Intercept));
        assert_eq!(connect(TUNNEL, "api.stripe.com"), Ok(Connect::Untouched));
        assert_eq!(
            connect(ALL, "169.254.169.254"),
            Err(ErrorCode::PermissionDenied)
        );
    }
}
