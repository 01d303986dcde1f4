//! The changefeed: appended by one writer at a time, read in `seq` order.

use crate::db::lock::PgLock;
use crate::db::models::ChangeRow;
use crate::db::schema::job_changes;
use crate::db::{Conn, DbError, Ts};
use crate::job::JOB_FIELDS;
use crate::with_conn;
use diesel::prelude::*;

/// PostgreSQL hands out sequence numbers before commit; two transactions appending at once could
/// commit out of `seq` order and a reader polling `seq > last` would skip a row. This
/// transaction-scoped advisory lock makes appends one writer at a time. (SQLite writers are
/// serialised by the database itself.)
const PG_CHANGES_LOCK: PgLock = PgLock::Changes;

/// Appends changes; call inside the transaction that changed the mirror.
pub fn append(conn: &mut Conn, changes: &[ChangeRow]) -> Result<(), DbError> {
    if changes.is_empty() {
        return Ok(());
    }
    match conn {
        // One `COPY` (binary): `seq` follows the rows' order, as with an `INSERT`.
        Conn::Pg(c) => {
            diesel::sql_query(format!(
                "SELECT {}",
                PG_CHANGES_LOCK.call("pg_advisory_xact_lock")
            ))
            .execute(&mut **c)?;
            diesel::copy_from(job_changes::table)
                .from_insertable(changes)
                .execute(&mut **c)?;
            Ok(())
        }
        Conn::Sqlite(_) => super::insert_in_fixed_batches!(conn, job_changes::table, changes),
    }
}

/// The highest `seq` written so far (0 when the feed is empty).
pub fn last_seq(conn: &mut Conn) -> Result<i64, DbError> {
    with_conn!(conn, |c| Ok(job_changes::table
        .select(diesel::dsl::max(job_changes::seq))
        .first::<Option<i64>>(c)?
        .unwrap_or(0)))
}

/// Rows with `seq > since`, oldest first.
pub fn since(conn: &mut Conn, since: i64, limit: i64) -> Result<Vec<ChangeRow>, DbError> {
    with_conn!(conn, |c| Ok(job_changes::table
        .filter(job_changes::seq.gt(since))
        .order(job_changes::seq.asc())
        .limit(limit)
        .select(ChangeRow::as_select())
        .load(c)?))
}

/// `changed_fields` of a `created` change: every field, computed once.
static ALL_FIELDS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| serde_json::to_string(&JOB_FIELDS).expect("field names serialise"));

/// Builds a change row (the `seq` is assigned by the database).
#[allow(clippy::too_many_arguments)]
pub fn row(
    job_id: i64,
    campaign: i64,
    reference: Option<String>,
    kind: &str,
    old_state: Option<i32>,
    new_state: Option<i32>,
    fields: &[&str],
    source: &str,
    observed_at: Ts,
) -> ChangeRow {
    ChangeRow {
        seq: 0,
        job_id,
        campaign,
        reference,
        kind: kind.into(),
        old_state,
        new_state,
        changed_fields: if fields.len() == JOB_FIELDS.len() {
            ALL_FIELDS.clone()
        } else {
            serde_json::to_string(fields).unwrap_or_else(|_| "[]".into())
        },
        source: source.into(),
        observed_at,
    }
}
