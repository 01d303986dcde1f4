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
