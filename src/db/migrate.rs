//! Embedded migrations, one set per backend, applied under a lock so that processes starting
//! together do not race.

use super::{Conn, Db, DbError, lock};
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Arbitrary constant identifying jobsync's migration lock among PostgreSQL advisory locks.
const PG_MIGRATION_LOCK: i64 = 0x6a6f_6273_796e_6301;

pub(super) fn run(db: &Db) -> Result<usize, DbError> {
    let _file_lock = match db.sqlite_path() {
        Some(path) => Some(lock::FileLock::acquire_blocking(path)?),
        None => None,
    };
    let mut conn = db.conn()?;
    match &mut conn {
        Conn::Sqlite(c) => apply(&mut **c, SQLITE),
        Conn::Pg(c) => {
            diesel::sql_query(format!("SELECT pg_advisory_lock({PG_MIGRATION_LOCK})"))
                .execute(&mut **c)?;
            let applied = apply(&mut **c, POSTGRES);
            diesel::sql_query(format!("SELECT pg_advisory_unlock({PG_MIGRATION_LOCK})"))
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
