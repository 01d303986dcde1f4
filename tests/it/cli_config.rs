//! Configuration errors as an operator meets them: the real binary, one error class per test,
//! each a one-line message naming the key, the value and its source, with exit code 2.

use std::path::Path;
use std::process::{Command, Output};

fn jobsync(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobsync"));
    cmd.current_dir(dir).args(args);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("JOBSYNC_")) {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run jobsync")
}

/// Runs `status` on a fresh (migrated) SQLite file with the given environment.
fn status_with(env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("j.db").display());
    // `status` creates no database (issue 27).
    jobsync(dir.path(), &["--database-url", &url, "migrate"], &[]);
    let out = jobsync(dir.path(), &["--database-url", &url, "status"], env);
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_config_error(env: &[(&str, &str)], expected: &[&str]) {
    let (code, stderr) = status_with(env);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for part in expected {
        assert!(stderr.contains(part), "expected {part:?} in {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn out_of_range_value_names_key_value_and_environment_variable() {
    assert_config_error(
        &[("JOBSYNC_API__BULK_SIZE", "5000")],
        &[
            "`api.bulk_size`",
            "5000",
            "JOBSYNC_API__BULK_SIZE",
            "between 1 and 1000",
        ],
    );
}

#[test]
fn max_row_attempts_out_of_range_is_refused_not_wrapped() {
    for value in ["0", "1001", "4294967295"] {
        assert_config_error(
            &[("JOBSYNC_PUSH__MAX_ROW_ATTEMPTS", value)],
            &[
                "`push.max_row_attempts`",
                value,
                "JOBSYNC_PUSH__MAX_ROW_ATTEMPTS",
                "between 1 and 1000",
            ],
        );
    }
    for value in ["1", "1000"] {
        let (code, stderr) = status_with(&[("JOBSYNC_PUSH__MAX_ROW_ATTEMPTS", value)]);
        assert_eq!(code, 0, "{value}: {stderr}");
    }
}

#[test]
fn wrong_type_is_reported() {
    assert_config_error(
        &[("JOBSYNC_API__TIMEOUT_SECS", "soon")],
        &["`api.timeout_secs`", "soon", "JOBSYNC_API__TIMEOUT_SECS"],
    );
}

#[test]
fn unknown_key_is_reported_but_other_prefixed_variables_are_not_configuration() {
    assert_config_error(
        &[("JOBSYNC_SYNC__CAMPAGNS", "28")],
        &["`sync.campagns`", "unknown key"],
    );
    // Kubernetes injects JOBSYNC_PORT etc. for a Service named jobsync.
    let (code, stderr) = status_with(&[("JOBSYNC_PORT", "tcp://10.0.0.1:9090")]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn bad_cron_schedule_says_what_is_wrong() {
    assert_config_error(
        &[("JOBSYNC_SYNC__SCHEDULE", "*/5 * * * *")],
        &["`sync.schedule`", "6 fields", "0 */5 * * * *"],
    );
    assert_config_error(
        &[("JOBSYNC_SYNC__SCHEDULE", "0 */5 * * * nonsense")],
        &["`sync.schedule`", "not a valid cron expression"],
    );
}

#[test]
fn unknown_database_scheme_is_refused_not_turned_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = jobsync(
        dir.path(),
        &["--database-url", "mysql://db/x", "status"],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`database.url`") && stderr.contains("command-line flags"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file was created"
    );
}

#[test]
fn campaign_lists_accept_both_environment_forms_and_reject_junk() {
    assert_eq!(status_with(&[("JOBSYNC_SYNC__CAMPAIGNS", "28,29")]).0, 0);
    assert_eq!(status_with(&[("JOBSYNC_SYNC__CAMPAIGNS", "[28,29]")]).0, 0);
    assert_config_error(
        &[("JOBSYNC_SYNC__CAMPAIGNS", "28,x")],
        &["`sync.campaigns`", "`x`"],
    );
}

#[test]
fn config_file_values_name_the_file_and_flags_win_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobsync.toml");
    std::fs::write(&file, "[api]\nconcurrency = 0\n").unwrap();
    let file_arg = file.display().to_string();
    let out = jobsync(dir.path(), &["--config", &file_arg, "status"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("`api.concurrency`") && stderr.contains(&file_arg),
        "{stderr}"
    );
    // JOBSYNC_CONFIG names the file too, and is not itself a key.
    let out = jobsync(dir.path(), &["status"], &[("JOBSYNC_CONFIG", &file_arg)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`api.concurrency`"));
    let out = jobsync(dir.path(), &["--config", "missing.toml", "status"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn the_token_never_appears_in_errors_or_status() {
    let secret = "tok-very-secret-123";
    let (code, stderr) = status_with(&[
        ("JOBSYNC_API__TOKEN", secret),
        ("JOBSYNC_API__MAX_ATTEMPTS", "0"),
    ]);
    assert_eq!(code, 2);
    assert!(!stderr.contains(secret), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("j.db").display());
    jobsync(dir.path(), &["--database-url", &url, "migrate"], &[]);
    let out = jobsync(
        dir.path(),
        &["--database-url", &url, "status"],
        &[("JOBSYNC_API__TOKEN", secret)],
    );
    assert_eq!(out.status.code(), Some(0));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(secret), "{all}");
}

#[test]
fn migrate_works_from_the_command_line_and_twice_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("j.db").display());
    let first = jobsync(dir.path(), &["--database-url", &url, "migrate"], &[]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // Every migration of the repository, whatever their number.
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .count();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains(&format!("{migrations} applied")),
        "{stdout}"
    );
    let second = jobsync(dir.path(), &["--database-url", &url, "migrate"], &[]);
    assert!(String::from_utf8_lossy(&second.stdout).contains("0 applied"));
}

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn migrate_works_against_postgres_from_the_command_line() {
    let Ok(url) = std::env::var("JOBSYNC_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "JOBSYNC_TEST_POSTGRES_URL must be set under CI"
        );
        eprintln!("skipping PostgreSQL test: set JOBSYNC_TEST_POSTGRES_URL to run it");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = jobsync(dir.path(), &["--database-url", &url, "migrate"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("up to date") && !stdout.contains(":jobsync@"),
        "{stdout}"
    );
}

#[test]
fn prune_applies_the_retention_settings_and_keeps_failed_rows() {
    use jobsync::db::Db;
    use jobsync::db::models::NewOutboxRow;
    use jobsync::db::repo::{outbox, runs};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let url = format!("sqlite://{}", path.display());
    let db = Db::open(&url).unwrap();
    let mut c = db.conn().unwrap();
    let row = |reference: &str| NewOutboxRow {
        op: "create".into(),
        campaign: Some(28),
        reference: Some(reference.into()),
        job_id: None,
        payload: "{}".into(),
    };
    outbox::insert(&mut c, &[row("a"), row("b"), row("c")]).unwrap();
    let ids: Vec<i64> = outbox::list(&mut c, None, 10)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    let long_ago = jobsync::db::Ts::from(chrono::Utc::now() - chrono::Duration::days(40));
    let done = outbox::RowUpdate::done(Some(200), 1).as_of(long_ago);
    let failed = outbox::RowUpdate::failed("refused".into(), Some(400)).as_of(long_ago);
    outbox::update(&mut c, &ids[0..1], &done).unwrap();
    outbox::update(&mut c, &ids[1..2], &failed).unwrap();
    let old_run = runs::start(&mut c, "once", long_ago).unwrap();
    runs::finish(
        &mut c,
        old_run,
        &runs::RunOutcome {
            ok: true,
            ..Default::default()
        },
    )
    .unwrap();
    drop(c);
    let out = jobsync(dir.path(), &["--database-url", &url, "prune"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 done/superseded outbox rows, 1 runs"),
        "{stdout}"
    );
    let mut c = db.conn().unwrap();
    let left: Vec<String> = outbox::list(&mut c, None, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.status.to_string())
        .collect();
    assert_eq!(
        left,
        ["failed", "pending"],
        "failed rows are kept (newest first)"
    );
    assert!(runs::recent(&mut c, 10).unwrap().is_empty());
}
