//! `sync_runs`: one row per cycle.

use crate::db::models::RunRow;
use crate::db::schema::sync_runs;
use crate::db::{Conn, DbError, Ts};
use crate::with_conn;
use diesel::prelude::*;

/// What a finished cycle reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOutcome {
    pub mode: String,
    pub ok: bool,
    pub jobs_pulled: i64,
    pub jobs_changed: i64,
    pub pushed_ok: i64,
    pub pushed_failed: i64,
    pub api_calls: i64,
    pub error: Option<String>,
}

/// Records the start of a cycle (`trigger`: `schedule` or `once`); returns its id.
pub fn start(conn: &mut Conn, trigger: &str, started_at: Ts) -> Result<i64, DbError> {
    with_conn!(conn, |c| Ok(diesel::insert_into(sync_runs::table)
        .values((
            sync_runs::trigger_.eq(trigger),
            sync_runs::started_at.eq(started_at),
            sync_runs::status.eq("running"),
        ))
        .returning(sync_runs::id)
        .get_result(c)?))
}

pub fn finish(conn: &mut Conn, id: i64, outcome: &RunOutcome) -> Result<(), DbError> {
    let status = if outcome.ok { "ok" } else { "failed" };
    with_conn!(conn, |c| {
        diesel::update(sync_runs::table.find(id))
            .set((
                sync_runs::finished_at.eq(Ts::now()),
                sync_runs::status.eq(status),
                sync_runs::mode.eq(&outcome.mode),
                sync_runs::jobs_pulled.eq(outcome.jobs_pulled),
                sync_runs::jobs_changed.eq(outcome.jobs_changed),
                sync_runs::pushed_ok.eq(outcome.pushed_ok),
                sync_runs::pushed_failed.eq(outcome.pushed_failed),
                sync_runs::api_calls.eq(outcome.api_calls),
                sync_runs::error.eq(outcome.error.as_deref().map(crate::secret::scrub)),
            ))
            .execute(c)?;
        Ok(())
    })
}

/// What a cycle just committed, added to the run in progress as it commits, so that an
/// interrupted or killed run still shows what it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub jobs_pulled: i64,
    pub jobs_changed: i64,
    pub pushed_ok: i64,
    pub pushed_failed: i64,
    pub jobs_quarantined: i64,
}

/// Adds `counts` to the run in progress: the newest row of `sync_runs`, while it is `running`
/// (only the holder of the sync lock inserts runs, so the newest running row is its own). Call it
/// in the transaction that commits the work counted, so the counts and the work agree even after
/// a SIGKILL. Without a run in progress (a pull run outside a cycle) it does nothing.
pub fn count_into_current(conn: &mut Conn, counts: RunCounts) -> Result<(), DbError> {
    if counts == RunCounts::default() {
        return Ok(());
    }
    let Some(current) = newest_id(conn)? else {
        return Ok(());
    };
    with_conn!(conn, |c| {
        diesel::update(running(current))
            .set((
                sync_runs::jobs_pulled.eq(sync_runs::jobs_pulled + counts.jobs_pulled),
                sync_runs::jobs_changed.eq(sync_runs::jobs_changed + counts.jobs_changed),
                sync_runs::pushed_ok.eq(sync_runs::pushed_ok + counts.pushed_ok),
                sync_runs::pushed_failed.eq(sync_runs::pushed_failed + counts.pushed_failed),
                sync_runs::jobs_quarantined
                    .eq(sync_runs::jobs_quarantined + counts.jobs_quarantined),
            ))
            .execute(c)?;
        Ok(())
    })
}

/// Records that the run in progress lists campaigns in full (`mode = 'full'`), as the first
/// full listing starts.
pub fn mark_current_full(conn: &mut Conn) -> Result<(), DbError> {
    let Some(current) = newest_id(conn)? else {
        return Ok(());
    };
    with_conn!(conn, |c| {
        diesel::update(running(current))
            .set(sync_runs::mode.eq("full"))
            .execute(c)?;
        Ok(())
    })
}

/// The newest run's id, if any run was recorded.
fn newest_id(conn: &mut Conn) -> Result<Option<i64>, DbError> {
    use diesel::dsl::max;
    with_conn!(conn, |c| Ok(sync_runs::table
        .select(max(sync_runs::id))
        .first(c)?))
}

type ById = diesel::dsl::Filter<sync_runs::table, diesel::dsl::Eq<sync_runs::id, i64>>;
type Running = diesel::dsl::Filter<ById, diesel::dsl::Eq<sync_runs::status, &'static str>>;

/// Run `id`, while it is still `running` (the in-progress run of [`count_into_current`]).
fn running(id: i64) -> Running {
    sync_runs::table
        .filter(sync_runs::id.eq(id))
        .filter(sync_runs::status.eq("running"))
}

/// Runs left `running` by a process that died are marked `failed`. Call only while holding the
/// sync lock, so that a live cycle elsewhere is never touched.
pub fn fail_abandoned(conn: &mut Conn) -> Result<usize, DbError> {
    with_conn!(conn, |c| Ok(diesel::update(
        sync_runs::table.filter(sync_runs::status.eq("running"))
    )
    .set((
        sync_runs::status.eq("failed"),
        sync_runs::finished_at.eq(Ts::now()),
        sync_runs::error.eq("abandoned: the process running it stopped before it finished"),
    ))
    .execute(c)?))
}

/// The most recent runs, newest first.
pub fn recent(conn: &mut Conn, limit: i64) -> Result<Vec<RunRow>, DbError> {
    with_conn!(conn, |c| Ok(sync_runs::table
        .order(sync_runs::id.desc())
        .limit(limit)
        .select(RunRow::as_select())
        .load(c)?))
}

/// When the `n`-th most recent successful run started (`n` ≥ 1), if there were that many:
/// `verify` calls a row stuck when `n` good cycles started after its deadline.
pub fn nth_latest_ok_start(conn: &mut Conn, n: i64) -> Result<Option<Ts>, DbError> {
    with_conn!(conn, |c| Ok(sync_runs::table
        .filter(sync_runs::status.eq("ok"))
        .order(sync_runs::started_at.desc())
        .offset(n.max(1) - 1)
        .limit(1)
        .select(sync_runs::started_at)
        .first(c)
        .optional()?))
}
