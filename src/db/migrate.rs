//! Embedded migrations, one set per backend, applied under a lock so that processes starting
//! together do not race.

use super::lock::{self, PgLock};
use super::{Conn, Db, DbError};
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");

pub(super) fn run(db: &Db) -> Result<usize, DbError> {
    let _file_lock = match db.sqlite_path() {
        Some(path) => Some(lock::FileLock::acquire_blocking(path)?),
        None => None,
    };
    let mut conn = db.conn()?;
    match &mut conn {
        Conn::Sqlite(c) => apply_sqlite(c),
        Conn::Pg(c) => {
            diesel::sql_query(format!(
                "SELECT {}",
                PgLock::Migration.call("pg_advisory_lock")
            ))
            .execute(&mut **c)?;
            let applied = apply(&mut **c, POSTGRES);
            diesel::sql_query(format!(
                "SELECT {}",
                PgLock::Migration.call("pg_advisory_unlock")
            ))
            .execute(&mut **c)?;
            applied
        }
    }
}

/// On SQLite each migration runs inside a `BEGIN IMMEDIATE` transaction, the harness's own
/// transaction nesting in it as a savepoint. A deferred transaction that reads before it writes
/// (a data migration can) is refused at once with "database is locked" when a CRM writes to the
/// outbox in between; an immediate one waits for the CRM under the busy timeout. The kernel file
/// lock keeps other jobsync processes out, but not the CRM.
fn apply_sqlite(conn: &mut SqliteConnection) -> Result<usize, DbError> {
    let pending = conn
        .pending_migrations(SQLITE)
        .map_err(|e| DbError::Migration(e.to_string()))?;
    for migration in &pending {
        let migration = &**migration;
        if migration.metadata().run_in_transaction() {
            conn.immediate_transaction(|c| c.run_migration(migration).map(|_| ()))
        } else {
            // Asked to run outside a transaction (statements SQLite refuses inside one).
            conn.run_migration(migration).map(|_| ())
        }
        .map_err(|e| DbError::Migration(e.to_string()))?;
    }
    Ok(pending.len())
}

fn apply<C>(conn: &mut C, migrations: EmbeddedMigrations) -> Result<usize, DbError>
where
    C: MigrationHarness<C::Backend> + diesel::Connection,
{
    conn.run_pending_migrations(migrations)
        .map(|done| done.len())
        .map_err(|e| DbError::Migration(e.to_string()))
}
