//! Embedded migrations, one set per backend, applied under a lock so that processes starting
//! together do not race. The lock is taken only when migrations are pending (look, lock, look
//! again, apply): an up-to-date database is never locked by a command that merely opens it.

use super::lock::{self, PgLock};
use super::{Conn, Db, DbError};
use crate::with_conn;
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");

pub(super) fn run(db: &Db) -> Result<usize, DbError> {
    let mut conn = db.conn()?;
    // Look first, lock only when there is work: a command run beside a long sync must not wait
    // for a lock that only guards schema changes.
    let pending = if has_migrations_table(&mut conn)? {
        with_conn!(&mut conn, |c| pending_count(c))?
    } else {
        // A fresh database: asking the harness would create its table, and on PostgreSQL two
        // `CREATE TABLE IF NOT EXISTS` racing each other fail. Everything is pending.
        usize::MAX
    };
    if pending == 0 {
        return Ok(0);
    }
    match &mut conn {
        Conn::Sqlite(c) => {
            let path = db.sqlite_path().expect("a SQLite database has a path");
            let _lock = lock::FileLock::acquire_blocking(path, lock::LockPurpose::Migration)?;
            // Another process may have applied them while this one waited for the lock.
            apply_sqlite(c)
        }
        Conn::Pg(c) => {
            // Migrations may rewrite large tables: no statement timeout for them (the pool sets
            // one on every connection), restored afterwards.
            let timeout = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "current_setting('statement_timeout')",
            ))
            .get_result::<String>(&mut **c)?;
            diesel::sql_query(format!(
                "SELECT {}",
                PgLock::Migration.call("pg_advisory_lock")
            ))
            .execute(&mut **c)?;
            diesel::sql_query("SET statement_timeout = 0").execute(&mut **c)?;
            let applied = apply(&mut **c, POSTGRES);
            diesel::sql_query("SELECT set_config('statement_timeout', $1, false)")
                .bind::<diesel::sql_types::Text, _>(&timeout)
                .execute(&mut **c)?;
            diesel::sql_query(format!(
                "SELECT {}",
                PgLock::Migration.call("pg_advisory_unlock")
            ))
            .execute(&mut **c)?;
            applied
        }
    }
}

/// Whether the harness's `__diesel_schema_migrations` exists yet (read only, no side effect).
fn has_migrations_table(conn: &mut Conn) -> Result<bool, DbError> {
    let query = match conn {
        Conn::Sqlite(_) => {
            "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '__diesel_schema_migrations')"
        }
        Conn::Pg(_) => "to_regclass('__diesel_schema_migrations') IS NOT NULL",
    };
    with_conn!(conn, |c| Ok(diesel::select(diesel::dsl::sql::<
        diesel::sql_types::Bool,
    >(query))
    .get_result::<bool>(c)?))
}

fn pending_count<C>(conn: &mut C) -> Result<usize, DbError>
where
    C: MigrationHarness<C::Backend> + diesel::Connection,
    C::Backend: PendingSet,
{
    conn.pending_migrations(<C::Backend as PendingSet>::SET)
        .map(|pending| pending.len())
        .map_err(|e| DbError::Migration(e.to_string()))
}

/// The embedded migrations of each backend.
trait PendingSet {
    const SET: EmbeddedMigrations;
}

impl PendingSet for diesel::sqlite::Sqlite {
    const SET: EmbeddedMigrations = SQLITE;
}

impl PendingSet for diesel::pg::Pg {
    const SET: EmbeddedMigrations = POSTGRES;
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

/// One embedded migration (or one the database records and this binary does not know) and
/// whether the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    /// The migration's directory name, `2026-11-27-000001_create_tables`; for one this binary
    /// does not know, its version as the database records it.
    pub name: String,
    pub applied: bool,
}

/// What `jobsync migrate --status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// What does not exist yet, and was not created: `no SQLite database at PATH`, `no schema
    /// `S` in the database`. Every migration is then pending.
    pub missing: Option<String>,
    /// In version order.
    pub migrations: Vec<MigrationState>,
}

impl Db {
    /// The applied and pending migrations of the database `url` names, changing nothing: a
    /// SQLite file that does not exist is not created, and the harness (whose first call creates
    /// its table) is asked only when its table exists.
    pub fn migration_status(
        url: &str,
        options: super::DbOptions,
    ) -> Result<MigrationStatus, DbError> {
        use crate::config::DatabaseUrl;
        let missing = match DatabaseUrl::parse(url) {
            Ok(DatabaseUrl::Sqlite(path)) if !path.exists() => Some((
                format!("no SQLite database at {}", path.display()),
                embedded::<diesel::sqlite::Sqlite>()?,
            )),
            Ok(DatabaseUrl::Postgres(_)) => missing_schema(url, &options)?
                .map(|missing| embedded::<diesel::pg::Pg>().map(|all| (missing, all)))
                .transpose()?,
            _ => None,
        };
        if let Some((missing, all)) = missing {
            return Ok(MigrationStatus {
                missing: Some(missing),
                migrations: all_pending(&all),
            });
        }
        let db = Db::connect_with(url, options)?;
        let mut conn = db.conn()?;
        let exists = has_migrations_table(&mut conn).map_err(|e| db.name_file(e))?;
        let migrations =
            with_conn!(&mut conn, |c| listed(c, exists)).map_err(|e| db.name_file(e))?;
        Ok(MigrationStatus {
            missing: None,
            migrations,
        })
    }
}

/// `database.schema`, when it is not `public` and does not exist: connecting with it would
/// create it, so it is looked up on a connection without it first.
fn missing_schema(url: &str, options: &super::DbOptions) -> Result<Option<String>, DbError> {
    let Some(schema) = options.schema.as_deref().filter(|s| *s != "public") else {
        return Ok(None);
    };
    let plain = super::DbOptions {
        schema: None,
        ..options.clone()
    };
    let db = Db::connect_with(url, plain)?;
    let Conn::Pg(conn) = &mut db.conn()? else {
        return Ok(None);
    };
    let exists = diesel::select(
        diesel::dsl::sql::<diesel::sql_types::Bool>(
            "EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = ",
        )
        .bind::<diesel::sql_types::Text, _>(schema)
        .sql(")"),
    )
    .get_result::<bool>(&mut **conn)?;
    Ok((!exists).then(|| format!("no schema `{schema}` (database.schema) in the database")))
}

fn listed<C>(conn: &mut C, has_table: bool) -> Result<Vec<MigrationState>, DbError>
where
    C: MigrationHarness<C::Backend> + diesel::Connection,
    C::Backend: PendingSet,
{
    let all = embedded::<C::Backend>()?;
    if !has_table {
        return Ok(all_pending(&all));
    }
    let applied: Vec<String> = conn
        .applied_migrations()
        .map_err(|e| DbError::Migration(e.to_string()))?
        .iter()
        .map(ToString::to_string)
        .collect();
    let pending: Vec<String> = conn
        .pending_migrations(<C::Backend as PendingSet>::SET)
        .map_err(|e| DbError::Migration(e.to_string()))?
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    let mut found: Vec<MigrationState> = all
        .iter()
        .map(|(name, _)| MigrationState {
            name: name.clone(),
            applied: !pending.contains(name),
        })
        .collect();
    // Applied by a newer jobsync: the database is ahead of this binary.
    for version in &applied {
        if !all.iter().any(|(_, v)| v == version) {
            found.push(MigrationState {
                name: version.clone(),
                applied: true,
            });
        }
    }
    Ok(found)
}

/// The embedded migrations of a backend: each one's name and version, in version order.
fn embedded<B>() -> Result<Vec<(String, String)>, DbError>
where
    B: PendingSet + diesel::backend::Backend,
{
    use diesel::migration::MigrationSource;
    let migrations =
        MigrationSource::<B>::migrations(&B::SET).map_err(|e| DbError::Migration(e.to_string()))?;
    let mut named: Vec<(String, String)> = migrations
        .iter()
        .map(|m| (m.name().to_string(), m.name().version().to_string()))
        .collect();
    named.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(named)
}

fn all_pending(all: &[(String, String)]) -> Vec<MigrationState> {
    all.iter()
        .map(|(name, _)| MigrationState {
            name: name.clone(),
            applied: false,
        })
        .collect()
}
