//! Sends a round's operations through the bulk endpoints and records each outcome.
//!
//! Every chunk of `api.bulk_size` operations is a small pipeline: mark its rows `in_flight`
//! (creates also `in_doubt`, with `first_sent_at` on the API's clock at their first send) before
//! the request leaves, send it, then record each item's outcome together with the job the API
//! returned, in one transaction. Chunks run concurrently, twice the client's `api.concurrency`
//! at a time and each in its own task, so that one chunk's database and encoding work overlaps
//! the others' requests (the client's own limit still bounds calls in flight).
//!
//! On a stop request no further chunk starts; the chunks in flight get until the stop's deadline
//! to finish, then are abandoned where they are: their rows stay `in_flight` (creates in doubt),
//! and the next cycle resolves them.

use super::plan::Group;
use super::validate::Op;
use super::{PushStats, PushTuning};
use crate::api::models::JobFields;
use crate::api::{ApiClient, ApiError, ItemOutcome};
use crate::db::models::{ChangeSource, JobContent};
use crate::db::repo::jobs;
use crate::db::repo::outbox::{self, CreateSend, RowUpdate, Sending};
use crate::db::repo::runs::{self, RunCounts};
use crate::db::{Db, Ts};
use crate::job::Job;
use crate::shutdown::StopFlag;
use crate::sync::SyncError;
use chrono::Utc;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tracing::Instrument;

/// What a round's sending did, beyond the rows it settled.
#[derive(Debug, Default)]
pub struct Sent {
    pub stats: PushStats,
    /// Rows that must not be tried again in this run (deferred after a retryable failure).
    pub blocked: Vec<i64>,
    /// Creates refused with a 400 after an earlier send: looked up before the refusal stands.
    pub refused: Vec<i64>,
    /// The token was refused: the run stops.
    pub auth: Option<ApiError>,
    /// A stop request abandoned chunks in flight.
    pub abandoned: bool,
    /// Rows to plan again in this run (the job a create was matched with is gone: the create is
    /// sent).
    pub retry_now: Vec<i64>,
    /// Bulk calls that could not reach the API after their retries (refused or broken
    /// connections, no answer in time), and the last such error: the run could not complete.
    pub unreachable_calls: i64,
    pub unreachable: Option<ApiError>,
}

/// How rows are retried across cycles.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_row_attempts: u32,
    pub tuning: PushTuning,
    /// `push.settle_secs`: how long after its first send a create in doubt may be found absent.
    pub settle: Duration,
}

/// The bulk calls of a pass over the outbox, as a pipeline: chunks are queued as windows are
/// planned, up to twice `api.concurrency` at a time, so the next window's first calls leave
/// while the last ones of the window before are still in flight. Outcomes are gathered as the
/// chunks end.
pub struct Pipeline {
    db: Db,
    client: ApiClient,
    limits: Limits,
    stop: StopFlag,
    // On SQLite one writer at a time (`one_writer`): the chunks' writes are short, and interleaved
    // they would only wait for each other in the database. PostgreSQL's run concurrently.
    writer: Arc<Mutex<()>>,
    tasks: JoinSet<Result<Sent, SyncError>>,
    width: usize,
    total: Sent,
    /// Per operation, groups not yet making a full chunk: they wait for the next window's, so
    /// that windows smaller than a chunk cost no extra calls.
    partial: [Vec<Group>; 3],
}

impl Pipeline {
    pub fn new(db: &Db, client: &ApiClient, limits: Limits, stop: &StopFlag) -> Self {
        Pipeline {
            db: db.clone(),
            client: client.clone(),
            limits,
            stop: stop.clone(),
            writer: Arc::new(Mutex::new(())),
            tasks: JoinSet::new(),
            width: client.concurrency().max(1) * 2,
            total: Sent::default(),
            partial: Default::default(),
        }
    }

    /// Queues the groups, cut per operation into chunks of `api.bulk_size`, waiting for room as
    /// needed; a last chunk short of `api.bulk_size` waits for more groups (or for [`drain`]).
    /// On a stop request nothing more is queued (those rows stay as they are).
    ///
    /// [`drain`]: Pipeline::drain
    pub async fn send(&mut self, groups: Vec<Group>) -> Result<(), SyncError> {
        for group in groups {
            let slot = op_slot(group.op);
            self.partial[slot].push(group);
            if self.partial[slot].len() >= self.client.bulk_size().max(1) {
                let chunk = std::mem::take(&mut self.partial[slot]);
                self.spawn(chunk).await?;
            }
        }
        Ok(())
    }

    async fn spawn(&mut self, chunk: Vec<Group>) -> Result<(), SyncError> {
        while self.tasks.len() >= self.width {
            self.join_one().await?;
        }
        if self.db.lock_lost() {
            return Err(lock_lost(&self.db));
        }
        if self.stop.is_set() || self.total.abandoned || chunk.is_empty() {
            return Ok(());
        }
        let op = chunk[0].op;
        let (db, client, writer) = (self.db.clone(), self.client.clone(), self.writer.clone());
        let (limits, stop) = (self.limits, self.stop.clone());
        // Each chunk is its own task: encoding a thousand items and decoding their answers is
        // CPU work, and in one task it delayed the next request whenever a slot came free.
        // Dropping the set (a stopped run) aborts the chunks.
        self.tasks.spawn(
            async move { send_chunk(&db, &client, &writer, op, chunk, limits, &stop).await }
                .in_current_span(),
        );
        Ok(())
    }

    /// Waits for one chunk to end (or, once stopped, for the deadline: then the chunks in flight
    /// are abandoned where they are).
    async fn join_one(&mut self) -> Result<(), SyncError> {
        let joined = match self.stop.deadline() {
            None => self.tasks.join_next().await,
            Some(deadline) => {
                match tokio::time::timeout_at(deadline.into(), self.tasks.join_next()).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        tracing::warn!(
                            chunks = self.tasks.len(),
                            "stop deadline reached: abandoning the requests in flight (their \
                             creates are in doubt and looked up next cycle)"
                        );
                        self.tasks.abort_all();
                        self.total.abandoned = true;
                        return Ok(());
                    }
                }
            }
        };
        let Some(joined) = joined else {
            return Ok(());
        };
        let sent = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let total = &mut self.total;
        total.stats += sent.stats;
        total.blocked.extend(sent.blocked);
        total.refused.extend(sent.refused);
        total.retry_now.extend(sent.retry_now);
        total.auth = total.auth.take().or(sent.auth);
        total.unreachable_calls += sent.unreachable_calls;
        total.unreachable = sent.unreachable.or(total.unreachable.take());
        Ok(())
    }

    /// Whether the token was refused or a stop abandoned requests: queue nothing more.
    pub fn must_end(&self) -> bool {
        self.total.auth.is_some() || self.total.abandoned
    }

    /// Sends the short chunks still waiting, waits for every queued chunk, and returns what they
    /// did.
    pub async fn drain(mut self) -> Result<Sent, SyncError> {
        for slot in 0..self.partial.len() {
            let chunk = std::mem::take(&mut self.partial[slot]);
            self.spawn(chunk).await?;
        }
        while !self.tasks.is_empty() && !self.total.abandoned {
            self.join_one().await?;
        }
        Ok(self.total)
    }
}

#[tracing::instrument(name = "bulk_call", skip_all, fields(op = ?op, items = chunk.len()))]
async fn send_chunk(
    db: &Db,
    client: &ApiClient,
    writer: &Mutex<()>,
    op: Op,
    mut chunk: Vec<Group>,
    limits: Limits,
    stop: &StopFlag,
) -> Result<Sent, SyncError> {
    let sending: Vec<Sending> = chunk.iter().map(sending).collect();
    let started = std::time::Instant::now();
    // The API's clock at the first send: an in-doubt create is looked up from there. Known from
    // the API's earlier answers (the pull's, at least); asked for only when none came yet. When
    // it cannot be known, the send is stamped at the epoch, so that a lookup lists the whole
    // campaign rather than trust our own clock.
    let server_now = match op {
        Op::Create => match client.server_time().await {
            Ok(t) => Ts::from(t),
            Err(e) if e.is_auth() => return waiting_for_token(db, writer, &chunk, e).await,
            Err(_) => Ts::from(chrono::DateTime::<Utc>::UNIX_EPOCH),
        },
        _ => Ts::now(),
    };
    let lookup_from = look_after(client, limits.tuning);
    {
        let _writing = one_writer(db, writer).await;
        // Fenced: a process that lost the sync lock marks (and so sends) nothing more.
        db.write(move |c| outbox::mark_sent(c, &sending, Ts::now(), server_now, lookup_from))
            .await?;
    }
    let marked = started.elapsed();
    // Marked before its turn came: a chunk still waiting for a request slot when a stop comes
    // never leaves, and its rows go back as they were.
    let halted = || stop.is_set();
    let outcomes = match op {
        Op::Create => {
            let items = chunk
                .iter_mut()
                .map(|g| std::mem::take(&mut g.fields))
                .collect();
            client.bulk_create_or_halt(items, &halted).await
        }
        Op::Patch => {
            let items = chunk.iter_mut().map(patch_item).collect();
            client.bulk_patch_or_halt(items, &halted).await
        }
        Op::Unqueue => {
            let items = chunk.iter().filter_map(|g| g.job_id).collect();
            client.bulk_unqueue_or_halt(items, &halted).await
        }
    };
    let answered = started.elapsed();
    let mut sent = Sent::default();
    let mut updates = Vec::new();
    let mut returned: Vec<Job> = Vec::new();
    let mut gone: Vec<i64> = Vec::new();
    let mut record = Record {
        op,
        limits,
        // From the answer (or the give-up), not the first attempt: the client may have retried.
        look_after: look_after(client, limits.tuning),
        sent: &mut sent,
        updates: &mut updates,
        returned: &mut returned,
        gone: &mut gone,
    };
    for (group, outcome) in chunk.iter().zip(outcomes) {
        record.outcome(group, outcome);
    }
    if sent.unreachable.is_some() {
        sent.unreachable_calls = 1;
    }
    // Converted before taking the writer lock, so the lock covers only the writes.
    let returned: Vec<JobContent> = returned.iter().map(JobContent::from_job).collect();
    // A job the API says is gone is gone as of the API's clock.
    let gone_at = client.server_now().map_or_else(Ts::now, Ts::from);
    let counts = RunCounts {
        pushed_ok: sent.stats.ok,
        pushed_failed: sent.stats.failed,
        ..RunCounts::default()
    };
    let _writing = one_writer(db, writer).await;
    db.write(move |c| {
        // The outbox first: the changefeed's append (in the upsert) holds PostgreSQL's one-writer
        // lock until the commit, so it comes last — with the run's counts, whose row lock would
        // otherwise serialise the chunks' whole transactions. Every push transaction takes them
        // in this order.
        outbox::update_each(c, &updates)?;
        jobs::upsert_contents(c, returned, ChangeSource::Push, Ts::now(), false)?;
        jobs::mark_gone(c, &gone, gone_at)?;
        runs::count_into_current(c, counts)?;
        Ok(())
    })
    .await?;
    client.heartbeat().beat();
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    tracing::debug!(
        op = op.as_str(),
        items = chunk.len(),
        mark_ms = ms(marked),
        answered_ms = ms(answered),
        recorded_ms = ms(started.elapsed()),
        "push chunk"
    );
    Ok(sent)
}

/// The error of a push whose sync lock is lost: it sends nothing more.
pub fn lock_lost(db: &Db) -> SyncError {
    let why = db.fence().map_or_else(String::new, |f| f.reason());
    SyncError::Db(crate::db::DbError::LockLost(why))
}

/// The chunks' writes take turns here when the database serialises its writers anyway (see
/// [`Db::serialises_writers`]); otherwise they go concurrently, each touching its own rows.
async fn one_writer<'a>(db: &Db, writer: &'a Mutex<()>) -> Option<tokio::sync::MutexGuard<'a, ()>> {
    if db.serialises_writers() {
        Some(writer.lock().await)
    } else {
        None
    }
}

fn op_slot(op: Op) -> usize {
    match op {
        Op::Create => 0,
        Op::Patch => 1,
        Op::Unqueue => 2,
    }
}

/// The fields are moved into the request (the outcome needs only the rows and the job id).
fn patch_item(group: &mut Group) -> JobFields {
    let mut item = std::mem::take(&mut group.fields);
    item.insert("id".into(), group.job_id.unwrap_or_default().into());
    item
}

/// What [`outbox::mark_sent`] writes for a group about to leave.
fn sending(group: &Group) -> Sending {
    let create = (group.op == Op::Create).then(|| CreateSend {
        // The body is kept when rows were merged into it: the lookup needs the reference sent.
        sent_payload: (!group.merged.is_empty())
            .then(|| serde_json::Value::Object(group.fields.clone()).to_string()),
    });
    Sending {
        survivor: group.survivor.id,
        merged: group.merged.iter().map(|m| m.id).collect(),
        create,
    }
}

/// The earliest time a create sent now may be looked up: after the request's own timeout (an
/// unanswered request may still be committing) and a margin.
fn look_after(client: &ApiClient, tuning: PushTuning) -> Ts {
    let wait = client.timeout() + tuning.lookup_margin;
    Ts::from(Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1)))
}

/// The token was refused before anything was sent: the rows wait, unchanged.
async fn waiting_for_token(
    db: &Db,
    writer: &Mutex<()>,
    chunk: &[Group],
    error: ApiError,
) -> Result<Sent, SyncError> {
    let now = Ts::now();
    let updates: Vec<(i64, RowUpdate)> = chunk
        .iter()
        .flat_map(Group::rows)
        .map(|m| (m.id, RowUpdate::waiting_for_token(now)))
        .collect();
    let _writing = one_writer(db, writer).await;
    db.write(move |c| outbox::update_each(c, &updates)).await?;
    Ok(Sent {
        auth: Some(error),
        ..Sent::default()
    })
}

/// Turns one item's outcome into its rows' transitions.
struct Record<'a> {
    op: Op,
    limits: Limits,
    look_after: Ts,
    sent: &'a mut Sent,
    updates: &'a mut Vec<(i64, RowUpdate)>,
    returned: &'a mut Vec<Job>,
    /// Jobs a confirming patch found gone upstream.
    gone: &'a mut Vec<i64>,
}

impl Record<'_> {
    fn outcome(&mut self, group: &Group, outcome: ItemOutcome) {
        let survivor = group.survivor.id;
        let rows = 1 + group.merged.len() as i64;
        match outcome {
            ItemOutcome::Ok { status, job } => {
                self.updates
                    .push((survivor, RowUpdate::done(Some(status), job.id)));
                for m in &group.merged {
                    let change = RowUpdate::superseded_by(survivor, None, Some(job.id));
                    self.updates.push((m.id, change));
                }
                self.sent.stats.ok += 1;
                self.sent.stats.superseded += rows - 1;
                self.returned.push(job);
            }
            ItemOutcome::Rejected {
                status: 404,
                message,
            } if group.confirms_create => {
                // The job the create was matched with is gone upstream: the create is sent after
                // all, in a later round.
                let job = group.job_id.unwrap_or_default();
                tracing::info!(
                    outbox_id = survivor,
                    job_id = job,
                    "the job of a create is gone upstream; creating it"
                );
                self.gone.push(job);
                let reason = format!("job {job} is gone upstream ({message}); sending the create");
                for m in group.rows() {
                    self.updates
                        .push((m.id, RowUpdate::job_gone(reason.clone(), Ts::now())));
                    self.sent.retry_now.push(m.id);
                }
            }
            ItemOutcome::Rejected {
                status: 400,
                message,
            } if self.op == Op::Create && !group.first_send => {
                // Sent before: perhaps applied then (a duplicate now), whatever the message says.
                // Looked up before the refusal stands.
                let attempts = group.survivor.attempts;
                let change = RowUpdate::in_doubt(message, Some(400), attempts, Ts::now());
                self.updates.push((survivor, change));
                self.sent.refused.push(survivor);
            }
            ItemOutcome::Rejected { status, message } => {
                let message = match (status, group.job_id) {
                    (404, Some(id)) => format!("job {id} does not exist upstream: {message}"),
                    _ => message,
                };
                for m in &group.merged {
                    let reason =
                        format!("merged into outbox row {survivor}, which failed: {message}");
                    self.updates
                        .push((m.id, RowUpdate::failed(reason, Some(status))));
                }
                self.updates
                    .push((survivor, RowUpdate::failed(message, Some(status))));
                self.sent.stats.failed += rows;
            }
            ItemOutcome::Retryable { error } if error.is_auth() => {
                // Nothing was applied; the rows wait, unchanged, for a usable token.
                for m in group.rows() {
                    self.updates
                        .push((m.id, RowUpdate::waiting_for_token(Ts::now())));
                }
                self.sent.auth.get_or_insert(error);
            }
            ItemOutcome::Retryable { error } => {
                self.retryable(group, &error);
                self.unreachable(error);
            }
            ItemOutcome::NotSent => {
                for m in group.rows() {
                    let first_send = group.first_send && m.id == survivor;
                    self.updates
                        .push((m.id, RowUpdate::not_sent(Ts::now(), first_send)));
                }
            }
            ItemOutcome::Unknown { error } => {
                // The rows stay in flight; the create is looked up (after its timeout and a
                // margin) before anything of its target is sent again.
                let attempts = group.survivor.attempts + 1;
                let reason = format!(
                    "in doubt: the create may or may not have been applied ({error}); it is \
                     looked up by reference before any re-send"
                );
                let status = error.status();
                self.updates.push((
                    survivor,
                    RowUpdate::in_doubt(reason, status, attempts, self.look_after),
                ));
                for m in group.rows() {
                    self.sent.blocked.push(m.id);
                }
                self.sent.stats.deferred += rows;
                self.unreachable(error);
            }
        }
    }

    /// Notes an error that says the API could not be reached (after the client's retries).
    fn unreachable(&mut self, error: ApiError) {
        if error.unreachable_cause().is_some() {
            self.sent.unreachable = Some(error);
        }
    }

    /// A failure that left nothing applied (or that is harmless to repeat): the rows wait with
    /// backoff, or fail after `push.max_row_attempts` cycles.
    fn retryable(&mut self, group: &Group, error: &ApiError) {
        let attempts = group.survivor.attempts + 1;
        let give_up = attempts >= self.limits.max_row_attempts as i32;
        let wait = row_backoff(attempts, error.retry_after(), self.limits.tuning);
        let at = Ts::from(Utc::now() + wait);
        for m in group.rows() {
            let change = if give_up {
                RowUpdate::failed(
                    format!(
                        "gave up after {attempts} cycles with a retryable failure (re-queue with \
                         `jobsync outbox retry --id {}`): {error}",
                        m.id
                    ),
                    error.status(),
                )
            } else {
                RowUpdate::retry_later(error.to_string(), error.status(), m.attempts + 1, at)
            };
            self.updates.push((m.id, change));
            self.sent.blocked.push(m.id);
        }
        let rows = 1 + group.merged.len() as i64;
        if give_up {
            self.sent.stats.failed += rows;
        } else {
            self.sent.stats.deferred += rows;
        }
    }
}

/// The wait before a row's next cycle: exponential in its attempts, with jitter (half to all of
/// the delay, so rows that failed together do not all come back together), never shorter than
/// what the server asked for with `Retry-After` (itself capped).
pub(super) fn row_backoff(
    attempts: i32,
    retry_after: Option<Duration>,
    tuning: PushTuning,
) -> chrono::Duration {
    let exponent = attempts.clamp(0, 30) as u32;
    let full = tuning
        .backoff_base
        .saturating_mul(1u32 << exponent.min(20))
        .min(tuning.backoff_cap);
    let jittered = full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
    let wait = jittered.max(retry_after.unwrap_or_default().min(tuning.backoff_cap));
    chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let tuning = PushTuning::default();
        let secs = |a, ra| row_backoff(a, ra, tuning).num_milliseconds() as f64 / 1000.0;
        let first = secs(1, None);
        assert!((1.0..=2.0).contains(&first), "{first}");
        let fifth = secs(5, None);
        assert!((16.0..=32.0).contains(&fifth), "{fifth}");
        assert!(secs(30, None) <= 3600.0);
        assert!(secs(30, None) >= 1800.0);
        assert!(secs(1, Some(Duration::from_secs(120))) >= 120.0);
        assert!(secs(1, Some(Duration::from_secs(100_000))) <= 3600.0);
    }
}
