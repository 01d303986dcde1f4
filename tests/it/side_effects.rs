//! A runtime that tells the truth and leaves nothing behind: a wrong database path fails before
//! any file is written, a database password never reaches any output, `demo` does not write into
//! a database it did not create, `database.url_file` reads the URL from a Secret mount, and
//! PostgreSQL statements time out.

use crate::common;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PASSWORD: &str = "Sup3rSecretPw";

/// The real binary with a clean environment: only `env`, an API nobody listens on, no server.
fn jobsync(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobsync"));
    cmd.current_dir(dir).args(args);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("JOBSYNC_")) {
        cmd.env_remove(key);
    }
    cmd.env_remove("RUST_LOG")
        .env("JOBSYNC_API__BASE_URL", "http://127.0.0.1:1")
        .env("JOBSYNC_API__TOKEN", "dev-token")
        .env("JOBSYNC_API__MAX_ATTEMPTS", "1")
        .env("JOBSYNC_API__TIMEOUT_SECS", "2")
        .env("JOBSYNC_SERVER__LISTEN", "")
        .env("JOBSYNC_LOG__FORMAT", "json")
        .envs(env.iter().copied());
    cmd.output().expect("run jobsync")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn everything(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Files in `dir`, by name.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// --- a wrong SQLite path ------------------------------------------------------------------------

#[test]
fn a_text_file_is_refused_by_name_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    let text = "these are not the rows you are looking for\n".repeat(200);
    std::fs::write(&notes, &text).unwrap();
    let url = sqlite_url(&notes);
    for args in [
        vec!["--database-url", &url, "status"],
        vec!["--database-url", &url, "migrate"],
        vec!["--database-url", &url, "--once"],
        vec!["--database-url", &url, "outbox", "list"],
    ] {
        let started = Instant::now();
        let out = jobsync(dir.path(), &args, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", everything(&out));
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.contains(&notes.display().to_string()) && err.contains("not a SQLite database"),
            "{args:?}: the error names the file and what is wrong with it: {err}"
        );
        assert!(err.contains("database.url"), "{args:?}: and the fix: {err}");
        // Fails at once, not after the pool's 30 s of retries.
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?}");
        // Nothing was written next to it, nor into it. (`notes.txt.lock` is created by the
        // migration lock; this holds because the file is refused before migrations start.)
        assert_eq!(files_in(dir.path()), ["notes.txt"], "{args:?}");
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), text);
    }
}

#[test]
fn a_directory_or_a_missing_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let as_dir = sqlite_url(dir.path());
    let out = jobsync(dir.path(), &["--database-url", &as_dir, "status"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    let missing = dir.path().join("nowhere/j.db");
    let out = jobsync(
        dir.path(),
        &["--database-url", &sqlite_url(&missing), "status"],
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&dir.path().join("nowhere").display().to_string()),
        "{err}"
    );
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

// --- database passwords -------------------------------------------------------------------------

/// URLs whose password must not appear anywhere: a wrong password against the real server, a
/// closed port, the password as a query parameter, a malformed URL, libpq's keyword form.
fn secret_urls() -> Vec<String> {
    vec![
        format!("postgres://jobsync:{PASSWORD}@127.0.0.1/jobsync_test"),
        format!("postgres://u:{PASSWORD}@127.0.0.1:1/db"),
        format!("postgres://u@127.0.0.1:1/db?sslmode=disable&password={PASSWORD}"),
        format!("postgresql://u@127.0.0.1:1/db?sslpassword={PASSWORD}"),
        format!("postgres://u:{PASSWORD}@[::1/db"),
        format!("postgres://u:{PASSWORD}%zz@127.0.0.1:1/db"),
        format!("postgres://u:{PASSWORD}@127.0.0.1:1/d%zzb"),
        format!("host=127.0.0.1 password={PASSWORD}"),
        format!("mysql://root:{PASSWORD}@127.0.0.1/db"),
    ]
}

const COMMANDS: [&[&str]; 5] = [
    &["status"],
    &["migrate"],
    &["check"],
    &["demo"],
    &["--once"],
];

fn assert_no_password(out: &Output, what: &str) {
    let all = everything(out);
    assert!(
        !all.contains(PASSWORD),
        "{what}: the password leaked:\n{all}"
    );
    assert!(!all.contains("panicked"), "{what}: {all}");
    assert_ne!(out.status.code(), Some(0), "{what}: {all}");
    assert!(!all.trim().is_empty(), "{what}: says something");
}

#[test]
fn no_output_shows_a_database_password_given_by_flag_or_environment() {
    let dir = tempfile::tempdir().unwrap();
    for url in secret_urls() {
        for command in COMMANDS {
            let mut args = vec!["--database-url", url.as_str()];
            args.extend_from_slice(command);
            let out = jobsync(dir.path(), &args, &[("RUST_LOG", "debug")]);
            assert_no_password(&out, &format!("{args:?}"));
            if command != ["demo"] {
                let out = jobsync(
                    dir.path(),
                    command,
                    &[("RUST_LOG", "debug"), ("JOBSYNC_DATABASE__URL", &url)],
                );
                assert_no_password(&out, &format!("JOBSYNC_DATABASE__URL={url} {command:?}"));
            }
        }
    }
}

#[test]
fn no_output_shows_a_database_password_read_from_url_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("database-url");
    let file_arg = file.display().to_string();
    for url in secret_urls() {
        std::fs::write(&file, format!("{url}\n")).unwrap();
        // `demo` uses its own file unless given --database-url.
        for command in COMMANDS.iter().filter(|c| **c != ["demo"]) {
            let out = jobsync(
                dir.path(),
                command,
                &[
                    ("RUST_LOG", "debug"),
                    ("JOBSYNC_DATABASE__URL_FILE", &file_arg),
                ],
            );
            assert_no_password(&out, &format!("url_file holding {url}: {command:?}"));
        }
    }
}

#[test]
fn a_malformed_postgres_url_is_a_configuration_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://u:{PASSWORD}@[::1/db");
    let out = jobsync(dir.path(), &["--database-url", &url, "status"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("`database.url`") && err.contains("unparseable") && !err.contains(PASSWORD),
        "{err}"
    );
}

#[test]
fn a_connection_error_keeps_the_user_and_host_but_not_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://someone:{PASSWORD}@127.0.0.1:1/db");
    let out = jobsync(dir.path(), &["--database-url", &url, "status"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("postgres://someone:***@127.0.0.1:1/db"),
        "{err}"
    );
}

// --- demo on a database it did not write --------------------------------------------------------

fn demo(dir: &Path, url: &str, force: bool) -> Output {
    let mut args = vec!["--database-url", url, "demo"];
    if force {
        args.push("--force");
    }
    jobsync(dir, &args, &[])
}

#[test]
fn demo_refuses_a_database_holding_runs_it_did_not_write() {
    use jobsync::db::repo::runs;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("production.db");
    let url = sqlite_url(&path);
    {
        let db = jobsync::db::Db::open(&url).unwrap();
        let mut c = db.conn().unwrap();
        runs::start(&mut c, "once", jobsync::db::Ts::now()).unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let out = demo(dir.path(), &url, false);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{}", everything(&out));
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("--force") && err.contains("1 sync run") && err.contains("demo"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the database is untouched"
    );

    let out = demo(dir.path(), &url, true);
    assert_eq!(out.status.code(), Some(0), "{}", everything(&out));
    assert!(
        stdout(&out).contains("ok (incremental)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn demo_refuses_a_database_holding_outbox_rows_it_did_not_write() {
    use jobsync::db::models::NewOutboxRow;
    use jobsync::db::repo::outbox;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    let url = sqlite_url(&path);
    {
        let db = jobsync::db::Db::open(&url).unwrap();
        let mut c = db.conn().unwrap();
        let row = NewOutboxRow {
            op: "create".into(),
            campaign: Some(28),
            reference: Some("real-customer".into()),
            job_id: None,
            payload: "{}".into(),
        };
        outbox::insert(&mut c, &[row]).unwrap();
    }
    let out = demo(dir.path(), &url, false);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{}", everything(&out));
    assert!(
        err.contains("1 outbox row") && err.contains("--force"),
        "{err}"
    );
}

#[test]
fn demo_runs_on_a_fresh_path_and_again_on_its_own_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir.path().join("tour.db"));
    let out = demo(dir.path(), &url, false);
    assert_eq!(out.status.code(), Some(0), "{}", everything(&out));
    assert!(stdout(&out).contains("ok (full)"), "{}", stdout(&out));
    // The demo's own database, written by the first tour: a second tour is welcome.
    let out = demo(dir.path(), &url, false);
    assert_eq!(out.status.code(), Some(0), "{}", everything(&out));
}

// --- database.url_file --------------------------------------------------------------------------

#[test]
fn url_file_names_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("from-secret.db");
    let file = dir.path().join("url");
    std::fs::write(&file, format!("  {}\n", sqlite_url(&db_path))).unwrap();
    let file_arg = file.display().to_string();
    let out = jobsync(
        dir.path(),
        &["migrate"],
        &[("JOBSYNC_DATABASE__URL_FILE", &file_arg)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", everything(&out));
    assert!(db_path.exists(), "{:?}", files_in(dir.path()));
    assert!(!dir.path().join("jobsync.db").exists());

    // From a configuration file too.
    let toml = dir.path().join("jobsync.toml");
    std::fs::write(&toml, format!("[database]\nurl_file = {file_arg:?}\n")).unwrap();
    let out = jobsync(
        dir.path(),
        &["--config", &toml.display().to_string(), "migrate"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", everything(&out));
    assert!(stdout(&out).contains("from-secret.db"), "{}", stdout(&out));
}

#[test]
fn the_database_url_flag_wins_over_url_file() {
    let dir = tempfile::tempdir().unwrap();
    let flagged = dir.path().join("flag.db");
    let out = jobsync(
        dir.path(),
        &["--database-url", &sqlite_url(&flagged), "migrate"],
        &[("JOBSYNC_DATABASE__URL_FILE", "/nonexistent/secret/url")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", everything(&out));
    assert!(flagged.exists());
}

fn assert_config_error(out: &Output, expected: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{}", everything(out));
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for part in expected {
        assert!(err.contains(part), "expected {part:?} in {err}");
    }
    assert!(!err.contains(PASSWORD), "{err}");
}

#[test]
fn url_and_url_file_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("url");
    std::fs::write(&file, format!("postgres://u:{PASSWORD}@db/x")).unwrap();
    let file_arg = file.display().to_string();
    let other = sqlite_url(&dir.path().join("j.db"));
    let out = jobsync(
        dir.path(),
        &["status"],
        &[
            ("JOBSYNC_DATABASE__URL", &other),
            ("JOBSYNC_DATABASE__URL_FILE", &file_arg),
        ],
    );
    assert_config_error(
        &out,
        &[
            "database.url",
            "database.url_file",
            "keep one",
            "JOBSYNC_DATABASE__URL",
        ],
    );
    // A database.url written in a configuration file counts as set too.
    let toml = dir.path().join("jobsync.toml");
    std::fs::write(&toml, format!("[database]\nurl = {other:?}\n")).unwrap();
    let toml_arg = toml.display().to_string();
    let out = jobsync(
        dir.path(),
        &["--config", &toml_arg, "status"],
        &[("JOBSYNC_DATABASE__URL_FILE", &file_arg)],
    );
    assert_config_error(&out, &["keep one", &toml_arg]);
    assert!(files_in(dir.path()).iter().all(|f| f != "j.db"));
}

#[test]
fn an_unreadable_empty_or_invalid_url_file_names_the_key_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let missing_arg = missing.display().to_string();
    let out = jobsync(
        dir.path(),
        &["status"],
        &[("JOBSYNC_DATABASE__URL_FILE", &missing_arg)],
    );
    assert_config_error(
        &out,
        &[
            "`database.url_file`",
            &missing_arg,
            "JOBSYNC_DATABASE__URL_FILE",
            "cannot be read",
        ],
    );

    let empty = dir.path().join("empty");
    std::fs::write(&empty, " \n").unwrap();
    let empty_arg = empty.display().to_string();
    let out = jobsync(
        dir.path(),
        &["status"],
        &[("JOBSYNC_DATABASE__URL_FILE", &empty_arg)],
    );
    assert_config_error(&out, &["`database.url_file`", &empty_arg, "empty"]);

    for bad in [
        format!("postgres://u:{PASSWORD}@[::1/db"),
        format!("host=db password={PASSWORD}"),
        format!("mysql://root:{PASSWORD}@db/x"),
    ] {
        let file = dir.path().join("bad");
        std::fs::write(&file, &bad).unwrap();
        let file_arg = file.display().to_string();
        let out = jobsync(
            dir.path(),
            &["status"],
            &[("JOBSYNC_DATABASE__URL_FILE", &file_arg)],
        );
        assert_config_error(&out, &["`database.url_file`", &file_arg]);
    }
    assert_eq!(files_in(dir.path()), ["bad", "empty"]);
}

// --- PostgreSQL statement_timeout ---------------------------------------------------------------

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn pooled_postgres_connections_carry_the_statement_timeout() {
    use diesel::prelude::*;
    use jobsync::db::{Conn, Db, DbOptions};
    let Some((url, _schema)) = common::fresh_postgres_schema() else {
        return;
    };
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement_timeout: String,
    }
    let show = |db: &Db| {
        let mut conn = db.conn().unwrap();
        let Conn::Pg(c) = &mut conn else {
            panic!("a PostgreSQL connection")
        };
        diesel::sql_query("SHOW statement_timeout")
            .get_result::<Setting>(&mut **c)
            .unwrap()
            .statement_timeout
    };
    let options = DbOptions {
        statement_timeout: Some(Duration::from_secs(7)),
        ..DbOptions::default()
    };
    let db = Db::open_with(&url, options).unwrap();
    // Every connection of the pool, not only the first.
    let held: Vec<Conn> = (0..3).map(|_| db.conn().unwrap()).collect();
    assert_eq!(show(&db), "7s");
    drop(held);
    assert_eq!(show(&db), "7s");
    assert_eq!(show(&Db::connect(&url).unwrap()), "10min", "the default");
    // A statement that outlives it fails instead of hanging.
    let short = Db::connect_with(
        &url,
        DbOptions {
            statement_timeout: Some(Duration::from_millis(200)),
            ..DbOptions::default()
        },
    )
    .unwrap();
    let mut conn = short.conn().unwrap();
    let Conn::Pg(c) = &mut conn else {
        unreachable!()
    };
    let err = diesel::sql_query("SELECT pg_sleep(5)")
        .execute(&mut **c)
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
}

// --- an API token echoed back by a gateway -------------------------------------------------------

const TOKEN: &str = "Tok-EchoedBack-8f3a2c";

/// A gateway that echoes the request's `Authorization` header in its 502 answers: to bulk creates
/// always, and to listings once `fail_listings` is set.
async fn echoing_gateway(fail_listings: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use std::sync::atomic::Ordering;
    let echo = |headers: HeaderMap| {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (
            StatusCode::BAD_GATEWAY,
            [(
                header::DATE,
                chrono::Utc::now()
                    .format("%a, %d %b %Y %H:%M:%S GMT")
                    .to_string(),
            )],
            format!(
                "{{\"message\": \"upstream refused: bad auth {auth} (token {})\"}}",
                auth.trim_start_matches("Bearer ")
            ),
        )
            .into_response()
    };
    let app = axum::Router::new()
        .route(
            "/j/jobs",
            get(move |headers: HeaderMap| async move {
                if fail_listings.load(Ordering::SeqCst) {
                    return echo(headers);
                }
                let date = chrono::Utc::now()
                    .format("%a, %d %b %Y %H:%M:%S GMT")
                    .to_string();
                (
                    [
                        (header::DATE, date),
                        (header::CONTENT_TYPE, "application/json".into()),
                    ],
                    "[]",
                )
                    .into_response()
            }),
        )
        .route(
            "/j/jobs/bulk/create",
            post(move |headers: HeaderMap| async move { echo(headers) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[test]
fn a_token_echoed_by_the_api_reaches_no_output_table_or_status() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let rt = common::runtime();
    let fail_listings = std::sync::Arc::new(AtomicBool::new(false));
    let api = rt.block_on(echoing_gateway(fail_listings.clone()));
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir.path().join("jobsync.db"));
    let env = [
        ("JOBSYNC_API__BASE_URL", api.as_str()),
        ("JOBSYNC_API__TOKEN", TOKEN),
        ("JOBSYNC_DATABASE__URL", url.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let file = dir.path().join("one.ndjson");
    std::fs::write(
        &file,
        r#"{"op":"create","campaign":28,"reference":"echo-1","payload":{"name":"A"}}"#,
    )
    .unwrap();
    let mut outputs = vec![jobsync(
        dir.path(),
        &["import", file.to_str().unwrap()],
        &env,
    )];
    // The create's answer echoes the token (the row is in doubt, its last_error quotes the
    // answer); then a listing's does (the run fails, its error quotes the answer).
    outputs.push(jobsync(dir.path(), &["--once"], &env));
    fail_listings.store(true, Ordering::SeqCst);
    outputs.push(jobsync(dir.path(), &["--once"], &env));
    outputs.push(jobsync(dir.path(), &["status"], &env));
    outputs.push(jobsync(dir.path(), &["outbox", "list"], &env));
    outputs.push(jobsync(dir.path(), &["check"], &env));
    let shown: String = outputs.iter().map(everything).collect();
    assert!(
        shown.contains("upstream refused: bad auth Bearer ***"),
        "the echo itself is reported, masked:\n{shown}"
    );
    assert!(!shown.contains(TOKEN), "the token leaked:\n{shown}");
    // Every text column of every table.
    let dump = std::process::Command::new("sqlite3")
        .arg(dir.path().join("jobsync.db"))
        .arg(".dump")
        .output()
        .expect("sqlite3 is installed");
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("upstream refused"),
        "the errors were recorded:\n{dump}"
    );
    assert!(
        !dump.contains(TOKEN),
        "the token is in the database:\n{dump}"
    );
}
