//! Kernel file locks beside a SQLite database: `PATH.lock` while a cycle syncs, and
//! `PATH.migrate.lock` only while pending migrations are applied — so commands that only read or
//! append (`status`, `changes`, `outbox`, `import`, `prune`) never wait for a sync. Released by
//! the kernel when the holder exits — even after SIGKILL, so a killed holder never blocks its
//! successor.
//!
//! The lock is a separate file on purpose: opening and closing another descriptor on the database
//! file itself would drop SQLite's own POSIX locks.

use super::DbError;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

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
}

impl LockPurpose {
    fn suffix(self) -> &'static str {
        match self {
            LockPurpose::Sync => ".lock",
            LockPurpose::Migration => ".migrate.lock",
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
pub enum SyncLock {
    File(FileLock),
    Pg(super::Conn),
}

impl std::fmt::Debug for SyncLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncLock::File(_) => "SyncLock(file)",
            SyncLock::Pg(_) => "SyncLock(postgres advisory)",
        })
    }
}

impl SyncLock {
    /// Takes the lock, or explains who holds it ([`DbError::Locked`]).
    pub fn try_acquire(db: &super::Db) -> Result<SyncLock, DbError> {
        use diesel::prelude::*;
        if let Some(path) = db.sqlite_path() {
            return FileLock::try_acquire(path, LockPurpose::Sync).map(SyncLock::File);
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
            return Ok(SyncLock::Pg(conn));
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
        if let SyncLock::Pg(super::Conn::Pg(c)) = self {
            // The connection goes back to the pool: the session lock and the name must not go
            // with it.
            let _ = diesel::sql_query(format!(
                "SELECT {}",
                PgLock::Sync.call("pg_advisory_unlock")
            ))
            .execute(&mut **c);
            let _ = diesel::sql_query("RESET application_name").execute(&mut **c);
        }
    }
}
