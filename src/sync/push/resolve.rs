//! Creates in doubt — sent, with no definitive answer (a timeout, a dropped connection, any 5xx,
//! an answer that did not match what was sent, a crash while in flight, or a 400 on a create
//! sent before) — are never sent again blindly: the job is first looked for upstream, by the
//! campaign and reference actually sent (`outbox.sent_payload`, else the row's own).
//!
//! The API cannot filter by reference, so the lookup reads
//! `GET /j/jobs?campaign=N&modified_since=T`, with T the API's own clock at the first send
//! (`first_sent_at`) minus [`LOOKUP_MARGIN`]; beyond the API's 48-hour window, or when the API
//! refuses T, the whole campaign is listed. A lookup waits until the row's `next_attempt_at`,
//! which the send set to `api.timeout_secs` plus a margin after the request left, so that a slow
//! commit has landed first. Nothing here depends on the wording of an API error.
//!
//! - Found: the job goes into the mirror; the row is `done` (its merged rows `superseded`), or,
//!   when the job lacks some of the fields sent, linked to it and `pending`, so that the planner
//!   sends those fields as a patch.
//! - Absent: the create was never applied and goes back to `pending` — unless the API refused it
//!   (a 400 after an earlier send), in which case the refusal stands and the row fails. Absence is
//!   established only by a lookup at least `push.settle_secs` after the first send (on the API's
//!   clock): an earlier lookup that finds nothing keeps the row in doubt until then, so that a
//!   commit slower than the lookup delay is found rather than duplicated by a re-send on an API
//!   without a uniqueness check.
//! - The lookup failed: it backs off like any request and counts toward
//!   `push.max_row_attempts`, then the row fails with the reason (still in doubt, so that an
//!   `outbox retry` looks it up again). A row is never left in flight for good.

use super::plan::{fields_that_differ, intent_of};
use super::send::{Limits, row_backoff};
use super::{PushMemory, PushTuning};
use crate::api::models::JobFields;
use crate::api::{ApiClient, ApiError, ListQuery};
use crate::db::models::{ChangeSource, JobContent, MirrorRow, OpenRow};
use crate::db::repo::jobs;
use crate::db::repo::outbox::{self, RowUpdate};
use crate::db::repo::runs::{self, RunCounts};
use crate::db::{Db, Ts};
use crate::job::Job;
use crate::sync::SyncError;
use chrono::{DateTime, Duration, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};

/// How far before the first send (on the API's clock) a lookup reaches: the `Date` header has
/// whole seconds, and the API may stamp a job's modification a little before its answer.
pub const LOOKUP_MARGIN: Duration = Duration::minutes(5);
/// `modified_since` must lie within the past 48 hours; older lookups list the whole campaign.
const API_WINDOW: Duration = Duration::hours(46);

/// One create to look up.
struct InDoubt<'a> {
    row: &'a OpenRow,
    /// The body as sent: its campaign and reference are what to look for.
    sent: JobFields,
    campaign: i64,
    reference: String,
}

/// What a lookup decided for one row.
enum Verdict {
    Done {
        job: Job,
    },
    Linked {
        job: Job,
    },
    /// Not found, too soon after the first send to be sure: looked up again at `at`.
    AbsentSoFar {
        at: Ts,
    },
    Absent,
    Refused,
    LookupFailed {
        error: String,
    },
}

/// Looks up every create of `rows` in doubt whose time has come and that this run has not
/// touched. Returns whether any row changed.
pub async fn resolve_in_doubt(
    db: &Db,
    client: &ApiClient,
    rows: &[OpenRow],
    st: &mut PushMemory,
    limits: Limits,
) -> Result<bool, SyncError> {
    let Limits {
        max_row_attempts,
        tuning,
        settle,
    } = limits;
    let now = Ts::now();
    let mut by_campaign: BTreeMap<i64, Vec<InDoubt>> = BTreeMap::new();
    let mut verdicts: Vec<(&OpenRow, Verdict)> = Vec::new();
    for row in rows {
        if !row.in_doubt || row.next_attempt_at > now || st.blocked.contains(&row.id) {
            continue;
        }
        match in_doubt(row) {
            Some(create) => by_campaign.entry(create.campaign).or_default().push(create),
            // Sent (by an earlier version) without the campaign and reference a lookup needs:
            // it backs off like a failed lookup and fails after `push.max_row_attempts`, so that
            // it is never left in flight for good. (An invalid row is failed by the planner.)
            None if intent_of(row).is_ok() => verdicts.push((
                row,
                Verdict::LookupFailed {
                    error: "the create was sent without the campaign and reference it could be \
                            looked up by"
                        .into(),
                },
            )),
            None => {}
        }
    }
    if by_campaign.is_empty() && verdicts.is_empty() {
        return Ok(false);
    }
    // Only a guard: without it the API itself refuses a window too old (400), and the lookup
    // then lists the whole campaign.
    let server_now = client.server_now();
    for (campaign, wanted) in by_campaign {
        // The mirror first: the cycle's pull (or this run's lookup listing of the campaign) has
        // read every job created upstream since, so a mass of creates in doubt is mostly settled
        // here, without a listing.
        let keys: Vec<(i64, String)> = wanted
            .iter()
            .map(|c| (campaign, c.reference.clone()))
            .collect();
        let mirror = db.run(move |c| jobs::find_by_references(c, &keys)).await?;
        let mut unresolved = Vec::new();
        for create in wanted {
            let key = (campaign, create.reference.clone());
            match mirror.unique.get(&key) {
                Some(row) => {
                    let verdict = found_verdict(&create, row.to_job());
                    verdicts.push((create.row, verdict));
                }
                None => unresolved.push(create),
            }
        }
        if unresolved.is_empty() {
            continue;
        }
        // What this run's listing of the campaign returned is in the mirror: rows it covers and
        // the mirror does not hold are absent, without another listing. A reference several
        // mirror jobs share is decided by a listing (the oldest job stands for it).
        let covered = st.listed.get(&campaign).is_some_and(|listed| {
            unresolved.iter().all(|c| {
                listed.covers(c.row)
                    && !mirror
                        .ambiguous
                        .contains_key(&(campaign, c.reference.clone()))
            })
        });
        let found = if covered {
            Ok((HashMap::new(), None))
        } else {
            look_up(db, client, campaign, &unresolved, server_now).await
        };
        match found {
            Ok((found, listed)) => {
                if let Some(listed) = listed {
                    st.listed.insert(campaign, listed);
                }
                for create in unresolved {
                    let verdict = match found.get(&create.reference) {
                        Some(job) => found_verdict(&create, job.clone()),
                        None if st.refused.contains(&create.row.id) => Verdict::Refused,
                        None => match settles_at(create.row, settle, server_now) {
                            Some(at) => Verdict::AbsentSoFar { at },
                            None => Verdict::Absent,
                        },
                    };
                    verdicts.push((create.row, verdict));
                }
            }
            Err(LookupError::Api(e)) if e.is_auth() => return Err(e.into()),
            Err(LookupError::Db(e)) => return Err(e.into()),
            Err(LookupError::Api(e)) => {
                tracing::warn!(campaign, rows = unresolved.len(), error = %e,
                    "could not look up creates in doubt; they wait and are looked up again");
                for create in unresolved {
                    verdicts.push((
                        create.row,
                        Verdict::LookupFailed {
                            error: e.to_string(),
                        },
                    ));
                }
            }
        }
    }
    record(db, verdicts, st, max_row_attempts, tuning).await?;
    Ok(true)
}

/// When absence can be established for a create in doubt that a lookup did not find: its first
/// send plus `settle` on the API's clock, as a local time; `None` when that has passed.
fn settles_at(
    row: &OpenRow,
    settle: std::time::Duration,
    server_now: Option<DateTime<Utc>>,
) -> Option<Ts> {
    let settle = Duration::from_std(settle).unwrap_or(Duration::days(1));
    let elapsed = match row.first_sent_at {
        Some(first) => server_now.unwrap_or_else(Utc::now) - first.as_utc(),
        None => Duration::zero(),
    };
    (elapsed < settle).then(|| Ts::from(Utc::now() + (settle - elapsed)))
}

/// The create a row in doubt sent, or `None` for a row the planner fails (invalid).
fn in_doubt(row: &OpenRow) -> Option<InDoubt<'_>> {
    let sent = intent_of(row).ok()?.fields;
    let campaign = sent.get("campaign")?.as_i64()?;
    let reference = sent.get("reference")?.as_str()?.to_owned();
    Some(InDoubt {
        row,
        sent,
        campaign,
        reference,
    })
}

fn found_verdict(create: &InDoubt, job: Job) -> Verdict {
    let mut sent = create.sent.clone();
    sent.remove("campaign");
    let stored = MirrorRow {
        content: JobContent::from_job(&job),
        first_seen_at: Ts::now(),
        last_seen_at: Ts::now(),
        remote_deleted_at: None,
    };
    if fields_that_differ(sent, &stored).is_empty() {
        Verdict::Done { job }
    } else {
        Verdict::Linked { job }
    }
}

/// Writes every verdict, the jobs found and the rows merged into the settled creates, in one
/// transaction.
async fn record(
    db: &Db,
    verdicts: Vec<(&OpenRow, Verdict)>,
    st: &mut PushMemory,
    max_row_attempts: u32,
    tuning: PushTuning,
) -> Result<(), SyncError> {
    let now = Ts::now();
    let mut found: Vec<Job> = Vec::new();
    let mut updates: Vec<(i64, RowUpdate)> = Vec::new();
    // Survivors whose merged rows follow them: (survivor, how, job).
    let mut followers: Vec<(i64, Follow)> = Vec::new();
    let before = st.stats;
    for (row, verdict) in verdicts {
        let id = row.id;
        match verdict {
            Verdict::Done { job } => {
                tracing::info!(
                    outbox_id = id,
                    job_id = job.id,
                    "a create in doubt had been applied: linked to its job"
                );
                updates.push((id, RowUpdate::done(None, job.id)));
                followers.push((id, Follow::Superseded(Some(job.id))));
                found.push(job);
                st.stats.ok += 1;
            }
            Verdict::Linked { job } => {
                tracing::info!(
                    outbox_id = id,
                    job_id = job.id,
                    "a create in doubt had been applied; sending the fields it lacks"
                );
                updates.push((id, RowUpdate::linked(job.id, now)));
                followers.push((id, Follow::Superseded(Some(job.id))));
                found.push(job);
            }
            Verdict::AbsentSoFar { at } => {
                let reason = format!(
                    "in doubt: not found upstream yet; looked up again at {at} (push.settle_secs \
                     after its first send) before any re-send, in case its commit is slow"
                );
                updates.push((id, RowUpdate::absent_so_far(reason, at)));
                st.blocked.insert(id);
                st.stats.deferred += 1;
            }
            Verdict::Absent => {
                updates.push((id, RowUpdate::absent(now)));
                followers.push((id, Follow::Absent));
            }
            Verdict::Refused => {
                st.refused.remove(&id);
                let reason = format!(
                    "{} (the job was looked up after the refusal and does not exist)",
                    row.last_error.as_deref().unwrap_or("refused by the API")
                );
                updates.push((id, RowUpdate::failed(reason, None)));
                followers.push((id, Follow::Failed));
                st.stats.failed += 1;
            }
            Verdict::LookupFailed { error } => {
                st.blocked.insert(id);
                let attempts = row.attempts + 1;
                if attempts >= max_row_attempts as i32 {
                    let reason = format!(
                        "gave up after {attempts} attempts: the create's outcome is unknown and \
                         the lookup for it failed ({error}); it may exist upstream — `jobsync \
                         outbox retry --id {id}` looks it up again before any re-send"
                    );
                    updates.push((id, RowUpdate::failed(reason, None).counting(attempts)));
                    followers.push((id, Follow::Failed));
                    st.stats.failed += 1;
                } else {
                    let at = Ts::from(now.as_utc() + row_backoff(attempts, None, tuning));
                    let reason = format!(
                        "in doubt: the create may have been applied, and looking it up failed \
                         ({error}); looked up again before any re-send"
                    );
                    updates.push((id, RowUpdate::lookup_failed(reason, attempts, at)));
                    st.stats.deferred += 1;
                }
            }
        }
    }
    let survivors: Vec<i64> = followers.iter().map(|(id, _)| *id).collect();
    let follow: HashMap<i64, Follow> = followers.into_iter().collect();
    let counts = RunCounts {
        pushed_ok: st.stats.ok - before.ok,
        pushed_failed: st.stats.failed - before.failed,
        ..RunCounts::default()
    };
    // One lock order for every push transaction on PostgreSQL: the outbox, then the mirror and
    // the changefeed (whose append takes the changefeed's lock until the commit), then the run's
    // counts. Taken the other way round here, a lookup and a chunk's commit deadlocked.
    db.write(move |c| {
        for (row, survivor) in outbox::merged_into(c, &survivors)? {
            let change = match follow[&survivor] {
                Follow::Superseded(job) => RowUpdate::superseded_by(survivor, None, job),
                Follow::Absent => RowUpdate::absent(now),
                Follow::Failed => RowUpdate::failed(
                    format!("merged into outbox row {survivor}, which failed"),
                    None,
                ),
            };
            updates.push((row, change));
        }
        outbox::update_each(c, &updates)?;
        let contents: Vec<JobContent> = found.iter().map(JobContent::from_job).collect();
        jobs::upsert_contents(c, contents, ChangeSource::Push, now, false)?;
        runs::count_into_current(c, counts)
    })
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Follow {
    Superseded(Option<i64>),
    Absent,
    Failed,
}

/// A lookup listing of one campaign made in this push: from `since` (`None`: the whole
/// campaign), begun at `began`. Every job it returned went into the mirror.
#[derive(Debug, Clone, Copy)]
pub struct Listed {
    since: Option<DateTime<Utc>>,
    began: Ts,
}

impl Listed {
    /// Whether the listing settles `row` by itself: it began once the row's commit could have
    /// landed (its lookup was due) and reached back to the row's first send.
    fn covers(&self, row: &OpenRow) -> bool {
        let reaches = match (self.since, row.first_sent_at) {
            (None, _) => true,
            (Some(since), Some(first)) => first.as_utc() - LOOKUP_MARGIN >= since,
            (Some(_), None) => false,
        };
        reaches && self.began >= row.next_attempt_at
    }
}

/// Why a lookup listing could not settle its rows.
enum LookupError {
    Api(ApiError),
    Db(crate::db::DbError),
}

/// The jobs of `campaign` with the wanted references, by reference (the oldest job when the API
/// holds several), and the listing made. Reads the campaign from just before the earliest first
/// send on the API's clock, or whole when that is too old for the API or unknown. Every job the
/// listing returns goes into the mirror as the pull would store it, so that the rows of later
/// windows are settled from the mirror rather than by another listing: one listing per
/// campaign and push, not one per window (a mass of creates in doubt read the same jobs again
/// window after window).
async fn look_up(
    db: &Db,
    client: &ApiClient,
    campaign: i64,
    wanted: &[InDoubt<'_>],
    server_now: Option<DateTime<Utc>>,
) -> Result<(HashMap<String, Job>, Option<Listed>), LookupError> {
    let references: HashSet<&str> = wanted.iter().map(|c| c.reference.as_str()).collect();
    let earliest = wanted
        .iter()
        .map(|c| c.row.first_sent_at.map(|t| t.as_utc() - LOOKUP_MARGIN))
        .min()
        .flatten();
    let mut since = earliest.filter(|since| server_now.is_none_or(|now| now - *since < API_WINDOW));
    let began = Ts::now();
    let mut listing = match client.list_jobs(query(campaign, since)).await {
        // The API refused the window: list the whole campaign.
        Err(ApiError::Http { status: 400, .. }) if since.is_some() => {
            since = None;
            client.list_jobs(query(campaign, None)).await
        }
        other => other,
    }
    .map_err(LookupError::Api)?;
    let mut found: HashMap<String, Job> = HashMap::new();
    while let Some(batch) = listing.next_batch(1000).await.map_err(LookupError::Api)? {
        let mut contents = Vec::with_capacity(batch.len());
        for job in batch {
            let job = job.truncated_to_micros();
            contents.push(JobContent::from_job(&job));
            if let Some(reference) = job.reference.as_deref()
                && references.contains(reference)
            {
                let keep = found.get(reference).is_none_or(|seen| seen.id > job.id);
                if keep {
                    found.insert(reference.to_owned(), job);
                }
            }
        }
        db.write(move |c| {
            jobs::upsert_contents(c, contents, ChangeSource::Pull, Ts::now(), false).map(|_| ())
        })
        .await
        .map_err(LookupError::Db)?;
    }
    Ok((found, Some(Listed { since, began })))
}

fn query(campaign: i64, since: Option<DateTime<Utc>>) -> ListQuery {
    ListQuery {
        campaign: Some(campaign),
        modified_since: since,
    }
}
