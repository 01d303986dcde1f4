//! Secrets at the sink, and SIGPIPE (issue 23). The real `jobsync` binary runs against the real
//! simulator — behind a gateway of the test's own where a fault is needed — and a secret is looked
//! for where a user would find it: stdout, stderr (the logs, in both formats), `jobsync status`,
//! `sync_runs.error` and `outbox.last_error`.

use crate::common::*;
use axum::Json;
use axum::routing::{get, post};
use jobsync::db::repo::runs;
use jobsync::sim::SimConfig;
use serde_json::{Value, json};
use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

on_both_backends!(
    an_all_digit_token_from_the_environment_works_and_is_never_shown,
    credentials_in_the_api_base_url_are_never_shown,
    decode_errors_name_the_field_and_job_never_the_value,
    a_gateway_resetting_a_large_bulk_body_fails_the_run_not_the_process,
);

mod sqlite_only {
    #[test]
    fn a_token_written_as_a_toml_number_is_read_as_text() {
        crate::common::run_on(
            super::a_token_written_as_a_toml_number_is_read_as_text,
            &crate::common::TestDb::sqlite(),
        );
    }

    #[test]
    fn a_reader_that_closes_stdout_ends_a_printing_command_quietly() {
        crate::common::run_on(
            super::a_reader_that_closes_stdout_ends_a_printing_command_quietly,
            &crate::common::TestDb::sqlite(),
        );
    }
}

const DIGIT_TOKEN: &str = "98765432109876";

/// `jobsync ARGS` on the test's database, with only the given settings, run to completion off
/// the runtime (the simulator and the gateway keep answering meanwhile).
async fn jobsync(t: &TestDb, base_url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = jobsync_command_with_url(base_url, &t.url, dir.path());
    cmd.args(args)
        .envs(env.iter().copied())
        .env("JOBSYNC_API__MAX_ATTEMPTS", "2");
    tokio::task::spawn_blocking(move || {
        let out = cmd.output().expect("run jobsync");
        drop(dir);
        out
    })
    .await
    .unwrap()
}

/// Everything a user could read after the runs: their output, `jobsync status`, and the text of
/// the tables' error columns.
struct Seen {
    text: String,
}

impl Seen {
    fn new() -> Self {
        Seen {
            text: String::new(),
        }
    }

    fn output(&mut self, what: &str, out: &Output) {
        self.text += &format!(
            "--- {what} ({:?})\nstdout:\n{}\nstderr:\n{}\n",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `sync_runs.error` and `outbox.last_error`, read with the repositories the engine uses.
    fn tables(&mut self, t: &TestDb) {
        let mut c = t.db.conn().unwrap();
        for run in runs::recent(&mut c, 100).unwrap() {
            self.text += &format!("--- sync_runs #{}: {:?}\n", run.id, run.error);
        }
        for row in all_rows(&t.db) {
            self.text += &format!("--- outbox #{}: {:?}\n", row.id, row.last_error);
        }
        for row in jobsync::db::repo::quarantine::list(&mut c, 100).unwrap() {
            self.text += &format!("--- quarantine {}: {row:?}\n", row.item_key);
        }
    }

    fn assert_never(&self, secrets: &[&str]) {
        for secret in secrets {
            assert!(
                !self.text.contains(secret),
                "`{secret}` is shown:\n{}",
                self.text
            );
        }
    }
}

async fn an_all_digit_token_from_the_environment_works_and_is_never_shown(t: &TestDb) {
    let sim = start_sim(SimConfig {
        token: DIGIT_TOKEN.into(),
        campaigns: vec![28],
        jobs_per_campaign: 3,
        ..SimConfig::default()
    })
    .await;
    // Refused by the API (no campaign 99), so `last_error` holds an answer's text.
    insert(
        &t.db,
        &[create(99, "no-such-campaign", json!({"name": "A"}))],
    );
    let token = [("JOBSYNC_API__TOKEN", DIGIT_TOKEN)];
    let mut seen = Seen::new();
    let run = jobsync(t, &sim.base_url(), &["--once"], &token).await;
    seen.output("--once", &run);
    let check = jobsync(t, &sim.base_url(), &["check"], &token).await;
    seen.output("check", &check);
    let status = jobsync(t, &sim.base_url(), &["status"], &token).await;
    seen.output("status", &status);
    seen.tables(t);
    assert_eq!(run.status.code(), Some(0), "{}", seen.text);
    assert_eq!(check.status.code(), Some(0), "{}", seen.text);
    assert!(seen.text.contains("run #1 ok"), "{}", seen.text);
    let rows = all_rows(&t.db);
    assert!(
        rows[0].status == "failed" && rows[0].last_error.is_some(),
        "{rows:?}"
    );
    seen.assert_never(&[DIGIT_TOKEN]);
}

async fn a_token_written_as_a_toml_number_is_read_as_text(t: &TestDb) {
    let sim = start_sim(SimConfig {
        token: DIGIT_TOKEN.into(),
        campaigns: vec![28],
        jobs_per_campaign: 3,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let number = dir.path().join("number.toml");
    std::fs::write(&number, format!("[api]\ntoken = {DIGIT_TOKEN}\n")).unwrap();
    let float = dir.path().join("float.toml");
    std::fs::write(&float, format!("[api]\ntoken = {DIGIT_TOKEN}.5\n")).unwrap();
    // No token in the environment: only the file's.
    let without_env_token = |file: &std::path::Path, args: &[&str]| {
        let mut cmd = jobsync_command_with_url(&sim.base_url(), &t.url, dir.path());
        cmd.env_remove("JOBSYNC_API__TOKEN")
            .arg("--config")
            .arg(file)
            .args(args);
        cmd
    };
    let mut seen = Seen::new();
    let mut cmd = without_env_token(&number, &["--once"]);
    let run = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    seen.output("--once with token = NUMBER", &run);
    assert_eq!(run.status.code(), Some(0), "{}", seen.text);
    let mut cmd = without_env_token(&float, &["--once"]);
    let refused = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    seen.output("--once with token = FLOAT", &refused);
    seen.tables(t);
    let error = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{}", seen.text);
    assert!(
        error.contains("api.token") && error.contains("quote"),
        "names the key and the fix: {error}"
    );
    assert_eq!(error.trim().lines().count(), 1, "one line: {error}");
    seen.assert_never(&[DIGIT_TOKEN]);
}

/// A gateway in front of the simulator: every request but a bulk create is relayed to it (with
/// the simulator's token, whatever the client sent); a bulk create's connection is reset as soon
/// as its headers have arrived, while jobsync is still writing the body. Answers how many it reset.
async fn resetting_gateway(sim_base: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let resets = Arc::new(AtomicUsize::new(0));
    let counter = resets.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(stream, sim_base.clone(), counter.clone()));
        }
    });
    (format!("http://{addr}"), resets)
}

/// How much of a bulk create's body the gateway reads before it resets the connection.
const MID_BODY: usize = 1024 * 1024;

/// HTTP/1.1 requests of one kept-alive connection, one after the other.
async fn serve_connection(mut stream: TcpStream, sim_base: String, resets: Arc<AtomicUsize>) {
    let http = reqwest::Client::new();
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut words = head.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if method == "POST" && target.starts_with("/j/jobs/bulk/create") {
            // Mid-body: jobsync is waiting for the socket to take more when the reset comes.
            while buf.len() < head_end + content_length(&buf[..head_end]).min(MID_BODY) {
                let mut chunk = [0u8; 65536];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            resets.fetch_add(1, Ordering::SeqCst);
            // A reset, not a close: what a gateway that gives up on a request does.
            stream.set_zero_linger().unwrap();
            return;
        }
        let length = content_length(&buf[..head_end]);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        // The base URL's `api_key` is the gateway's business, not the simulator's.
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query: Vec<&str> = query
            .split('&')
            .filter(|kv| !kv.is_empty() && !kv.starts_with("api_key="))
            .collect();
        let url = format!("{sim_base}{path}?{}", query.join("&"));
        let answer = http
            .request(method.parse().unwrap(), url)
            .bearer_auth("dev-token")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let date = answer
            .headers()
            .get("date")
            .and_then(|d| d.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let content = answer.bytes().await.unwrap();
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\ndate: {date}\r\n\r\n",
            content.len()
        );
        if stream.write_all(head.as_bytes()).await.is_err()
            || stream.write_all(&content).await.is_err()
        {
            return;
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

async fn credentials_in_the_api_base_url_are_never_shown(t: &TestDb) {
    const PASSWORD: &str = "hunter2pw";
    const API_KEY: &str = "s3cretkey123";
    let sim = start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 3,
        ..SimConfig::default()
    })
    .await;
    let (gateway, resets) = resetting_gateway(sim.base_url()).await;
    let with_credentials = gateway.replace("http://", &format!("http://jobsync:{PASSWORD}@"))
        + &format!("/?api_key={API_KEY}");
    insert(
        &t.db,
        &[create(28, "via-gateway", json!({"name": "Via gateway"}))],
    );
    let debug = [("RUST_LOG", "debug")];
    let mut seen = Seen::new();
    let json_logs = jobsync(t, &with_credentials, &["--once"], &debug).await;
    seen.output("--once, JSON logs", &json_logs);
    let pretty = jobsync(
        t,
        &with_credentials,
        &["--once"],
        &[("RUST_LOG", "debug"), ("JOBSYNC_LOG__FORMAT", "pretty")],
    )
    .await;
    seen.output("--once, pretty logs", &pretty);
    let check = jobsync(t, &with_credentials, &["check"], &debug).await;
    seen.output("check", &check);
    let status = jobsync(t, &with_credentials, &["status"], &[]).await;
    seen.output("status", &status);
    let invalid = with_credentials.replace("http://", "ftp://");
    let refused = jobsync(t, &invalid, &["--once"], &[]).await;
    seen.output("--once, invalid base URL", &refused);
    seen.tables(t);
    assert!(resets.load(Ordering::SeqCst) >= 1, "{}", seen.text);
    assert_eq!(check.status.code(), Some(0), "{}", seen.text);
    assert_eq!(refused.status.code(), Some(2), "{}", seen.text);
    let row = &all_rows(&t.db)[0];
    assert!(
        row.in_doubt && row.last_error.is_some(),
        "the reset create is in doubt, its error recorded: {row:?}"
    );
    assert!(
        row.last_error.as_deref().unwrap().contains("api_key=***"),
        "the error quotes the URL, masked: {row:?}"
    );
    seen.assert_never(&[PASSWORD, API_KEY]);
}

/// A stand-in API whose answers carry a phone number where a list is expected: in the listing
/// (job 7) or in a bulk create's answer (job 1000).
async fn wrong_typed_server(listing: Value) -> String {
    let app = axum::Router::new()
        .route(
            "/j/jobs",
            get(move || {
                let listing = listing.clone();
                async move { Json(listing) }
            }),
        )
        .route(
            "/j/jobs/bulk/create",
            post(|Json(items): Json<Vec<Value>>| async move {
                let answers: Vec<Value> = items
                    .iter()
                    .map(|item| {
                        json!({"status_code": 201, "data": {
                            "id": 1000, "campaign": item["campaign"],
                            "reference": item["reference"], "state": 0,
                            "numbers": "+33698765432",
                            "created_at": "2026-11-30T10:00:00Z"}})
                    })
                    .collect();
                Json(Value::Array(answers))
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn decode_errors_name_the_field_and_job_never_the_value(t: &TestDb) {
    let mut seen = Seen::new();
    let bad_listing = wrong_typed_server(json!([
        {"id": 7, "campaign": 28, "state": 0, "numbers": "+33612345678"}
    ]))
    .await;
    let pull = jobsync(t, &bad_listing, &["--once"], &[]).await;
    seen.output("--once, listing", &pull);
    let empty_listing = wrong_typed_server(json!([])).await;
    insert(&t.db, &[create(28, "r-1", json!({"name": "A"}))]);
    let push = jobsync(t, &empty_listing, &["--once"], &[]).await;
    seen.output("--once, bulk create", &push);
    seen.tables(t);
    // The listing's job is quarantined (issue 24): the run completes, and the quarantine's
    // reason names the job, the field and the type expected.
    assert_eq!(pull.status.code(), Some(0), "{}", seen.text);
    let quarantined = jobsync::db::repo::quarantine::list(&mut t.db.conn().unwrap(), 10).unwrap();
    let reason = quarantined
        .first()
        .map(|q| q.reason.clone())
        .unwrap_or_default();
    assert!(
        reason.contains("job 7") && reason.contains("`numbers`") && reason.contains("a sequence"),
        "names the job, the field and the type expected: {reason}"
    );
    let row = &all_rows(&t.db)[0];
    let last_error = row.last_error.as_deref().unwrap_or_default();
    assert!(
        last_error.contains("job 1000") && last_error.contains("`data.numbers`"),
        "names the job and the field: {last_error}"
    );
    seen.assert_never(&["33612345678", "33698765432"]);
}

/// Items of a bulk call (the default `api.bulk_size`), and bytes of each item's name: a body of
/// about 9 MB, far more than the socket buffers hold, so jobsync is still writing when the reset
/// comes.
const ITEMS: usize = 1000;
const NAME_BYTES: usize = 9000;

async fn a_gateway_resetting_a_large_bulk_body_fails_the_run_not_the_process(t: &TestDb) {
    let sim = start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 3,
        ..SimConfig::default()
    })
    .await;
    let (gateway, resets) = resetting_gateway(sim.base_url()).await;
    let rows: Vec<_> = (0..2 * ITEMS)
        .map(|n| {
            create(
                28,
                &format!("big-{n}"),
                json!({"name": "x".repeat(NAME_BYTES)}),
            )
        })
        .collect();
    insert(&t.db, &rows);
    let run = jobsync(t, &gateway, &["--once"], &[]).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        run.status.signal(),
        None,
        "killed by a signal, nothing printed: {stderr}"
    );
    assert!(
        resets.load(Ordering::SeqCst) >= 1,
        "no bulk create reached the gateway"
    );
    let recorded = &runs::recent(&mut t.db.conn().unwrap(), 1).unwrap()[0];
    // The API could not be reached for those calls after retries: the run could not complete.
    assert_eq!(recorded.status, "failed", "{recorded:?}\n{stderr}");
    assert_eq!(run.status.code(), Some(1), "{recorded:?}\n{stderr}");
    let error = recorded.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("could not reach the Jobs API") && error.contains("later cycle"),
        "the run names the failure and what happens to the rows: {error}"
    );
    assert!(
        stderr.contains("could not reach the Jobs API"),
        "the failure is printed: {stderr}"
    );
    assert_eq!(open_rows(&t.db), 2 * ITEMS, "every row is still to push");
    // Without the gateway, the rows settle in later cycles: each reference once upstream. The
    // default `api.timeout_secs`: a 1 s one timed out on 9 MB bulk creates once the test shared
    // its process and cores with the rest of the suite (the simulator runs in this process).
    let quick = [("JOBSYNC_PUSH__SETTLE_SECS", "0")];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while open_rows(&t.db) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "rows still open after 180 s: {}",
            open_rows(&t.db)
        );
        let again = jobsync(t, &sim.base_url(), &["--once"], &quick).await;
        let stderr = String::from_utf8_lossy(&again.stderr);
        // On a loaded machine a 1 s timeout can still expire: such a cycle fails as
        // "could not reach" and keeps its rows for the next, which is what is being tested.
        assert!(
            again.status.code() == Some(0)
                || (again.status.code() == Some(1)
                    && stderr.contains("could not reach the Jobs API")),
            "{stderr}"
        );
    }
    let upstream = sim_by_ref(&sim).await;
    for n in 0..2 * ITEMS {
        let found = upstream.get(&(28, format!("big-{n}"))).map_or(0, Vec::len);
        assert_eq!(found, 1, "reference big-{n} upstream {found} times");
    }
    assert_eq!(count_status(&all_rows(&t.db), "done"), 2 * ITEMS);
}

/// With SIGPIPE ignored, a reader that goes away before `jobsync changes` prints (as with
/// `| head -0`) must end the command with exit 0 and nothing on stderr, not a panic.
async fn a_reader_that_closes_stdout_ends_a_printing_command_quietly(t: &TestDb) {
    let sim = start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 50,
        ..SimConfig::default()
    })
    .await;
    let pulled = jobsync(
        t,
        &sim.base_url(),
        &["--once", "--database-url", &t.url],
        &[],
    )
    .await;
    assert_eq!(pulled.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = jobsync_command_with_url(&sim.base_url(), &t.url, dir.path());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .arg("changes")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the command can have started printing.
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stdout"),
        "{stderr}"
    );
}
