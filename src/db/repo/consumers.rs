//! Changefeed consumers (contract §8, table `changefeed_consumers`): readers whose position
//! jobsync keeps — `jobsync changes --consumer NAME` and the webhook sink (consumer
//! [`WEBHOOK`]). A consumer resumes after its committed `last_seq`; a commit names the position
//! it read from and is refused when another process moved it since (compare and set), so two
//! readers of one name, or a replay under a running sink, never move a cursor past rows nobody
//! read.

use crate::db::schema::{changefeed_consumers as cc, job_changes};
use crate::db::{Conn, DbError, Ts};
use crate::with_conn;
use diesel::prelude::*;

/// The webhook sink's consumer name.
pub const WEBHOOK: &str = "webhook";

/// One consumer's row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = cc)]
pub struct Consumer {
    pub name: String,
    pub last_seq: i64,
    pub updated_at: Ts,
    /// The webhook sink's batch being delivered: the rows in `(last_seq, pending_last_seq]`.
    pub pending_last_seq: Option<i64>,
    /// The webhook sink is paused until then (a refusal, or attempts exhausted).
    pub paused_until: Option<Ts>,
    pub paused_reason: Option<String>,
}

/// A consumer as `status` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    pub last_seq: i64,
    /// Changefeed rows after `last_seq` (the highest `seq` minus `last_seq`, at least 0).
    pub lag: i64,
    pub updated_at: String,
    pub paused_until: Option<String>,
    pub paused_reason: Option<String>,
}

/// Names are what an operator types: letters, digits, `-`, `_`, `.`, at most 64.
pub fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "consumer name {name:?} is not usable: use 1 to 64 letters, digits, '-', '_' or '.', \
             e.g. --consumer crm"
        ))
    }
}

/// The consumer's row, if it exists.
pub fn get(conn: &mut Conn, name: &str) -> Result<Option<Consumer>, DbError> {
    with_conn!(conn, |c| Ok(cc::table
        .find(name)
        .select(Consumer::as_select())
        .first(c)
        .optional()?))
}

/// The consumer's row, created at `start` when it does not exist.
pub fn get_or_create(conn: &mut Conn, name: &str, start: i64) -> Result<Consumer, DbError> {
    let row = (
        cc::name.eq(name),
        cc::last_seq.eq(start),
        cc::updated_at.eq(Ts::now()),
    );
    with_conn!(conn, |c| {
        diesel::insert_into(cc::table)
            .values(row)
            .on_conflict_do_nothing()
            .execute(c)?;
        Ok(cc::table
            .find(name)
            .select(Consumer::as_select())
            .first(c)?)
    })
}

/// Every consumer with its lag behind the feed, by name.
pub fn all_with_lag(conn: &mut Conn) -> Result<Vec<ConsumerStatus>, DbError> {
    let last = super::changes::last_seq(conn)?;
    let rows: Vec<Consumer> = with_conn!(conn, |c| cc::table
        .order(cc::name.asc())
        .select(Consumer::as_select())
        .load(c)?);
    Ok(rows
        .into_iter()
        .map(|r| ConsumerStatus {
            lag: (last - r.last_seq).max(0),
            name: r.name,
            last_seq: r.last_seq,
            updated_at: r.updated_at.to_string(),
            paused_until: r.paused_until.map(|t| t.to_string()),
            paused_reason: r.paused_reason,
        })
        .collect())
}

/// Moves `name` from `from` to `to` (and ends a pending batch): `false`, changing nothing, when
/// its `last_seq` is no longer `from` — another process moved it.
pub fn commit(conn: &mut Conn, name: &str, from: i64, to: i64) -> Result<bool, DbError> {
    let moved = with_conn!(conn, |c| diesel::update(
        cc::table
            .filter(cc::name.eq(name))
            .filter(cc::last_seq.eq(from))
    )
    .set((
        cc::last_seq.eq(to),
        cc::pending_last_seq.eq(None::<i64>),
        cc::updated_at.eq(Ts::now()),
    ))
    .execute(c)?);
    Ok(moved == 1)
}

/// Records the batch about to be delivered, `(from, until]`: `false` when the position moved.
pub fn set_pending(conn: &mut Conn, name: &str, from: i64, until: i64) -> Result<bool, DbError> {
    let set = with_conn!(conn, |c| diesel::update(
        cc::table
            .filter(cc::name.eq(name))
            .filter(cc::last_seq.eq(from))
    )
    .set((
        cc::pending_last_seq.eq(Some(until)),
        cc::updated_at.eq(Ts::now()),
    ))
    .execute(c)?);
    Ok(set == 1)
}

/// Pauses the consumer until `until`, saying why.
pub fn pause(conn: &mut Conn, name: &str, until: Ts, reason: &str) -> Result<(), DbError> {
    with_conn!(conn, |c| diesel::update(cc::table.find(name))
        .set((
            cc::paused_until.eq(Some(until)),
            cc::paused_reason.eq(Some(reason)),
            cc::updated_at.eq(Ts::now()),
        ))
        .execute(c)?);
    Ok(())
}

/// Ends a pause; `true` when there was one.
pub fn resume(conn: &mut Conn, name: &str) -> Result<bool, DbError> {
    let resumed = with_conn!(conn, |c| diesel::update(
        cc::table
            .filter(cc::name.eq(name))
            .filter(cc::paused_until.is_not_null())
    )
    .set((
        cc::paused_until.eq(None::<Ts>),
        cc::paused_reason.eq(None::<String>),
        cc::updated_at.eq(Ts::now()),
    ))
    .execute(c)?);
    Ok(resumed == 1)
}

/// Sets the consumer's position to `last_seq` (a replay: it resumes after it), ending any pending
/// batch and pause; creates the consumer when it does not exist. Returns the position before.
pub fn rewind(conn: &mut Conn, name: &str, last_seq: i64) -> Result<Option<i64>, DbError> {
    let before = get(conn, name)?.map(|c| c.last_seq);
    get_or_create(conn, name, last_seq)?;
    with_conn!(conn, |c| diesel::update(cc::table.find(name))
        .set((
            cc::last_seq.eq(last_seq),
            cc::pending_last_seq.eq(None::<i64>),
            cc::paused_until.eq(None::<Ts>),
            cc::paused_reason.eq(None::<String>),
            cc::updated_at.eq(Ts::now()),
        ))
        .execute(c)?);
    Ok(before)
}

/// Consumers behind the changefeed rows a prune up to `cut` would delete: each with how many
/// rows it has not read would go. Called before pruning, so the loss is said, not silent.
pub fn unread_before(conn: &mut Conn, cut: Ts) -> Result<Vec<(String, i64)>, DbError> {
    let consumers: Vec<(String, i64)> = with_conn!(conn, |c| cc::table
        .select((cc::name, cc::last_seq))
        .order(cc::name.asc())
        .load(c)?);
    let mut behind = Vec::new();
    for (name, last) in consumers {
        let unread: i64 = with_conn!(conn, |c| job_changes::table
            .filter(job_changes::observed_at.lt(cut))
            .filter(job_changes::seq.gt(last))
            .count()
            .get_result(c)?);
        if unread > 0 {
            behind.push((name, unread));
        }
    }
    Ok(behind)
}
