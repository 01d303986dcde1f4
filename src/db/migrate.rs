//! Embedded migrations, one set per backend, applied under a lock so that processes starting
//! together do not race. The lock is taken only when migrations are pending (look, lock, look
//! again, apply): an up-to-date database is never locked by a command that merely opens it.
//!
//! Before the first migration creates jobsync's tables, the look also makes sure it can: a
//! database whose target schema (PostgreSQL) or file (SQLite) already holds tables of the same
//! names that jobsync's migrations did not record (a CRM's `jobs`, `campaigns`) is refused, and
//! so is a PostgreSQL role that may not create tables in that schema (PostgreSQL 15 took CREATE
//! on `public` from every role but its owner) — each with the fix, and before anything is
//! written: no migrations table, no lock file, no switch of a SQLite file to WAL.

use super::lock::{self, PgLock};
use super::{Conn, Db, DbError};
use crate::with_conn;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use std::path::Path;

const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Every table jobsync's migrations create, on both backends (a test holds this list to the
/// migrations' `CREATE TABLE`s): one of these names already taken, before jobsync's first
/// migration, is another application's table.
const TABLES: [&str; 9] = [
    "jobs",
    "outbox",
    "job_changes",
    "sync_runs",
    "sync_state",
    "campaigns",
    "sync_fence",
    "quarantine",
    "changefeed_consumers",
];

pub(super) fn run(db: &Db) -> Result<usize, DbError> {
    // Look first, lock only when there is work: a command run beside a long sync must not wait
    // for a lock that only guards schema changes.
    let (pending, mut conn) = match db.sqlite_path() {
        // A connection of its own, outside the pool: the pool's first connection switches the
        // file to WAL, which a file refused here must not undergo.
        Some(path) => (look_at_file(path)?, None),
        None => {
            let mut conn = db.conn()?;
            let pending = look(&mut Raw::of(&mut conn), &db.place())?;
            (pending, Some(conn))
        }
    };
    if !pending {
        return Ok(0);
    }
    let mut conn = match conn.take() {
        Some(conn) => conn,
        None => db.conn()?,
    };
    with_conn!(
        &mut conn,
        sqlite | c | {
            let path = db.sqlite_path().expect("a SQLite database has a path");
            let _lock = lock::FileLock::acquire_blocking(path, lock::LockPurpose::Migration)?;
            // Another process may have applied them while this one waited for the lock.
            apply_sqlite(c)
        },
        postgres | c | {
            // Migrations may rewrite large tables: no statement timeout for them (the pool sets
            // one on every connection), restored afterwards.
            let timeout = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "current_setting('statement_timeout')",
            ))
            .get_result::<String>(c)?;
            diesel::sql_query(format!(
                "SELECT {}",
                PgLock::Migration.call("pg_advisory_lock")
            ))
            .execute(c)?;
            diesel::sql_query("SET statement_timeout = 0").execute(c)?;
            let applied = apply(c, POSTGRES);
            diesel::sql_query("SELECT set_config('statement_timeout', $1, false)")
                .bind::<diesel::sql_types::Text, _>(&timeout)
                .execute(c)?;
            diesel::sql_query(format!(
                "SELECT {}",
                PgLock::Migration.call("pg_advisory_unlock")
            ))
            .execute(c)?;
            // A later migration refused a CREATE (the privilege taken after the first one ran).
            applied.map_err(|e| match e {
                DbError::Migration(m) if m.contains("permission denied for schema") => {
                    match privileges(c) {
                        Ok(p) => DbError::NotReady(format!(
                            "database migration failed: {m}; {}",
                            create_denied_fix(&p)
                        )),
                        Err(_) => DbError::Migration(m),
                    }
                }
                e => e,
            })
        },
    )
}

/// [`look`] at a SQLite file, on a plain connection that changes nothing (no PRAGMA but the
/// busy timeout, which waits for a process migrating it).
fn look_at_file(path: &Path) -> Result<bool, DbError> {
    let mut raw =
        SqliteConnection::establish(&path.to_string_lossy()).map_err(|e| DbError::Connect {
            backend: "sqlite",
            reason: format!("cannot open {}: {e}", path.display()),
        })?;
    raw.batch_execute("PRAGMA busy_timeout = 15000")?;
    look(
        &mut Raw::Sqlite(&mut raw),
        &format!("SQLite database {}", path.display()),
    )
}

/// Whether migrations are pending, after making sure they can be applied where they would go:
/// refuses (with the fix) tables of jobsync's names that jobsync did not create, and a role that
/// may not create tables there. Reads only.
fn look(raw: &mut Raw, place: &str) -> Result<bool, DbError> {
    let all = raw.embedded()?;
    let first_pending = |applied: &Option<Vec<String>>| match (applied, all.first()) {
        (None, _) => true,
        (Some(applied), Some((_, first))) => !applied.contains(first),
        (Some(_), None) => false,
    };
    let applied = raw.applied()?;
    let pending = match &applied {
        None => true,
        Some(applied) => all.iter().any(|(_, v)| !applied.contains(v)),
    };
    if !pending || !first_pending(&applied) {
        return Ok(pending);
    }
    // The first migration, which creates the tables, has yet to run.
    let privileges = match raw {
        Raw::Pg(c) => Some(privileges(c)?),
        Raw::Sqlite(_) => None,
    };
    let taken = raw.taken_names()?;
    // Read after the tables: a jobsync that created them in the meantime recorded its migration
    // in the same transaction, so it shows now.
    if !taken.is_empty() && first_pending(&raw.applied()?) {
        let place = match &privileges {
            Some(p) => format!("schema {} of {place}", p.schema.as_deref().unwrap_or("?")),
            None => place.to_string(),
        };
        return Err(DbError::NotReady(collision(raw, &place, &taken)));
    }
    if let Some(p) = privileges
        && p.may_create != Some(true)
    {
        return Err(DbError::NotReady(format!(
            "database migration failed: {}; nothing was created",
            create_denied_fix(&p)
        )));
    }
    Ok(true)
}

/// The refusal of a database that holds tables named as jobsync's (`taken`), not jobsync's.
fn collision(raw: &Raw, place: &str, taken: &[String]) -> String {
    let names = taken
        .iter()
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let (tables, them) = if taken.len() == 1 {
        ("a table named", "it")
    } else {
        ("tables named", "them")
    };
    let fix = match raw {
        Raw::Pg(_) => {
            "give jobsync a schema of its own: set database.schema = \"jobsync\" \
             (JOBSYNC_DATABASE__SCHEMA=jobsync), created if absent"
        }
        Raw::Sqlite(_) => {
            "point database.url at a new file for jobsync (a SQLite database is jobsync's alone)"
        }
    };
    format!(
        "database migration failed: {place} already holds {tables} {names} that jobsync's \
         migrations did not create (another application's?); jobsync's tables would collide with \
         {them}, so nothing was created: {fix}"
    )
}

/// Where a PostgreSQL session would create tables, as whom, and whether it may.
struct Privileges {
    /// `current_schema()`: `None` when the search path names no schema the role may use.
    schema: Option<String>,
    search_path: String,
    role: String,
    may_create: Option<bool>,
}

fn privileges(c: &mut PgConnection) -> Result<Privileges, DbError> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        schema: Option<String>,
        #[diesel(sql_type = diesel::sql_types::Text)]
        search_path: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        role: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bool>)]
        may_create: Option<bool>,
    }
    let row: Row = diesel::sql_query(
        "SELECT quote_ident(current_schema()) AS schema, current_setting('search_path') AS \
         search_path, quote_ident(current_user) AS role, \
         has_schema_privilege(current_schema(), 'CREATE') AS may_create",
    )
    .get_result(c)?;
    Ok(Privileges {
        schema: row.schema,
        search_path: row.search_path,
        role: row.role,
        may_create: row.may_create,
    })
}

/// What to do about a role that may not create jobsync's tables where its session would.
fn create_denied_fix(p: &Privileges) -> String {
    let role = &p.role;
    let own_schema = format!(
        "or set database.schema to a schema {role} owns (as a superuser: `CREATE SCHEMA jobsync \
         AUTHORIZATION {role}`, then database.schema = \"jobsync\")"
    );
    match &p.schema {
        Some(schema) => format!(
            "role {role} may not create tables in schema {schema}{}: as the schema's owner or a \
             superuser run `GRANT CREATE ON SCHEMA {schema} TO {role}` (or `ALTER SCHEMA {schema} \
             OWNER TO {role}`), {own_schema}",
            if schema == "public" {
                " (PostgreSQL 15 and later grant CREATE on it to its owner only)"
            } else {
                ""
            }
        ),
        None => format!(
            "role {role} has no schema to create tables in: its search_path ({}) names none \
             that exists and it may use; {}",
            p.search_path,
            own_schema.trim_start_matches("or ")
        ),
    }
}

/// A connection of either backend, borrowed: the looks above run on the pool's PostgreSQL
/// connections and on a plain SQLite one.
enum Raw<'a> {
    Sqlite(&'a mut SqliteConnection),
    Pg(&'a mut PgConnection),
}

/// `$body` with `$c` bound to the concrete connection of a [`Raw`].
macro_rules! on_raw {
    ($raw:expr, |$c:ident| $body:expr) => {
        match $raw {
            Raw::Sqlite(c) => {
                let $c: &mut SqliteConnection = c;
                $body
            }
            Raw::Pg(c) => {
                let $c: &mut PgConnection = c;
                $body
            }
        }
    };
}

impl<'a> Raw<'a> {
    fn of(conn: &'a mut Conn) -> Raw<'a> {
        match conn {
            Conn::Sqlite(c) => Raw::Sqlite(c),
            Conn::Pg(c) => Raw::Pg(c),
        }
    }

    /// The embedded migrations of this backend: name and version, in version order.
    fn embedded(&self) -> Result<Vec<(String, String)>, DbError> {
        match self {
            Raw::Sqlite(_) => embedded::<diesel::sqlite::Sqlite>(),
            Raw::Pg(_) => embedded::<diesel::pg::Pg>(),
        }
    }

    /// Whether the harness's `__diesel_schema_migrations` exists yet (read only, no side effect).
    fn has_migrations_table(&mut self) -> Result<bool, DbError> {
        let query = match self {
            Raw::Sqlite(_) => {
                "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '__diesel_schema_migrations')"
            }
            Raw::Pg(_) => "to_regclass('__diesel_schema_migrations') IS NOT NULL",
        };
        Ok(on_raw!(self, |c| diesel::select(diesel::dsl::sql::<
            diesel::sql_types::Bool,
        >(query))
        .get_result::<bool>(c))?)
    }

    /// The versions the database records as applied, read with a plain `SELECT` (the harness
    /// would first create its table); `None` when it has no migrations table.
    fn applied(&mut self) -> Result<Option<Vec<String>>, DbError> {
        #[derive(QueryableByName)]
        struct Version {
            #[diesel(sql_type = diesel::sql_types::Text)]
            version: String,
        }
        if !self.has_migrations_table()? {
            return Ok(None);
        }
        let sql = "SELECT version FROM __diesel_schema_migrations ORDER BY version";
        let rows: Vec<Version> = on_raw!(self, |c| diesel::sql_query(sql).load(c))?;
        Ok(Some(rows.into_iter().map(|r| r.version).collect()))
    }

    /// Which of jobsync's table names are taken where its tables would be created: the SQLite
    /// file, or PostgreSQL's `current_schema()` (by any relation: a view or a sequence of that
    /// name collides too).
    fn taken_names(&mut self) -> Result<Vec<String>, DbError> {
        #[derive(QueryableByName)]
        struct Name {
            #[diesel(sql_type = diesel::sql_types::Text)]
            name: String,
        }
        let list = TABLES
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = match self {
            Raw::Sqlite(_) => format!(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name IN ({list})"
            ),
            Raw::Pg(_) => format!(
                "SELECT c.relname::text AS name FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = current_schema() AND c.relname IN ({list})"
            ),
        };
        let found: Vec<Name> = on_raw!(self, |c| diesel::sql_query(&sql).load(c))?;
        let mut taken: Vec<String> = found.into_iter().map(|n| n.name).collect();
        // In the order of TABLES, whatever the catalogue's.
        taken.sort_by_key(|t| TABLES.iter().position(|n| n == t));
        Ok(taken)
    }
}

/// `Ok` when the database jobsync reads through `conn` has every migration of this binary
/// applied; else [`DbError::NotReady`] saying to run `jobsync migrate`. For commands that read
/// without migrating (`status`): reads only. `place` names the database in the message.
pub(super) fn require_current(conn: &mut Conn, place: &str) -> Result<(), DbError> {
    let mut raw = Raw::of(conn);
    let all = raw.embedded()?;
    let Some(applied) = raw.applied()? else {
        return Err(DbError::NotReady(format!(
            "{place} has no jobsync tables yet (never migrated); run `jobsync migrate` or \
             `jobsync --once` first"
        )));
    };
    let pending: Vec<&str> = all
        .iter()
        .filter(|(_, v)| !applied.contains(v))
        .map(|(name, _)| name.as_str())
        .collect();
    match pending.len() {
        0 => Ok(()),
        n => Err(DbError::NotReady(format!(
            "{place} is {n} migration{} behind this jobsync ({} pending); run `jobsync migrate` \
             first",
            if n == 1 { "" } else { "s" },
            pending.join(", ")
        ))),
    }
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
        let exists = Raw::of(&mut conn)
            .has_migrations_table()
            .map_err(|e| db.name_file(e))?;
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
pub(super) fn missing_schema(
    url: &str,
    options: &super::DbOptions,
) -> Result<Option<String>, DbError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `TABLES`, the names a foreign table may not hold, is every table the migrations create.
    #[test]
    fn the_collision_check_knows_every_table_the_migrations_create() {
        for backend in ["sqlite", "postgres"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let mut created = Vec::new();
            for migration in std::fs::read_dir(dir).unwrap() {
                let up = std::fs::read_to_string(migration.unwrap().path().join("up.sql")).unwrap();
                let words: Vec<&str> = up.split_whitespace().collect();
                for w in words.windows(3) {
                    if w[0].eq_ignore_ascii_case("CREATE") && w[1].eq_ignore_ascii_case("TABLE") {
                        created.push(
                            w[2].trim_matches(|c: char| c == '(' || c == '"')
                                .to_string(),
                        );
                    }
                }
            }
            created.sort();
            let mut known: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
            known.sort();
            assert_eq!(created, known, "{backend}");
        }
    }

    #[test]
    fn a_role_without_create_is_told_the_grant_or_the_schema_setting() {
        let p = Privileges {
            schema: Some("public".into()),
            search_path: "\"$user\", public".into(),
            role: "crm_app".into(),
            may_create: Some(false),
        };
        let fix = create_denied_fix(&p);
        assert!(
            fix.contains("`GRANT CREATE ON SCHEMA public TO crm_app`")
                && fix.contains("PostgreSQL 15")
                && fix.contains("database.schema")
                && !fix.contains('\n'),
            "{fix}"
        );
        let lost = create_denied_fix(&Privileges { schema: None, ..p });
        assert!(
            lost.contains("no schema to create tables in")
                && lost.contains("\"$user\", public")
                && lost.contains("set database.schema"),
            "{lost}"
        );
    }
}
