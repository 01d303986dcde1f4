//! Retention (docs/contract.md §2 `retention.*`): old changefeed rows, settled outbox rows, run
//! history and mirror rows deleted upstream long ago. `failed` outbox rows are kept until someone
//! acts.

use crate::config::RetentionConfig;
use crate::db::models::OutboxStatus;
use crate::db::schema::{job_changes, jobs, outbox, sync_runs};
use crate::db::{Conn, DbError, Ts};
use crate::with_conn;
use chrono::{Duration, Utc};
use diesel::prelude::*;

/// Rows removed by one prune.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub changes: usize,
    /// Changefeed consumers that had not read some of the pruned rows: each with how many.
    pub unread: Vec<(String, i64)>,
    pub outbox: usize,
    pub runs: usize,
    pub deleted_jobs: usize,
}

/// Deletes what the retention settings no longer keep.
pub fn prune(conn: &mut Conn, keep: &RetentionConfig) -> Result<Pruned, DbError> {
    let before = |days: u32| Ts::from(Utc::now() - Duration::days(days.into()));
    let (changes_cut, outbox_cut) = (before(keep.changes_days), before(keep.outbox_days));
    let (runs_cut, jobs_cut) = (before(keep.runs_days), before(keep.deleted_jobs_days));
    // Said, not silent: a consumer that has not read rows about to go loses them.
    let unread = super::consumers::unread_before(conn, changes_cut)?;
    for (consumer, rows) in &unread {
        tracing::warn!(
            consumer = %consumer,
            rows,
            "pruning {rows} changefeed rows consumer {consumer} has not read (older than \
             retention.changes_days = {}): it will not see them; raise retention.changes_days, \
             or keep the consumer reading",
            keep.changes_days
        );
    }
    with_conn!(conn, |c| Ok(Pruned {
        unread: unread.clone(),
        changes: diesel::delete(
            job_changes::table.filter(job_changes::observed_at.lt(changes_cut))
        )
        .execute(c)?,
        outbox: diesel::delete(
            outbox::table
                .filter(outbox::status.eq_any([OutboxStatus::Done, OutboxStatus::Superseded]))
                .filter(outbox::updated_at.lt(outbox_cut)),
        )
        .execute(c)?,
        runs: diesel::delete(
            sync_runs::table
                .filter(sync_runs::status.ne("running"))
                .filter(sync_runs::started_at.lt(runs_cut)),
        )
        .execute(c)?,
        deleted_jobs: diesel::delete(jobs::table.filter(jobs::remote_deleted_at.lt(jobs_cut)))
            .execute(c)?,
    }))
}
