//! Kernel file locks beside a SQLite database (`PATH.lock`): held while migrating and while a
//! cycle syncs, released by the kernel when the holder exits — even after SIGKILL, so a killed
//! holder never blocks its successor.
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

impl FileLock {
    pub fn path_for(db_path: &Path) -> PathBuf {
        let mut name = db_path.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }

    fn open(db_path: &Path) -> Result<(File, PathBuf), DbError> {
        let path = Self::path_for(db_path);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
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

    /// Waits for the lock.
    pub fn acquire_blocking(db_path: &Path) -> Result<FileLock, DbError> {
        let (file, path) = Self::open(db_path)?;
        file.lock()
            .map_err(|e| DbError::Locked(format!("cannot lock {}: {e}", path.display())))?;
        Ok(FileLock { _file: file })
    }

    /// Takes the lock or says who has it.
    pub fn try_acquire(db_path: &Path) -> Result<FileLock, DbError> {
        let (file, path) = Self::open(db_path)?;
        match file.try_lock() {
            Ok(()) => Ok(FileLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(DbError::Locked(format!(
                "another jobsync process is syncing {} (lock {} is held); run one syncer per SQLite file, or use PostgreSQL for several replicas",
                db_path.display(),
                path.display()
            ))),
            Err(TryLockError::Error(e)) => Err(DbError::Locked(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        }
    }
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
            return FileLock::try_acquire(path).map(SyncLock::File);
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
            Ok(SyncLock::Pg(conn))
        } else {
            Err(DbError::Locked(
                "another jobsync process is the active syncer for this PostgreSQL database (advisory lock held); this one waits for its turn".into(),
            ))
        }
    }
}

impl Drop for SyncLock {
    fn drop(&mut self) {
        use diesel::prelude::*;
        if let SyncLock::Pg(super::Conn::Pg(c)) = self {
            // The connection goes back to the pool: the session lock must not go with it.
            let _ = diesel::sql_query(format!(
                "SELECT {}",
                PgLock::Sync.call("pg_advisory_unlock")
            ))
            .execute(&mut **c);
        }
    }
}
