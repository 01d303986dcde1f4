//! See the parent module: each test starts from the user's mistake and expects the fix named.
//!
//! The database a newcomer points jobsync at: a PostgreSQL role that may not create tables in
//! `public`, a schema or a file that already holds tables named as jobsync's, `status` on a
//! database it must not write to, and two demos run at once in one directory.

use super::*;
use crate::common::{pg_count, pg_sql, pg_url_as};
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, RunQueryDsl, SqliteConnection};
use std::collections::BTreeMap;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Asserts exit code 1 and one line on stderr, `error: …`, holding each of `expected`; returns it.
fn failed_error(out: &Output, expected: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for part in expected {
        assert!(err.contains(part), "expected {part:?} in {err}");
    }
    err.trim_end().to_string()
}

/// Every file in `dir`: its bytes and modification time, by name.
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                (
                    std::fs::read(entry.path()).unwrap(),
                    meta.modified().unwrap(),
                ),
            )
        })
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    snapshot(dir).into_keys().collect()
}

// --- PostgreSQL: a database and roles of the test's own ------------------------------------------

/// A name no other test (of this process or another) uses.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn pg(url: &str, statements: &str) {
    pg_sql(url, statements).unwrap_or_else(|e| panic!("{statements}: {e}"));
}

/// `admin`'s URL on `database`, as `admin`'s own user.
fn admin_on(admin: &str, database: &str) -> String {
    let start = admin.find("://").unwrap() + 3;
    let slash = start + admin[start..].find('/').unwrap();
    let query = admin[slash..].find('?').map_or("", |q| &admin[slash + q..]);
    format!("{}/{database}{query}", &admin[..slash])
}

/// A fresh database and a fresh login role (password `pw`), dropped with the guard.
struct Scratch {
    admin: String,
    database: String,
    role: String,
}

impl Scratch {
    /// `owned`: the role owns the database (so, on PostgreSQL 15, its schema `public` too).
    fn new(admin: &str, name: &str, owned: bool) -> Scratch {
        let scratch = Scratch {
            admin: admin.to_string(),
            database: unique(&format!("hint_{name}")),
            role: unique(&format!("hint_{name}_role")),
        };
        pg(
            admin,
            &format!("CREATE ROLE {} LOGIN PASSWORD 'pw'", scratch.role),
        );
        let owner = if owned {
            format!(" OWNER {}", scratch.role)
        } else {
            String::new()
        };
        pg(
            admin,
            &format!("CREATE DATABASE {}{owner}", scratch.database),
        );
        scratch
    }

    /// The database, as the test's superuser.
    fn admin_url(&self) -> String {
        admin_on(&self.admin, &self.database)
    }

    /// The database, as the scratch role.
    fn role_url(&self) -> String {
        pg_url_as(&self.admin, &self.role, &self.database)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // One statement each: DROP DATABASE refuses to run in the transaction that a batch of
        // several statements is.
        let mut conn = PgConnection::establish(&self.admin).unwrap();
        for sql in [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database),
            format!("DROP ROLE IF EXISTS {}", self.role),
        ] {
            if let Err(e) = conn.batch_execute(&sql) {
                eprintln!("cleaning up: {sql}: {e}");
            }
        }
    }
}

/// Tables of `schema` in `url`'s database, by name.
fn pg_tables(url: &str, schema: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        table_name: String,
    }
    let mut conn = PgConnection::establish(url).unwrap();
    let mut names: Vec<String> = diesel::sql_query(
        "SELECT table_name::text AS table_name FROM information_schema.tables \
         WHERE table_schema = $1",
    )
    .bind::<diesel::sql_types::Text, _>(schema)
    .load::<Name>(&mut conn)
    .unwrap()
    .into_iter()
    .map(|n| n.table_name)
    .collect();
    names.sort();
    names
}

// --- 1. a role without CREATE on `public` ---------------------------------------------------------

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn a_postgres_role_without_create_on_public_is_told_the_grant_and_the_schema_setting() {
    let Some(admin) = common::postgres_url() else {
        return;
    };
    // A fresh database where a fresh login role may connect, nothing more: PostgreSQL 15 and
    // later give CREATE on `public` to its owner only.
    let scratch = Scratch::new(&admin, "create", false);
    let role = &scratch.role;
    pg(
        &scratch.admin_url(),
        &format!(
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT ON DATABASE {db} TO {role}",
            db = scratch.database
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = scratch.role_url();
    let expected = [
        format!("role {role} may not create tables in schema public"),
        format!("`GRANT CREATE ON SCHEMA public TO {role}`"),
        "database.schema".to_string(),
        format!("`CREATE SCHEMA jobsync AUTHORIZATION {role}`"),
        "nothing was created".to_string(),
    ];
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    // `migrate`, and any command that migrates first.
    for command in [&["migrate"][..], &["outbox", "list"]] {
        let mut args = vec!["--database-url", url.as_str()];
        args.extend_from_slice(command);
        let out = jobsync(dir.path(), &args, &[]);
        failed_error(&out, &expected);
        assert!(
            !stderr(&out).contains("permission denied for schema"),
            "the cause is named, not only PostgreSQL's words: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        pg_tables(&scratch.admin_url(), "public"),
        Vec::<String>::new(),
        "nothing was created"
    );
    assert_eq!(names(dir.path()), Vec::<String>::new());

    // The fix, as named, works.
    pg(
        &scratch.admin_url(),
        &format!("GRANT CREATE ON SCHEMA public TO {role}"),
    );
    let out = jobsync(dir.path(), &["--database-url", &url, "migrate"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(pg_tables(&scratch.admin_url(), "public").contains(&"outbox".to_string()));
}

// --- 2. tables named as jobsync's that are not jobsync's ------------------------------------------

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn a_postgres_public_schema_with_the_crms_jobs_table_is_refused_before_anything_is_created() {
    let Some(admin) = common::postgres_url() else {
        return;
    };
    // The role owns the database (and so `public`): it may create tables there; only the CRM's
    // own `jobs` stands in the way.
    let scratch = Scratch::new(&admin, "collide", true);
    let crm = scratch.admin_url();
    pg(
        &crm,
        &format!(
            "CREATE TABLE public.jobs (crm_id int, name text); \
             INSERT INTO public.jobs VALUES (1, 'a CRM row'); \
             ALTER TABLE public.jobs OWNER TO {}",
            scratch.role
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = scratch.role_url();
    let out = jobsync(dir.path(), &["--database-url", &url, "migrate"], &[]);
    failed_error(
        &out,
        &[
            "schema public",
            "already holds a table named `jobs`",
            "nothing was created",
            "database.schema = \"jobsync\"",
            "JOBSYNC_DATABASE__SCHEMA=jobsync",
        ],
    );
    assert!(
        !stderr(&out).contains("already exists"),
        "the collision is found before a CREATE fails: {}",
        stderr(&out)
    );
    assert_eq!(
        pg_tables(&crm, "public"),
        ["jobs"],
        "no __diesel_schema_migrations, no table of jobsync's"
    );
    assert_eq!(
        pg_count(&crm, "SELECT count(*) AS n FROM public.jobs"),
        1,
        "the CRM's table untouched"
    );

    // The fix, as named: a schema of jobsync's own (the role may create it: it owns the database).
    let out = jobsync(
        dir.path(),
        &["--database-url", &url, "migrate"],
        &[("JOBSYNC_DATABASE__SCHEMA", "jobsync")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(pg_tables(&crm, "jobsync").contains(&"jobs".to_string()));
    assert_eq!(pg_tables(&crm, "public"), ["jobs"], "public untouched");
}

#[test]
fn a_sqlite_file_with_a_foreign_jobs_table_is_refused_and_left_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    {
        let mut crm = SqliteConnection::establish(&path.display().to_string()).unwrap();
        crm.batch_execute(
            "CREATE TABLE jobs (crm_id INTEGER PRIMARY KEY, name TEXT); \
             INSERT INTO jobs VALUES (1, 'a CRM row');",
        )
        .unwrap();
    }
    let before = snapshot(dir.path());
    let url = format!("sqlite://{}", path.display());
    for command in [&["migrate"][..], &["outbox", "list"]] {
        let mut args = vec!["--database-url", url.as_str()];
        args.extend_from_slice(command);
        let out = jobsync(dir.path(), &args, &[]);
        failed_error(
            &out,
            &[
                &path.display().to_string(),
                "already holds a table named `jobs`",
                "nothing was created",
                "point database.url at a new file",
            ],
        );
        // No __diesel_schema_migrations, no switch to WAL (the header), no -wal, -shm or
        // .migrate.lock beside it.
        assert_eq!(snapshot(dir.path()), before, "{command:?}");
    }
}

// --- 3. `status` writes nothing -------------------------------------------------------------------

#[test]
fn status_on_a_migrated_sqlite_database_leaves_the_directory_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let out = jobsync(dir.path(), &["--database-url", &url, "migrate"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let before = snapshot(dir.path());
    assert!(!before.contains_key("j.db-wal"), "{:?}", before.keys());
    let out = jobsync(dir.path(), &["--database-url", &url, "status"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("outbox:") && stdout(&out).contains("last runs:"),
        "{}",
        stdout(&out)
    );
    // No -wal, -shm, .lock or .migrate.lock created; the file's bytes and mtime as they were.
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn status_without_a_database_says_to_create_it_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = jobsync(
        dir.path(),
        &["--database-url", &sqlite_url(dir.path()), "status"],
        &[],
    );
    failed_error(
        &out,
        &[&format!(
            "no database at {}; run `jobsync migrate` or `jobsync --once` first",
            dir.path().join("j.db").display()
        )],
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert_eq!(names(dir.path()), Vec::<String>::new(), "nothing created");
}

#[test]
fn status_on_a_database_behind_the_binary_says_to_migrate_and_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let out = jobsync(dir.path(), &["--database-url", &url, "migrate"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // As if this binary were newer than the database: its last migration not yet recorded.
    let mut migrations: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    migrations.sort();
    let last = migrations.pop().unwrap();
    let version: String = last
        .split('_')
        .next()
        .unwrap()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    {
        let mut c =
            SqliteConnection::establish(&dir.path().join("j.db").display().to_string()).unwrap();
        let sql = format!("DELETE FROM __diesel_schema_migrations WHERE version = '{version}'");
        assert_eq!(diesel::sql_query(&sql).execute(&mut c).unwrap(), 1, "{sql}");
    }
    let before = snapshot(dir.path());
    let out = jobsync(dir.path(), &["--database-url", &url, "status"], &[]);
    failed_error(
        &out,
        &[
            "is 1 migration behind this jobsync",
            &format!("({last} pending)"),
            "run `jobsync migrate` first",
        ],
    );
    assert_eq!(snapshot(dir.path()), before, "status did not migrate");
}

#[test]
fn status_reads_a_database_another_process_is_writing_and_waits_for_no_writer() {
    use jobsync::db::models::NewOutboxRow;
    use jobsync::db::repo::outbox;
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    // A writer that keeps the file open (as a daemon does): its commits sit in the WAL.
    let writer = jobsync::db::Db::open(&url).unwrap();
    let mut conn = writer.conn().unwrap();
    let row = |reference: &str| NewOutboxRow {
        op: "create".into(),
        campaign: Some(28),
        reference: Some(reference.into()),
        job_id: None,
        payload: "{}".into(),
    };
    outbox::insert(&mut conn, &[row("committed")]).unwrap();
    // And a write transaction it has not committed yet.
    let jobsync::db::Conn::Sqlite(raw) = &mut conn else {
        unreachable!("a SQLite database")
    };
    raw.batch_execute(
        "BEGIN IMMEDIATE; INSERT INTO outbox (op, campaign, reference, payload) \
         VALUES ('create', 28, 'uncommitted', '{}');",
    )
    .unwrap();
    let files = names(dir.path());
    assert!(files.contains(&"j.db-wal".to_string()), "{files:?}");
    let started = Instant::now();
    let out = jobsync(dir.path(), &["--database-url", &url, "status"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a reader does not wait for the writer"
    );
    assert!(
        stdout(&out).contains("outbox:           pending 1,"),
        "the committed row, read from the WAL; not the uncommitted one: {}",
        stdout(&out)
    );
    assert_eq!(names(dir.path()), files, "no file created");
    raw.batch_execute("COMMIT").unwrap();
}

#[test]
#[cfg_attr(
    not(pg),
    ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn status_on_postgres_creates_neither_a_schema_nor_a_table() {
    let Some(admin) = common::postgres_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // `database.schema` not created yet.
    let schema = unique("hint_status_absent");
    let out = jobsync(
        dir.path(),
        &["--database-url", &admin, "status"],
        &[("JOBSYNC_DATABASE__SCHEMA", &schema)],
    );
    let created = pg_count(
        &admin,
        &format!("SELECT count(*) AS n FROM pg_namespace WHERE nspname = '{schema}'"),
    );
    pg(&admin, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    // (The test role's password, `jobsync`, is masked wherever it occurs: the command's name.)
    failed_error(
        &out,
        &[
            &format!("no schema `{schema}` (database.schema) in the database"),
            " migrate` or `",
        ],
    );
    assert_eq!(created, 0, "the schema was not created");

    // A schema that exists, never migrated.
    let Some((url, fresh)) = common::fresh_postgres_schema() else {
        return;
    };
    let out = jobsync(dir.path(), &["--database-url", &url, "status"], &[]);
    failed_error(&out, &["tables yet (never migrated)", " migrate` or `"]);
    let tables = pg_count(
        &url,
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = current_schema()",
    );
    assert_eq!(tables, 0, "no table created");
    drop(fresh);
}

// --- 4. two demos at once -------------------------------------------------------------------------

/// `jobsync demo` in `dir`, as the parent's `jobsync` runs it, not yet waited for.
fn demo_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobsync"));
    cmd.current_dir(dir).arg("demo");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("JOBSYNC_")) {
        cmd.env_remove(key);
    }
    cmd.env_remove("RUST_LOG")
        .env("JOBSYNC_SERVER__LISTEN", "")
        .env("JOBSYNC_LOG__FORMAT", "json");
    cmd
}

/// A pipe whose buffer is full: a process writing to its other end blocks until it is read.
/// Returns the reading end, the writing end and how many bytes of filler come first.
fn full_pipe() -> (std::io::PipeReader, std::io::PipeWriter, usize) {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let (reader, mut writer) = std::io::pipe().unwrap();
    let fd = writer.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function owns; only the O_NONBLOCK flag changes.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(flags >= 0);
    assert_eq!(
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) },
        0
    );
    let mut filled = 0;
    for chunk in [4096, 1] {
        let filler = vec![b'.'; chunk];
        loop {
            match writer.write(&filler) {
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the pipe: {e}"),
            }
        }
    }
    // SAFETY: as above; the child must block on the full pipe, not fail with EAGAIN.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }, 0);
    (reader, writer, filled)
}

/// Waits for `child` until `deadline`, then kills it and fails the test.
fn wait_until(child: &mut Child, deadline: Instant, what: &str) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_demo_in_the_same_directory_refuses_at_once_and_the_first_tours_on() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("jobsync-demo.lock");
    // The first tour, held mid-tour: its first line of output waits on a full pipe.
    let (mut reader, writer, filler) = full_pipe();
    let first_err = tempfile::NamedTempFile::new().unwrap();
    let mut first = demo_command(dir.path())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(first_err.reopen().unwrap()))
        .spawn()
        .unwrap();
    let pid = format!("pid {} ", first.id());
    // Its lock, taken, naming it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&pid)) {
        if let Some(status) = first.try_wait().unwrap() {
            panic!(
                "the first demo ended ({status}) before holding its lock: {}",
                std::fs::read_to_string(first_err.path()).unwrap()
            );
        }
        assert!(Instant::now() < deadline, "the first demo took no lock");
        std::thread::sleep(Duration::from_millis(20));
    }

    let started = Instant::now();
    let mut second = demo_command(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until(
        &mut second,
        Instant::now() + Duration::from_secs(30),
        "the second demo",
    );
    let out = Output {
        status,
        stdout: std::io::read_to_string(second.stdout.take().unwrap())
            .unwrap()
            .into_bytes(),
        stderr: std::io::read_to_string(second.stderr.take().unwrap())
            .unwrap()
            .into_bytes(),
    };
    failed_error(
        &out,
        &[
            "another demo is running here",
            &format!("its lock file {} is held by {pid}", lock.display()),
            "wait for it to end, or pass --database-url",
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once"
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(first.try_wait().unwrap().is_none(), "the first tours on");
    assert!(
        dir.path().join("jobsync-demo.db").exists(),
        "the first tour's database was not deleted under it"
    );

    // Let the first one go on: it ends as a tour does, its lock file gone with it.
    let draining = std::thread::spawn(move || std::io::read_to_string(&mut reader).unwrap());
    let status = wait_until(
        &mut first,
        Instant::now() + Duration::from_secs(300),
        "the first demo",
    );
    let shown = draining.join().unwrap();
    let shown = &shown[filler..];
    assert!(
        status.success(),
        "{shown}\n{}",
        std::fs::read_to_string(first_err.path()).unwrap()
    );
    assert!(
        shown.contains("ok (full)") && shown.contains("ok (incremental)"),
        "{shown}"
    );
    assert_eq!(names(dir.path()), ["jobsync-demo.db"]);
}
