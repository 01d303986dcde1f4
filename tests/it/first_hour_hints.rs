//! The first hour, continued (issue 27): a newcomer's configuration mistakes end in a hint that
//! names the fix, and two commands show what jobsync will use — `config show` (each key, its
//! value and its layer, secrets masked) and `migrate --status` (applied and pending migrations,
//! nothing changed). The real binary; each test starts from the user's mistake.

use crate::common;
use crate::common::{run_clean as jobsync, stderr_of as stderr, stdout_of as stdout};
// Hints grouped by where the mistake shows: talking to the API, the database, the command line.
mod api;
mod cli;
mod db;

use std::path::Path;
use std::process::{Command, Output};

/// Asserts exit code 2 and one `error: …` line holding each of `expected`; returns the line.
fn usage_error(out: &Output, expected: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for part in expected {
        assert!(lines[0].contains(part), "expected {part:?} in {err}");
    }
    lines[0].to_string()
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("j.db").display())
}

// --- "did you mean" -------------------------------------------------------------------------------

#[test]
fn a_single_underscore_variable_is_refused_naming_the_double_underscore_one() {
    let dir = tempfile::tempdir().unwrap();
    let secret_url = "postgres://crm:Pa55-w0rd-kept@db.internal/crm";
    let out = jobsync(
        dir.path(),
        &["status"],
        &[("JOBSYNC_DATABASE_URL", secret_url)],
    );
    let err = usage_error(
        &out,
        &[
            "JOBSYNC_DATABASE_URL",
            "did you mean JOBSYNC_DATABASE__URL?",
            "two underscores",
        ],
    );
    assert!(
        !err.contains("Pa55-w0rd-kept"),
        "the value is not shown: {err}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the default SQLite file was not used instead"
    );
    let out = jobsync(dir.path(), &["status"], &[("JOBSYNC_APITOKEN", "t")]);
    usage_error(&out, &["did you mean JOBSYNC_API__TOKEN?"]);
}

#[test]
fn kubernetes_service_variables_stay_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let out = jobsync(
        dir.path(),
        &["--database-url", &url, "migrate", "--status"],
        &[
            ("JOBSYNC_SERVICE_HOST", "10.0.0.7"),
            ("JOBSYNC_SERVICE_PORT", "9090"),
            ("JOBSYNC_PORT", "tcp://10.0.0.7:9090"),
            ("JOBSYNC_PORT_9090_TCP_ADDR", "10.0.0.7"),
            // A Service named `jobsync-api`.
            ("JOBSYNC_API_SERVICE_HOST", "10.0.0.8"),
            ("JOBSYNC_API_PORT", "tcp://10.0.0.8:80"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_misspelt_key_in_a_file_names_the_key_meant() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("jobsync.toml"),
        "[api]\ntokenfile = \"t\"\n",
    )
    .unwrap();
    let url = sqlite_url(dir.path());
    let args = ["--config", "jobsync.toml", "--database-url", &url, "status"];
    let out = jobsync(dir.path(), &args, &[]);
    usage_error(
        &out,
        &[
            "`api.tokenfile`",
            "jobsync.toml",
            "did you mean `api.token_file`?",
        ],
    );
    std::fs::write(dir.path().join("jobsync.toml"), "[databse]\nurl = \"x\"\n").unwrap();
    let out = jobsync(dir.path(), &args, &[]);
    usage_error(&out, &["unknown section", "did you mean `[database]`?"]);
}

#[test]
fn a_misspelt_key_in_the_environment_names_the_variable_meant() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let out = jobsync(
        dir.path(),
        &["--database-url", &url, "status"],
        &[("JOBSYNC_API__TOKENFILE", "/run/secrets/token")],
    );
    usage_error(
        &out,
        &[
            "`api.tokenfile`",
            "JOBSYNC_API__TOKENFILE",
            "did you mean JOBSYNC_API__TOKEN_FILE?",
        ],
    );
}

// --- check's exit codes ---------------------------------------------------------------------------

#[test]
fn check_without_a_token_is_a_configuration_error_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let out = jobsync(dir.path(), &["--database-url", &url, "check"], &[]);
    usage_error(&out, &["configuration check failed"]);
    let shown = stdout(&out);
    assert!(
        shown.contains("FAIL configuration") && shown.contains("set JOBSYNC_API__TOKEN"),
        "the fix: {shown}"
    );
    assert!(
        shown.contains("ok   database"),
        "the database is still checked: {shown}"
    );

    std::fs::write(dir.path().join("token"), "t\n").unwrap();
    let out = jobsync(
        dir.path(),
        &["--database-url", &url, "check"],
        &[
            ("JOBSYNC_API__TOKEN", "t"),
            ("JOBSYNC_API__TOKEN_FILE", "token"),
        ],
    );
    usage_error(&out, &["configuration check failed"]);
    assert!(stdout(&out).contains("keep one"), "{}", stdout(&out));
}

// --- flags that mean nothing ----------------------------------------------------------------------

#[test]
fn flags_that_mean_nothing_for_the_command_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let out = jobsync(
        dir.path(),
        &["--once", "--database-url", &url, "status"],
        &[],
    );
    usage_error(&out, &["--once applies to the sync only"]);
    assert!(stdout(&out).is_empty(), "the status was not printed");
    let out = jobsync(dir.path(), &["demo", "--force"], &[]);
    usage_error(&out, &["demo --force only matters with --database-url"]);
}

// --- config show ----------------------------------------------------------------------------------

/// The `(value, source)` of `key` in `config show`'s output.
fn shown<'a>(output: &'a str, key: &str) -> (&'a str, &'a str) {
    let line = output
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("{key} in {output}"));
    let rest = line[key.len()..].trim_start();
    let (value, source) = rest.split_once("  ").expect("value and source");
    (value.trim(), source.trim())
}

#[test]
fn config_show_names_each_values_layer_and_never_prints_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobsync.toml");
    std::fs::write(
        &file,
        "[api]\ntimeout_secs = 7\ntoken = \"tok-from-the-file-123\"\n",
    )
    .unwrap();
    let file_arg = file.display().to_string();
    let out = jobsync(
        dir.path(),
        &[
            "--config",
            &file_arg,
            "--database-url",
            "postgres://crm:db-pa55word@db.internal/crm",
            "config",
            "show",
        ],
        &[
            ("JOBSYNC_SYNC__CAMPAIGNS", "28,29"),
            (
                "JOBSYNC_API__BASE_URL",
                "https://gw:gw-pa55word@api.example.com/?api_key=k3y-in-query",
            ),
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(shown(&text, "retention.runs_days"), ("30", "default"));
    assert_eq!(
        shown(&text, "api.timeout_secs"),
        ("7", format!("file {file_arg}").as_str())
    );
    assert_eq!(
        shown(&text, "sync.campaigns"),
        ("[28,29]", "env JOBSYNC_SYNC__CAMPAIGNS")
    );
    assert_eq!(
        shown(&text, "database.url"),
        (
            "\"postgres://crm:***@db.internal/crm\"",
            "flag --database-url"
        )
    );
    assert_eq!(
        shown(&text, "api.base_url"),
        (
            "\"https://gw:***@api.example.com/?api_key=***\"",
            "env JOBSYNC_API__BASE_URL"
        )
    );
    assert_eq!(
        shown(&text, "api.token"),
        ("***", format!("file {file_arg}").as_str())
    );
    assert_eq!(shown(&text, "api.token_file"), ("(unset)", "default"));
    let everything = format!("{text}{}", stderr(&out));
    for secret in [
        "tok-from-the-file-123",
        "db-pa55word",
        "gw-pa55word",
        "k3y-in-query",
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked:\n{everything}"
        );
    }
}

#[test]
fn config_show_of_an_invalid_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = jobsync(
        dir.path(),
        &["config", "show"],
        &[("JOBSYNC_API__BULK_SIZE", "5000")],
    );
    usage_error(
        &out,
        &[
            "`api.bulk_size`",
            "JOBSYNC_API__BULK_SIZE",
            "between 1 and 1000",
        ],
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

// --- migrate --status -----------------------------------------------------------------------------

fn migrations() -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    names.sort();
    names
}

/// `migrate --status`: its first line and each migration's state, in order.
fn migrate_status(dir: &Path, url: &str) -> (String, Vec<(String, String)>) {
    let out = jobsync(dir, &["--database-url", url, "migrate", "--status"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let head = lines.next().unwrap_or_default().to_string();
    let states = lines
        .map(|l| {
            let (state, name) = l.split_once(' ').expect("state and name");
            (name.trim().to_string(), state.to_string())
        })
        .collect();
    (head, states)
}

fn all(state: &str) -> Vec<(String, String)> {
    migrations()
        .into_iter()
        .map(|m| (m, state.to_string()))
        .collect()
}

/// Undoes the record (not the effect) of the last migration, as if it were new.
fn forget_last_migration(url: &str) {
    use diesel::RunQueryDsl;
    let db = jobsync::db::Db::connect(url).unwrap();
    let mut conn = db.conn().unwrap();
    let last = migrations().pop().unwrap();
    let version: String = last
        .chars()
        .take_while(|c| *c != '_')
        .filter(char::is_ascii_digit)
        .collect();
    let sql = format!("DELETE FROM __diesel_schema_migrations WHERE version = '{version}'");
    let deleted = jobsync::with_conn!(&mut conn, |c| diesel::sql_query(&sql).execute(c)).unwrap();
    assert_eq!(deleted, 1, "{sql}");
}

/// A fresh database lists every migration pending, a migrated one every migration applied, and
/// one a migration behind that one pending; `check_untouched` holds after the first listing.
fn migrate_status_lists_applied_and_pending(
    dir: &Path,
    url: &str,
    fresh: &str,
    check_untouched: impl Fn(),
) {
    let (head, states) = migrate_status(dir, url);
    assert!(head.contains(fresh), "{head}");
    assert_eq!(states, all("pending"));
    check_untouched();
    let out = jobsync(dir, &["--database-url", url, "migrate"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (head, states) = migrate_status(dir, url);
    assert!(head.contains("none pending (up to date)"), "{head}");
    assert_eq!(states, all("applied"));
    forget_last_migration(url);
    let (head, states) = migrate_status(dir, url);
    assert!(head.contains("1 pending"), "{head}");
    let mut expected = all("applied");
    expected.last_mut().unwrap().1 = "pending".into();
    assert_eq!(states, expected);
}

#[test]
fn migrate_status_on_sqlite_does_not_create_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    migrate_status_lists_applied_and_pending(
        dir.path(),
        &url,
        &format!(
            "no SQLite database at {}: every migration pending",
            dir.path().join("j.db").display()
        ),
        || {
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                0,
                "no file was created"
            )
        },
    );
}

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn migrate_status_on_postgres_creates_no_table() {
    let Some((url, _schema)) = common::fresh_postgres_schema() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tables = || {
        use diesel::{Connection, PgConnection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = PgConnection::establish(&url).unwrap();
        diesel::sql_query(
            "SELECT count(*) AS n FROM information_schema.tables \
             WHERE table_schema = current_schema()",
        )
        .get_result::<Count>(&mut conn)
        .unwrap()
        .n
    };
    migrate_status_lists_applied_and_pending(dir.path(), &url, "0 applied", || {
        assert_eq!(tables(), 0, "no table was created")
    });
}

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn migrate_status_on_postgres_does_not_create_an_absent_schema() {
    use diesel::{Connection, PgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        found: bool,
    }
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = format!("status_absent_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let out = jobsync(
        dir.path(),
        &["--database-url", &url, "migrate", "--status"],
        &[("JOBSYNC_DATABASE__SCHEMA", &schema)],
    );
    let mut conn = PgConnection::establish(&url).unwrap();
    let created = diesel::sql_query(format!(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{schema}') AS found"
    ))
    .get_result::<Found>(&mut conn)
    .unwrap()
    .found;
    diesel::sql_query(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut conn)
        .unwrap();
    assert!(!created, "the schema was not created");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "no schema `{schema}` (database.schema) in the database: every migration pending"
        )),
        "{text}"
    );
    assert_eq!(text.lines().skip(1).count(), migrations().len(), "{text}");
}
