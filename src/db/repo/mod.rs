//! Typed repository functions over the tables: the only place the engine's SQL lives.
//! Every function takes a [`Conn`](super::Conn) and works on both backends.

pub mod changes;
pub mod consumers;
pub mod jobs;
pub mod outbox;
pub mod quarantine;
pub mod report;
pub mod retention;
pub mod runs;
pub mod state;

/// SQLite allows 32,766 bound parameters per statement and PostgreSQL 65,535; a mirror row
/// binds 20, so 1,000 rows per statement stays under both.
pub(crate) const ROWS_PER_STATEMENT: usize = 1000;
/// Rows per statement of a fixed-size batch insert. Diesel caches a prepared statement only when
/// its shape is known at compile time, so inserting `&[T; FIXED_BATCH]` chunks reuses one
/// statement instead of having SQLite parse a fresh thousand-row INSERT each time (a seventh of a
/// backfill's CPU); the last, shorter chunk of a batch is prepared on its own.
pub(crate) const FIXED_BATCH: usize = 100;

/// Inserts `rows` into `$table` in cached fixed-size statements plus one for the remainder.
macro_rules! insert_in_fixed_batches {
    ($conn:expr, $table:expr, $rows:expr) => {
        $crate::with_conn!($conn, |c| {
            let mut chunks = $rows.chunks_exact($crate::db::repo::FIXED_BATCH);
            for chunk in &mut chunks {
                let fixed: &[_; $crate::db::repo::FIXED_BATCH] =
                    chunk.try_into().expect("chunks_exact yields full chunks");
                diesel::insert_into($table).values(fixed).execute(c)?;
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                diesel::insert_into($table).values(rest).execute(c)?;
            }
            Ok(())
        })
    };
}
pub(crate) use insert_in_fixed_batches;

/// Ids per `IN (...)` list.
pub(crate) const IDS_PER_STATEMENT: usize = 5000;

use super::{Conn, DbError};
use crate::with_conn;

/// Runs `work` with SQLite commits that leave syncing the log to checkpoints (`synchronous =
/// NORMAL`): for writes a sync redoes after a power loss anyway (the pull's batches, re-read from
/// the watermark, which moves only after them). PostgreSQL is unchanged.
///
/// Its statement journals stay in memory too (`temp_store = MEMORY`): each multi-row insert
/// journals the pages it changes in case it must undo itself, and on disk that was a quarter of a
/// backfill's writes. The memory is a batch's pages at most (a pull batch is 2,000 jobs); the
/// setting is restored after, so a large statement elsewhere (a campaign's jobs all marked
/// deleted, under a CRM's trigger) still spills its journal to a file.
///
/// Its commits do not checkpoint the write-ahead log either (`wal_autocheckpoint = 0`): the
/// caller calls [`Db::checkpoint_behind`](crate::db::Db::checkpoint_behind) after each, which
/// copies the log on another thread. Should it not, the next ordinary commit checkpoints as
/// usual; the log only grows meanwhile.
pub fn with_relaxed_durability<T>(
    conn: &mut Conn,
    work: impl FnOnce(&mut Conn) -> Result<T, DbError>,
) -> Result<T, DbError> {
    use diesel::connection::SimpleConnection;
    if let Conn::Sqlite(c) = conn {
        c.batch_execute(
            "PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY; \
             PRAGMA wal_autocheckpoint = 0",
        )?;
    }
    let result = work(conn);
    if let Conn::Sqlite(c) = conn {
        c.batch_execute(
            "PRAGMA synchronous = FULL; PRAGMA temp_store = DEFAULT; \
             PRAGMA wal_autocheckpoint = 1000",
        )?;
    }
    result
}

/// Runs `work` in a write transaction on either backend (nested calls become savepoints).
///
/// On SQLite the outermost transaction begins `IMMEDIATE`: it takes the write lock up front,
/// waiting up to the busy timeout for another writer (a CRM inserting into the outbox). A plain
/// (deferred) `BEGIN` starts as a reader, and when another connection writes between its first
/// read and its first write, SQLite refuses the upgrade with `database is locked` at once,
/// without the busy timeout: a reader that waited for a writer could deadlock with it, or would
/// go on from a stale snapshot. Every caller writes, so none loses anything by taking the lock
/// at the start. PostgreSQL is unchanged.
pub fn transaction<T>(
    conn: &mut Conn,
    work: impl FnOnce(&mut Conn) -> Result<T, DbError>,
) -> Result<T, DbError> {
    begin(conn)?;
    match work(conn) {
        Ok(value) => {
            commit(conn)?;
            Ok(value)
        }
        Err(e) => {
            let _ = rollback(conn);
            Err(e)
        }
    }
}

/// Begins the write transaction of [`transaction`] (`BEGIN IMMEDIATE` on SQLite when outermost,
/// a savepoint when nested), for work that cannot be one closure (`import` streams a file through
/// it, and rolls back at the first bad line while it goes on checking the rest). Every `begin`
/// needs its [`commit`] or [`rollback`].
pub fn begin(conn: &mut Conn) -> Result<(), DbError> {
    // The closure needs the enum (repository functions take `&mut Conn`), so the transaction is
    // driven through the connection's transaction manager rather than `Connection::transaction`.
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    with_conn!(
        conn,
        sqlite | c | {
            let outermost = AnsiTransactionManager::transaction_manager_status_mut(c)
                .transaction_depth()?
                .is_none();
            if outermost {
                AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?;
            } else {
                AnsiTransactionManager::begin_transaction(c)?;
            }
        },
        postgres | c | AnsiTransactionManager::begin_transaction(c)?,
    );
    Ok(())
}

/// Lets this connection's transactions stay idle as long as they like (PostgreSQL sessions end
/// after [`IDLE_IN_TRANSACTION`](crate::db::IDLE_IN_TRANSACTION) otherwise): for a transaction
/// that waits on something else than the database, `import` reading a file.
pub fn allow_idle_transaction(conn: &mut Conn) -> Result<(), DbError> {
    use diesel::connection::SimpleConnection;
    if let Conn::Pg(c) = conn {
        c.batch_execute("SET idle_in_transaction_session_timeout = 0")?;
    }
    Ok(())
}

/// Commits what [`begin`] began.
pub fn commit(conn: &mut Conn) -> Result<(), DbError> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    with_conn!(conn, |c| AnsiTransactionManager::commit_transaction(c))?;
    Ok(())
}

/// Rolls back what [`begin`] began.
pub fn rollback(conn: &mut Conn) -> Result<(), DbError> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    with_conn!(conn, |c| AnsiTransactionManager::rollback_transaction(c))?;
    Ok(())
}
