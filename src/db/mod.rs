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
pub mod lock;
mod migrate;
pub mod models;
pub mod repo;
pub mod schema;
mod status;
mod time;

pub use crate::config::conninfo::{check_url, redact, scrub, secrets as url_secrets};
pub use error::DbError;
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
            let checked = db.conn().and_then(|mut conn| match &mut conn {
                Conn::Sqlite(c) => Ok(diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)")
                    .get_result::<CheckpointResult>(&mut **c)?),
                Conn::Pg(_) => Ok(CheckpointResult::default()),
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

/// How many pages the write-ahead log may hold before [`Db::checkpoint_behind`] waits for its
/// checkpoint (16 MiB of 4 KiB pages; SQLite's own checkpoints start at 1,000).
pub const WAL_LIMIT_FRAMES: i64 = 4096;

/// The background checkpoint of [`Db::checkpoint_behind`]: the one running, and the size of the
/// log the last one found.
#[derive(Default)]
struct Checkpointer {
    running: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    log_frames: AtomicI64,
}

impl Checkpointer {
    fn take(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.running.lock().ok().and_then(|mut r| r.take())
    }

    fn put(&self, running: tokio::task::JoinHandle<()>) {
        if let Ok(mut slot) = self.running.lock() {
            *slot = Some(running);
        }
    }
}

/// The row `PRAGMA wal_checkpoint` answers.
#[derive(QueryableByName, Default)]
struct CheckpointResult {
    /// Pages in the log (`-1` when the database is not in WAL mode).
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    log: i64,
}

#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        // WAL lets readers (the CRM, `status`, the health server) work while a sync writes.
        // `synchronous = FULL` makes every commit durable across a power loss, which the push
        // needs: it marks a create in flight before its request leaves, and a lost mark would
        // let a restarted push send again a create the API applied. Only the pull's batches,
        // which a sync redoes from its watermark anyway, commit with `NORMAL`
        // (`repo::with_relaxed_durability`). (Measured: NORMAL everywhere was no faster for the
        // push, and slower at a million rows.) A 1 MB page cache per connection keeps a long
        // push within its memory budget.
        // The busy timeout makes a writer wait for another instead of failing at once. Every
        // write transaction of jobsync begins IMMEDIATE (`repo::transaction`), so this is how
        // long a sync waits for a CRM's own transaction on the outbox to commit. Keep it at 15 s
        // or more: a CRM's transactions are not ours to keep short (a batch import, a slow
        // request handler holding one open), and a sync that waits loses nothing, while one that
        // gives up fails its cycle with "database is locked". A writer wedged for longer still
        // fails rather than hang the cycle.
        // One `batch_execute`: `sql_query` runs only the first statement of several.
        conn.batch_execute(
            "PRAGMA busy_timeout = 15000; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
             PRAGMA cache_size = -1000;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// How long a jobsync session may stay idle inside a transaction before the server ends it. No
/// transaction of jobsync waits for anything but the database, so only a process that stopped
/// answering (cut off from the server, frozen) stays so long; its open transactions (the fence
/// read `FOR SHARE` among them) would otherwise keep the next syncer waiting. `import`, which
/// streams a file through one transaction, turns it off for its own session.
pub const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(30);

/// Sets each new PostgreSQL connection's `statement_timeout`, the server's TCP keepalives on its
/// session (the server ends the session of a process cut off from it, and so releases the sync
/// lock it held, within about 25 s rather than after the kernel's two hours) and
/// [`IDLE_IN_TRANSACTION`].
#[derive(Debug)]
struct PgSession {
    statement_timeout: Option<Duration>,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PgSession {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
             SET tcp_keepalives_count = 3; SET idle_in_transaction_session_timeout = {}",
            IDLE_IN_TRANSACTION.as_millis()
        ))
        .map_err(diesel::r2d2::Error::QueryError)?;
        // The server gives up on a client that stopped acknowledging what it sends within 30 s
        // (a partition while it answers). PostgreSQL 12 and later; older servers refuse it.
        let _ = conn.batch_execute("SET tcp_user_timeout = 30000");
        match self.statement_timeout {
            // In milliseconds; 0 would mean "no timeout", so at least 1.
            Some(timeout) => conn
                .batch_execute(&format!(
                    "SET statement_timeout = {}",
                    timeout.as_millis().clamp(1, i32::MAX as u128)
                ))
                .map_err(diesel::r2d2::Error::QueryError),
            None => Ok(()),
        }
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

fn connect_sqlite(path: PathBuf) -> Result<Backend, DbError> {
    let failed = |reason: String| DbError::Connect {
        backend: "sqlite",
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(failed(format!(
            "directory {} does not exist; create it or point database.url elsewhere",
            dir.display()
        )));
    }
    if path.is_dir() {
        return Err(failed(is_a_directory(&path)));
    }
    let url = path.to_string_lossy().to_string();
    // Open and read once before the pool exists: the real error (permissions, not a database),
    // by file name, and before the pool's PRAGMAs switch a file to WAL or migrations take their
    // lock beside it. SQLite opens files lazily, so only a read tells a database from a text file.
    probe_sqlite(&path, &url)?;
    let pool = Pool::builder()
        .max_size(4)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(30))
        .connection_customizer(Box::new(SqlitePragmas))
        .error_handler(Box::new(PoolErrorLog::Sqlite(path.clone())))
        .build_unchecked(ConnectionManager::new(url));
    Ok(Backend::Sqlite {
        pool,
        path,
        checkpointer: Arc::default(),
    })
}

/// Opens `url` (the file at `path`) and reads it once: the real error, by file name — it cannot
/// be opened, it is not a SQLite database — with the fix.
fn probe_sqlite(path: &Path, url: &str) -> Result<(), DbError> {
    let failed = |reason: String| DbError::Connect {
        backend: "sqlite",
        reason,
    };
    let mut probe = SqliteConnection::establish(url).map_err(|e| {
        failed(format!(
            "cannot open {}: {e}; check the path and its permissions",
            path.display()
        ))
    })?;
    // Waits, as the pool's connections do, for a process that is migrating the file.
    probe
        .batch_execute("PRAGMA busy_timeout = 15000")
        .and_then(|()| diesel::sql_query("SELECT count(*) FROM sqlite_master").execute(&mut probe))
        .map_err(|e| {
            let is_not_db = matches!(
                &e,
                diesel::result::Error::DatabaseError(_, info)
                    if info.message().contains("not a database")
            );
            failed(if is_not_db {
                format!(
                    "{} is not a SQLite database ({e}); point database.url at a jobsync database file, or at a new path to create one",
                    path.display()
                )
            } else {
                format!(
                    "cannot read {}: {e}; check the path, its permissions and the disk",
                    path.display()
                )
            })
        })?;
    Ok(())
}

fn is_a_directory(path: &Path) -> String {
    format!(
        "{} is a directory; point database.url at a file in it, e.g. sqlite://{}",
        path.display(),
        path.join("jobsync.db").display()
    )
}

/// A read-only pool on the SQLite file at `path`, for [`Db::read_only`]: `shared`, it shares the
/// WAL files as any reader does (creating them when absent); else it reads the file alone, as
/// `immutable`, and creates nothing. One connection, `query_only`.
fn connect_sqlite_read_only(path: &Path, shared: bool) -> Result<Backend, DbError> {
    let uri = sqlite_read_only_uri(path, shared);
    probe_sqlite(path, &uri)?;
    let pool = Pool::builder()
        .max_size(1)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(30))
        .connection_customizer(Box::new(SqliteReadOnly))
        .error_handler(Box::new(PoolErrorLog::Sqlite(path.to_path_buf())))
        .build_unchecked(ConnectionManager::new(uri));
    Ok(Backend::Sqlite {
        pool,
        path: path.to_path_buf(),
        checkpointer: Arc::default(),
    })
}

/// `file:PATH?mode=ro` (and `&immutable=1` unless `shared`), the path percent-encoded as SQLite's
/// URIs want (`?`, `#`, `%` and the rest are escaped).
fn sqlite_read_only_uri(path: &Path, shared: bool) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut encoded = String::new();
    for &byte in path.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || b"/._-~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    // `file:///abs` (an empty authority) for an absolute path, `file:rel` for a relative one.
    let authority = if encoded.starts_with('/') { "//" } else { "" };
    let immutable = if shared { "" } else { "&immutable=1" };
    format!("file:{authority}{encoded}?mode=ro{immutable}")
}

/// Whether a process may have the SQLite file at `path` open: its WAL files or a rollback
/// journal exist beside it (SQLite removes them when the last connection closes).
fn sqlite_in_use(path: &Path) -> bool {
    ["-wal", "-shm", "-journal"].iter().any(|suffix| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        Path::new(&name).exists()
    })
}

/// What tells whether a file changed: its identity, size and modification time.
#[derive(Debug, PartialEq, Eq)]
struct FileStamp(Option<(u64, u64, u64, std::time::SystemTime)>);

impl FileStamp {
    fn of(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp(
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.dev(), m.ino(), m.len(), m.modified().ok()?))),
        )
    }
}

/// The read-only pool's connections: wait for a writer as the others do, and refuse any write.
#[derive(Debug)]
struct SqliteReadOnly;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqliteReadOnly {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute("PRAGMA busy_timeout = 15000; PRAGMA query_only = ON;")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// `url` with libpq's TCP keepalives and user timeout, unless it sets them itself: a server that
/// vanished (a failover, a partition) fails this process's statements within about 30 s instead
/// of the kernel's default of two hours (keepalives) or fifteen minutes (retransmissions).
/// Ignored on a Unix socket.
fn with_keepalives(url: &str) -> String {
    const SETTINGS: [(&str, &str); 4] = [
        ("keepalives_idle", "10"),
        ("keepalives_interval", "5"),
        ("keepalives_count", "3"),
        ("tcp_user_timeout", "30000"),
    ];
    let name = session_name();
    let settings = SETTINGS
        .iter()
        .copied()
        .chain([("fallback_application_name", name.as_str())]);
    let missing = settings.filter(|(key, _)| !url.contains(key));
    let is_url = url.contains("://");
    let mut out = url.to_string();
    for (key, value) in missing {
        let sep = match (is_url, out.contains('?')) {
            (false, _) => ' ',
            (true, true) => '&',
            (true, false) => '?',
        };
        out.push(sep);
        out.push_str(key);
        out.push('=');
        if is_url {
            out.push_str(&value.replace(' ', "%20"));
        } else {
            out.push('\'');
            out.push_str(value);
            out.push('\'');
        }
    }
    out
}

/// The `application_name` this process's PostgreSQL sessions start with, unless the URL names
/// one: `jobsync pid N`. [`Db::cancel_statements`] finds them by it.
fn session_name() -> String {
    format!("jobsync pid {}", std::process::id())
}

fn connect_pg(url: &str, options: DbOptions) -> Result<Backend, DbError> {
    let schema = options.schema.as_deref().filter(|s| *s != "public");
    let session_url = match schema {
        // `-c search_path=S` for every session, the lock's and the cancelling one's included.
        Some(schema) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            with_keepalives(&format!("{url}{sep}options=-csearch_path%3D{schema}"))
        }
        None => with_keepalives(url),
    };
    let mut first = PgConnection::establish(&session_url).map_err(|e| {
        // libpq repeats its message once per address tried, and adds a second line of advice
        // that the hint replaces; the first line says it. It may quote the URL, or a part of it
        // that holds the password, and so may the hint (a database name): both are scrubbed.
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        let first = first.split_whitespace().collect::<Vec<_>>().join(" ");
        let reason = match pg_hint(&first) {
            Some(hint) => format!("{}: {first}; {hint}", redact(url)),
            None => format!("{}: {first}", redact(url)),
        };
        DbError::Connect {
            backend: "postgres",
            reason: scrub(&reason, url),
        }
    })?;
    if let Some(schema) = schema {
        ensure_schema(&mut first, schema).map_err(|reason| DbError::Connect {
            backend: "postgres",
            reason: scrub(&reason, url),
        })?;
    }
    drop(first);
    let url: Arc<str> = Arc::from(url);
    let pool = Pool::builder()
        .max_size(6)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(30))
        .connection_customizer(Box::new(PgSession {
            statement_timeout: options.statement_timeout,
        }))
        .error_handler(Box::new(PoolErrorLog::Pg(url.clone())))
        .build_unchecked(ConnectionManager::new(session_url.clone()));
    let session_url_kept = session_url;
    Ok(Backend::Pg {
        pool,
        session_url: Arc::from(session_url_kept.as_str()),
        url,
        statement_timeout: options.statement_timeout,
    })
}

/// Creates `schema` unless it exists (checked first: `CREATE SCHEMA IF NOT EXISTS` needs the
/// CREATE privilege on the database even when the schema is there, which a role that was given
/// only its schema lacks).
fn ensure_schema(conn: &mut PgConnection, schema: &str) -> Result<(), String> {
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        found: bool,
    }
    let exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS found")
            .bind::<diesel::sql_types::Text, _>(schema)
            .get_result::<Found>(conn)
            .map_err(|e| format!("cannot look up schema `{schema}`: {e}"))?;
    if exists.found {
        return Ok(());
    }
    // A plain name (database.schema is validated): no quoting needed.
    diesel::sql_query(format!("CREATE SCHEMA {schema}"))
        .execute(conn)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "cannot create schema `{schema}` (database.schema): {e}; create it as a role that \
                 may, owned by jobsync's role: `CREATE SCHEMA {schema} AUTHORIZATION <jobsync \
                 role>`, or `GRANT CREATE ON DATABASE <db> TO <jobsync role>`"
            )
        })
}

/// What to do about a libpq connection error (its first line), when the cause is one a user
/// meets first: a wrong password, a server that is not there, a database not created yet.
fn pg_hint(message: &str) -> Option<String> {
    // `"NAME"` after `marker`, as libpq quotes names in its messages.
    let quoted = |marker: &str| {
        let rest = &message[message.find(marker)? + marker.len()..];
        let rest = rest.strip_prefix('"')?;
        Some(rest[..rest.find('"')?].to_string())
    };
    if message.contains("password authentication failed")
        || message.contains("no password supplied")
        || (message.contains("role \"") && message.contains("does not exist"))
    {
        return Some("check the user and password in database.url".into());
    }
    if let Some(name) = quoted("database ").filter(|_| message.contains("does not exist")) {
        return Some(format!(
            "create it (`createdb {name}`, as a user allowed to) or fix the name in database.url"
        ));
    }
    if message.contains("no pg_hba.conf entry") {
        return Some(
            "the server does not accept this client, user or database: allow it in the \
             server's pg_hba.conf, or check database.url"
                .into(),
        );
    }
    let unreachable = [
        "Connection refused",
        "could not translate host name",
        "timeout expired",
        "No route to host",
        "Network is unreachable",
        "No such file or directory",
        "Connection timed out",
    ];
    if unreachable.iter().any(|m| message.contains(m)) {
        // libpq names the place: `server at "HOST", port PORT`, `server on socket "PATH"`, or
        // `host name "HOST"`.
        const PORT: &str = "\", port ";
        let place = match (quoted("server at "), message.find(PORT)) {
            (Some(host), Some(at)) => {
                let port: String = message[at + PORT.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                Some(format!("{host}:{port}"))
            }
            _ => quoted("server on socket ").or_else(|| quoted("host name ")),
        };
        return Some(match place {
            Some(place) => format!(
                "is the PostgreSQL server running and reachable at {place}? check the host and \
                 port in database.url"
            ),
            None => "is the PostgreSQL server running and reachable? check the host and port in \
                     database.url"
                .into(),
        });
    }
    None
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
