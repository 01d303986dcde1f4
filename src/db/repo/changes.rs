//! The changefeed: appended by one writer at a time, read in `seq` order.

use crate::db::lock::PgLock;
use crate::db::models::ChangeRow;
use crate::db::schema::job_changes;
use crate::db::{Conn, DbError, Ts};
use crate::job::JOB_FIELDS;
use crate::with_conn;
use diesel::prelude::*;
use serde::Serialize;
use serde_json::Value;

/// PostgreSQL hands out sequence numbers before commit; two transactions appending at once could
/// commit out of `seq` order and a reader polling `seq > last` would skip a row. This
/// transaction-scoped advisory lock makes appends one writer at a time. (SQLite writers are
/// serialised by the database itself.)
const PG_CHANGES_LOCK: PgLock = PgLock::Changes;

/// The PostgreSQL channel a notification goes to when changefeed rows commit; its payload is
/// JSON `{"schema": "<jobsync's schema>", "last_seq": N}`, N the highest `seq` committed with it.
/// `jobsync changes --follow` and the webhook sink wait on it; a CRM may `LISTEN` too.
pub const NOTIFY_CHANNEL: &str = "jobsync_changes";

const NOTIFY: &str = "SELECT pg_notify('jobsync_changes', json_build_object('schema', \
     current_schema(), 'last_seq', (SELECT max(seq) FROM job_changes))::text)";

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
            // Delivered at commit, to every session listening (contract §8: instant wake-ups).
            diesel::sql_query(NOTIFY).execute(&mut **c)?;
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

/// Rows with `after < seq <= until` (no upper bound when `None`), only `campaign`'s when given,
/// oldest first, at most `limit`.
pub fn page(
    conn: &mut Conn,
    after: i64,
    until: Option<i64>,
    campaign: Option<i64>,
    limit: i64,
) -> Result<Vec<ChangeRow>, DbError> {
    with_conn!(conn, |c| {
        let mut query = job_changes::table
            .filter(job_changes::seq.gt(after))
            .order(job_changes::seq.asc())
            .limit(limit)
            .select(ChangeRow::as_select())
            .into_boxed();
        if let Some(until) = until {
            query = query.filter(job_changes::seq.le(until));
        }
        if let Some(campaign) = campaign {
            query = query.filter(job_changes::campaign.eq(campaign));
        }
        Ok(query.load(c)?)
    })
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

/// A mirror job whose last changefeed row disagrees with it.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct FeedMismatch {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub campaign: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub reference: Option<String>,
}

/// Mirror jobs whose last changefeed row (highest `seq`) does not match them: a live job whose
/// last `new_state` differs from its `state` (or is NULL, a `deleted` row), or a job marked
/// deleted whose last row is not `deleted`. Jobs with no row left (pruned) are not judged.
/// Returns how many, and the first `limit` in id order; with `campaigns`, only theirs.
pub fn feed_mismatches(
    conn: &mut Conn,
    campaigns: Option<&[i64]>,
    limit: i64,
) -> Result<(i64, Vec<FeedMismatch>), DbError> {
    use diesel::sql_types::BigInt;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    // Campaign ids are integers, written into the text as such.
    let (in_feed, in_jobs) = match campaigns {
        Some(list) => {
            let ids: Vec<String> = list.iter().map(i64::to_string).collect();
            let ids = ids.join(", ");
            (
                format!("WHERE campaign IN ({ids})"),
                format!("AND j.campaign IN ({ids})"),
            )
        }
        None => (String::new(), String::new()),
    };
    let from = format!(
        "FROM jobs j \
         JOIN (SELECT job_id, MAX(seq) AS last_seq FROM job_changes {in_feed} GROUP BY job_id) l \
           ON l.job_id = j.id \
         JOIN job_changes c ON c.seq = l.last_seq \
         WHERE ((j.remote_deleted_at IS NULL AND (c.new_state IS NULL OR c.new_state <> j.state)) \
             OR (j.remote_deleted_at IS NOT NULL AND c.kind <> 'deleted')) {in_jobs}"
    );
    let count_sql = format!("SELECT count(*) AS n {from}");
    let rows_sql = format!(
        "SELECT j.id AS id, j.campaign AS campaign, j.reference AS reference {from} \
         ORDER BY j.id LIMIT {}",
        limit.max(0)
    );
    with_conn!(conn, |c| {
        let count = diesel::sql_query(&count_sql).get_result::<Count>(c)?.n;
        let rows = diesel::sql_query(&rows_sql).load::<FeedMismatch>(c)?;
        Ok((count, rows))
    })
}

/// One changefeed row as NDJSON, keys in the table's column order, `changed_fields` as a JSON
/// array, times in RFC 3339.
#[derive(Serialize)]
struct ChangeLine<'a> {
    seq: i64,
    job_id: i64,
    campaign: i64,
    reference: Option<&'a str>,
    kind: &'a str,
    old_state: Option<i32>,
    new_state: Option<i32>,
    changed_fields: Value,
    source: &'a str,
    observed_at: String,
}

pub fn to_json(row: &ChangeRow) -> String {
    let line = ChangeLine {
        seq: row.seq,
        job_id: row.job_id,
        campaign: row.campaign,
        reference: row.reference.as_deref(),
        kind: &row.kind,
        old_state: row.old_state,
        new_state: row.new_state,
        changed_fields: serde_json::from_str(&row.changed_fields).unwrap_or(Value::Null),
        source: &row.source,
        observed_at: row.observed_at.to_string(),
    };
    serde_json::to_string(&line).expect("a change line serialises")
}
