//! The database: the mirror, the outbox, the changefeed, run history and sync state, on SQLite
//! (embedded default) or PostgreSQL, through one code path.
//!
//! Why not `#[derive(diesel::MultiConnection)]`: batch inserts, `ON CONFLICT` and custom column
//! types do not compile on its generated backend. Instead [`Conn`] is a plain two-variant enum
//! and [`with_conn!`] expands a statement once per variant, so every statement is compiled and
//! checked against both concrete backends, and per-backend SQL stays the exception.
//!
//! Diesel is blocking: [`Db::run`] executes work on tokio's blocking pool, never on the async
//! executor threads.

mod error;
pub mod listen;
pub mod lock;
mod migrate;
pub mod models;
mod outbox_status;
mod postgres;
pub mod repo;
pub mod schema;
mod sqlite;
mod time;

pub use crate::config::conninfo::{check_url, redact, scrub, secrets as url_secrets};
pub use error::DbError;
pub use postgres::IDLE_IN_TRANSACTION;
use postgres::*;
pub use sqlite::WAL_LIMIT_FRAMES;
use sqlite::*;
pub use time::Ts;

use crate::config::DatabaseUrl;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, HandleError, Pool, PooledConnection};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

type SqlitePool = Pool<ConnectionManager<SqliteConnection>>;
type PgPool = Pool<ConnectionManager<PgConnection>>;

/// A pooled connection to whichever backend `database.url` names.
pub enum Conn {
    Sqlite(PooledConnection<ConnectionManager<SqliteConnection>>),
    Pg(PooledConnection<ConnectionManager<PgConnection>>),
}

/// Runs `$body` with `$c` bound to the concrete connection (`&mut SqliteConnection` or
/// `&mut PgConnection`): one source text, compiled for each backend.
#[macro_export]
macro_rules! with_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::Conn::Sqlite(pooled) => {
                let $c: &mut ::diesel::SqliteConnection = &mut *pooled;
                $body
            }
            $crate::db::Conn::Pg(pooled) => {
                let $c: &mut ::diesel::PgConnection = &mut *pooled;
                $body
            }
        }
    };
    // The per-backend form, for the exceptions that need different SQL on each: each body gets
    // its backend's concrete connection.
    ($conn:expr, sqlite |$s:ident| $sqlite:expr, postgres |$p:ident| $pg:expr $(,)?) => {
        match $conn {
            $crate::db::Conn::Sqlite(pooled) => {
                let $s: &mut ::diesel::SqliteConnection = &mut *pooled;
                $sqlite
            }
            $crate::db::Conn::Pg(pooled) => {
                let $p: &mut ::diesel::PgConnection = &mut *pooled;
                $pg
            }
        }
    };
}

#[derive(Clone)]
enum Backend {
    Sqlite {
        pool: SqlitePool,
        path: PathBuf,
        checkpointer: Arc<Checkpointer>,
    },
    /// `url` (password included) is kept to scrub it from the pool's errors; `session_url` is
    /// what connections are opened with.
    Pg {
        pool: PgPool,
        url: Arc<str>,
        session_url: Arc<str>,
        statement_timeout: Option<Duration>,
    },
}

/// How the pools set up their connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbOptions {
    /// PostgreSQL `statement_timeout` of every pooled connection (`sync.stall_secs`): a wedged
    /// statement fails its cycle instead of hanging it. `None` keeps the server's setting.
    pub statement_timeout: Option<Duration>,
    /// PostgreSQL `database.schema`: every session's `search_path`, so jobsync's tables, its
    /// migrations table and its advisory-lock keys (which hash `current_schema()`) live there;
    /// created at connect if absent. `None` (or `public`): the URL's own search path.
    pub schema: Option<String>,
}

impl DbOptions {
    /// The default of `sync.stall_secs`.
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            statement_timeout: Some(Self::DEFAULT_STATEMENT_TIMEOUT),
            schema: None,
        }
    }
}

/// The database handle: cheap to clone, shared by the engine, the server and the commands.
#[derive(Clone)]
pub struct Db {
    backend: Backend,
    /// The sync lock's fence, on the handle a cycle works through ([`Db::fenced`]): its writes
    /// ([`Db::write`]) are refused once another process took the lock.
    fence: Option<Arc<lock::Fence>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.backend {
            Backend::Sqlite { .. } => "Db(sqlite)",
            Backend::Pg { .. } => "Db(postgres)",
        })
    }
}

/// The one bridge from async code to the database's blocking calls: `work` runs on tokio's
/// blocking pool. A panic in it is raised again in the caller, as if the call had been made
/// there (a bug stays a bug, with its message and backtrace, rather than becoming a database
/// error); only a task the runtime cancelled while shutting down becomes `DbError::Task`.
pub async fn blocking<T, E, F>(work: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(DbError::Task(format!("the database task did not run: {e}")).into()),
    }
}

impl Db {
    /// Connects (reporting the real cause of a failure), then applies pending migrations. With
    /// the default [`DbOptions`].
    pub fn open(url: &str) -> Result<Db, DbError> {
        Db::open_with(url, DbOptions::default())
    }

    /// [`Db::open`] with the given options.
    pub fn open_with(url: &str, options: DbOptions) -> Result<Db, DbError> {
        let db = Db::connect_with(url, options)?;
        db.migrate()?;
        Ok(db)
    }

    /// Connects without migrating, with the default [`DbOptions`].
    pub fn connect(url: &str) -> Result<Db, DbError> {
        Db::connect_with(url, DbOptions::default())
    }

    /// Connects without migrating. A SQLite file is opened and read once first, so that a path
    /// naming something else than a database fails here, by name, before anything (a WAL file, a
    /// lock file) is written next to it. Pools open connections on demand only (`min_idle(0)`):
    /// r2d2's default fills the pool from background threads, and a process exiting while one of
    /// them is inside libpq's TLS/SCRAM handshake crashes in OpenSSL's exit-time cleanup.
    pub fn connect_with(url: &str, options: DbOptions) -> Result<Db, DbError> {
        let parsed = DatabaseUrl::parse(url).map_err(|reason| DbError::Url {
            url: redact(url),
            reason,
        })?;
        let backend = match parsed {
            DatabaseUrl::Sqlite(path) => connect_sqlite(path)?,
            DatabaseUrl::Postgres(url) => connect_pg(&url, options)?,
        };
        Ok(Db {
            backend,
            fence: None,
        })
    }

    /// Reads the database with `read`, creating, migrating and writing nothing: for commands
    /// that only look (`status`). The database must exist and be migrated up to this binary,
    /// else [`DbError::NotReady`] says to run `jobsync migrate` (a SQLite file that does not
    /// exist is not created; a PostgreSQL `database.schema` that does not exist is not created).
    ///
    /// A SQLite file is opened read-only (`mode=ro`). SQLite shares a WAL database's log through
    /// `PATH-wal` and `PATH-shm`, and a read-only connection that finds them absent creates them
    /// and cannot remove them. So when they are absent — no process has the file open, and the
    /// file holds every commit — it is read as `immutable` (no log, no lock, no file created),
    /// and the read counts only if the file did not change meanwhile and no log appeared: a
    /// process that opened it during the read (a daemon's next cycle) has it read again, through
    /// the log that process keeps. When they exist (a daemon is writing), they are shared as any
    /// reader shares them: the read sees every commit and waits for no writer.
    pub fn read_only<T>(
        url: &str,
        options: DbOptions,
        mut read: impl FnMut(&mut Conn) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let parsed = DatabaseUrl::parse(url).map_err(|reason| DbError::Url {
            url: redact(url),
            reason,
        })?;
        let path = match parsed {
            DatabaseUrl::Sqlite(path) => path,
            DatabaseUrl::Postgres(_) => {
                if let Some(missing) = migrate::missing_schema(url, &options)? {
                    return Err(DbError::NotReady(format!(
                        "{missing}; run `jobsync migrate` or `jobsync --once` first"
                    )));
                }
                let place = match options.schema.as_deref().filter(|s| *s != "public") {
                    Some(schema) => format!(
                        "schema `{schema}` of the PostgreSQL database {}",
                        redact(url)
                    ),
                    None => format!("PostgreSQL database {}", redact(url)),
                };
                let db = Db::connect_with(url, options)?;
                let mut conn = db.conn()?;
                migrate::require_current(&mut conn, &place)?;
                return read(&mut conn);
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(DbError::Connect {
                backend: "sqlite",
                reason: format!(
                    "directory {} does not exist; create it or point database.url elsewhere",
                    dir.display()
                ),
            });
        }
        if path.is_dir() {
            return Err(DbError::Connect {
                backend: "sqlite",
                reason: is_a_directory(&path),
            });
        }
        if !path.exists() {
            return Err(DbError::NotReady(format!(
                "no database at {}; run `jobsync migrate` or `jobsync --once` first",
                path.display()
            )));
        }
        // Immutable reads that met a writer are tried again; then the log is shared, whatever.
        const IMMUTABLE_TRIES: usize = 3;
        for attempt in 0.. {
            let shared = attempt >= IMMUTABLE_TRIES || sqlite_in_use(&path);
            let before = FileStamp::of(&path);
            let db = Db {
                backend: connect_sqlite_read_only(&path, shared)?,
                fence: None,
            };
            let place = format!("SQLite database {}", path.display());
            let value = db
                .conn()
                .and_then(|mut conn| {
                    migrate::require_current(&mut conn, &place)?;
                    read(&mut conn)
                })
                .map_err(|e| db.name_file(e));
            drop(db);
            if shared || (!sqlite_in_use(&path) && FileStamp::of(&path) == before) {
                return value;
            }
            tracing::debug!(
                database = %path.display(),
                "the database changed during an immutable read; reading it again"
            );
        }
        unreachable!("the last attempt returns")
    }

    /// This handle, with its writes ([`Db::write`]) fenced by `fence`: each checks, in its own
    /// transaction, that the sync lock taken with `fence` is still this process's.
    pub fn fenced(&self, fence: Arc<lock::Fence>) -> Db {
        Db {
            backend: self.backend.clone(),
            fence: Some(fence),
        }
    }

    /// The fence this handle's writes check, if any.
    pub fn fence(&self) -> Option<&Arc<lock::Fence>> {
        self.fence.as_ref()
    }

    /// Whether this handle's sync lock is known to be lost (its session ended, or a write was
    /// refused): the cycle stops sending.
    pub fn lock_lost(&self) -> bool {
        self.fence.as_ref().is_some_and(|f| f.is_lost())
    }

    /// Runs `work` in one write transaction ([`repo::transaction`]) on the blocking pool. On a
    /// fenced handle ([`Db::fenced`]) the transaction first checks that the sync lock is still
    /// this process's, and fails with [`DbError::LockLost`] without writing anything when it is
    /// not: the database itself refuses a syncer that lost its lock (contract §8, Fencing).
    pub async fn write<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Conn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let fence = self.fence.clone();
        self.run(move |c| {
            repo::transaction(c, |c| {
                lock::check_fence(fence.as_ref(), c)?;
                work(c)
            })
        })
        .await
    }

    /// The `statement_timeout` PostgreSQL connections start with (`None` on SQLite, or when the
    /// server's own setting is kept): what a session that changes it for a while returns to.
    pub fn statement_timeout(&self) -> Option<Duration> {
        match &self.backend {
            Backend::Pg {
                statement_timeout, ..
            } => *statement_timeout,
            Backend::Sqlite { .. } => None,
        }
    }

    /// On SQLite, names the file in an error whose message does not (SQLite's own never do).
    fn name_file(&self, e: DbError) -> DbError {
        match (&self.backend, e) {
            (
                Backend::Sqlite { path, .. },
                e @ (DbError::Pool(_) | DbError::Query(_) | DbError::Migration(_)),
            ) if !e.to_string().contains(&*path.to_string_lossy()) => DbError::Sqlite {
                path: path.display().to_string(),
                source: Box::new(e),
            },
            (_, e) => e,
        }
    }

    /// The database, as messages name it: `SQLite database PATH`, `PostgreSQL database URL`
    /// (password masked).
    fn place(&self) -> String {
        match &self.backend {
            Backend::Sqlite { path, .. } => format!("SQLite database {}", path.display()),
            Backend::Pg { url, .. } => format!("PostgreSQL database {}", redact(url)),
        }
    }

    pub fn is_sqlite(&self) -> bool {
        matches!(self.backend, Backend::Sqlite { .. })
    }

    /// Whether this database takes one writer at a time (SQLite). Its writers queue on the
    /// database lock anyway, and its busy handler polls, so callers that would write
    /// concurrently wait better on a mutex of their own. PostgreSQL takes concurrent writes to
    /// distinct rows (the changefeed's append is serialised by its own lock).
    pub fn serialises_writers(&self) -> bool {
        self.is_sqlite()
    }

    /// How many campaign listings a pull should store at once: each takes a connection and
    /// keeps one writer busy. PostgreSQL's server works on two at once (both of a small
    /// machine's cores); SQLite has one writer, so one listing at a time.
    pub fn max_parallel_listings(&self) -> usize {
        if self.serialises_writers() { 1 } else { 2 }
    }

    /// The SQLite file, for the kernel file lock that keeps a second syncer out.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite { path, .. } => Some(path),
            Backend::Pg { .. } => None,
        }
    }

    /// A connection for blocking work on the current thread (tests, commands, the engine's own
    /// blocking sections).
    pub fn conn(&self) -> Result<Conn, DbError> {
        match &self.backend {
            Backend::Sqlite { pool, .. } => pool
                .get()
                .map(Conn::Sqlite)
                .map_err(|e| self.name_file(e.into())),
            Backend::Pg { pool, url, .. } => pool
                .get()
                .map(Conn::Pg)
                .map_err(|e| DbError::Pool(scrub(&e.to_string(), url))),
        }
    }

    /// On SQLite, copies the write-ahead log into the database file on another thread and
    /// connection (a passive checkpoint, which never blocks the writer), unless one is running
    /// already. For a writer whose commits do not checkpoint themselves
    /// (`repo::with_relaxed_durability`): the pull's writer, the bottleneck of a backfill, then
    /// spends none of its time copying pages (an eighth of it when it did).
    ///
    /// The log restarts from its beginning only when a write begins after a checkpoint copied all
    /// of it, which a writer that never waits may not see for long. So once the log holds more
    /// than [`WAL_LIMIT_FRAMES`], this waits for the running checkpoint and runs one more before
    /// it returns, and the next write restarts the log: it stays within about that size (20 MiB
    /// at most in a 1,000,000-job backfill, against 4 MiB with SQLite's own checkpoints). A
    /// failed checkpoint leaves the log for the next one; nothing is lost. PostgreSQL: nothing
    /// to do.
    pub async fn checkpoint_behind(&self) {
        let Backend::Sqlite { checkpointer, .. } = &self.backend else {
            return;
        };
        let over_limit = checkpointer.log_frames.load(Ordering::Acquire) > WAL_LIMIT_FRAMES;
        if let Some(previous) = checkpointer.take() {
            if !previous.is_finished() && !over_limit {
                checkpointer.put(previous);
                return;
            }
            let _ = previous.await;
        }
        let db = self.clone();
        let log_frames = Arc::clone(checkpointer);
        let next = tokio::task::spawn_blocking(move || {
            let checked = db.conn().and_then(|mut conn| {
                with_conn!(
                    &mut conn,
                    sqlite
                        | c
                        | Ok(diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)")
                            .get_result::<CheckpointResult>(c)?),
                    postgres | _c | Ok(CheckpointResult::default()),
                )
            });
            match checked {
                Ok(result) => log_frames.log_frames.store(result.log, Ordering::Release),
                Err(e) => {
                    tracing::debug!(error = %e, "background WAL checkpoint failed; the next one retries")
                }
            }
        });
        if over_limit {
            let _ = next.await;
        } else {
            checkpointer.put(next);
        }
    }

    /// Runs blocking database work on tokio's blocking pool.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Conn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        blocking(move || {
            let mut conn = db.conn()?;
            work(&mut conn).map_err(|e| db.name_file(e))
        })
        .await
    }

    /// Cancels the statements this process's PostgreSQL sessions are running or waiting in (a
    /// lock a CRM holds, say), from a connection of its own: the shutdown deadline bounds the
    /// database's waits too, and a cycle still inside one records its run and ends. Found by
    /// their `application_name` (`jobsync pid N`, or the sync lock's "pid N on HOST, since T"):
    /// a URL that names its own `application_name` leaves nothing to find. Returns how many were
    /// cancelled; nothing to do on SQLite.
    pub fn cancel_statements(&self) -> Result<usize, DbError> {
        let Backend::Pg {
            session_url, url, ..
        } = &self.backend
        else {
            return Ok(0);
        };
        #[derive(QueryableByName)]
        struct Cancelled {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = PgConnection::establish(session_url)
            .map_err(|e| DbError::Pool(scrub(&e.to_string(), url)))?;
        let cancelled: Cancelled = diesel::sql_query(
            "SELECT count(pg_cancel_backend(pid)) AS n FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND state <> 'idle' \
             AND datname = current_database() \
             AND (application_name = $1 OR application_name LIKE $2)",
        )
        .bind::<diesel::sql_types::Text, _>(session_name())
        .bind::<diesel::sql_types::Text, _>(format!("pid {} on %", std::process::id()))
        .get_result(&mut conn)?;
        Ok(usize::try_from(cancelled.n).unwrap_or(0))
    }

    /// One trivial query: the database answers.
    pub fn ping(&self) -> Result<(), DbError> {
        let mut conn = self.conn()?;
        with_conn!(&mut conn, |c| diesel::sql_query("SELECT 1").execute(c))
            .map_err(|e| self.name_file(e.into()))?;
        Ok(())
    }

    /// Applies pending migrations; a no-op when there are none. Safe when several processes
    /// start together: PostgreSQL takes an advisory lock, SQLite a kernel file lock.
    pub fn migrate(&self) -> Result<usize, DbError> {
        migrate::run(self).map_err(|e| self.name_file(e))
    }
}

/// Logs the errors of the pool's own connection attempts (r2d2 would log them bare, through
/// `log`): naming the SQLite file, or with the PostgreSQL password scrubbed.
#[derive(Debug)]
enum PoolErrorLog {
    Sqlite(PathBuf),
    Pg(Arc<str>),
}

impl HandleError<diesel::r2d2::Error> for PoolErrorLog {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        match self {
            PoolErrorLog::Sqlite(path) => tracing::error!(
                database = %path.display(),
                "cannot open a connection to the SQLite database: {error}"
            ),
            PoolErrorLog::Pg(url) => tracing::error!(
                database = %redact(url),
                "cannot open a connection to the PostgreSQL database: {}",
                scrub(&error.to_string(), url)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[should_panic(expected = "a bug in a database closure")]
    async fn a_panic_in_blocking_work_is_raised_in_the_caller_not_turned_into_an_error() {
        let _ = blocking(|| -> Result<(), DbError> { panic!("a bug in a database closure") }).await;
    }

    #[test]
    fn sessions_get_keepalives_unless_the_url_sets_them() {
        let pid = std::process::id();
        assert_eq!(
            with_keepalives("postgres://u@h/db"),
            format!(
                "postgres://u@h/db?keepalives_idle=10&keepalives_interval=5&keepalives_count=3\
                 &tcp_user_timeout=30000&fallback_application_name=jobsync%20pid%20{pid}"
            )
        );
        assert_eq!(
            with_keepalives("postgres://u@h/db?sslmode=disable&keepalives_idle=60"),
            format!(
                "postgres://u@h/db?sslmode=disable&keepalives_idle=60&keepalives_interval=5\
                 &keepalives_count=3&tcp_user_timeout=30000\
                 &fallback_application_name=jobsync%20pid%20{pid}"
            )
        );
        assert_eq!(
            with_keepalives("host=h dbname=db tcp_user_timeout=0"),
            format!(
                "host=h dbname=db tcp_user_timeout=0 keepalives_idle='10' \
                 keepalives_interval='5' keepalives_count='3' \
                 fallback_application_name='jobsync pid {pid}'"
            )
        );
    }

    #[test]
    fn postgres_connection_errors_get_a_hint() {
        let hint = |m: &str| pg_hint(m).unwrap_or_default();
        assert!(
            hint(r#"connection to server at "127.0.0.1", port 5432 failed: FATAL: password authentication failed for user "u""#)
                .contains("user and password in database.url")
        );
        assert!(
            hint(
                r#"connection to server at "db", port 5432 failed: FATAL: role "x" does not exist"#
            )
            .contains("user and password")
        );
        assert!(
            hint(r#"connection to server at "::1", port 6543 failed: Connection refused"#)
                .contains("reachable at ::1:6543?")
        );
        assert!(
            hint(r#"connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed: No such file or directory"#)
                .contains("reachable at /run/postgresql/.s.PGSQL.5432?")
        );
        assert!(
            hint(r#"could not translate host name "dbx" to address: Name or service not known"#)
                .contains("reachable at dbx?")
        );
        assert!(
            hint(r#"connection to server at "h", port 5432 failed: FATAL: database "crm" does not exist"#)
                .contains("`createdb crm`")
        );
        assert_eq!(pg_hint("something else entirely"), None);
    }

    #[test]
    fn a_text_file_is_not_a_database_and_stays_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "not a database, just some notes\n".repeat(100)).unwrap();
        let err = Db::connect(&format!("sqlite://{}", path.display()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{} is not a SQLite database", path.display()))
                && err.contains("database.url"),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "nothing written beside it");
    }

    #[test]
    fn sqlite_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let db = Db::open(&format!("sqlite://{}", path.display())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt
            .block_on(db.run(|conn| {
                with_conn!(conn, |c| diesel::sql_query("SELECT * FROM nowhere")
                    .execute(c))?;
                Ok(())
            }))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no such table") && err.contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn the_default_statement_timeout_is_the_default_stall_budget() {
        assert_eq!(
            DbOptions::default().statement_timeout,
            Some(Duration::from_secs(
                crate::config::SyncConfig::default().stall_secs
            ))
        );
    }

    #[test]
    fn read_only_uris_escape_the_path() {
        assert_eq!(
            sqlite_read_only_uri(Path::new("/srv/a b/j?.db"), false),
            "file:///srv/a%20b/j%3F.db?mode=ro&immutable=1"
        );
        assert_eq!(
            sqlite_read_only_uri(Path::new("data/100%.db"), true),
            "file:data/100%25.db?mode=ro"
        );
    }

    #[test]
    fn a_read_only_open_of_a_file_with_odd_characters_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a b?#%.db");
        let url = format!("sqlite://{}", path.display());
        drop(Db::open(&url).unwrap());
        let runs = Db::read_only(&url, DbOptions::default(), |c| {
            repo::runs::recent(c, 5).map(|r| r.len())
        })
        .unwrap();
        assert_eq!(runs, 0);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(
            left.len(),
            2,
            "the database and its .migrate.lock: {left:?}"
        );
    }

    /// A process that opens the file, commits and closes it (its last connection copies the log
    /// into the file and removes it) while `status` reads it as immutable: the read is made
    /// again, and sees the commit.
    #[test]
    fn an_immutable_read_that_a_writer_met_is_made_again() {
        use crate::db::models::NewOutboxRow;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("j.db").display());
        drop(Db::open(&url).unwrap());
        let mut reads = 0;
        let pending = Db::read_only(&url, DbOptions::default(), |c| {
            reads += 1;
            if reads == 1 {
                let writer = Db::open(&url).unwrap();
                let row = NewOutboxRow {
                    op: "create".into(),
                    campaign: Some(28),
                    reference: Some("written meanwhile".into()),
                    job_id: None,
                    // Enough to grow the file: the change shows in its size, whatever the
                    // clock's resolution.
                    payload: format!("{{\"name\": \"{}\"}}", "x".repeat(200_000)),
                };
                repo::outbox::insert(&mut writer.conn().unwrap(), &[row]).unwrap();
            }
            let counts = repo::outbox::counts(c)?;
            Ok(counts.iter().map(|(_, n)| n).sum::<i64>())
        })
        .unwrap();
        assert_eq!((reads, pending), (2, 1));
        assert!(!sqlite_in_use(&dir.path().join("j.db")));
    }

    #[test]
    fn refuses_unknown_schemes() {
        let err = Db::connect("mysql://x").unwrap_err().to_string();
        assert!(err.contains("unknown scheme"), "{err}");
    }
}
