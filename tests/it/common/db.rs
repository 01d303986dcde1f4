//! A fresh, migrated database on each backend.
//!
//! PostgreSQL tests need `JOBSYNC_TEST_POSTGRES_URL` (CI exports it). Without it `build.rs` does
//! not set `cfg(pg)` and each PostgreSQL test is ignored: a test that needs PostgreSQL carries
//! `#[cfg_attr(not(pg), ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests")]`
//! (`on_both_backends!` puts it on its `postgres` half). Run anyway (`--ignored`), it returns
//! early with a message — except under CI (`CI` set), where a missing PostgreSQL fails the test.

use jobsync::db::Db;
use jobsync::job::Job;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

pub const PG_URL_VAR: &str = "JOBSYNC_TEST_POSTGRES_URL";

/// A migrated database that cleans up after itself.
pub struct TestDb {
    pub db: Db,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    PgSchema(#[allow(dead_code)] PgSchema),
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("jobsync.db").display());
        let db = Db::open(&url).expect("open sqlite");
        TestDb {
            db,
            url,
            cleanup: Cleanup::Dir(dir),
        }
    }

    /// A fresh schema in the test PostgreSQL database, or `None` (skip) when none is configured.
    pub fn postgres() -> Option<TestDb> {
        let (url, schema) = fresh_postgres_schema()?;
        let db = Db::open(&url).expect("open postgres");
        Some(TestDb {
            db,
            url,
            cleanup: Cleanup::PgSchema(schema),
        })
    }
}

/// An empty, unmigrated schema (dropped with the guard) and a URL whose search path selects it.
pub fn fresh_postgres_schema() -> Option<(String, PgSchema)> {
    let admin_url = postgres_url()?;
    static N: AtomicU32 = AtomicU32::new(0);
    let schema = format!(
        "t_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        chrono::Utc::now().timestamp_micros() % 1_000_000
    );
    run_sql(&admin_url, &format!("CREATE SCHEMA {schema}"));
    let sep = if admin_url.contains('?') { '&' } else { '?' };
    let url = format!("{admin_url}{sep}options=-csearch_path%3D{schema}");
    Some((url, PgSchema { admin_url, schema }))
}

/// Drops its schema when dropped.
pub struct PgSchema {
    admin_url: String,
    schema: String,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        run_sql(
            &self.admin_url,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
        );
    }
}

pub fn postgres_url() -> Option<String> {
    match std::env::var(PG_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{PG_URL_VAR} is not set under CI: the PostgreSQL tests must run there")
        }
        _ => {
            eprintln!("skipping PostgreSQL test: set {PG_URL_VAR}=postgres://... to run it");
            None
        }
    }
}

/// Runs one SQL statement on `db` (either backend), as a CRM or an operator would behind
/// jobsync's back; the rows it touched.
pub fn execute_sql(db: &Db, sql: &str) -> usize {
    let mut c = db.conn().unwrap();
    jobsync::with_conn!(&mut c, |raw| {
        use diesel::RunQueryDsl;
        diesel::sql_query(sql).execute(raw).expect(sql)
    })
}

fn run_sql(url: &str, sql: &str) {
    use diesel::{Connection, PgConnection, RunQueryDsl};
    let mut conn = PgConnection::establish(url).expect("connect to the test PostgreSQL");
    diesel::sql_query(sql).execute(&mut conn).expect(sql);
}

/// Declares each listed test body as a test on SQLite and on PostgreSQL.
///
/// A body is a `fn(&TestDb)` or an `async fn(&TestDb)` (run on a fresh runtime, see
/// [`block_on`](super::block_on)); one list may mix both. The PostgreSQL tests skip when
/// `JOBSYNC_TEST_POSTGRES_URL` is unset: libtest reports them ignored (`build.rs` sets `cfg(pg)`
/// only when the variable is set), and if one runs anyway it returns early (see [`postgres_url`]).
///
/// The two modules are declared in the calling module, so the caller's test names read
/// `pull::sqlite::one_cycle_…` and `pull::postgres::one_cycle_…`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() {
                $crate::common::run_on(super::$name, &$crate::common::TestDb::sqlite())
            })*
        }
        mod postgres {
            $(#[test]
            #[cfg_attr(not(pg), ignore = "set JOBSYNC_TEST_POSTGRES_URL to run the PostgreSQL tests")]
            fn $name() {
                if let Some(db) = $crate::common::TestDb::postgres() {
                    $crate::common::run_on(super::$name, &db)
                }
            })*
        }
    };
}
pub(crate) use on_both_backends;

/// Runs one test body on `db`, whether it is a `fn(&TestDb)` or an `async fn(&TestDb)`.
pub fn run_on<'a, Kind>(body: impl TestBody<'a, Kind>, db: &'a TestDb) {
    body.run(db)
}

/// A test body `on_both_backends!` can run; `Kind` tells a plain `fn` from an `async fn`.
pub trait TestBody<'a, Kind> {
    fn run(self, db: &'a TestDb);
}

/// The `Kind` of a plain `fn(&TestDb)`.
pub struct PlainBody;

/// The `Kind` of an `async fn(&TestDb)`.
pub struct AsyncBody;

impl<'a, F: FnOnce(&'a TestDb)> TestBody<'a, PlainBody> for F {
    fn run(self, db: &'a TestDb) {
        self(db)
    }
}

impl<'a, F, Fut> TestBody<'a, AsyncBody> for F
where
    F: FnOnce(&'a TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    fn run(self, db: &'a TestDb) {
        super::block_on(self(db))
    }
}

/// A plausible job as the API would return it.
pub fn sample_job(id: i64, campaign: i64) -> Job {
    serde_json::from_value(serde_json::json!({
        "id": id, "campaign": campaign, "reference": format!("ref-{id}"),
        "name": format!("Contact {id}"), "email": format!("c{id}@example.com"),
        "numbers": ["+33612345678"], "address_lines": ["1 rue Toto"], "postal_code": "75001",
        "city": "Paris", "country": "FR", "appointment": null,
        "data": {"segment": "b", "score": 3}, "label": null,
        "url": format!("https://crm.example.com/c/{id}"), "value": 12.5, "state": 0,
        "created_at": "2026-11-20T10:00:00.123456789Z"
    }))
    .expect("sample job")
}

/// Makes every tracked campaign due for a full listing, as if the last one were long ago.
pub fn force_full_listing(db: &Db) {
    use jobsync::db::repo::state;
    let long_ago = jobsync::db::Ts::from(chrono::Utc::now() - chrono::Duration::hours(30));
    let mut c = db.conn().unwrap();
    for (campaign, _) in state::tracked_campaigns(&mut c).unwrap() {
        state::mark_campaign_listed(&mut c, campaign, long_ago).unwrap();
    }
}
