//! The outbox: rows the CRM (or `import`) appends and the push drains.

use super::{IDS_PER_STATEMENT, ROWS_PER_STATEMENT, transaction};
use crate::db::models::{NewOutboxRow, OpenRow, OutboxRow};
use crate::db::schema::outbox;
use crate::db::{Conn, DbError, Ts};
use crate::with_conn;
use diesel::prelude::*;

pub const PENDING: &str = "pending";
pub const IN_FLIGHT: &str = "in_flight";
pub const DONE: &str = "done";
pub const FAILED: &str = "failed";
pub const SUPERSEDED: &str = "superseded";
pub const STATUSES: [&str; 5] = [PENDING, IN_FLIGHT, DONE, FAILED, SUPERSEDED];

/// Appends rows in one transaction, in order; all or nothing.
pub fn insert(conn: &mut Conn, rows: &[NewOutboxRow]) -> Result<usize, DbError> {
    transaction(conn, |conn| {
        with_conn!(conn, |c| {
            let mut n = 0;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                n += diesel::insert_into(outbox::table)
                    .values(chunk)
                    .execute(c)?;
            }
            Ok(n)
        })
    })
}

/// Rows, newest first, optionally of one status.
pub fn list(conn: &mut Conn, status: Option<&str>, limit: i64) -> Result<Vec<OutboxRow>, DbError> {
    with_conn!(conn, |c| {
        let mut query = outbox::table
            .select(OutboxRow::as_select())
            .order(outbox::id.desc())
            .limit(limit)
            .into_boxed();
        if let Some(status) = status {
            query = query.filter(outbox::status.eq(status.to_string()));
        }
        Ok(query.load(c)?)
    })
}

/// Pending rows whose time has come, plus rows left `in_flight` (by a crash or a timeout), in
/// id order: the push's work list.
pub fn due(conn: &mut Conn, now: Ts, limit: i64) -> Result<Vec<OutboxRow>, DbError> {
    with_conn!(conn, |c| Ok(outbox::table
        .filter(
            outbox::status
                .eq(PENDING)
                .and(outbox::next_attempt_at.le(now))
                .or(outbox::status.eq(IN_FLIGHT)),
        )
        .order(outbox::id.asc())
        .limit(limit)
        .select(OutboxRow::as_select())
        .load(c)?))
}

/// Every `pending` or `in_flight` row, in id order, whether due or not: the push plans from
/// these, and a row not yet due still holds back the later rows of its target.
///
/// Sorted here rather than by the database: the rows come through the status index, and an
/// `ORDER BY id` made SQLite copy every row, payload and all, into a temporary sort tree.
pub fn open(conn: &mut Conn) -> Result<Vec<OpenRow>, DbError> {
    let mut rows: Vec<OpenRow> = with_conn!(conn, |c| outbox::table
        .filter(outbox::status.eq_any([PENDING, IN_FLIGHT]))
        .select(OpenRow::as_select())
        .load(c)?);
    rows.sort_unstable_by_key(|row| row.id);
    Ok(rows)
}

/// Marks rows `in_flight` before their request leaves, and stamps `first_sent_at` on the creates
/// among them that were never sent (`creates`: the planner knows their `first_sent_at` is
/// unset), so that an unknown outcome can later be looked up from that instant. Each row is
/// written once.
pub fn mark_in_flight(
    conn: &mut Conn,
    ids: &[i64],
    creates: &[i64],
    now: Ts,
) -> Result<(), DbError> {
    let first_sends: std::collections::HashSet<i64> = creates.iter().copied().collect();
    let others: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !first_sends.contains(id))
        .collect();
    transaction(conn, |conn| {
        update(
            conn,
            &others,
            &RowUpdate {
                status: Some(IN_FLIGHT.into()),
                updated_at: Some(now),
                ..RowUpdate::default()
            },
        )?;
        with_conn!(conn, |c| {
            for chunk in creates.chunks(IDS_PER_STATEMENT) {
                diesel::update(
                    outbox::table
                        .filter(outbox::id.eq_any(chunk))
                        .filter(outbox::first_sent_at.is_null()),
                )
                .set((
                    outbox::status.eq(IN_FLIGHT),
                    outbox::updated_at.eq(now),
                    outbox::first_sent_at.eq(now),
                ))
                .execute(c)?;
            }
            Ok::<_, DbError>(())
        })
    })
}

/// Applies one update per row (call inside the transaction that also updates the mirror).
///
/// A push settles a thousand rows per bulk call, mostly with the same change but each with its
/// own `result_job_id`: rows sharing a change are written together, their job ids set in the
/// same statement by a `CASE` over their ids, so that each row is rewritten once. (Setting the
/// job ids in a second statement rewrote every row twice: on PostgreSQL, two row versions and
/// two index entries per row.)
pub fn update_each(conn: &mut Conn, updates: &[(i64, RowUpdate)]) -> Result<(), DbError> {
    // Rows sharing a change, each with its own `result_job_id` change (if any).
    type Rows = Vec<(i64, Option<Option<i64>>)>;
    let mut groups: Vec<(RowUpdate, Rows)> = Vec::new();
    for (id, change) in updates {
        let mut shared = change.clone();
        let job = shared.result_job_id.take();
        match groups.iter_mut().find(|(c, _)| *c == shared) {
            Some((_, rows)) => rows.push((*id, job)),
            None => groups.push((shared, vec![(*id, job)])),
        }
    }
    for (mut shared, rows) in groups {
        shared.updated_at.get_or_insert_with(Ts::now);
        for chunk in rows.chunks(CASE_ROWS) {
            update_with_job_ids(conn, chunk, &shared)?;
        }
    }
    Ok(())
}

/// Rows per statement of [`update_each`]: a `CASE` is a list the database walks for every row,
/// cheap at this length (at a thousand branches it cost SQLite several times the update).
const CASE_ROWS: usize = 100;

/// Applies `change` to `rows`, and to each its own `result_job_id` change, in one statement.
fn update_with_job_ids(
    conn: &mut Conn,
    rows: &[(i64, Option<Option<i64>>)],
    change: &RowUpdate,
) -> Result<(), DbError> {
    use diesel::dsl::sql;
    use diesel::sql_types::{BigInt, Nullable};
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    let case = job_ids_case(rows);
    with_conn!(conn, |c| {
        let target = outbox::table.filter(outbox::id.eq_any(&ids));
        match &case {
            Some(case) => {
                let job_ids = outbox::result_job_id.eq(sql::<Nullable<BigInt>>(case));
                diesel::update(target).set((change, job_ids)).execute(c)?
            }
            None => diesel::update(target).set(change).execute(c)?,
        };
        Ok::<_, DbError>(())
    })
}

/// `CASE outbox.id WHEN … THEN … ELSE outbox.result_job_id END` over the rows whose
/// `result_job_id` changes, or `None` when none does. Every value is an integer literal, so the
/// text can carry nothing else.
fn job_ids_case(rows: &[(i64, Option<Option<i64>>)]) -> Option<String> {
    use std::fmt::Write as _;
    let mut case = String::from("CASE outbox.id");
    let mut any = false;
    for (id, job) in rows {
        let Some(job) = job else { continue };
        any = true;
        match job {
            Some(job) => write!(case, " WHEN {id} THEN {job}"),
            None => write!(case, " WHEN {id} THEN NULL"),
        }
        .expect("writing to a String");
    }
    case.push_str(" ELSE outbox.result_job_id END");
    any.then_some(case)
}

/// Row counts by status (every status present, zero when none).
pub fn counts(conn: &mut Conn) -> Result<Vec<(String, i64)>, DbError> {
    let found: Vec<(String, i64)> = with_conn!(conn, |c| outbox::table
        .group_by(outbox::status)
        .select((outbox::status, diesel::dsl::count_star()))
        .load(c)?);
    let mut all: Vec<(String, i64)> = STATUSES.iter().map(|s| (s.to_string(), 0)).collect();
    for (status, n) in found {
        match all.iter_mut().find(|(s, _)| *s == status) {
            Some(slot) => slot.1 = n,
            None => all.push((status, n)),
        }
    }
    Ok(all)
}

/// When the oldest pending row was written.
pub fn oldest_pending(conn: &mut Conn) -> Result<Option<Ts>, DbError> {
    with_conn!(conn, |c| Ok(outbox::table
        .filter(outbox::status.eq_any([PENDING, IN_FLIGHT]))
        .select(diesel::dsl::min(outbox::created_at))
        .first::<Option<Ts>>(c)?))
}

/// The outcome of handling one row.
#[derive(Debug, Clone, Default, PartialEq, AsChangeset)]
#[diesel(table_name = outbox)]
pub struct RowUpdate {
    pub status: Option<String>,
    pub attempts: Option<i32>,
    pub last_error: Option<Option<String>>,
    pub http_status: Option<Option<i32>>,
    pub result_job_id: Option<Option<i64>>,
    pub next_attempt_at: Option<Ts>,
    pub first_sent_at: Option<Option<Ts>>,
    pub updated_at: Option<Ts>,
}

/// Applies one update to several rows.
pub fn update(conn: &mut Conn, ids: &[i64], change: &RowUpdate) -> Result<usize, DbError> {
    let mut change = change.clone();
    change.updated_at.get_or_insert_with(Ts::now);
    with_conn!(conn, |c| {
        let mut n = 0;
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            n += diesel::update(outbox::table.filter(outbox::id.eq_any(chunk)))
                .set(&change)
                .execute(c)?;
        }
        Ok(n)
    })
}

/// Re-queues rows: `failed` ones (the given ids, or all of them), attempts reset.
pub fn retry(conn: &mut Conn, ids: Option<&[i64]>) -> Result<usize, DbError> {
    let now = Ts::now();
    let change = (
        outbox::status.eq(PENDING),
        outbox::attempts.eq(0),
        outbox::next_attempt_at.eq(now),
        outbox::updated_at.eq(now),
    );
    with_conn!(conn, |c| {
        let failed = outbox::table.filter(outbox::status.eq(FAILED));
        Ok(match ids {
            Some(ids) => diesel::update(failed.filter(outbox::id.eq_any(ids)))
                .set(change)
                .execute(c)?,
            None => diesel::update(failed).set(change).execute(c)?,
        })
    })
}

/// Rows by id (those that exist).
pub fn get_many(conn: &mut Conn, ids: &[i64]) -> Result<Vec<OutboxRow>, DbError> {
    with_conn!(conn, |c| Ok(outbox::table
        .filter(outbox::id.eq_any(ids))
        .order(outbox::id.asc())
        .select(OutboxRow::as_select())
        .load(c)?))
}
