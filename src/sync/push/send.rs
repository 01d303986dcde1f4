//! Sends a round's operations through the bulk endpoints and records each outcome.
//!
//! Every chunk of `api.bulk_size` operations is a small pipeline: mark its rows `in_flight` (and
//! stamp `first_sent_at` on first-time creates) before the request leaves, send it, then record
//! each item's outcome together with the job the API returned, in one transaction. Chunks run
//! concurrently, twice the client's `api.concurrency` at a time and each in its own task, so that
//! one chunk's database and encoding work overlaps the others' requests (the client's own limit
//! still bounds calls in flight).

use super::plan::Group;
use super::validate::Op;
use super::{PushStats, PushTuning};
use crate::api::models::{Job, JobFields};
use crate::api::{ApiClient, ApiError, ItemOutcome};
use crate::db::models::{ChangeSource, JobContent};
use crate::db::repo::outbox::{self, DONE, FAILED, PENDING, RowUpdate, SUPERSEDED};
use crate::db::repo::{jobs, transaction};
use crate::db::{Db, Ts};
use crate::sync::SyncError;
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
    /// Creates refused for their reference: look the job up in the whole campaign.
    pub full_lookup: Vec<i64>,
    /// The token was refused: the run stops.
    pub auth: Option<ApiError>,
}

/// How rows are retried across cycles.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_row_attempts: u32,
    pub tuning: PushTuning,
}

pub async fn send_round(
    db: &Db,
    client: &ApiClient,
    groups: Vec<Group>,
    limits: Limits,
) -> Result<Sent, SyncError> {
    let size = client.bulk_size().max(1);
    let mut chunks: Vec<(Op, Vec<Group>)> = Vec::new();
    let mut groups = groups;
    for op in [Op::Create, Op::Patch, Op::Unqueue] {
        let (of_op, rest): (Vec<Group>, Vec<Group>) = groups.into_iter().partition(|g| g.op == op);
        groups = rest;
        let mut of_op = of_op.into_iter().peekable();
        while of_op.peek().is_some() {
            chunks.push((op, of_op.by_ref().take(size).collect()));
        }
    }
    let width = client.concurrency().max(1) * 2;
    // One writer at a time: SQLite refuses (rather than waits for) a transaction that read
    // before another writer committed, and the chunks' writes are short anyway.
    let writer = Arc::new(Mutex::new(()));
    // Each chunk is its own task: encoding a thousand items and decoding their answers is CPU
    // work, and in one task it delayed the next request whenever a slot came free. Dropping
    // the set (a stopped run) aborts the chunks, as dropping their futures did.
    let mut tasks = JoinSet::new();
    let mut chunks = chunks.into_iter();
    let mut results: Vec<Result<Sent, SyncError>> = Vec::new();
    loop {
        while tasks.len() < width {
            let Some((op, chunk)) = chunks.next() else {
                break;
            };
            let (db, client, writer) = (db.clone(), client.clone(), writer.clone());
            tasks.spawn(
                async move { send_chunk(&db, &client, &writer, op, chunk, limits).await }
                    .in_current_span(),
            );
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        results.push(joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    let mut total = Sent::default();
    for result in results {
        let sent = result?;
        total.stats += sent.stats;
        total.blocked.extend(sent.blocked);
        total.full_lookup.extend(sent.full_lookup);
        total.auth = total.auth.or(sent.auth);
    }
    Ok(total)
}

async fn send_chunk(
    db: &Db,
    client: &ApiClient,
    writer: &Mutex<()>,
    op: Op,
    chunk: Vec<Group>,
    limits: Limits,
) -> Result<Sent, SyncError> {
    let ids: Vec<i64> = chunk.iter().flat_map(|g| g.rows().map(|m| m.id)).collect();
    let first_sends: Vec<i64> = chunk
        .iter()
        .filter(|g| g.first_send)
        .map(|g| g.survivor.id)
        .collect();
    let started = std::time::Instant::now();
    {
        let _writing = writer.lock().await;
        db.run(move |c| outbox::mark_in_flight(c, &ids, &first_sends, Ts::now()))
            .await?;
    }
    let marked = started.elapsed();
    let outcomes = match op {
        Op::Create => {
            let items = chunk.iter().map(|g| g.fields.clone()).collect();
            client.bulk_create(items).await
        }
        Op::Patch => {
            let items = chunk.iter().map(patch_item).collect();
            client.bulk_patch(items).await
        }
        Op::Unqueue => {
            let items = chunk.iter().filter_map(|g| g.job_id).collect();
            client.bulk_unqueue(items).await
        }
    };
    let answered = started.elapsed();
    let mut sent = Sent::default();
    let mut updates = Vec::new();
    let mut returned: Vec<Job> = Vec::new();
    for (group, outcome) in chunk.iter().zip(outcomes) {
        record_outcome(
            op,
            group,
            outcome,
            limits,
            &mut sent,
            &mut updates,
            &mut returned,
        );
    }
    // Converted before taking the writer lock, so the lock covers only the writes.
    let returned: Vec<JobContent> = returned.iter().map(JobContent::from_job).collect();
    let _writing = writer.lock().await;
    db.run(move |c| {
        transaction(c, |c| {
            jobs::upsert_contents(c, returned, ChangeSource::Push, Ts::now(), false)?;
            outbox::update_each(c, &updates)
        })
    })
    .await?;
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

fn patch_item(group: &Group) -> JobFields {
    let mut item = group.fields.clone();
    item.insert("id".into(), group.job_id.unwrap_or_default().into());
    item
}

fn record_outcome(
    op: Op,
    group: &Group,
    outcome: ItemOutcome,
    limits: Limits,
    sent: &mut Sent,
    updates: &mut Vec<(i64, RowUpdate)>,
    returned: &mut Vec<Job>,
) {
    let survivor = group.survivor.id;
    let now = Ts::now();
    match outcome {
        ItemOutcome::Ok { status, job } => {
            let settled = |status_text: &str, last_error: Option<String>| RowUpdate {
                status: Some(status_text.into()),
                last_error: Some(last_error),
                http_status: Some(Some(i32::from(status))),
                result_job_id: Some(Some(job.id)),
                ..RowUpdate::default()
            };
            updates.push((survivor, settled(DONE, None)));
            for m in &group.merged {
                let reason = format!("merged into outbox row {survivor}");
                updates.push((m.id, settled(SUPERSEDED, Some(reason))));
            }
            sent.stats.ok += 1;
            sent.stats.superseded += group.merged.len() as i64;
            returned.push(job);
        }
        ItemOutcome::Rejected { status, message }
            if op == Op::Create && status == 400 && message.contains("reference") =>
        {
            // Perhaps the job exists already (created by an earlier send whose answer was lost,
            // or by someone else): look for it in the whole campaign before failing the row.
            let change = RowUpdate {
                last_error: Some(Some(message)),
                http_status: Some(Some(i32::from(status))),
                ..RowUpdate::default()
            };
            for m in group.rows() {
                updates.push((m.id, change.clone()));
            }
            sent.full_lookup.push(survivor);
        }
        ItemOutcome::Rejected { status, message } => {
            let message = match (status, group.job_id) {
                (404, Some(id)) => format!("job {id} does not exist upstream: {message}"),
                _ => message,
            };
            let failed = |last_error: String| RowUpdate {
                status: Some(FAILED.into()),
                last_error: Some(Some(last_error)),
                http_status: Some(Some(i32::from(status))),
                ..RowUpdate::default()
            };
            for m in &group.merged {
                let reason = format!("merged into outbox row {survivor}, which failed: {message}");
                updates.push((m.id, failed(reason)));
            }
            updates.push((survivor, failed(message)));
            sent.stats.failed += 1 + group.merged.len() as i64;
        }
        ItemOutcome::Retryable { error } if error.is_auth() => {
            // Nothing was applied; the rows wait, unchanged, for a usable token.
            let change = RowUpdate {
                status: Some(PENDING.into()),
                ..RowUpdate::default()
            };
            for m in group.rows() {
                updates.push((m.id, change.clone()));
            }
            sent.auth.get_or_insert(error);
        }
        ItemOutcome::Retryable { error } => {
            let attempts = group.survivor.attempts + 1;
            let give_up = attempts >= limits.max_row_attempts as i32;
            let wait = row_backoff(attempts, error.retry_after(), limits.tuning);
            for m in group.rows() {
                let change = if give_up {
                    RowUpdate {
                        status: Some(FAILED.into()),
                        attempts: Some(m.attempts + 1),
                        last_error: Some(Some(format!(
                            "gave up after {attempts} cycles with a retryable failure (re-queue \
                             with `jobsync outbox retry --id {}`): {error}",
                            m.id
                        ))),
                        http_status: Some(error.status().map(i32::from)),
                        ..RowUpdate::default()
                    }
                } else {
                    RowUpdate {
                        status: Some(PENDING.into()),
                        attempts: Some(m.attempts + 1),
                        last_error: Some(Some(error.to_string())),
                        http_status: Some(error.status().map(i32::from)),
                        next_attempt_at: Some(Ts::from(now.as_utc() + wait)),
                        ..RowUpdate::default()
                    }
                };
                updates.push((m.id, change));
                sent.blocked.push(m.id);
            }
            let rows = 1 + group.merged.len() as i64;
            if give_up {
                sent.stats.failed += rows;
            } else {
                sent.stats.deferred += rows;
            }
        }
        ItemOutcome::Unknown { error } => {
            // The rows stay in flight; the next round looks the job up before any re-send.
            for m in group.rows() {
                let change = RowUpdate {
                    attempts: Some(m.attempts + 1),
                    last_error: Some(Some(format!(
                        "outcome unknown ({error}); the job is looked up by reference before \
                         any re-send"
                    ))),
                    http_status: Some(error.status().map(i32::from)),
                    ..RowUpdate::default()
                };
                updates.push((m.id, change));
            }
        }
    }
}

/// The wait before a row's next cycle: exponential in its attempts, with jitter (half to all of
/// the delay, so rows that failed together do not all come back together), never shorter than
/// what the server asked for with `Retry-After` (itself capped).
fn row_backoff(
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
