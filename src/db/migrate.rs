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
        Conn::Sqlite(c) => apply(&mut **c, SQLITE),
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

fn apply<C>(conn: &mut C, migrations: EmbeddedMigrations) -> Result<usize, DbError>
where
    C: MigrationHarness<C::Backend> + diesel::Connection,
{
    conn.run_pending_migrations(migrations)
        .map(|done| done.len())
        .map_err(|e| DbError::Migration(e.to_string()))
}
