//! See the parent module: each test starts from the user's mistake and expects the fix named.
//!
//! Talking to the API: an `https://` base URL to a server speaking plain HTTP, an API that
//! redirects to another origin, and a token file (or `api.token`) of two lines. Each is refused
//! at once, not retried as a broken connection, with the fix in one line.

use super::*;
use jobsync::sim::{SimConfig, SimHandle};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The simulator, running in this process on `rt` for as long as the handle is kept.
fn simulator(rt: &tokio::runtime::Runtime) -> SimHandle {
    rt.block_on(common::start_sim(SimConfig::default()))
}

/// A tiny server of the test's own on a free port: for each connection, the head of what the
/// client sent (an HTTP request's line and headers, or the first bytes of a TLS handshake) is
/// recorded and handed to `answer`, whose text is written back before the connection closes.
struct TinyServer {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl TinyServer {
    fn start(answer: impl Fn(&str) -> String + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                // Only keeps a client that never sends from holding the thread.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let head = read_head(&mut stream);
                seen.lock().unwrap().push(head.clone());
                let _ = stream.write_all(answer(&head).as_bytes());
            }
        });
        TinyServer { addr, heads }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }

    /// What each connection sent so far, in order.
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// Reads up to the end of an HTTP request's head; a TLS handshake (its first byte 0x16) has no
/// such end, and its first read is all there is to see.
fn read_head(stream: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.first() == Some(&0x16) || head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An HTTP/1.1 answer that closes the connection.
fn answer(status: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut text = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        text += &format!("{name}: {value}\r\n");
    }
    text + &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The request target (`/j/jobs?modified_since=…`) of an HTTP request's head.
fn target(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or_default()
}

/// Asserts the exit code and one `error: …` line on stderr holding each of `expected`, and that
/// no request was retried (the retry policy logs each retry); returns the line.
fn run_error(out: &Output, code: i32, expected: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("retrying"), "not retried: {err}");
    for part in expected {
        assert!(lines[0].contains(part), "expected {part:?} in {err}");
    }
    lines[0].to_string()
}

/// The `FAIL <what>` line of `check`'s output, holding each of `expected`.
fn check_failure(out: &Output, what: &str, expected: &[&str]) -> String {
    let text = stdout(out);
    let prefix = format!("FAIL {what}:");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} line in {text}{}", stderr(out)));
    for part in expected {
        assert!(line.contains(part), "expected {part:?} in {line}");
    }
    line.to_string()
}

#[test]
fn an_https_base_url_to_a_plain_http_api_says_to_use_http_and_is_not_retried() {
    let rt = common::runtime();
    let sim = simulator(&rt);
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(dir.path());
    let plain = sim.base_url();
    let mistaken = plain.replacen("http://", "https://", 1);
    let env = [
        ("JOBSYNC_API__TOKEN", "dev-token"),
        ("JOBSYNC_API__BASE_URL", mistaken.as_str()),
    ];
    let (at, fix) = (
        format!("the server at {mistaken}"),
        format!("use http:// in `api.base_url` ({plain})"),
    );
    let hint = [
        "answered plain HTTP to a TLS handshake",
        at.as_str(),
        &fix,
        "or put TLS in front of the API",
    ];
    let out = jobsync(dir.path(), &["--database-url", &db, "check"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = check_failure(&out, "api", &hint);
    assert!(!line.contains("unreachable"), "{line}");
    let out = jobsync(dir.path(), &["--database-url", &db, "--once"], &env);
    let line = run_error(&out, 1, &hint);
    assert!(!line.contains("may or may not"), "{line}");

    // Not retried: one connection per command, though `check` may try twice and a run eight
    // times. (A server of the test's own answers the TLS handshake as a plain HTTP one does.)
    let server = TinyServer::start(|_| answer("400 Bad Request", &[], ""));
    let mistaken = server.url("https", "");
    let env = [
        ("JOBSYNC_API__TOKEN", "dev-token"),
        ("JOBSYNC_API__BASE_URL", mistaken.as_str()),
    ];
    let out = jobsync(dir.path(), &["--database-url", &db, "check"], &env);
    check_failure(&out, "api", &["answered plain HTTP to a TLS handshake"]);
    assert_eq!(server.heads().len(), 1, "check connected once");
    let out = jobsync(dir.path(), &["--database-url", &db, "--once"], &env);
    run_error(&out, 1, &["answered plain HTTP to a TLS handshake"]);
    assert_eq!(server.heads().len(), 2, "the run connected once");
    assert!(
        server.heads().iter().all(|h| h.starts_with('\u{16}')),
        "TLS handshakes: {:?}",
        server.heads()
    );

    // The fix named works.
    check_passes(
        dir.path(),
        &db,
        &[
            ("JOBSYNC_API__TOKEN", "dev-token"),
            ("JOBSYNC_API__BASE_URL", plain.as_str()),
        ],
    );
}

#[test]
fn a_redirect_to_another_origin_names_both_origins_and_the_base_url_to_set() {
    let rt = common::runtime();
    let sim = simulator(&rt);
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(dir.path());
    // An old address of the API: `/old/…` moved within the origin, `/moved/…` to the
    // simulator's, which would answer 401 to a request that lost its token on the way.
    let api = sim.base_url();
    let redirect_to = api.clone();
    let server = TinyServer::start(move |head| {
        let target = target(head);
        if let Some(rest) = target.strip_prefix("/old") {
            answer(
                "308 Permanent Redirect",
                &[("Location", &format!("/new{rest}"))],
                "",
            )
        } else if let Some(rest) = target.strip_prefix("/moved") {
            let to = format!("{redirect_to}{rest}");
            answer("307 Temporary Redirect", &[("Location", &to)], "")
        } else {
            answer("200 OK", &[("Content-Type", "application/json")], "[]")
        }
    });
    let from = server.url("http", "");
    let mistaken = server.url("http", "/moved");
    let env = [
        ("JOBSYNC_API__TOKEN", "dev-token"),
        ("JOBSYNC_API__BASE_URL", mistaken.as_str()),
    ];
    let (origins, fix) = (
        format!("redirected (HTTP 307) from {from} to another origin, {api}"),
        format!("set `api.base_url` to {api} if the API lives there"),
    );
    let hint = [
        origins.as_str(),
        "jobsync does not send its token to another origin",
        &fix,
    ];
    let out = jobsync(dir.path(), &["--database-url", &db, "check"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = check_failure(&out, "api", &hint);
    assert!(
        !line.contains("api.token"),
        "the token is not blamed: {line}"
    );
    assert_eq!(
        server.heads().len(),
        1,
        "check asked once: {:?}",
        server.heads()
    );
    let out = jobsync(dir.path(), &["--database-url", &db, "--once"], &env);
    let line = run_error(&out, 1, &hint);
    assert!(
        !line.contains("api.token"),
        "the token is not blamed: {line}"
    );
    assert_eq!(
        server.heads().len(),
        2,
        "the run asked once: {:?}",
        server.heads()
    );
    assert!(
        sim.requests().is_empty(),
        "nothing went to the other origin: {:?}",
        sim.requests()
    );

    // A redirect within the origin is followed, with the token.
    let moved_within = server.url("http", "/old");
    let env = [
        ("JOBSYNC_API__TOKEN", "dev-token"),
        ("JOBSYNC_API__BASE_URL", moved_within.as_str()),
    ];
    let out = jobsync(dir.path(), &["--database-url", &db, "check"], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let heads = server.heads();
    let followed = heads.last().unwrap();
    assert!(
        target(followed).starts_with("/new/j/jobs?")
            && followed
                .to_ascii_lowercase()
                .contains("authorization: bearer dev-token"),
        "{heads:?}"
    );

    // The fix named works.
    check_passes(
        dir.path(),
        &db,
        &[
            ("JOBSYNC_API__TOKEN", "dev-token"),
            ("JOBSYNC_API__BASE_URL", api.as_str()),
        ],
    );
}

#[test]
fn a_token_file_of_two_lines_is_refused_at_once_naming_the_file() {
    let rt = common::runtime();
    let sim = simulator(&rt);
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(dir.path());
    let api = sim.base_url();
    // The token, then a note under it.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "dev-token\nrotated 2026-12-01 by ops\n").unwrap();
    let path = token_file.display().to_string();
    let env = [
        ("JOBSYNC_API__TOKEN_FILE", path.as_str()),
        ("JOBSYNC_API__BASE_URL", api.as_str()),
    ];
    let named = format!("`api.token_file` {path} holds 2 lines");
    let hint = [
        named.as_str(),
        "it must hold the token alone (a trailing newline is fine)",
    ];
    let out = jobsync(dir.path(), &["--database-url", &db, "check"], &env);
    usage_error(&out, &["configuration check failed"]);
    let line = check_failure(&out, "configuration", &hint);
    assert!(
        !line.contains("dev-token"),
        "the token is not shown: {line}"
    );
    assert!(
        stdout(&out).contains("skip api"),
        "the API is not called: {}",
        stdout(&out)
    );
    let out = jobsync(dir.path(), &["--database-url", &db, "--once"], &env);
    let line = usage_error(&out, &hint);
    assert!(
        !line.contains("dev-token"),
        "the token is not shown: {line}"
    );
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());

    // A character a header may not carry, likewise.
    std::fs::write(&token_file, "dev\u{8}-token\n").unwrap();
    let out = jobsync(dir.path(), &["--database-url", &db, "--once"], &env);
    let named = format!("`api.token_file` {path} holds a character not allowed in an HTTP header");
    usage_error(&out, &[&named, "it must hold the token alone"]);

    // `api.token` given inline with a line break in it.
    let env = [
        ("JOBSYNC_API__TOKEN", "dev-token\n"),
        ("JOBSYNC_API__BASE_URL", api.as_str()),
    ];
    let out = jobsync(dir.path(), &["--database-url", &db, "check"], &env);
    usage_error(&out, &["configuration check failed"]);
    check_failure(
        &out,
        "configuration",
        &["`api.token` holds a line break", "the token alone"],
    );
    let out = jobsync(dir.path(), &["--database-url", &db, "--once"], &env);
    usage_error(&out, &["`api.token` holds a line break", "the token alone"]);
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());

    // The fix named works: the token alone, a trailing newline kept.
    std::fs::write(&token_file, "dev-token\n").unwrap();
    let env = [
        ("JOBSYNC_API__TOKEN_FILE", path.as_str()),
        ("JOBSYNC_API__BASE_URL", api.as_str()),
    ];
    check_passes(dir.path(), &db, &env);
}

/// `jobsync check` with `env` on the database `db` exits 0: the fix a hint named works.
fn check_passes(dir: &Path, db: &str, env: &[(&str, &str)]) {
    let out = jobsync(dir, &["--database-url", db, "check"], env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}
