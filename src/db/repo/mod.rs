//! Typed repository functions over the tables: the only place the engine's SQL lives.
//! Every function takes a [`Conn`](super::Conn) and works on both backends.

pub mod changes;
pub mod jobs;
pub mod outbox;
pub mod retention;
pub mod runs;
pub mod state;

/// SQLite allows 32,766 bound parameters per statement and PostgreSQL 65,535; a mirror row
/// binds 20, so 1,000 rows per statement stays under both.
pub(crate) const ROWS_PER_STATEMENT: usize = 1000;
/// Ids per `IN (...)` list.
pub(crate) const IDS_PER_STATEMENT: usize = 5000;

use super::{Conn, DbError};
use crate::with_conn;

/// Runs `work` in a transaction on either backend.
pub fn transaction<T>(
    conn: &mut Conn,
    work: impl FnOnce(&mut Conn) -> Result<T, DbError>,
) -> Result<T, DbError> {
    // The closure needs the enum (repository functions take `&mut Conn`), so the transaction is
    // driven through the connection's transaction manager rather than `Connection::transaction`.
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    with_conn!(conn, |c| AnsiTransactionManager::begin_transaction(c))?;
    match work(conn) {
        Ok(value) => {
            with_conn!(conn, |c| AnsiTransactionManager::commit_transaction(c))?;
            Ok(value)
        }
        Err(e) => {
            let _ = with_conn!(conn, |c| AnsiTransactionManager::rollback_transaction(c));
            Err(e)
        }
    }
}
