//! The proxy's own HTTP/1.1 forwarder against the real daemon, with a
//! scripted upstream that answers in the shapes real servers use: pipelined
//! requests, keep-alive connections the upstream closes, bodies framed by
//! close or by chunks, interim responses and broken ones.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidekey_tests::agent::Setup;
use sidekey_tests::upstream::ensure_test_hosts;

const SECRET: &str = "sk-fwd-INJECTED000001";

/// What the scripted upstream does after reading one request.
#[derive(Clone, Copy)]
enum Answer {
    /// `200` with a length, and the connection stays open.
    KeepAlive,
    /// `200` with a length, then the connection is closed without a word.
    ThenClose,
    /// A body with no framing: it ends when the connection closes.
    UntilClose,
    /// `103 Early Hints`, then `200`.
    Interim,
    /// Not HTTP at all.
    Garbage,
}

/// An upstream on 127.0.0.1 that reads each request whole (`Content-Length`
/// or chunked) and answers it as told, recording every request and how many
/// connections it took.
struct Scripted {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<usize>>,
}

impl Scripted {
    fn start(answer: Answer) -> Scripted {
        ensure_test_hosts();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (seen, count) = (requests.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(64) {
                let Ok(stream) = stream else { return };
                *count.lock().unwrap() += 1;
                let seen = seen.clone();
                std::thread::spawn(move || serve(stream, answer, &seen));
            }
        });
        Scripted {
            port,
            requests,
            connections,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

fn serve(mut stream: TcpStream, answer: Answer, seen: &Mutex<Vec<String>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut pending = Vec::new();
    for _ in 0..16 {
        let Some(request) = read_request(&mut stream, &mut pending) else {
            return;
        };
        seen.lock().unwrap().push(request);
        let response: &[u8] = match answer {
            Answer::KeepAlive | Answer::ThenClose => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: 1\r\n\r\nok"
            }
            Answer::UntilClose => b"HTTP/1.1 200 OK\r\nX-Up: 1\r\n\r\nall of it, until close",
            Answer::Interim => {
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            }
            Answer::Garbage => b"SPDY/9 nonsense\r\n\r\n",
        };
        if stream.write_all(response).is_err() {
            return;
        }
        if matches!(
            answer,
            Answer::ThenClose | Answer::UntilClose | Answer::Garbage
        ) {
            return;
        }
    }
}

/// One request, head and body, as raw text; `None` once the peer closes.
fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    let head_end = loop {
        if let Some(end) = find(pending, b"\r\n\r\n") {
            break end + 4;
        }
        fill(stream, pending)?;
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
    let mut end = head_end;
    if head.contains("transfer-encoding: chunked") {
        // Chunk by chunk: a chunk's data may hold anything, a last chunk included.
        loop {
            let line_end = loop {
                if let Some(at) = find(&pending[end..], b"\r\n") {
                    break end + at;
                }
                fill(stream, pending)?;
            };
            let size_text = String::from_utf8_lossy(&pending[end..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .expect("a chunk size");
            end = line_end + 2 + size + 2;
            while pending.len() < end {
                fill(stream, pending)?;
            }
            if size == 0 {
                break;
            }
        }
    } else if let Some(length) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        end += length.trim().parse::<usize>().unwrap();
        while pending.len() < end {
            fill(stream, pending)?;
        }
    }
    let request = String::from_utf8_lossy(&pending[..end]).into_owned();
    pending.drain(..end);
    Some(request)
}

fn fill(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            pending.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn setup() -> Setup {
    let s = Setup::new();
    s.cred("key", "api-key", &["api.sidekey.test"], SECRET);
    s
}

fn agent(s: &Setup) -> TcpStream {
    let stream = TcpStream::connect(s.proxy()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
}

fn get(s: &Setup, port: u16, path: &str) -> String {
    format!(
        "GET http://api.sidekey.test:{port}{path} HTTP/1.1\r\nHost: api.sidekey.test:{port}\r\nProxy-Authorization: Bearer {}\r\n\r\n",
        s.key
    )
}

/// Reads until `count` responses with two-byte bodies have arrived.
fn read_responses(stream: &mut TcpStream, count: usize) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while String::from_utf8_lossy(&out).matches("\r\n\r\nok").count() < count {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn pipelined_requests_are_answered_in_order_each_with_the_credential() {
    let s = setup();
    let up = Scripted::start(Answer::KeepAlive);
    let mut stream = agent(&s);
    let both = get(&s, up.port, "/first") + &get(&s, up.port, "/second");
    stream.write_all(both.as_bytes()).unwrap();
    let answers = read_responses(&mut stream, 2);
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
    let requests = up.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[0].starts_with("GET /first HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(
        requests[1].starts_with("GET /second HTTP/1.1\r\n"),
        "{}",
        requests[1]
    );
    for request in &requests {
        assert!(request.contains(&format!("authorization: Bearer {SECRET}")));
        assert!(!request.to_ascii_lowercase().contains("proxy-authorization"));
    }
    assert_eq!(up.connections(), 1, "one upstream connection, reused");
}

#[test]
fn an_upstream_closing_a_pooled_connection_costs_the_agent_nothing() {
    let s = setup();
    let up = Scripted::start(Answer::ThenClose);
    let mut stream = agent(&s);
    for round in 0..3 {
        stream
            .write_all(get(&s, up.port, &format!("/round{round}")).as_bytes())
            .unwrap();
        let answer = read_responses(&mut stream, 1);
        assert!(
            answer.starts_with("HTTP/1.1 200 OK"),
            "round {round}: {answer}"
        );
        // Give the upstream's close time to land in the pool.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(up.requests().len(), 3);
    assert_eq!(up.connections(), 3, "a closed connection is never reused");
}

/// An upload still streaming from the agent cannot be sent again, so it must
/// never start on a pooled connection the upstream has closed, however
/// recently it went idle.
#[test]
fn a_streaming_upload_never_starts_on_a_pooled_connection_the_upstream_closed() {
    let s = setup();
    let up = Scripted::start(Answer::ThenClose);
    let mut stream = agent(&s);
    stream
        .write_all(get(&s, up.port, "/first").as_bytes())
        .unwrap();
    assert!(read_responses(&mut stream, 1).starts_with("HTTP/1.1 200 OK"));
    // Give the upstream's close time to land in the pool.
    std::thread::sleep(Duration::from_millis(50));

    let head = format!(
        "POST http://api.sidekey.test:{}/upload HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {}\r\nContent-Length: 10\r\n\r\n01234",
        up.port, s.key
    );
    stream.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(b"56789").unwrap();
    let answer = read_responses(&mut stream, 1);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let requests = up.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[1].ends_with("\r\n\r\n0123456789"), "{requests:?}");
    assert_eq!(up.connections(), 2);
}

#[test]
fn a_body_that_ends_at_close_arrives_whole_and_closes_the_agent_too() {
    let s = setup();
    let up = Scripted::start(Answer::UntilClose);
    let mut stream = agent(&s);
    stream
        .write_all(get(&s, up.port, "/all").as_bytes())
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("Connection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\nall of it, until close"),
        "{answer}"
    );
}

#[test]
fn a_chunked_upload_passes_as_sent_and_the_connection_goes_on() {
    let s = setup();
    let up = Scripted::start(Answer::KeepAlive);
    let mut stream = agent(&s);
    // A chunk that looks like a request head must stay body.
    let inner = format!(
        "GET http://evil.test/ HTTP/1.1\r\nProxy-Authorization: Bearer {}\r\n\r\n",
        s.key
    );
    let body = format!("{:x}\r\n{inner}\r\n5\r\nhello\r\n0\r\n\r\n", inner.len());
    let upload = format!(
        "POST http://api.sidekey.test:{}/upload HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        up.port, s.key
    );
    stream.write_all(upload.as_bytes()).unwrap();
    assert!(read_responses(&mut stream, 1).starts_with("HTTP/1.1 200 OK"));
    stream
        .write_all(get(&s, up.port, "/after").as_bytes())
        .unwrap();
    assert!(read_responses(&mut stream, 1).starts_with("HTTP/1.1 200 OK"));
    let requests = up.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[0].ends_with(&body), "{}", requests[0]);
    assert!(requests[1].starts_with("GET /after HTTP/1.1\r\n"));
}

#[test]
fn interim_responses_pass_through_before_the_final_one() {
    let s = setup();
    let up = Scripted::start(Answer::Interim);
    let mut stream = agent(&s);
    stream
        .write_all(get(&s, up.port, "/hints").as_bytes())
        .unwrap();
    let answer = read_responses(&mut stream, 1);
    let hints = answer.find("HTTP/1.1 103 Early Hints\r\n").expect(&answer);
    let done = answer.find("HTTP/1.1 200 OK\r\n").expect(&answer);
    assert!(hints < done, "{answer}");
    assert!(answer.contains("Link: </a.css>"), "{answer}");
}

#[test]
fn a_broken_upstream_answer_is_a_502_and_is_audited() {
    let s = setup();
    let up = Scripted::start(Answer::Garbage);
    let mut stream = agent(&s);
    stream
        .write_all(get(&s, up.port, "/broken").as_bytes())
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(
        answer.contains("\"error\":\"upstream_unreachable\""),
        "{answer}"
    );
    assert!(!answer.contains(SECRET));
    let audit = s.home.ctl(&["audit", "--json"]).success().stdout;
    assert!(
        audit.contains("/broken") && audit.contains("upstream_error"),
        "{audit}"
    );
}

/// One head and its body, however the answer is framed (`Content-Length`).
fn read_one_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&out, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |l| l.trim().parse().unwrap());
            if out.len() >= end + 4 + length {
                return String::from_utf8_lossy(&out).into_owned();
            }
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&chunk[..n]);
    }
}

/// The forwarder admits a connection's later requests without hashing the
/// key again; a rotation or a disable in between must still refuse the
/// very next one on the same connection.
#[test]
fn a_key_changed_mid_connection_is_refused_on_its_very_next_request() {
    let s = setup();
    let up = Scripted::start(Answer::KeepAlive);
    let mut old = agent(&s);
    old.write_all(get(&s, up.port, "/before").as_bytes())
        .unwrap();
    assert!(read_one_response(&mut old).starts_with("HTTP/1.1 200 OK"));

    let rotated = s
        .home
        .ctl(&["conn", "key", "agent-1", "--regenerate"])
        .success()
        .stdout
        .trim()
        .to_string();
    old.write_all(get(&s, up.port, "/old-key").as_bytes())
        .unwrap();
    let refused = read_one_response(&mut old);
    assert!(refused.starts_with("HTTP/1.1 407"), "{refused}");
    assert!(refused.contains("invalid_access_key"), "{refused}");

    let mut new = agent(&s);
    let with_new_key = |path: &str| {
        format!(
            "GET http://api.sidekey.test:{}{path} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {rotated}\r\n\r\n",
            up.port
        )
    };
    new.write_all(with_new_key("/new-key").as_bytes()).unwrap();
    assert!(read_one_response(&mut new).starts_with("HTTP/1.1 200 OK"));
    s.home.ctl(&["conn", "disable", "agent-1"]).success();
    new.write_all(with_new_key("/disabled").as_bytes()).unwrap();
    let refused = read_one_response(&mut new);
    assert!(refused.contains("connection_disabled"), "{refused}");

    let paths: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.split(' ').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(paths, ["/before", "/new-key"]);
}

/// A request the forwarder leaves to the full proxy (here, one to the cloud
/// metadata address) is admitted there alone: it costs one rate token, not
/// one in each.
#[test]
fn every_request_costs_one_rate_token_whichever_path_answers_it() {
    let s = setup();
    let up = Scripted::start(Answer::KeepAlive);
    let (_, limited) = s.home.create_conn("limited", "agent", &["--rate", "3/min"]);
    s.home.ctl(&["grant", "limited", "key"]).success();
    let request = |authority: &str| {
        format!(
            "GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Bearer {limited}\r\n\r\n"
        )
    };
    let served = format!("api.sidekey.test:{}", up.port);
    let mut answers = Vec::new();
    for authority in ["169.254.169.254", &served, &served, &served] {
        let mut stream = agent(&s);
        stream.write_all(request(authority).as_bytes()).unwrap();
        let answer = read_one_response(&mut stream);
        answers.push(answer.split(' ').nth(1).unwrap().to_string());
    }
    assert_eq!(answers, ["403", "200", "200", "429"]);
}
