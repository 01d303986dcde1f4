//! SQLite: opening the file (checked to be a database first, pragmas on every connection), the
//! read-only open of read-only commands, and the background WAL checkpoint.

use super::*;

/// How many pages the write-ahead log may hold before [`Db::checkpoint_behind`] waits for its
/// checkpoint (16 MiB of 4 KiB pages; SQLite's own checkpoints start at 1,000).
pub const WAL_LIMIT_FRAMES: i64 = 4096;

/// The background checkpoint of [`Db::checkpoint_behind`]: the one running, and the size of the
/// log the last one found.
#[derive(Default)]
pub(super) struct Checkpointer {
    pub(super) running: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(super) log_frames: AtomicI64,
}

impl Checkpointer {
    pub(super) fn take(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.running.lock().ok().and_then(|mut r| r.take())
    }

    pub(super) fn put(&self, running: tokio::task::JoinHandle<()>) {
        if let Ok(mut slot) = self.running.lock() {
            *slot = Some(running);
        }
    }
}

/// The row `PRAGMA wal_checkpoint` answers.
#[derive(QueryableByName, Default)]
pub(super) struct CheckpointResult {
    /// Pages in the log (`-1` when the database is not in WAL mode).
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(super) log: i64,
}

#[derive(Debug)]
pub(super) struct SqlitePragmas;

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

pub(super) fn connect_sqlite(path: PathBuf) -> Result<Backend, DbError> {
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
pub(super) fn probe_sqlite(path: &Path, url: &str) -> Result<(), DbError> {
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

pub(super) fn is_a_directory(path: &Path) -> String {
    format!(
        "{} is a directory; point database.url at a file in it, e.g. sqlite://{}",
        path.display(),
        path.join("jobsync.db").display()
    )
}

/// A read-only pool on the SQLite file at `path`, for [`Db::read_only`]: `shared`, it shares the
/// WAL files as any reader does (creating them when absent); else it reads the file alone, as
/// `immutable`, and creates nothing. One connection, `query_only`.
pub(super) fn connect_sqlite_read_only(path: &Path, shared: bool) -> Result<Backend, DbError> {
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
pub(super) fn sqlite_read_only_uri(path: &Path, shared: bool) -> String {
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
pub(super) fn sqlite_in_use(path: &Path) -> bool {
    ["-wal", "-shm", "-journal"].iter().any(|suffix| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        Path::new(&name).exists()
    })
}

/// What tells whether a file changed: its identity, size and modification time.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct FileStamp(Option<(u64, u64, u64, std::time::SystemTime)>);

impl FileStamp {
    pub(super) fn of(path: &Path) -> FileStamp {
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
pub(super) struct SqliteReadOnly;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqliteReadOnly {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute("PRAGMA busy_timeout = 15000; PRAGMA query_only = ON;")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}
