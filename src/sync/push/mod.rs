//! Push: drains the outbox to the API through the bulk endpoints, exactly once (SPEC §4).
//!
//! A push works on the rows that existed when it started (`id <=` the highest id then), read in
//! windows of `push.window_rows` rows (20,000 by default) in id order, so that its memory does not grow
//! with the outbox. Each window runs in rounds until nothing is left to do in it:
//! 1. creates in doubt whose time has come are looked up (`resolve`) — never re-sent blindly;
//! 2. the round is planned (`plan`): invalid or ambiguous rows fail alone, and per target the
//!    longest prefix of its rows that coalesces into one operation is taken (`validate` is shared
//!    with `jobsync import`);
//! 3. the round's creates, patches and unqueues go out in bulk and every outcome is recorded
//!    (`send`), with the jobs the API returned going into the mirror in the same transaction.
//!
//! A target whose rows a window leaves open (backing off, in doubt) is held for the rest of the
//! push, so that its later rows in later windows keep their order; when too many targets are
//! held, the push ends early and the rest waits for the next cycle. A row sent in this push is
//! not sent again in it, whatever happened to it.

mod plan;
mod resolve;
mod send;
mod validate;

pub use validate::{Intent, Op, RowInput, Target, validate};

use super::{StopFlag, SyncError};
use crate::api::ApiClient;
use crate::config::PushConfig;
use crate::db::models::OpenRow;
use crate::db::repo::outbox::{self, RowUpdate};
use crate::db::repo::{jobs, transaction};
use crate::db::{Db, DbError, Ts};
use plan::{Held, Mirror, RoundPlan, plan_validated, targets_named, validate_all};
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

/// The push's internal knobs; tests shorten the waits.
#[derive(Debug, Clone, Copy)]
pub struct PushTuning {
    /// How long a row waits after a cycle in which its request failed retryably:
    /// `min(base × 2^attempts, cap)`, with jitter.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Added to `api.timeout_secs` before an in-doubt create is looked up, so that a slow commit
    /// has landed.
    pub lookup_margin: Duration,
    /// Outbox rows read at once, when set: overrides `push.window_rows` (tests use small ones).
    pub window_rows: Option<i64>,
}

impl Default for PushTuning {
    fn default() -> Self {
        PushTuning {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(3600),
            lookup_margin: Duration::from_secs(10),
            window_rows: None,
        }
    }
}

/// What a push remembers between its rounds.
#[derive(Debug, Default)]
struct RunState {
    /// Rows not to touch again in this run: sent in it (with any outcome but a settled one), or
    /// whose lookup failed. They hold back the later rows of their target.
    blocked: HashSet<i64>,
    /// Creates answered 400 after an earlier send: the refusal stands only if a lookup does not
    /// find the job.
    refused: HashSet<i64>,
    stats: PushStats,
}

/// A bound on rounds per window, so that no surprise can turn a cycle into an endless loop
/// (each round settles or defers rows, so real pushes end long before).
const MAX_ROUNDS: usize = 10_000;
/// Targets held (rows left open by earlier windows) beyond which the push stops for this cycle:
/// each costs memory, and so many rows waiting means the API is not taking them anyway.
const MAX_HELD_TARGETS: usize = 100_000;

/// Pushes every due outbox row. Fails only when the run cannot go on (authentication refused,
/// database error, a stop request); item-level outcomes are recorded in the rows.
pub async fn run(
    db: &Db,
    client: &ApiClient,
    config: &PushConfig,
    stop: &StopFlag,
) -> Result<PushStats, SyncError> {
    run_tuned(db, client, config, PushTuning::default(), stop).await
}

/// [`run`] with chosen internal knobs.
pub async fn run_tuned(
    db: &Db,
    client: &ApiClient,
    config: &PushConfig,
    tuning: PushTuning,
    stop: &StopFlag,
) -> Result<PushStats, SyncError> {
    let mut stats = PushStats::default();
    run_counted(db, client, config, tuning, stop, &mut stats).await?;
    Ok(stats)
}

/// [`run_tuned`], counting into `stats` as rows settle, so that a run that fails or is stopped
/// still reports what it did.
pub async fn run_counted(
    db: &Db,
    client: &ApiClient,
    config: &PushConfig,
    tuning: PushTuning,
    stop: &StopFlag,
    stats: &mut PushStats,
) -> Result<(), SyncError> {
    let started = std::time::Instant::now();
    let mut st = RunState::default();
    let result = push_windows(db, client, config, tuning, stop, &mut st).await;
    *stats = st.stats;
    tracing::info!(
        ok = st.stats.ok,
        failed = st.stats.failed,
        superseded = st.stats.superseded,
        deferred = st.stats.deferred,
        elapsed_ms = ms(started),
        stopped = matches!(result, Err(SyncError::Stopped)),
        "push finished"
    );
    result
}

async fn push_windows(
    db: &Db,
    client: &ApiClient,
    config: &PushConfig,
    tuning: PushTuning,
    stop: &StopFlag,
    st: &mut RunState,
) -> Result<(), SyncError> {
    let limits = send::Limits {
        max_row_attempts: config.max_row_attempts.max(1),
        tuning,
    };
    let ceiling = db.run(outbox::ceiling).await?;
    let mut held = Held::new();
    let mut after = 0;
    let window = tuning
        .window_rows
        .unwrap_or(i64::from(config.window_rows))
        .max(1);
    loop {
        if stop.is_set() {
            return Err(SyncError::Stopped);
        }
        let rows = db
            .run(move |c| outbox::open_window(c, after, ceiling, window))
            .await?;
        let Some(last) = rows.last().map(|r| r.id) else {
            return Ok(());
        };
        push_window(db, client, rows, (after, last), limits, stop, st, &mut held).await?;
        after = last;
        if held.len() > MAX_HELD_TARGETS {
            tracing::warn!(
                held = held.len(),
                "many targets wait (backing off or in doubt): the rest of the outbox waits for \
                 the next cycle"
            );
            return Ok(());
        }
    }
}

/// Runs rounds over one window of rows (ids in `span`, exclusive of its start) until nothing is
/// left to do in it; the targets it leaves open join `held`.
#[allow(clippy::too_many_arguments)]
async fn push_window(
    db: &Db,
    client: &ApiClient,
    mut rows: Vec<OpenRow>,
    (after, last): (i64, i64),
    limits: send::Limits,
    stop: &StopFlag,
    st: &mut RunState,
    held: &mut Held,
) -> Result<(), SyncError> {
    let started = std::time::Instant::now();
    let reload = move |c: &mut crate::db::Conn| outbox::open_window(c, after, last, i64::MAX);
    for round in 1..=MAX_ROUNDS {
        if stop.is_set() {
            return Err(SyncError::Stopped);
        }
        if rows.is_empty() {
            return Ok(());
        }
        let max_attempts = limits.max_row_attempts;
        if resolve::resolve_in_doubt(db, client, &rows, st, max_attempts, limits.tuning).await? {
            rows = db.run(reload).await?;
        }
        let (plan, open) = plan_with_mirror(db, rows, &st.blocked, held).await?;
        let planned_ms = ms(started);
        if plan.is_empty() {
            held.extend(plan.held);
            return Ok(());
        }
        tracing::info!(
            round,
            open_rows = open,
            operations = plan.groups.len(),
            failed = plan.failed.len(),
            superseded = plan.superseded.len(),
            planned_ms,
            "push round"
        );
        let groups = plan_groups(plan, db, st).await?;
        if !groups.is_empty() {
            for group in &groups {
                st.blocked.extend(group.rows().map(|m| m.id));
            }
            let sent = send::send_round(db, client, groups, limits, stop).await?;
            st.stats += sent.stats;
            st.blocked.extend(sent.blocked);
            // A create refused after an earlier send is looked up in this run.
            for id in sent.refused.iter().chain(&sent.retry_now) {
                st.blocked.remove(id);
            }
            st.refused.extend(sent.refused);
            if let Some(error) = sent.auth {
                return Err(error.into());
            }
            if sent.abandoned {
                return Err(SyncError::Stopped);
            }
        }
        rows = db.run(reload).await?;
    }
    Ok(())
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
    held: &Held,
) -> Result<(RoundPlan, usize), SyncError> {
    let blocked = blocked.clone();
    let held = held.clone();
    Ok(db
        .run(move |c| {
            let started = std::time::Instant::now();
            // The payloads are checked while the mirror is read.
            let (mirror, intents) = std::thread::scope(|scope| {
                let validating = scope.spawn(|| validate_all(&rows));
                let (refs, ids) = targets_named(&rows);
                let by_ref = jobs::find_by_references(c, &refs)?;
                let mirror = Mirror {
                    by_ref: by_ref.unique,
                    ambiguous: by_ref.ambiguous,
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
            let plan = plan_validated(&rows, intents, &mirror, &blocked, &held, Ts::now());
            tracing::debug!(
                checked_ms,
                plan_ms = ms(started) - checked_ms,
                "push: round planned"
            );
            Ok((plan, rows.len()))
        })
        .await?)
}

/// Records what the plan settles without a call (invalid rows, creates cancelled before they
/// were sent) and returns the groups to send.
async fn plan_groups(
    plan: RoundPlan,
    db: &Db,
    st: &mut RunState,
) -> Result<Vec<plan::Group>, SyncError> {
    let mut updates: Vec<(i64, RowUpdate)> = Vec::new();
    for (id, reason) in plan.failed {
        updates.push((id, RowUpdate::failed(reason, None)));
        st.stats.failed += 1;
    }
    for (id, survivor, why) in plan.superseded {
        updates.push((id, RowUpdate::superseded_by(survivor, Some(&why), None)));
        st.stats.superseded += 1;
    }
    if !updates.is_empty() {
        db.run(move |c| transaction(c, |c| outbox::update_each(c, &updates)))
            .await?;
    }
    Ok(plan.groups)
}
