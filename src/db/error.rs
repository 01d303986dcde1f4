//! Database errors, carrying what an operator needs to act. They never hold a password: messages
//! that may quote a PostgreSQL URL are scrubbed (`conninfo::scrub`) before they are stored here.

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database.url {url} is not usable: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect to the {backend} database: {reason}")]
    Connect {
        backend: &'static str,
        reason: String,
    },
    #[error("no database connection available: {0}; is the database up and reachable?")]
    Pool(String),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    /// The database is not one jobsync can use as it is, found before anything was written: a
    /// role that may not create jobsync's tables, tables of the same names that are not
    /// jobsync's, a database a read-only command finds absent or not migrated. The message
    /// names the cause and the fix, in one line.
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    Locked(String),
    /// This process held the sync lock and no longer does (contract §8, Fencing).
    #[error("lost the sync lock: {0}")]
    LockLost(String),
    #[error("database task failed: {0}")]
    Task(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// An error of the SQLite database at `path`, whose own message does not say which file.
    #[error("{source} (SQLite database {path})")]
    Sqlite {
        path: String,
        #[source]
        source: Box<DbError>,
    },
}

impl From<diesel::r2d2::PoolError> for DbError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        DbError::Pool(e.to_string())
    }
}
