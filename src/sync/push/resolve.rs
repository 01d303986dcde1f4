//! Creates whose outcome is unknown (a timeout, a dropped connection, a crash while in flight, a
//! duplicate-reference refusal) are never blindly sent again: the job is first looked for by
//! campaign + reference — in the mirror, then with `GET /j/jobs?campaign=N&modified_since=T`, T
//! just before the create was first sent (the API cannot filter by reference).
//!
//! Found: the job goes into the mirror and the row back to `pending`, where the planner turns a
//! create of a known job into a patch of whatever still differs (often nothing). Not found: the
//! create was never applied, and the row goes back to `pending` to be sent again.

use super::RunState;
use super::plan::{RefKey, intent_of};
use super::validate::Target;
use crate::api::models::Job;
use crate::api::{ApiClient, ApiError, ListQuery};
use crate::db::models::{ChangeSource, OpenRow};
use crate::db::repo::outbox::{self, FAILED, IN_FLIGHT, PENDING, RowUpdate};
use crate::db::repo::{jobs, transaction};
use crate::db::{Db, Ts};
use crate::sync::SyncError;
use chrono::{DateTime, Duration, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};

/// How far before the first send the lookup reaches: covers clock skew between us and the API.
const LOOKUP_MARGIN: Duration = Duration::minutes(15);
/// `modified_since` must lie within the past 48 hours; older lookups list the whole campaign.
const API_WINDOW: Duration = Duration::hours(46);

/// One create to resolve.
struct Pending<'a> {
    row: &'a OpenRow,
    key: RefKey,
}

/// Resolves every in-flight create not blocked in this run. Returns whether any row changed.
pub async fn resolve_in_flight_creates(
    db: &Db,
    client: &ApiClient,
    rows: &[OpenRow],
    st: &mut RunState,
    max_row_attempts: u32,
) -> Result<bool, SyncError> {
    let mut never_sent = Vec::new();
    let mut unknown = Vec::new();
    for row in rows {
        if row.status != IN_FLIGHT || row.op != "create" || st.blocked.contains(&row.id) {
            continue;
        }
        match intent_of(row).map(|i| i.target) {
            Ok(Target::Ref {
                campaign,
                reference,
            }) if row.first_sent_at.is_some() => unknown.push(Pending {
                row,
                key: (campaign, reference),
            }),
            // Never sent (or invalid, which the planner fails): nothing to look up.
            _ => never_sent.push(row.id),
        }
    }
    if never_sent.is_empty() && unknown.is_empty() {
        return Ok(false);
    }
    let keys: Vec<RefKey> = unknown.iter().map(|p| p.key.clone()).collect();
    let in_mirror = db.run(move |c| jobs::find_by_references(c, &keys)).await?;
    let mut back_to_pending = never_sent;
    let mut to_look_up: BTreeMap<i64, Vec<&Pending>> = BTreeMap::new();
    for p in &unknown {
        if in_mirror.contains_key(&p.key) {
            back_to_pending.push(p.row.id);
        } else {
            to_look_up.entry(p.key.0).or_default().push(p);
        }
    }
    let mut found: Vec<Job> = Vec::new();
    let mut failed: Vec<(i64, Option<String>)> = Vec::new();
    for (campaign, wanted) in to_look_up {
        let whole = wanted.iter().any(|p| st.full_lookup.contains(&p.row.id));
        let jobs = match look_up(client, campaign, &wanted, whole).await {
            Ok(jobs) => jobs,
            Err(e) if e.is_auth() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(campaign, rows = wanted.len(), error = %e,
                    "could not look up creates whose outcome is unknown; they wait for the next cycle");
                for p in &wanted {
                    st.blocked.insert(p.row.id);
                }
                st.stats.deferred += wanted.len() as i64;
                continue;
            }
        };
        for p in wanted {
            if let Some(job) = jobs.get(&p.key.1) {
                tracing::info!(
                    outbox_id = p.row.id,
                    job_id = job.id,
                    campaign,
                    "a create whose outcome was unknown had been applied: linking it"
                );
                found.push(job.clone());
                back_to_pending.push(p.row.id);
            } else if st.full_lookup.contains(&p.row.id) {
                // The API refused it (a 400 naming the reference), and no such job exists: the
                // refusal stands, with its message already in `last_error`.
                failed.push((p.row.id, None));
            } else if p.row.attempts >= max_row_attempts as i32 {
                let reason = format!(
                    "gave up after {} attempts whose outcome was unknown; the job was not found \
                     upstream, so it was never created (re-queue with `jobsync outbox retry --id \
                     {}`); last error: {}",
                    p.row.attempts,
                    p.row.id,
                    p.row.last_error.as_deref().unwrap_or("none")
                );
                failed.push((p.row.id, Some(reason)));
            } else {
                back_to_pending.push(p.row.id);
            }
        }
    }
    st.stats.failed += failed.len() as i64;
    for (id, _) in &failed {
        st.full_lookup.remove(id);
    }
    db.run(move |c| {
        let now = Ts::now();
        transaction(c, |c| {
            jobs::upsert(c, &found, ChangeSource::Push, now, false)?;
            let pending = RowUpdate {
                status: Some(PENDING.into()),
                next_attempt_at: Some(now),
                ..RowUpdate::default()
            };
            outbox::update(c, &back_to_pending, &pending)?;
            for (id, reason) in failed {
                let change = RowUpdate {
                    status: Some(FAILED.into()),
                    last_error: reason.map(Some),
                    ..RowUpdate::default()
                };
                outbox::update(c, &[id], &change)?;
            }
            Ok(())
        })
    })
    .await?;
    Ok(true)
}

/// The jobs of `campaign` with the wanted references, by reference. Reads the campaign from just
/// before the earliest first send, or whole when that is too old for the API (or `whole`).
async fn look_up(
    client: &ApiClient,
    campaign: i64,
    wanted: &[&Pending<'_>],
    whole: bool,
) -> Result<HashMap<String, Job>, ApiError> {
    let references: HashSet<&str> = wanted.iter().map(|p| p.key.1.as_str()).collect();
    let earliest = wanted
        .iter()
        .filter_map(|p| p.row.first_sent_at)
        .min()
        .map(|t| t.as_utc() - LOOKUP_MARGIN);
    let since = earliest.filter(|t| !whole && Utc::now() - *t < API_WINDOW);
    let mut listing = match client.list_jobs(query(campaign, since)).await {
        // The API refused the window (its clock differs from ours): list the whole campaign.
        Err(ApiError::Http { status: 400, .. }) if since.is_some() => {
            client.list_jobs(query(campaign, None)).await?
        }
        other => other?,
    };
    let mut found = HashMap::new();
    while let Some(batch) = listing.next_batch(1000).await? {
        for job in batch {
            if let Some(reference) = job.reference.as_deref()
                && references.contains(reference)
            {
                found.insert(reference.to_owned(), job);
            }
        }
    }
    Ok(found)
}

fn query(campaign: i64, since: Option<DateTime<Utc>>) -> ListQuery {
    ListQuery {
        campaign: Some(campaign),
        modified_since: since,
    }
}
