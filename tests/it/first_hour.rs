//! The first hour of a new user (issue 13): each mistake a newcomer makes first — a wrong
//! database password, an API that is down, a base URL with a path, a TOML typo, a CSV piped as
//! NDJSON — ends in one line that names the problem and says what to do. The real binary, one
//! error per test, each asserting its hint.

use crate::common;
use crate::common::{
    clean_command as command, run_clean as jobsync, stderr_of as stderr, stdout_of as stdout,
};
use jobsync::db::Db;
use jobsync::db::repo::outbox;
use jobsync::sim::SimConfig;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "N0tThePassw0rd";

/// The `error: …` line the command ended with (there must be exactly one).
fn error_line(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    lines[0].to_string()
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("j.db").display())
}

// --- PostgreSQL connection errors ---------------------------------------------------------------

/// `url` with its password (the text between the first `:` after the scheme and the `@`)
/// replaced, or added.
fn with_password(url: &str, password: &str) -> String {
    let start = url.find("://").unwrap() + 3;
    let at = start + url[start..].find('@').expect("the test URL names a user");
    let user = &url[start..at];
    let user = user.split(':').next().unwrap();
    format!("{}{user}:{password}{}", &url[..start], &url[at..])
}

/// `url` naming another database (the path after the host), its query kept.
fn with_database(url: &str, database: &str) -> String {
    let start = url.find("://").unwrap() + 3;
    let slash = start
        + url[start..]
            .find('/')
            .expect("the test URL names a database");
    let query = url[slash..].find('?').map_or("", |q| &url[slash + q..]);
    format!("{}/{database}{query}", &url[..slash])
}

/// `status` against a PostgreSQL URL: its exit code and error line.
fn pg_status(url: &str) -> (Option<i32>, String, Output) {
    let dir = tempfile::tempdir().unwrap();
    let out = jobsync(dir.path(), &["--database-url", url, "status"], &[]);
    let line = if out.status.success() {
        String::new()
    } else {
        error_line(&out)
    };
    (out.status.code(), line, out)
}

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn a_wrong_postgres_password_says_to_check_the_user_and_password() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let (code, err, out) = pg_status(&with_password(&url, PASSWORD));
    if code == Some(0) {
        eprintln!("skipping: the test server accepts any password (trust authentication)");
        return;
    }
    assert_eq!(code, Some(1), "{}", stderr(&out));
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        err.contains("check the user and password in database.url"),
        "the hint: {err}"
    );
    assert!(!stderr(&out).contains(PASSWORD), "masked: {err}");
    assert!(err.contains(":***@"), "the URL is shown masked: {err}");
}

#[test]
fn a_closed_postgres_port_asks_whether_the_server_runs_there() {
    let url = format!("postgres://someone:{PASSWORD}@127.0.0.1:1/crm");
    let (code, err, out) = pg_status(&url);
    assert_eq!(code, Some(1), "{}", stderr(&out));
    assert!(err.contains("Connection refused"), "{err}");
    assert!(
        err.contains("is the PostgreSQL server running and reachable at 127.0.0.1:1?"),
        "the hint names the host and port: {err}"
    );
    assert!(err.contains("database.url"), "{err}");
    assert!(!stderr(&out).contains(PASSWORD), "masked: {err}");
}

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn a_missing_postgres_database_says_createdb() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    // Not named after the test user: a password that is also a name is masked there too.
    let name = format!("first_hour_missing_{}", std::process::id());
    let (code, err, out) = pg_status(&with_database(&url, &name));
    assert_eq!(code, Some(1), "{}", stderr(&out));
    assert!(
        err.contains(&format!("database \"{name}\" does not exist"))
            && err.contains(&format!("create it (`createdb {name}`")),
        "the hint: {err}"
    );
}

// --- the Jobs API -------------------------------------------------------------------------------

#[test]
fn a_base_url_with_a_wrong_path_says_the_base_url_is_likely_wrong() {
    let rt = common::runtime();
    let sim = rt.block_on(common::start_sim(SimConfig::default()));
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/api/v2", sim.base_url());
    let env = [
        ("JOBSYNC_API__TOKEN", "dev-token"),
        ("JOBSYNC_API__BASE_URL", base.as_str()),
    ];
    let url = sqlite_url(dir.path());
    let out = jobsync(dir.path(), &["--database-url", &url, "--once"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(
        err.contains("api.base_url is likely wrong")
            && err.contains("the API root, e.g. https://api.example.com")
            && err.contains("jobsync appends /j/jobs"),
        "the hint: {err}"
    );
    assert!(err.contains("/api/v2/j/jobs"), "names the URL asked: {err}");
    // `check` says the same.
    let out = jobsync(dir.path(), &["--database-url", &url, "check"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("api.base_url is likely wrong"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_says_at_once_that_an_api_refusing_connections_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let env = [
        ("JOBSYNC_API__TOKEN", "dev-token"),
        ("JOBSYNC_API__BASE_URL", "http://127.0.0.1:1"),
    ];
    let started = Instant::now();
    let out = jobsync(dir.path(), &["--database-url", &url, "check"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no long retries"
    );
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL api"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("unreachable")
            && line.contains("connection refused")
            && line.contains("check api.base_url and the network"),
        "{line}"
    );
}

#[test]
fn check_gives_a_silent_api_two_tries_of_five_seconds() {
    // A port that takes connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, accepted) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
            let _ = tx.send(());
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let base = format!("http://{addr}");
    let env = [
        ("JOBSYNC_API__TOKEN", "dev-token"),
        ("JOBSYNC_API__BASE_URL", base.as_str()),
    ];
    let started = Instant::now();
    let out = jobsync(dir.path(), &["--database-url", &url, "check"], &env);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(accepted.try_iter().count(), 2, "two tries");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "two tries of 5 s, not 8 of 30 s: {took:?}"
    );
    let text = stdout(&out);
    assert!(
        text.contains("unreachable")
            && text.contains("no answer within 5s")
            && text.contains("check api.base_url and the network"),
        "{text}"
    );
}

#[test]
fn a_run_against_an_api_that_is_down_ends_in_one_short_line_and_logs_its_retries() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let env = [
        ("JOBSYNC_API__TOKEN", "dev-token"),
        ("JOBSYNC_API__BASE_URL", "http://127.0.0.1:1"),
        ("JOBSYNC_API__MAX_ATTEMPTS", "3"),
    ];
    let out = jobsync(dir.path(), &["--database-url", &url, "--once"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(
        err.contains("connection refused")
            && err.contains("127.0.0.1:1")
            && err.contains("api.base_url"),
        "the cause and what to check: {err}"
    );
    assert!(!err.contains("error sending request"), "{err}");
    assert!(err.len() < 220, "short: {} characters: {err}", err.len());
    // Each retry is logged at WARN, saying which try of how many it was.
    let retries: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "API request failed, retrying")
        .collect();
    assert_eq!(retries.len(), 2, "{}", stderr(&out));
    assert_eq!(retries[0]["level"], "WARN");
    assert_eq!(
        (&retries[0]["attempt"], &retries[0]["max_attempts"]),
        (&serde_json::json!(1), &serde_json::json!(3))
    );
    assert!(
        retries[0]["error"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{:?}",
        retries[0]
    );
}

// --- configuration ------------------------------------------------------------------------------

#[test]
fn a_toml_syntax_error_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobsync.toml");
    std::fs::write(
        &file,
        "[api]\nbase_url = \"http://127.0.0.1:8080\ntoken = \"t\"\n",
    )
    .unwrap();
    let out = jobsync(
        dir.path(),
        &[
            "--config",
            "jobsync.toml",
            "--database-url",
            "sqlite://j.db",
            "status",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = error_line(&out);
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    assert!(
        err.contains("the configuration file jobsync.toml has a syntax error at line 2"),
        "{err}"
    );
    assert!(!err.contains("missing configuration"), "{err}");
}

#[test]
fn api_token_and_token_file_both_set_say_keep_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t\n").unwrap();
    let out = jobsync(
        dir.path(),
        &["--database-url", "sqlite://j.db", "--once"],
        &[
            ("JOBSYNC_API__TOKEN", "t"),
            ("JOBSYNC_API__TOKEN_FILE", "token"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(
        err.contains("api.token and api.token_file are both set: keep one"),
        "{err}"
    );
    assert!(!err.contains("missing configuration"), "{err}");
}

// --- outbox retry -------------------------------------------------------------------------------

#[test]
fn outbox_retry_without_ids_mentions_both_forms() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let out = jobsync(
        dir.path(),
        &["--database-url", &url, "outbox", "retry"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(
        err.contains("give --id N (one or more) or --failed"),
        "{err}"
    );
}

#[test]
fn outbox_retry_of_rows_that_are_not_failed_exits_1_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    {
        let db = Db::open(&url).unwrap();
        let mut c = db.conn().unwrap();
        let row = |reference: &str| jobsync::db::models::NewOutboxRow {
            op: "create".into(),
            campaign: Some(28),
            reference: Some(reference.into()),
            job_id: None,
            payload: "{}".into(),
        };
        outbox::insert(&mut c, &[row("a"), row("b")]).unwrap();
        let failed = outbox::RowUpdate::failed("bulk/create answered 400".into(), Some(400));
        outbox::update(&mut c, &[1], &failed).unwrap();
    }
    let args = [
        "--database-url",
        &url,
        "outbox",
        "retry",
        "--id",
        "1",
        "--id",
        "2",
        "--id",
        "999",
    ];
    let out = jobsync(dir.path(), &args, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("re-queued 1 failed row(s)"),
        "{}",
        stdout(&out)
    );
    let err = error_line(&out);
    assert!(
        err.contains("2 (status is pending)") && err.contains("999 (no such row)"),
        "{err}"
    );
    // Alone, an unknown id is an error too, not a silent success.
    let out = jobsync(
        dir.path(),
        &["--database-url", &url, "outbox", "retry", "--id", "999"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(error_line(&out).contains("999 (no such row)"));
}

// --- import -------------------------------------------------------------------------------------

#[test]
fn a_csv_piped_as_ndjson_says_add_format_csv() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let mut child = command(dir.path(), &["--database-url", &url, "import", "-"], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"op,campaign,reference,job_id,payload\nunqueue,,,5,\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(err.contains("stdin:1"), "{err}");
    assert!(err.contains("if this is CSV, add --format csv"), "{err}");
}

#[test]
fn a_latin1_file_is_named_and_the_fix_given() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("crm.csv"),
        b"op,campaign,reference,job_id,payload\ncreate,28,Fran\xe7ois,,\n",
    )
    .unwrap();
    let out = jobsync(
        dir.path(),
        &[
            "--database-url",
            &sqlite_url(dir.path()),
            "import",
            "crm.csv",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(
        err.contains("crm.csv:2") && err.contains("save the file as UTF-8"),
        "{err}"
    );
}

// --- simulate and demo --------------------------------------------------------------------------

/// Jobs per campaign that `jobsync simulate ARGS` serves.
fn simulated_jobs(args: &[&str]) -> std::collections::BTreeMap<i64, usize> {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(dir.path(), &["simulate", "--listen", "127.0.0.1:0"], &[])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let rt = common::runtime();
    let state: serde_json::Value = rt.block_on(async {
        reqwest::get(format!("http://{addr}/_sim/state"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let _ = child.kill();
    let _ = child.wait();
    let jobs = match state {
        serde_json::Value::Array(jobs) => jobs,
        other => other["jobs"].as_array().cloned().expect("jobs"),
    };
    let mut per_campaign = std::collections::BTreeMap::new();
    for job in jobs {
        *per_campaign
            .entry(job["campaign"].as_i64().unwrap())
            .or_default() += 1;
    }
    per_campaign
}

#[test]
fn simulate_alone_serves_two_campaigns_of_500_jobs() {
    assert_eq!(
        simulated_jobs(&[]),
        [(28, 500), (29, 500)].into_iter().collect()
    );
    assert!(simulated_jobs(&["--jobs-per-campaign", "0"]).is_empty());
}

#[test]
fn the_demo_counts_what_it_stored_prints_runnable_commands_and_cleans_up_its_locks() {
    let dir = tempfile::tempdir().unwrap();
    let out = jobsync(dir.path(), &["demo"], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("run #1 ok (full): pulled 1000 jobs, 1000 changes"),
        "a backfill of 1,000 jobs pulls 1,000: {text}"
    );
    for lock in ["jobsync-demo.db.lock", "jobsync-demo.db.migrate.lock"] {
        assert!(!dir.path().join(lock).exists(), "{lock} is left behind");
    }
    assert!(dir.path().join("jobsync-demo.db").exists());
    assert!(text.contains("README.md § Quick start"), "{text}");
    // The commands it suggests run as written, from where it ran: the binary by its own path,
    // since `jobsync` need not be on the PATH.
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_jobsync")).unwrap();
    let status = text
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with(" status"))
        .unwrap_or_else(|| panic!("a status command: {text}"));
    assert!(
        status.starts_with(&exe.display().to_string()),
        "{status} starts with {}",
        exe.display()
    );
    let ran = Command::new("sh")
        .arg("-c")
        .arg(status)
        .current_dir(dir.path())
        .env_remove("JOBSYNC_DATABASE__URL")
        .output()
        .unwrap();
    assert_eq!(ran.status.code(), Some(0), "{status}: {}", stderr(&ran));
    assert!(stdout(&ran).contains("1002"), "{}", stdout(&ran));
}
