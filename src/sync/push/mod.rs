//! Push: drains the outbox to the API through the bulk endpoints, exactly once (SPEC §4).
//!
//! A push runs in rounds until nothing is left to do in this cycle. Each round:
//! 1. resolves creates left `in_flight` with an unknown outcome (`resolve`): looked up by
//!    reference before anything is sent again;
//! 2. plans (`plan`): invalid rows fail alone, and per target the longest prefix of its rows that
//!    coalesces into one operation is taken (`validate` is shared with `jobsync import`);
//! 3. sends the round's creates, patches and unqueues in bulk and records every outcome
//!    (`send`), with the jobs the API returned going into the mirror in the same transaction.

mod plan;
mod resolve;
mod send;
mod validate;

pub use validate::{Intent, Op, RowInput, Target, validate};

use super::{StopFlag, SyncError};
use crate::api::ApiClient;
use crate::config::PushConfig;
use crate::db::models::OpenRow;
use crate::db::repo::outbox::{self, DONE, FAILED, RowUpdate, SUPERSEDED};
use crate::db::repo::{jobs, transaction};
use crate::db::{Db, DbError, Ts};
use plan::{Mirror, RoundPlan, plan_validated, targets_named, validate_all};
use std::collections::HashSet;
use std::time::Duration;

/// What one push did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Rows that reached `done`.
    pub ok: i64,
    /// Rows that became `failed`.
    pub failed: i64,
    /// Rows merged into another row.
    pub superseded: i64,
    /// Rows left `pending` for a later cycle after a retryable failure.
    pub deferred: i64,
}

impl std::ops::AddAssign for PushStats {
    fn add_assign(&mut self, o: Self) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.superseded += o.superseded;
        self.deferred += o.deferred;
    }
}

/// How long a row waits after a cycle in which its request failed retryably:
/// `min(base × 2^attempts, cap)`, with jitter. Tests shorten it.
#[derive(Debug, Clone, Copy)]
pub struct PushTuning {
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl Default for PushTuning {
    fn default() -> Self {
        PushTuning {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(3600),
        }
    }
}

/// What a push remembers between its rounds.
#[derive(Debug, Default)]
struct RunState {
    /// Rows not to touch again in this run: deferred after a retryable failure, or creates whose
    /// outcome could not be looked up. They hold back the later rows of their target.
    blocked: HashSet<i64>,
    /// Creates refused for their reference: looked up in the whole campaign.
    full_lookup: HashSet<i64>,
    stats: PushStats,
}

/// A bound on rounds, so that no surprise can turn a cycle into an endless loop (each round
/// settles or defers rows, so real pushes end long before).
const MAX_ROUNDS: usize = 10_000;

/// Pushes every due outbox row. Fails only when the run cannot go on (authentication refused,
/// database error); item-level outcomes are recorded in the rows.
pub async fn run(
    db: &Db,
    client: &ApiClient,
    config: &PushConfig,
    stop: &StopFlag,
) -> Result<PushStats, SyncError> {
    run_tuned(db, client, config, PushTuning::default(), stop).await
}

/// [`run`] with a chosen row backoff.
pub async fn run_tuned(
    db: &Db,
    client: &ApiClient,
    config: &PushConfig,
    tuning: PushTuning,
    stop: &StopFlag,
) -> Result<PushStats, SyncError> {
    let started = std::time::Instant::now();
    let mut st = RunState::default();
    let limits = send::Limits {
        max_row_attempts: config.max_row_attempts.max(1),
        tuning,
    };
    for round in 1..=MAX_ROUNDS {
        if stop.is_set() {
            return Err(SyncError::Stopped);
        }
        let mut rows = db.run(outbox::open).await?;
        tracing::debug!(
            round,
            rows = rows.len(),
            elapsed_ms = ms(started),
            "push: open rows loaded"
        );
        if rows.is_empty() {
            break;
        }
        if resolve::resolve_in_flight_creates(db, client, &rows, &mut st, limits.max_row_attempts)
            .await?
        {
            rows = db.run(outbox::open).await?;
        }
        let (plan, rows) = plan_with_mirror(db, rows, &st.blocked).await?;
        let planned_ms = ms(started);
        if plan.is_empty() {
            break;
        }
        tracing::info!(
            round,
            open_rows = rows,
            operations = plan.groups.len(),
            failed = plan.failed.len(),
            superseded = plan.superseded.len(),
            planned_ms,
            "push round"
        );
        let groups = plan_groups(plan, db, &mut st).await?;
        if groups.is_empty() {
            continue;
        }
        let sent = send::send_round(db, client, groups, limits).await?;
        st.stats += sent.stats;
        st.blocked.extend(sent.blocked);
        st.full_lookup.extend(sent.full_lookup);
        if let Some(error) = sent.auth {
            return Err(error.into());
        }
    }
    tracing::info!(
        ok = st.stats.ok,
        failed = st.stats.failed,
        superseded = st.stats.superseded,
        deferred = st.stats.deferred,
        elapsed_ms = ms(started),
        "push finished"
    );
    Ok(st.stats)
}

fn ms(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Plans a round against the mirror rows its targets name. Returns the plan and the number of
/// open rows considered.
async fn plan_with_mirror(
    db: &Db,
    rows: Vec<OpenRow>,
    blocked: &HashSet<i64>,
) -> Result<(RoundPlan, usize), SyncError> {
    let blocked = blocked.clone();
    Ok(db
        .run(move |c| {
            let started = std::time::Instant::now();
            // The payloads are checked while the mirror is read.
            let (mirror, intents) = std::thread::scope(|scope| {
                let validating = scope.spawn(|| validate_all(&rows));
                let (refs, ids) = targets_named(&rows);
                let mirror = Mirror {
                    by_ref: jobs::find_by_references(c, &refs)?,
                    by_id: jobs::load_by_id(c, ids)?
                        .into_iter()
                        .filter(|(_, row)| row.remote_deleted_at.is_none())
                        .collect(),
                };
                let intents = validating
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                Ok::<_, DbError>((mirror, intents))
            })?;
            let checked_ms = ms(started);
            let plan = plan_validated(&rows, intents, &mirror, &blocked, Ts::now());
            tracing::debug!(
                checked_ms,
                plan_ms = ms(started) - checked_ms,
                "push: round planned"
            );
            Ok((plan, rows.len()))
        })
        .await?)
}

/// Records what the plan settles without a call (invalid rows, cancelled creates, creates
/// already applied) and returns the groups to send.
async fn plan_groups(
    plan: RoundPlan,
    db: &Db,
    st: &mut RunState,
) -> Result<Vec<plan::Group>, SyncError> {
    let mut updates: Vec<(i64, RowUpdate)> = Vec::new();
    let settle = |status: &str, error: Option<String>, job: Option<i64>| RowUpdate {
        status: Some(status.into()),
        last_error: Some(error),
        result_job_id: job.map(Some),
        ..RowUpdate::default()
    };
    for (id, reason) in plan.failed {
        updates.push((id, settle(FAILED, Some(reason), None)));
        st.stats.failed += 1;
    }
    for (id, reason) in plan.superseded {
        updates.push((id, settle(SUPERSEDED, Some(reason), None)));
        st.stats.superseded += 1;
    }
    for done in plan.already_applied {
        updates.push((done.survivor, settle(DONE, None, Some(done.job_id))));
        st.stats.ok += 1;
        for id in done.merged {
            let reason = format!("merged into outbox row {}", done.survivor);
            updates.push((id, settle(SUPERSEDED, Some(reason), Some(done.job_id))));
            st.stats.superseded += 1;
        }
    }
    if !updates.is_empty() {
        db.run(move |c| transaction(c, |c| outbox::update_each(c, &updates)))
            .await?;
    }
    Ok(plan.groups)
}
