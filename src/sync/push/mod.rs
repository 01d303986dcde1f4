//! Push: drains the outbox to the API through the bulk endpoints, exactly once (docs/contract.md
//! §4).
//!
//! A push works on the rows that existed when it started (`id <=` the highest id then), in
//! passes over the outbox. A pass reads it in windows of `push.window_rows` rows (3,000 by
//! default) in id order, so that memory does not grow with the outbox, and for each window:
//! 1. creates in doubt whose time has come are looked up (`resolve`) — never re-sent blindly;
//! 2. the window is planned (`plan`): invalid or ambiguous rows fail alone, and per target the
//!    longest prefix of its rows that coalesces into one operation is taken (`validate` is shared
//!    with `jobsync import`);
//! 3. its creates, patches and unqueues are queued for the bulk endpoints (`send`), whose calls
//!    run as a pipeline across windows; each outcome is recorded with the jobs the API returned
//!    going into the mirror in the same transaction.
//!
//! A target met in an earlier window of a pass is held in the later ones (a Bloom filter sized
//! for the pass, [`plan::Held`]), and rows behind a target's prefix wait: both go in the next
//! pass, after the pass's calls have ended. A pass
//! that leaves nothing waiting ends the push (one pass for a plain backlog of creates). A row
//! left open by its outcome (backing off, in doubt) is not sent again in the same push.

mod plan;
mod resolve;
mod send;
mod validate;

pub use validate::{
    Intent, MAX_PAYLOAD_BYTES, Op, RowInput, Target, check_payload_size, validate, validate_fields,
};

use super::SyncError;
use crate::api::ApiClient;
use crate::config::PushConfig;
use crate::db::models::OpenRow;
use crate::db::repo::jobs;
use crate::db::repo::outbox::{self, RowUpdate};
use crate::db::repo::runs::{self, RunCounts};
use crate::db::{Db, DbError, Ts};
use crate::shutdown::StopFlag;
use plan::{Held, Mirror, RoundPlan, RowSet, plan_validated, targets_named, validate_all};
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
struct PushMemory {
    /// Rows not to touch again in this run: sent in it (with any outcome but a settled one), or
    /// whose lookup failed. They hold back the later rows of their target.
    blocked: RowSet,
    /// Creates answered 400 after an earlier send: the refusal stands only if a lookup does not
    /// find the job.
    refused: HashSet<i64>,
    /// Campaigns a lookup listed in this run: their rows are settled from the mirror after.
    listed: std::collections::HashMap<i64, resolve::Listed>,
    stats: PushStats,
    /// Bulk calls that could not reach the API after their retries, and the last error.
    unreachable_calls: i64,
    unreachable: Option<crate::api::ApiError>,
}

/// A bound on passes, so that no surprise can turn a cycle into an endless loop (a pass is needed
/// per row of the longest chain of one target that cannot merge, so real pushes end long before).
const MAX_PASSES: usize = 1_000;

/// One push: every due outbox row to the API. Built from the engine's parts (`Engine::push`, or
/// [`Push::new`]), with the default [`PushTuning`] unless [`Push::tuning`] sets another.
pub struct Push<'a> {
    db: &'a Db,
    client: &'a ApiClient,
    config: &'a PushConfig,
    stop: &'a StopFlag,
    tuning: PushTuning,
}

impl<'a> Push<'a> {
    pub fn new(
        db: &'a Db,
        client: &'a ApiClient,
        config: &'a PushConfig,
        stop: &'a StopFlag,
    ) -> Self {
        Push {
            db,
            client,
            config,
            stop,
            tuning: PushTuning::default(),
        }
    }

    /// Internal knobs (backoff, lookup margin, window size): tests and benchmarks.
    pub fn tuning(self, tuning: PushTuning) -> Self {
        Push { tuning, ..self }
    }

    /// Runs the push, counting into `stats` as rows settle, so that a run that fails or is
    /// stopped still reports what it did. Fails when the run cannot go on (authentication
    /// refused, database error, a stop request) and, once every ready row had its turn, with
    /// [`SyncError::PushUnreachable`] when some calls could not reach the API (their rows are
    /// recorded and wait for a later cycle); item-level outcomes are recorded in the rows.
    pub async fn run(&self, stats: &mut PushStats) -> Result<(), SyncError> {
        push(
            self.db,
            self.client,
            self.config,
            self.tuning,
            self.stop,
            stats,
        )
        .await
    }
}

#[tracing::instrument(name = "push", skip_all)]
async fn push(
    db: &Db,
    client: &ApiClient,
    config: &PushConfig,
    tuning: PushTuning,
    stop: &StopFlag,
    stats: &mut PushStats,
) -> Result<(), SyncError> {
    let started = std::time::Instant::now();
    let mut st = PushMemory::default();
    let result = push_windows(db, client, config, tuning, stop, &mut st).await;
    *stats = st.stats;
    tracing::info!(
        ok = st.stats.ok,
        failed = st.stats.failed,
        superseded = st.stats.superseded,
        deferred = st.stats.deferred,
        elapsed_ms = ms(started),
        stopped = matches!(result, Err(SyncError::Stopped)),
        unreachable_calls = st.unreachable_calls,
        "push finished"
    );
    result?;
    // Every ready row had its turn; those whose calls could not reach the API wait for a later
    // cycle (backing off, or in doubt and looked up), and the run says it could not complete.
    match st.unreachable {
        Some(last) => Err(SyncError::PushUnreachable {
            calls: st.unreachable_calls,
            last,
        }),
        None => Ok(()),
    }
}

async fn push_windows(
    db: &Db,
    client: &ApiClient,
    config: &PushConfig,
    tuning: PushTuning,
    stop: &StopFlag,
    st: &mut PushMemory,
) -> Result<(), SyncError> {
    let limits = send::Limits {
        max_row_attempts: config.max_row_attempts.max(1),
        tuning,
        settle: Duration::from_secs(config.settle_secs),
    };
    let ceiling = db.run(outbox::ceiling).await?;
    let window = tuning
        .window_rows
        .unwrap_or(i64::from(config.window_rows))
        .max(1);
    // A pass reads every open row once: it never ends early (its memory of the targets it met
    // does not grow with them), and another pass comes only when rows were ready but had to wait
    // behind rows of their target sent in this one — as many passes as the longest chain of one
    // target's rows that cannot merge. Rows blocked for the run (in doubt, backing off) hold
    // back their targets without calling for another pass.
    for pass in 1..=MAX_PASSES {
        let more = push_pass(db, client, (ceiling, window), limits, stop, st).await?;
        tracing::debug!(pass, more, "push pass done");
        if !more {
            return Ok(());
        }
    }
    Ok(())
}

/// A window's rows are read from at most this many windows' worth of ids.
const WINDOW_SPAN: i64 = 4;

/// One pass over the outbox, window by window, its bulk calls pipelined across windows. A target
/// met in an earlier window of the pass is held in the later ones (its rows there wait for the
/// next pass, after the earlier ones settled). Returns whether another pass has work.
async fn push_pass(
    db: &Db,
    client: &ApiClient,
    (ceiling, window): (i64, i64),
    limits: send::Limits,
    stop: &StopFlag,
    st: &mut PushMemory,
) -> Result<bool, SyncError> {
    let started = std::time::Instant::now();
    let mut pipeline = send::Pipeline::new(db, client, limits, stop);
    let mut after = db.run(outbox::before_first_open).await?;
    let span = usize::try_from(ceiling.saturating_sub(after)).unwrap_or(usize::MAX);
    let mut touched = Held::with_capacity(span);
    let mut more = false;
    loop {
        if stop.is_set() || pipeline.must_end() || db.lock_lost() {
            break;
        }
        // A window reads ids from a bounded range: whatever plan the database picks (PostgreSQL,
        // with stale statistics, sorted every open row above `after` for each window), the work
        // of one window stays that of a few windows' rows.
        let upto = ceiling.min(after.saturating_add(window.saturating_mul(WINDOW_SPAN)));
        let (mut rows, unreadable) = db
            .run(move |c| outbox::open_window(c, after, upto, window))
            .await?;
        st.stats.failed += unreadable;
        let Some(last) = rows.last().map(|r| r.id) else {
            if upto >= ceiling {
                break;
            }
            after = upto;
            continue;
        };
        if resolve::resolve_in_doubt(db, client, &rows, st, limits).await? {
            let unreadable;
            (rows, unreadable) = db
                .run(move |c| outbox::open_window(c, after, last, i64::MAX))
                .await?;
            st.stats.failed += unreadable;
        }
        after = last;
        let (plan, open) = plan_with_mirror(db, rows, &st.blocked, &mut touched).await?;
        more |= plan.more;
        // A pass that reads a long blocked backlog without sending still says it is alive.
        client.heartbeat().beat();
        if !plan.is_empty() {
            tracing::info!(
                window_end = last,
                open_rows = open,
                operations = plan.groups.len(),
                failed = plan.failed.len(),
                superseded = plan.superseded.len(),
                planned_ms = ms(started),
                "push window"
            );
            let groups = plan_groups(plan, db, st).await?;
            pipeline.send(groups).await?;
        }
    }
    let sent = pipeline.drain().await?;
    if db.lock_lost() {
        return Err(send::lock_lost(db));
    }
    st.stats += sent.stats;
    st.unreachable_calls += sent.unreachable_calls;
    st.unreachable = sent.unreachable.or(st.unreachable.take());
    st.blocked.extend(sent.blocked);
    // Looked up (a create refused after an earlier send) or sent again (its job is gone) in
    // the next pass of this run.
    more |= !sent.refused.is_empty() || !sent.retry_now.is_empty();
    for id in sent.refused.iter().chain(&sent.retry_now) {
        st.blocked.remove(id);
    }
    st.refused.extend(sent.refused);
    if let Some(error) = sent.auth {
        return Err(error.into());
    }
    if sent.abandoned || stop.is_set() {
        return Err(SyncError::Stopped);
    }
    Ok(more)
}

fn ms(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Plans a window against the mirror rows its targets name. `held` goes to the database thread
/// and comes back, with the window's targets added (it may hold a million hashes: never copied).
/// Returns the plan and the number of open rows considered.
async fn plan_with_mirror(
    db: &Db,
    rows: Vec<OpenRow>,
    blocked: &RowSet,
    held: &mut Held,
) -> Result<(RoundPlan, usize), SyncError> {
    let blocked = blocked.clone();
    let mut taken = std::mem::take(held);
    let (plan, open, back) = db
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
            let plan = plan_validated(&rows, intents, &mirror, &blocked, &taken, Ts::now());
            taken.extend(&plan.touched);
            tracing::debug!(
                checked_ms,
                plan_ms = ms(started) - checked_ms,
                "push: window planned"
            );
            Ok((plan, rows.len(), taken))
        })
        .await?;
    *held = back;
    Ok((plan, open))
}

/// Records what the plan settles without a call (invalid rows, creates cancelled before they
/// were sent) and returns the groups to send.
async fn plan_groups(
    plan: RoundPlan,
    db: &Db,
    st: &mut PushMemory,
) -> Result<Vec<plan::Group>, SyncError> {
    let mut updates: Vec<(i64, RowUpdate)> = Vec::new();
    let counts = RunCounts {
        pushed_failed: plan.failed.len() as i64,
        ..RunCounts::default()
    };
    for (id, reason) in plan.failed {
        updates.push((id, RowUpdate::failed(reason, None)));
        st.stats.failed += 1;
    }
    for (id, survivor, why) in plan.superseded {
        updates.push((id, RowUpdate::superseded_by(survivor, Some(&why), None)));
        st.stats.superseded += 1;
    }
    if !updates.is_empty() {
        // The outbox first, the run's counts last: the order of every push transaction.
        db.write(move |c| {
            outbox::update_each(c, &updates)?;
            runs::count_into_current(c, counts)
        })
        .await?;
    }
    Ok(plan.groups)
}
