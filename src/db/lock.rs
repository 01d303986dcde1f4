//! Kernel file locks beside a SQLite database: `PATH.lock` while a cycle syncs, and
//! `PATH.migrate.lock` only while pending migrations are applied — so commands that only read or
//! append (`status`, `changes`, `outbox`, `import`, `prune`) never wait for a sync. Released by
//! the kernel when the holder exits — even after SIGKILL, so a killed holder never blocks its
//! successor.
//!
//! The lock is a separate file on purpose: opening and closing another descriptor on the database
//! file itself would drop SQLite's own POSIX locks.

use super::DbError;
use crate::with_conn;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// What a lock file is for: its name beside the database, and the words of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockPurpose {
    /// `PATH.lock`: held by the one process that syncs (a cycle of `run` or `--once`).
    Sync,
    /// `PATH.migrate.lock`: held only while pending migrations are applied.
    Migration,
    /// `PATH.webhook.lock`: held by the one process whose webhook sink delivers.
    Webhook,
}

impl LockPurpose {
    fn suffix(self) -> &'static str {
        match self {
            LockPurpose::Sync => ".lock",
            LockPurpose::Migration => ".migrate.lock",
            LockPurpose::Webhook => ".webhook.lock",
        }
    }
}

impl FileLock {
    pub fn path_for(db_path: &Path, purpose: LockPurpose) -> PathBuf {
        let mut name = db_path.as_os_str().to_owned();
        name.push(purpose.suffix());
        PathBuf::from(name)
    }

    fn open(db_path: &Path, purpose: LockPurpose) -> Result<(File, PathBuf), DbError> {
        let path = Self::path_for(db_path, purpose);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                DbError::Locked(format!(
                    "cannot open lock file {}: {e}; check the directory is writable",
                    path.display()
                ))
            })?;
        Ok((file, path))
    }

    /// Waits for the lock (migrations: the other process is applying the same ones).
    pub fn acquire_blocking(db_path: &Path, purpose: LockPurpose) -> Result<FileLock, DbError> {
        let (file, path) = Self::open(db_path, purpose)?;
        file.lock()
            .map_err(|e| DbError::Locked(format!("cannot lock {}: {e}", path.display())))?;
        Ok(FileLock::holding(file))
    }

    /// Takes the lock or says who has it: the holder writes its pid and start time into the
    /// file, so a refusal names them.
    pub fn try_acquire(db_path: &Path, purpose: LockPurpose) -> Result<FileLock, DbError> {
        let (file, path) = Self::open(db_path, purpose)?;
        match file.try_lock() {
            Ok(()) => Ok(FileLock::holding(file)),
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .map(|text| text.trim().to_string())
                    .filter(|text| !text.is_empty())
                    .unwrap_or_else(|| "a process that has not written its pid yet".into());
                Err(DbError::Locked(format!(
                    "another jobsync process ({holder}) is syncing {}: it holds the lock {}; wait for it to finish or stop it (run one syncer per SQLite file; several replicas need PostgreSQL)",
                    db_path.display(),
                    path.display()
                )))
            }
            Err(TryLockError::Error(e)) => Err(DbError::Locked(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        }
    }

    /// Whether the lock file at `path` is no longer the file this lock holds (deleted, or
    /// replaced by another): another process may lock the new one.
    pub fn replaced(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(mine) = self._file.metadata() else {
            return false;
        };
        match std::fs::metadata(path) {
            Ok(now) => now.ino() != mine.ino() || now.dev() != mine.dev(),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// Records who holds the lock. Best effort: the lock is the kernel's, the text only helps
    /// the operator reading a refusal.
    fn holding(mut file: File) -> FileLock {
        use std::io::{Seek, Write};
        let _ = file.set_len(0);
        let _ = file.seek(std::io::SeekFrom::Start(0));
        let _ = writeln!(file, "{}", holder_description());
        FileLock { _file: file }
    }
}

/// `pid 4242 on HOST, since 2026-12-02T01:02:03Z`: who holds a lock, for refusals.
pub fn holder_description() -> String {
    format!(
        "pid {} on {}, since {}",
        std::process::id(),
        hostname(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    )
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "an unknown host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// PostgreSQL advisory locks jobsync takes, by purpose. Each is keyed by the purpose and by
/// `current_schema()`, so that jobsync instances kept in different schemas of one database (and
/// parallel tests) do not block each other.
#[derive(Debug, Clone, Copy)]
pub enum PgLock {
    Migration = 0x6a6f_6201,
    Changes = 0x6a6f_6202,
    Sync = 0x6a6f_6203,
    Webhook = 0x6a6f_6204,
}

impl PgLock {
    /// The SQL call `function(key, hashtext(current_schema()))`, e.g. `pg_advisory_lock`.
    pub fn call(self, function: &str) -> String {
        format!("{function}({}, hashtext(current_schema()))", self as i32)
    }
}

/// The right to run a cycle: one syncer per database. On SQLite a kernel file lock on `PATH.lock`;
/// on PostgreSQL a session advisory lock held on a dedicated connection (replicas sharing the
/// database elect the active syncer this way). Released on drop, or by the kernel / the server
/// when the holder dies.
///
/// A lock can be lost while it is held: a PostgreSQL session ends (an idle timeout, a DBA, a
/// failover, a network partition), a lock file is deleted and taken by another process. So
/// taking it also raises the database's fence (`sync_fence.epoch`), and the cycle's writes check
/// the fence ([`Fence::check`]): the database itself refuses a syncer whose lock another process
/// took since (contract §8, Fencing). [`SyncLock::check_alive`] notices a dead session sooner,
/// between chunks.
pub struct SyncLock {
    held: Held,
    fence: Arc<Fence>,
}

enum Held {
    File { lock: FileLock, path: PathBuf },
    Pg(super::Conn),
}

impl std::fmt::Debug for SyncLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.held {
            Held::File { .. } => "SyncLock(file)",
            Held::Pg(_) => "SyncLock(postgres advisory)",
        })
    }
}

/// How long the lock's PostgreSQL session may stay idle before the server ends it (and so
/// releases the lock): [`SyncLock::check_alive`] queries it every [`LOCK_CHECK_EVERY`], so only
/// a holder that stopped answering (cut off from the server, frozen) stays idle this long. Ends
/// an orphaned session without waiting for TCP keepalives (PostgreSQL 14 and later; older servers
/// rely on the keepalives alone).
pub const LOCK_IDLE_LIMIT: Duration = Duration::from_secs(20);
/// How often a cycle checks that its lock's session is alive.
pub const LOCK_CHECK_EVERY: Duration = Duration::from_secs(2);

impl SyncLock {
    /// Takes the lock, or explains who holds it ([`DbError::Locked`]), and raises the fence.
    pub fn try_acquire(db: &super::Db) -> Result<SyncLock, DbError> {
        use diesel::prelude::*;
        if let Some(path) = db.sqlite_path() {
            let lock = FileLock::try_acquire(path, LockPurpose::Sync)?;
            let mut conn = db.conn()?;
            let fence = Fence::raise(&mut conn)?;
            let path = FileLock::path_for(path, LockPurpose::Sync);
            return Ok(SyncLock {
                held: Held::File { lock, path },
                fence,
            });
        }
        let mut conn = db.conn()?;
        let super::Conn::Pg(c) = &mut conn else {
            unreachable!("a database without a SQLite path is PostgreSQL")
        };
        let taken = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
            &PgLock::Sync.call("pg_try_advisory_lock"),
        ))
        .get_result::<bool>(&mut **c)?;
        if taken {
            // The holder names itself in `pg_stat_activity`, where a refused process reads it.
            // `application_name` holds at most 63 bytes; the pid and the time come first.
            let mut name = holder_description();
            name.truncate(63);
            diesel::sql_query("SELECT set_config('application_name', $1, false)")
                .bind::<diesel::sql_types::Text, _>(&name)
                .execute(&mut **c)?;
            // A session that stops answering is ended by the server: see LOCK_IDLE_LIMIT.
            // Refused by servers older than 14, which then rely on TCP keepalives alone.
            let _ = diesel::sql_query(format!(
                "SET idle_session_timeout = {}",
                LOCK_IDLE_LIMIT.as_millis()
            ))
            .execute(&mut **c);
            // A transaction-pooling proxy hands each statement to whichever server session is
            // free: the lock stays with a session this connection no longer talks to.
            if !holds_sync_lock(c).unwrap_or(false) {
                let _ = diesel::sql_query(format!(
                    "SELECT {}",
                    PgLock::Sync.call("pg_advisory_unlock")
                ))
                .execute(&mut **c);
                return Err(DbError::Locked(format!(
                    "the sync lock this connection took is not held by the session that answers \
                     it next: a transaction-pooling proxy (PgBouncer with pool_mode = \
                     transaction or statement, or a cloud proxy in that mode) stands between \
                     jobsync and PostgreSQL, and jobsync's session advisory lock needs a session; \
                     connect to PostgreSQL directly, or through a pool in session mode \
                     ({POOLER_HINT})"
                )));
            }
            let held = Held::Pg(conn);
            // Released by the drop if raising the fence fails.
            let mut lock = SyncLock {
                held,
                fence: Arc::new(Fence::new(0)),
            };
            let Held::Pg(conn) = &mut lock.held else {
                unreachable!("just built")
            };
            lock.fence = Fence::raise(conn)?;
            return Ok(lock);
        }
        let holder = sync_lock_holder_name(c)
            .ok()
            .flatten()
            .filter(|name| name.starts_with("pid "))
            .unwrap_or_else(|| "another session".into());
        Err(DbError::Locked(format!(
            "another jobsync process ({holder}) is the active syncer for this PostgreSQL database (advisory lock held); wait for it to finish, or let the daemon's replicas take turns"
        )))
    }

    /// The fence the cycle's writes check.
    pub fn fence(&self) -> Arc<Fence> {
        Arc::clone(&self.fence)
    }

    /// Checks that the lock is still held, as far as this process can tell on its own: on
    /// PostgreSQL the session that answers its connection holds it (which a transaction-pooling
    /// proxy breaks; the query also keeps the session from idling out); on SQLite
    /// the lock file is still the one locked (not deleted or replaced). When it is not, the
    /// fence is marked lost and the cycle stops sending. Blocking.
    pub fn check_alive(&mut self) {
        if self.fence.is_lost() {
            return;
        }
        let lost = match &mut self.held {
            Held::Pg(super::Conn::Pg(c)) => match holds_sync_lock(c) {
                Ok(true) => None,
                Ok(false) => Some(format!(
                    "the PostgreSQL session that answers its connection no longer holds it \
                     ({POOLER_HINT})"
                )),
                Err(e) => Some(format!("its PostgreSQL session ended ({e})")),
            },
            Held::Pg(super::Conn::Sqlite(_)) => None,
            Held::File { lock, path } => lock
                .replaced(path)
                .then(|| format!("its lock file {} was removed or replaced", path.display())),
        };
        if let Some(why) = lost {
            self.fence.mark_lost(why);
        }
    }
}

/// [`Fence::check`] when there is a fence (a handle of a cycle); nothing otherwise.
pub fn check_fence(fence: Option<&Arc<Fence>>, conn: &mut super::Conn) -> Result<(), DbError> {
    fence.map_or(Ok(()), |f| f.check(conn))
}

/// The fence of a sync lock taken by this process: the epoch it raised `sync_fence.epoch` to.
/// A later holder raises it again, and every fenced write of this process is then refused.
#[derive(Debug)]
pub struct Fence {
    epoch: i64,
    lost: AtomicBool,
    why: Mutex<Option<String>>,
}

#[derive(diesel::QueryableByName)]
struct Epoch {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    epoch: i64,
}

impl Fence {
    fn new(epoch: i64) -> Fence {
        Fence {
            epoch,
            lost: AtomicBool::new(false),
            why: Mutex::new(None),
        }
    }

    /// Raises the database's fence for a lock just taken. On PostgreSQL the update waits for the
    /// fenced transactions of a previous holder still open, so that none of them commits after
    /// this process reads the outbox.
    fn raise(conn: &mut super::Conn) -> Result<Arc<Fence>, DbError> {
        use diesel::prelude::*;
        let mut holder = holder_description();
        holder.truncate(200);
        let raised = crate::with_conn!(conn, |c| diesel::sql_query(
            "UPDATE sync_fence SET epoch = epoch + 1, holder = $1, taken_at = $2 \
             WHERE id = 1 RETURNING epoch"
        )
        .bind::<diesel::sql_types::Text, _>(&holder)
        .bind::<diesel::sql_types::Timestamp, _>(super::Ts::now())
        .get_result::<Epoch>(c))?;
        Ok(Arc::new(Fence::new(raised.epoch)))
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Records that the lock is lost, and why; logged once, as an ERROR.
    pub fn mark_lost(&self, why: String) {
        let mut slot = self.why.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!(
                epoch = self.epoch,
                "lost the sync lock: {why}; this process stops sending and competes for the lock \
                 again"
            );
            *slot = Some(why);
        }
        self.lost.store(true, Ordering::Release);
    }

    /// Why the lock was lost.
    pub fn reason(&self) -> String {
        self.why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "another process took it".into())
    }

    fn lost_error(&self) -> DbError {
        DbError::LockLost(self.reason())
    }

    /// Checks, inside the caller's write transaction, that the fence is still this process's;
    /// [`DbError::LockLost`] when it is not (or when the lock was found lost before). On
    /// PostgreSQL the fence row is read `FOR SHARE`: a new holder's raise waits for this
    /// transaction, and this read waits for a raise under way and then sees it.
    pub fn check(&self, conn: &mut super::Conn) -> Result<(), DbError> {
        use diesel::prelude::*;
        if self.is_lost() {
            return Err(self.lost_error());
        }
        let current = with_conn!(
            conn,
            sqlite
                | c
                | diesel::sql_query("SELECT epoch FROM sync_fence WHERE id = 1")
                    .get_result::<Epoch>(c)?,
            postgres
                | c
                | diesel::sql_query("SELECT epoch FROM sync_fence WHERE id = 1 FOR SHARE")
                    .get_result::<Epoch>(c)?,
        );
        if current.epoch != self.epoch {
            self.mark_lost(format!(
                "another process took it (fence epoch {} since, this process's {})",
                current.epoch, self.epoch
            ));
            return Err(self.lost_error());
        }
        Ok(())
    }
}

/// Where the documentation says which poolers keep session locks.
const POOLER_HINT: &str =
    "see docs/crm-integration.md, \"PostgreSQL sessions and connection poolers\"";

/// Whether the session answering `conn` holds the sync lock (of this database and schema): the
/// check between chunks, which also keeps the lock's session from idling out.
fn holds_sync_lock(conn: &mut diesel::PgConnection) -> diesel::QueryResult<bool> {
    holds(conn, PgLock::Sync)
}

/// Whether the session answering `conn` holds `lock` (of this database and schema).
fn holds(conn: &mut diesel::PgConnection, lock: PgLock) -> diesel::QueryResult<bool> {
    use diesel::prelude::*;
    #[derive(diesel::QueryableByName)]
    struct Held {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        held: bool,
    }
    let held: Held = diesel::sql_query(format!(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
         AND l.pid = pg_backend_pid() AND l.objsubid = 2 AND l.classid = {}::oid \
         AND l.objid = hashtext(current_schema())::oid \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())) \
         AS held",
        lock as i32
    ))
    .get_result(conn)?;
    Ok(held.held)
}

/// The `application_name` of the session holding the sync lock on this database and schema, if
/// any. A holder that took the lock names itself there ("pid N on HOST, since T") just after it
/// is granted, so for a moment the name may still be the connection's default.
pub fn sync_lock_holder_name(
    conn: &mut diesel::PgConnection,
) -> diesel::QueryResult<Option<String>> {
    use diesel::prelude::*;
    diesel::sql_query(format!(
        "SELECT a.application_name AS name FROM pg_locks l \
         JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
         AND l.classid = {}::oid AND l.objid = hashtext(current_schema())::oid \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        PgLock::Sync as i32
    ))
    .get_result::<HolderName>(conn)
    .optional()
    .map(|holder| holder.map(|h| h.name))
}

#[derive(diesel::QueryableByName)]
struct HolderName {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

impl Drop for SyncLock {
    fn drop(&mut self) {
        use diesel::prelude::*;
        if let Held::Pg(super::Conn::Pg(c)) = &mut self.held {
            // The connection goes back to the pool: the session lock and the name must not go
            // with it.
            let _ = diesel::sql_query(format!(
                "SELECT {}",
                PgLock::Sync.call("pg_advisory_unlock")
            ))
            .execute(&mut **c);
            let _ = diesel::sql_query("RESET application_name").execute(&mut **c);
            let _ = diesel::sql_query("RESET idle_session_timeout").execute(&mut **c);
        }
    }
}

/// The right to deliver the webhook (contract §8: one sink delivers at a time): a kernel file
/// lock on `PATH.webhook.lock` (SQLite), or a session advisory lock on a connection of its own
/// (PostgreSQL). Held for as long as the sink runs; replicas that do not hold it wait. The
/// cursor's compare-and-set ([`crate::db::repo::consumers::commit`]) fences a holder that lost
/// it: its next commit is refused once another holder has moved the position.
pub struct SinkLock {
    held: Held,
}

impl SinkLock {
    /// Takes the lock, or `Ok(None)` when another process holds it.
    pub fn try_acquire(db: &super::Db) -> Result<Option<SinkLock>, DbError> {
        use diesel::prelude::*;
        if let Some(path) = db.sqlite_path() {
            return match FileLock::try_acquire(path, LockPurpose::Webhook) {
                Ok(lock) => Ok(Some(SinkLock {
                    held: Held::File {
                        lock,
                        path: FileLock::path_for(path, LockPurpose::Webhook),
                    },
                })),
                Err(DbError::Locked(message)) if message.starts_with("another") => Ok(None),
                Err(e) => Err(e),
            };
        }
        let mut conn = db.conn()?;
        let super::Conn::Pg(c) = &mut conn else {
            unreachable!("a database without a SQLite path is PostgreSQL")
        };
        let taken = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
            &PgLock::Webhook.call("pg_try_advisory_lock"),
        ))
        .get_result::<bool>(&mut **c)?;
        if !taken {
            return Ok(None);
        }
        let _ = diesel::sql_query(format!(
            "SET idle_session_timeout = {}",
            LOCK_IDLE_LIMIT.as_millis()
        ))
        .execute(&mut **c);
        Ok(Some(SinkLock {
            held: Held::Pg(conn),
        }))
    }

    /// Whether this process still holds it (and, on PostgreSQL, keeps its session from idling
    /// out). Blocking.
    pub fn is_held(&mut self) -> bool {
        match &mut self.held {
            Held::Pg(super::Conn::Pg(c)) => holds(c, PgLock::Webhook).unwrap_or(false),
            Held::Pg(super::Conn::Sqlite(_)) => true,
            Held::File { lock, path } => !lock.replaced(path),
        }
    }
}

impl Drop for SinkLock {
    fn drop(&mut self) {
        use diesel::prelude::*;
        if let Held::Pg(super::Conn::Pg(c)) = &mut self.held {
            let _ = diesel::sql_query(format!(
                "SELECT {}",
                PgLock::Webhook.call("pg_advisory_unlock")
            ))
            .execute(&mut **c);
            let _ = diesel::sql_query("RESET idle_session_timeout").execute(&mut **c);
        }
    }
}
