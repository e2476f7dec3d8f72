//! The key lifecycle against the real daemon: formats, verification,
//! atomic rotation, grace, deletion, disable, expiry, rate limits, last_used.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sidekey_tests::http::{self, Conn};
use sidekey_tests::{Home, INVALID_KEY_BODY, wait_until};

fn is_key(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[test]
fn keys_have_their_formats_and_display_forms() {
    let home = Home::new();
    let _d = home.start();
    let (agent_id, agent_key) = home.create_conn("crm-prod-agent", "agent", &[]);
    let (_, sync_key) = home.create_conn("laptop-sync", "sync", &[]);
    assert!(is_key(&agent_key, "sk_live_"), "{agent_key}");
    assert!(is_key(&sync_key, "cli_"), "{sync_key}");

    let listed = home.ctl(&["conn", "ls", "--json"]).success().json();
    let agent = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == agent_id.as_str())
        .unwrap();
    assert_eq!(
        agent["key"],
        format!("sk_live_…{}", &agent_key[agent_key.len() - 4..])
    );
    assert_eq!(agent["state"], "active");

    let table = home.ctl(&["conn", "ls"]).success().stdout;
    assert!(
        table.contains("crm-prod-agent") && table.contains("laptop-sync"),
        "{table}"
    );
    assert!(
        table.contains(&format!("cli_…{}", &sync_key[sync_key.len() - 4..])),
        "{table}"
    );
    assert!(
        !table.contains(&agent_key) && !table.contains(&sync_key),
        "ls must not reveal keys"
    );

    // The owner can reveal the key; by name or id.
    assert_eq!(
        home.ctl(&["conn", "key", "crm-prod-agent"])
            .success()
            .stdout
            .trim(),
        agent_key
    );
    assert_eq!(
        home.ctl(&["conn", "key", &agent_id])
            .success()
            .stdout
            .trim(),
        agent_key
    );
}

#[test]
fn whoami_answers_good_keys_and_refuses_bad_ones_exactly() {
    let home = Home::new();
    let d = home.start();
    let (id, key) = home.create_conn("a1", "agent", &["--expires", "30d"]);
    let ok = http::whoami(d.proxy, &key);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let v = ok.json();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["name"], "a1");
    assert_eq!(v["kind"], "agent");
    assert!(v["expires_at"].as_u64().unwrap() > 0);

    // Proxy-Authorization Basic with the key as password works too.
    let basic = format!("Basic {}", base64(&format!("agent:{key}")));
    assert_eq!(
        http::get(d.proxy, "/v1/whoami", &[("Proxy-Authorization", &basic)]).status,
        200
    );

    let unknown = format!("sk_live_{}", "0".repeat(64));
    for bad in [
        unknown.as_str(),
        "sk_live_short",
        "garbage",
        &key[..key.len() - 1],
        &key.to_uppercase(),
    ] {
        let r = http::whoami(d.proxy, bad);
        assert_eq!(r.status, 401);
        assert_eq!(r.body, INVALID_KEY_BODY);
    }
    let missing = http::get(d.proxy, "/v1/whoami", &[]);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"], "token_missing");
}

#[test]
fn rotated_key_fails_on_next_request_under_concurrent_load() {
    const ROTATIONS: usize = 20;
    const WORKERS: usize = 10;
    let home = Home::new();
    let d = home.start();
    let (_, first) = home.create_conn("rot", "agent", &[]);
    // (generation, key) of the key in force; generation g's key is retired by rotation g.
    let current = Arc::new(Mutex::new((0usize, first.clone())));
    let keys = Arc::new(Mutex::new(vec![first]));
    // rotation g: (started, returned)
    let rotations: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let proxy = d.proxy;

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (current, keys, done) = (current.clone(), keys.clone(), done.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(proxy);
                let mut log = Vec::new();
                let mut i = 0usize;
                while !done.load(Ordering::Acquire) && i < 50_000 {
                    i += 1;
                    // Alternate between the newest key and an older one.
                    let (generation, key) = if (i + w).is_multiple_of(3) {
                        let keys = keys.lock().unwrap();
                        let g = (i * 7 + w) % keys.len();
                        (g, keys[g].clone())
                    } else {
                        current.lock().unwrap().clone()
                    };
                    let auth = format!("Bearer {key}");
                    let sent = Instant::now();
                    let r = conn.get("/v1/whoami", &[("Authorization", &auth)]);
                    log.push((generation, sent, Instant::now(), r.status, r.body));
                }
                log
            })
        })
        .collect();

    for g in 0..ROTATIONS {
        std::thread::sleep(Duration::from_millis(15));
        let started = Instant::now();
        let out = home.ctl(&["conn", "key", "rot", "--regenerate"]).success();
        let returned = Instant::now();
        let new_key = out.stdout.trim().to_string();
        assert!(new_key.starts_with("sk_live_"));
        rotations.lock().unwrap().push((started, returned));
        keys.lock().unwrap().push(new_key.clone());
        *current.lock().unwrap() = (g + 1, new_key);
    }
    std::thread::sleep(Duration::from_millis(15));
    done.store(true, Ordering::Release);

    let rotations = rotations.lock().unwrap().clone();
    let mut total = 0;
    let mut after_rotation = 0;
    for worker in workers {
        for (generation, sent, received, status, body) in worker.join().unwrap() {
            total += 1;
            // Key g is retired by rotation g (0-based), if that happened.
            match rotations.get(generation) {
                Some((started, returned)) if sent > *returned => {
                    after_rotation += 1;
                    assert_eq!(
                        status, 401,
                        "key {generation} accepted after its rotation returned"
                    );
                    assert_eq!(body, INVALID_KEY_BODY);
                }
                Some((started, _)) if received < *started => {
                    assert_eq!(
                        status, 200,
                        "key {generation} refused while current: {body}"
                    );
                }
                None => assert_eq!(status, 200, "the final key was refused: {body}"),
                _ => assert!(status == 200 || status == 401, "unexpected {status}"),
            }
        }
    }
    assert!(
        total >= 200 * ROTATIONS / 10,
        "only {total} requests were made"
    );
    assert!(after_rotation > 0, "no request used a rotated-out key");
}

#[test]
fn grace_keeps_the_previous_key_until_its_deadline() {
    let home = Home::new();
    let d = home.start();
    let (_, old) = home.create_conn("g", "agent", &[]);
    let out = home
        .ctl(&["conn", "key", "g", "--regenerate", "--grace", "2s"])
        .success();
    let new = out.stdout.trim().to_string();
    let rotated_at = Instant::now();
    assert!(
        out.stderr.contains("previous key works until"),
        "{}",
        out.stderr
    );
    assert_eq!(http::whoami(d.proxy, &new).status, 200);
    assert_eq!(
        http::whoami(d.proxy, &old).status,
        200,
        "old key refused inside its grace"
    );
    let info = home.ctl(&["conn", "info", "g", "--json"]).success().json();
    assert!(info["grace_until"].as_u64().is_some());
    wait_until("the grace period ends", Duration::from_secs(6), || {
        http::whoami(d.proxy, &old).status == 401
    });
    assert!(
        rotated_at.elapsed() >= Duration::from_millis(1900),
        "grace ended early"
    );
    assert_eq!(http::whoami(d.proxy, &old).body, INVALID_KEY_BODY);
    assert_eq!(http::whoami(d.proxy, &new).status, 200);
}

#[test]
fn deleted_key_never_works_again_across_restarts() {
    let home = Home::new();
    let d = home.start();
    let (id, key) = home.create_conn("doomed", "agent", &[]);
    let (_, keep) = home.create_conn("kept", "agent", &[]);
    let refused = home.ctl(&["conn", "rm", "doomed"]).failure();
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    assert_eq!(
        http::whoami(d.proxy, &key).status,
        200,
        "rm without --yes must not delete"
    );
    home.ctl(&["conn", "rm", "doomed", "--yes"]).success();
    assert_eq!(http::whoami(d.proxy, &key).body, INVALID_KEY_BODY);
    assert_eq!(d.stop().code(), Some(0));

    let d = home.start();
    assert_eq!(http::whoami(d.proxy, &key).body, INVALID_KEY_BODY);
    assert_eq!(http::whoami(d.proxy, &keep).status, 200);
    let info = home.ctl(&["conn", "info", &id]).failure();
    assert!(info.stderr.contains("not_found"), "{}", info.stderr);
    // A new connection with the old name gets a new key; the old key stays dead.
    home.create_conn("doomed", "agent", &[]);
    assert_eq!(http::whoami(d.proxy, &key).status, 401);
}

#[test]
fn disabled_expired_and_rate_limited_keys_get_their_errors() {
    let home = Home::new();
    let d = home.start();
    let (_, key) = home.create_conn("d", "agent", &[]);
    home.ctl(&["conn", "disable", "d"]).success();
    let r = http::whoami(d.proxy, &key);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "connection_disabled");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("sidekeyctl conn enable")
    );
    assert_eq!(
        home.ctl(&["conn", "info", "d", "--json"]).success().json()["state"],
        "disabled"
    );
    home.ctl(&["conn", "enable", "d"]).success();
    assert_eq!(http::whoami(d.proxy, &key).status, 200);

    let (_, short) = home.create_conn("short", "agent", &["--expires", "1s"]);
    wait_until("the key expires", Duration::from_secs(5), || {
        http::whoami(d.proxy, &short).status == 401
    });
    let r = http::whoami(d.proxy, &short);
    assert_eq!(r.json()["error"], "key_expired");
    assert_eq!(
        home.ctl(&["conn", "info", "short", "--json"])
            .success()
            .json()["state"],
        "expired"
    );

    let (_, limited) = home.create_conn("limited", "agent", &["--rate", "3/min"]);
    for _ in 0..3 {
        assert_eq!(http::whoami(d.proxy, &limited).status, 200);
    }
    let r = http::whoami(d.proxy, &limited);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    // Other connections are not limited by it.
    assert_eq!(http::whoami(d.proxy, &key).status, 200);
}

#[test]
fn last_used_is_recorded_in_batches_without_a_write_per_request() {
    let home = Home::new();
    let d = home.start_with(&["--last-used-flush", "1s"], &[]).unwrap();
    let (_, key) = home.create_conn("busy", "agent", &[]);
    let before = home.ctl(&["status", "--json"]).success().json()["store_writes"]
        .as_u64()
        .unwrap();
    let mut conn = Conn::open(d.proxy);
    let auth = format!("Bearer {key}");
    for _ in 0..500 {
        assert_eq!(
            conn.get("/v1/whoami", &[("Authorization", &auth)]).status,
            200
        );
    }
    wait_until("last_used is written", Duration::from_secs(5), || {
        !home
            .ctl(&["conn", "info", "busy", "--json"])
            .success()
            .json()["last_used_at"]
            .is_null()
    });
    let info = home
        .ctl(&["conn", "info", "busy", "--json"])
        .success()
        .json();
    assert!(info["last_used_by"].as_str().unwrap().contains("127.0.0.1"));
    let after = home.ctl(&["status", "--json"]).success().json()["store_writes"]
        .as_u64()
        .unwrap();
    assert!(
        after - before <= 3,
        "{} store writes for 500 requests",
        after - before
    );

    // And it survives a restart.
    assert_eq!(d.stop().code(), Some(0));
    let _d = home.start();
    let info = home
        .ctl(&["conn", "info", "busy", "--json"])
        .success()
        .json();
    assert!(info["last_used_at"].as_u64().is_some());
}

fn base64(text: &str) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
