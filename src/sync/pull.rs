//! Pull: brings every job change of the API into the mirror.
//!
//! A pull lists in full the tracked campaigns that need it (never listed, listed longer ago than
//! `sync.full_resync_after_hours`, or not covered by the incremental window), then runs the
//! incremental listing (`modified_since` = watermark − overlap, or the widest window the API
//! accepts when there is no usable watermark), which also discovers campaigns not tracked yet;
//! those are listed in full in the same pull. If the API refuses `modified_since`, every tracked
//! campaign is listed instead. The new watermark is the server's clock when the pull's first
//! request left, saved only after every row of the pull is committed. A campaign's absent jobs
//! are marked deleted only after a complete, error-free listing of it; each completed listing is
//! a checkpoint, so a killed backfill resumes where it stopped.

use super::SyncError;
use crate::api::{ApiClient, ApiError, ListQuery};
use crate::config::SyncConfig;
use crate::db::lock::check_fence;
use crate::db::models::{ChangeSource, JobContent};
use crate::db::repo::runs::{self, RunCounts};
use crate::db::repo::{jobs, quarantine, state, transaction, with_relaxed_durability};
use crate::db::{Db, Ts};
use crate::shutdown::StopFlag;
use crate::telemetry::Heartbeat;
use crate::telemetry::progress::{LogProgress, ProgressSink, Tracker, Work};
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeSet;
use std::time::Instant;
use tokio::sync::mpsc;

/// The API accepts `modified_since` only within the past 48 hours; stay this far inside it, so
/// clock skew between us and the server does not push a request over the edge.
const API_WINDOW: Duration = Duration::hours(48);
const WINDOW_MARGIN: Duration = Duration::hours(2);
/// Without a `Date` header, the local clock minus this stands in for the server's.
const CLOCK_SKEW_MARGIN: Duration = Duration::seconds(60);
/// A campaign whose listing the API refused is tried again after this long (on the API's clock).
const REFUSED_RETRY_AFTER: Duration = Duration::hours(1);
/// Jobs per database transaction while streaming a listing.
pub const BATCH_SIZE: usize = 2000;

/// What one pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullStats {
    /// Whether any campaign was listed in full.
    pub full: bool,
    /// Jobs received and stored or compared with the mirror; not those an incremental pass
    /// reads for campaigns the same pull listed in full (it skips them).
    pub jobs_pulled: i64,
    /// Rows appended to the changefeed (created, updated, deleted).
    pub jobs_changed: i64,
    pub marked_deleted: i64,
    pub campaigns_listed: Vec<i64>,
    /// The API refused `modified_since`, and full listings were used instead.
    pub incremental_refused: bool,
    /// Campaigns whose listing the API refused in this pull (404, 403, 400, …): set aside.
    pub campaigns_refused: Vec<i64>,
    /// Jobs that could not be decoded, set aside in `quarantine`.
    pub quarantined: i64,
    /// Of those, items whose id could not be read: the listing cannot say what it lacked.
    pub unreadable: i64,
}

/// One pull: the API's changes into the mirror. Built from the engine's parts
/// (`Engine::pull`, or [`Pull::new`]); its progress goes to the log unless [`Pull::progress`]
/// names another sink.
pub struct Pull<'a> {
    db: &'a Db,
    client: &'a ApiClient,
    config: &'a SyncConfig,
    stop: &'a StopFlag,
    progress: &'a dyn ProgressSink,
}

impl<'a> Pull<'a> {
    pub fn new(
        db: &'a Db,
        client: &'a ApiClient,
        config: &'a SyncConfig,
        stop: &'a StopFlag,
    ) -> Self {
        Pull {
            db,
            client,
            config,
            stop,
            progress: &LogProgress,
        }
    }

    /// Where each listing reports its progress (a terminal bar, say).
    pub fn progress(self, progress: &'a dyn ProgressSink) -> Self {
        Pull { progress, ..self }
    }

    /// Runs the pull, counting into `stats` as batches commit: when the pull fails or is
    /// stopped, `stats` holds what it committed. Each batch also adds its counts to the run in
    /// progress in `sync_runs`, in the batch's own transaction.
    pub async fn run(&self, stats: &mut PullStats) -> Result<(), SyncError> {
        pull(
            self.db,
            self.client,
            self.config,
            self.stop,
            self.progress,
            stats,
        )
        .await
    }
}

#[tracing::instrument(name = "pull", skip_all)]
async fn pull(
    db: &Db,
    client: &ApiClient,
    config: &SyncConfig,
    stop: &StopFlag,
    progress: &dyn ProgressSink,
    stats: &mut PullStats,
) -> Result<(), SyncError> {
    let configured = config.campaigns.clone();
    let (old_watermark, last_pull_ok, tracked, refused, held, resync_asked) = db
        .run(move |c| {
            state::track_campaigns(c, &configured)?;
            // `jobsync resync`: the campaigns it names are tracked from now on.
            let resync_asked = state::resync_request(c)?;
            if let Some(named) = resync_asked.as_ref().and_then(|(r, _)| r.campaigns.clone()) {
                state::track_campaigns(c, &named)?;
            }
            Ok((
                state::get_time(c, state::WATERMARK)?,
                state::get_time(c, state::LAST_PULL_OK)?,
                state::tracked_campaigns(c)?,
                state::refused_campaigns(c)?,
                state::held_deletes(c)?,
                resync_asked,
            ))
        })
        .await?;
    // Campaigns a pending `jobsync resync` asked to list in full (every tracked one when it
    // named none): due now, whenever they were last listed.
    let resync: BTreeSet<i64> = match &resync_asked {
        Some((request, _)) => match &request.campaigns {
            Some(named) => named.iter().copied().collect(),
            None => tracked.iter().map(|t| t.0).collect(),
        },
        None => BTreeSet::new(),
    };
    // Campaigns whose last listing's deletes the guard held: listed again now, and their deletes
    // applied if this listing agrees.
    let guard = Guard {
        ratio: config.mass_delete_ratio,
        held: held.iter().map(|h| h.campaign).collect(),
    };
    // Every time that decides a schedule is the API's: the watermark, the listings' stamps,
    // deletions, the last good pull. Our own clock may be off by hours. A `Date` far from both
    // our clock and the API's as last known is not believed (`api.max_date_skew_secs`).
    if let Some(at) = last_pull_ok {
        client.know_time(at);
    }
    let now = server_clock(client).await?;
    let overlap = Duration::seconds(config.overlap_secs as i64);
    let usable_watermark =
        old_watermark.filter(|w| now - (*w - overlap) < API_WINDOW - WINDOW_MARGIN);
    let since = match usable_watermark {
        Some(w) => w - overlap,
        None => now - (API_WINDOW - WINDOW_MARGIN),
    };

    // Campaigns whose listing the API refused within the hour are set aside: not listed (their
    // jobs still come with incremental pulls), tried again once the hour has passed.
    let set_aside: BTreeSet<i64> = refused
        .iter()
        .filter(|r| now - r.refused_at.as_utc() < REFUSED_RETRY_AFTER)
        .map(|r| r.campaign)
        .collect();
    let mut refusals: Vec<Refusal> = Vec::new();
    let resync_after = Duration::hours(config.full_resync_after_hours as i64);
    let needs_listing = |last_listed: Option<Ts>, incremental_ok: bool| match last_listed {
        None => true,
        Some(at) if now - at.as_utc() >= resync_after => true,
        Some(_) if !incremental_ok => true,
        Some(_) if usable_watermark.is_some() => false,
        // No usable watermark: the incremental window (from `since`) does not reach back to the
        // last good pull, so changes may have been missed. Re-list, except a campaign a pull
        // interrupted since then completed (a checkpoint of a resumed backfill) and that the
        // window still covers.
        Some(at) => at.as_utc() < since || last_pull_ok.is_some_and(|ok| at.as_utc() <= ok),
    };
    // A campaign is listed in full when due, or when its last listing's deletes are held (this
    // listing confirms them or not); never while it is set aside.
    let due = |campaign: i64, last: Option<Ts>, incremental_ok: bool| {
        !set_aside.contains(&campaign)
            && (guard.held.contains(&campaign)
                || resync.contains(&campaign)
                || needs_listing(last, incremental_ok))
    };
    // Listings of tracked campaigns go first: on a backfill, the incremental pull that follows
    // then finds those jobs already stored and unchanged, instead of inserting them only for the
    // listing to touch them again.
    let mut listed = BTreeSet::new();
    let mut pull_started: Option<DateTime<Utc>> = None;
    let first_round: Vec<i64> = tracked
        .iter()
        .filter(|(campaign, last)| due(*campaign, *last, true))
        .map(|(campaign, _)| *campaign)
        .collect();
    list_campaigns(
        db,
        client,
        &first_round,
        (stop, progress),
        stats,
        (&mut listed, &mut refusals),
        (&mut pull_started, &guard),
    )
    .await?;

    let incremental = pull_incremental(db, client, since, &listed, (stop, progress), stats).await?;
    pull_started = pull_started.or(incremental.server_time);
    let discovered: Vec<i64> = incremental.campaigns.into_iter().collect();
    let newly_tracked = discovered.clone();
    db.run(move |c| state::track_campaigns(c, &newly_tracked))
        .await?;

    let incremental_ok = !stats.incremental_refused;
    let known: BTreeSet<i64> = tracked.iter().map(|t| t.0).collect();
    let second_round: Vec<i64> = tracked
        .iter()
        .filter(|(campaign, last)| due(*campaign, *last, incremental_ok))
        .map(|(campaign, _)| *campaign)
        .chain(discovered.into_iter().filter(|c| !known.contains(c)))
        .filter(|c| !listed.contains(c) && !refusals.iter().any(|r| r.campaign == *c))
        .collect();
    list_campaigns(
        db,
        client,
        &second_round,
        (stop, progress),
        stats,
        (&mut listed, &mut refusals),
        (&mut pull_started, &guard),
    )
    .await?;
    // Recorded once the rest of the pull went well: a wrong `api.base_url` or token also refuses
    // every campaign's listing, and must fail the run (the incremental listing says why), not
    // set the campaigns aside for an hour.
    record_refusals(db, &refusals, now).await?;
    stats.campaigns_refused = refusals.iter().map(|r| r.campaign).collect();

    // The watermark: the server's clock when the pull's first request left. Without a `Date` to
    // tell it (none sent, or none believed), a margin before the API's clock as known — never
    // behind the watermark already stored, which a good `Date` set.
    let watermark = pull_started.unwrap_or_else(|| {
        let guess = now - CLOCK_SKEW_MARGIN;
        old_watermark.map_or(guess, |w| w.max(guess))
    });
    let finished = client.server_now().unwrap_or_else(Utc::now);
    // The resync request is settled by the listings it asked for, or by the API refusing them
    // (set aside: `status` says so); what is left waits for the next cycle.
    let resync_left: Vec<i64> = resync
        .iter()
        .copied()
        .filter(|c| !listed.contains(c) && !set_aside.contains(c))
        .filter(|c| !refusals.iter().any(|r| r.campaign == *c))
        .collect();
    db.run(move |c| {
        state::set_time(c, state::WATERMARK, watermark)?;
        state::set_time(c, state::LAST_PULL_OK, finished)?;
        if let Some((_, read)) = &resync_asked {
            state::settle_resync(c, read, &resync_left)?;
        }
        Ok(())
    })
    .await?;
    tracing::info!(
        watermark = %Ts::from(watermark),
        pulled = stats.jobs_pulled,
        changed = stats.jobs_changed,
        full = stats.full,
        "pull finished"
    );
    Ok(())
}

/// The API's clock now: from its last answer's `Date`, or one cheap request when no answer came
/// yet. An API that sends no `Date` leaves only our own clock (with a warning).
async fn server_clock(client: &ApiClient) -> Result<DateTime<Utc>, SyncError> {
    match client.server_time().await {
        Ok(now) => Ok(now),
        Err(ApiError::InvalidAnswer { .. }) => {
            tracing::warn!(
                "the API sends no usable `Date` header: scheduling by the local clock, which may differ from the API's"
            );
            Ok(Utc::now())
        }
        Err(e) => Err(e.into()),
    }
}

/// The mass-delete guard (`sync.mass_delete_ratio`): a complete listing that would mark more
/// than `ratio` of a campaign's live jobs deleted is held until a second listing agrees; `held`
/// are the campaigns whose last listing was held (their next one is that second listing).
struct Guard {
    ratio: f64,
    held: BTreeSet<i64>,
}

/// A campaign's listing the API refused.
struct Refusal {
    campaign: i64,
    status: u16,
    message: String,
}

/// The API's answer to a campaign's listing that says the campaign is not to be listed (gone,
/// archived, not visible to this token, not a valid campaign): the campaign is set aside. A 401
/// is the token's fault, and fails the run.
fn refusal(campaign: i64, e: &SyncError) -> Option<Refusal> {
    let (status, message) = match e {
        SyncError::Api(ApiError::Http {
            status: status @ (400 | 403 | 404 | 410 | 422),
            message,
            ..
        })
        | SyncError::Api(ApiError::Auth {
            status: status @ 403,
            message,
            ..
        }) => (*status, message.clone()),
        _ => return None,
    };
    Some(Refusal {
        campaign,
        status,
        message,
    })
}

async fn record_refusals(
    db: &Db,
    refusals: &[Refusal],
    now: DateTime<Utc>,
) -> Result<(), SyncError> {
    if refusals.is_empty() {
        return Ok(());
    }
    let rows: Vec<(i64, i32, String)> = refusals
        .iter()
        .map(|r| {
            let reason = format!(
                "the API refused the listing of campaign {} (HTTP {}: {}): set aside — not listed \
                 in full (its jobs still come with incremental pulls) and tried again after an \
                 hour; if the campaign is archived for good, take it out of sync.campaigns",
                r.campaign,
                r.status,
                crate::secret::scrub(&r.message)
            );
            tracing::warn!(campaign = r.campaign, status = r.status, %reason, "campaign set aside");
            (r.campaign, i32::from(r.status), reason)
        })
        .collect();
    db.write(move |c| {
        for (campaign, status, reason) in &rows {
            state::set_campaign_refused(c, *campaign, Ts::from(now), *status, reason)?;
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// Lists campaigns in full (two at a time on PostgreSQL), remembering which were listed and the
/// server's time at the first listing. A campaign whose listing the API refuses goes to
/// `refusals` and the others go on.
async fn list_campaigns(
    db: &Db,
    client: &ApiClient,
    campaigns: &[i64],
    (stop, progress): (&StopFlag, &dyn ProgressSink),
    stats: &mut PullStats,
    (listed, refusals): (&mut BTreeSet<i64>, &mut Vec<Refusal>),
    (pull_started, guard): (&mut Option<DateTime<Utc>>, &Guard),
) -> Result<(), SyncError> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    if campaigns.is_empty() {
        return Ok(());
    }
    if !stats.full {
        // The run is a full one from the moment a full listing starts, stopped or not.
        stats.full = true;
        db.run(runs::mark_current_full).await?;
    }
    // The changefeed's appends still take turns under its lock, whatever the width.
    let width = db.max_parallel_listings();
    let first_new = stats.campaigns_listed.len();
    let mut waiting = campaigns.iter().copied();
    let mut running = FuturesUnordered::new();
    let mut failure = None;
    loop {
        while failure.is_none() && running.len() < width && !stop.is_set() {
            let Some(campaign) = waiting.next() else {
                break;
            };
            running.push(async move {
                let mut own = PullStats {
                    full: true,
                    ..PullStats::default()
                };
                // The second listing of a held campaign applies its deletes if it agrees.
                let guard = (!guard.held.contains(&campaign)).then_some(guard.ratio);
                let result = pull_campaign_listing(
                    db,
                    client,
                    (campaign, guard),
                    (stop, progress),
                    &mut own,
                )
                .await;
                (campaign, result, own)
            });
        }
        let Some((campaign, result, own)) = running.next().await else {
            break;
        };
        // Counted whether the listing ended well or not: a stopped or failed pull reports what
        // it committed.
        stats.jobs_pulled += own.jobs_pulled;
        stats.jobs_changed += own.jobs_changed;
        stats.marked_deleted += own.marked_deleted;
        stats.campaigns_listed.extend(own.campaigns_listed);
        stats.quarantined += own.quarantined;
        stats.unreadable += own.unreadable;
        match result {
            Ok(server_time) => {
                *pull_started = Some(pull_started.map_or(server_time, |t| t.min(server_time)));
                listed.insert(campaign);
            }
            Err(e) => match refusal(campaign, &e) {
                Some(refused) => refusals.push(refused),
                None => {
                    failure.get_or_insert(e);
                }
            },
        }
    }
    let order = |c: &i64| campaigns.iter().position(|x| x == c);
    stats.campaigns_listed[first_new..].sort_by_key(order);
    if let Some(e) = failure {
        return Err(e);
    }
    if waiting.next().is_some() {
        return Err(SyncError::Stopped);
    }
    Ok(())
}

/// One decoded batch of a listing.
struct Decoded {
    received: usize,
    campaigns: BTreeSet<i64>,
    /// The batch in stored form, less the jobs of skipped campaigns.
    store: Vec<JobContent>,
    /// Items of the batch that could not be decoded.
    quarantined: Vec<crate::api::Quarantined>,
}

struct IncrementalResult {
    /// The server's clock when the pull started, if it told us.
    server_time: Option<DateTime<Utc>>,
    /// Campaigns seen in the answer that are not tracked yet.
    campaigns: BTreeSet<i64>,
}

#[tracing::instrument(name = "listing", skip_all, fields(kind = "changes"))]
async fn pull_incremental(
    db: &Db,
    client: &ApiClient,
    since: DateTime<Utc>,
    listed: &BTreeSet<i64>,
    (stop, progress): (&StopFlag, &dyn ProgressSink),
    stats: &mut PullStats,
) -> Result<IncrementalResult, SyncError> {
    let query = ListQuery {
        campaign: None,
        modified_since: Some(since),
    };
    let started = Instant::now();
    let mut listing = match client.list_jobs(query).await {
        Ok(listing) => listing,
        Err(ApiError::Http { status: 400, .. }) => {
            // The API refused the window (clock skew, a watermark older than it allows): full
            // listings below take over; this is not a failed run.
            tracing::warn!(since = %Ts::from(since), "the API refused modified_since; falling back to full listings");
            stats.incremental_refused = true;
            return Ok(IncrementalResult {
                server_time: None,
                campaigns: BTreeSet::new(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let server_time = start_of_pull(listing.server_date, started);
    let progress = Tracker::start(progress, Work::ChangesSinceWatermark);
    // Jobs of campaigns listed in full earlier in this pull are already stored as of a moment
    // after the new watermark; a change made since comes back in the next pull (which reaches
    // back to that watermark), so they are not written twice.
    listing.skip_campaigns(listed.clone());
    let seen = store_listing(
        db,
        listing,
        false,
        (stop, client.heartbeat()),
        stats,
        progress,
    )
    .await?;
    Ok(IncrementalResult {
        server_time,
        campaigns: seen,
    })
}

/// Lists one campaign in full; after a complete listing, marks its absent jobs deleted and
/// checkpoints the campaign (a resumed backfill does not list it again). Returns the server's
/// time at the start of the listing.
#[tracing::instrument(name = "listing", skip_all, fields(kind = "campaign", campaign))]
async fn pull_campaign_listing(
    db: &Db,
    client: &ApiClient,
    (campaign, guard): (i64, Option<f64>),
    (stop, progress): (&StopFlag, &dyn ProgressSink),
    stats: &mut PullStats,
) -> Result<DateTime<Utc>, SyncError> {
    tracing::Span::current().record("campaign", campaign);
    if !stats.full {
        // The run is a full one from the moment a full listing starts, stopped or not.
        stats.full = true;
        db.run(runs::mark_current_full).await?;
    }
    let listing_started = Ts::now();
    let started = Instant::now();
    let query = ListQuery {
        campaign: Some(campaign),
        modified_since: None,
    };
    let listing = client.list_jobs(query).await?;
    let server_time =
        start_of_pull(listing.server_date, started).unwrap_or(Utc::now() - CLOCK_SKEW_MARGIN);
    tracing::info!(campaign, "listing campaign in full");
    let progress = Tracker::start(progress, Work::Campaign(campaign));
    let seen = store_listing(
        db,
        listing,
        true,
        (stop, client.heartbeat()),
        stats,
        progress,
    )
    .await?;
    let foreign: Vec<i64> = seen.into_iter().filter(|c| *c != campaign).collect();
    // Items whose id could not be read: the listing cannot say which jobs it lacked, so it
    // deletes none (never delete what could not be read).
    let incomplete = stats.unreadable > 0;
    if incomplete {
        tracing::warn!(
            campaign,
            unreadable = stats.unreadable,
            "the listing holds jobs whose id cannot be read: no job of the campaign is marked \
             deleted for it"
        );
    }
    // `listing_started` is on our clock, like the rows' `last_seen_at` it is compared with; the
    // stamps a later pull schedules by are on the API's.
    let (listed_at, deleted_at) = (
        Ts::from(server_time),
        client.server_now().map_or_else(Ts::now, Ts::from),
    );
    let fence = db.fence().cloned();
    let deleted = db
        .run(move |c| {
            state::track_campaigns(c, &foreign)?;
            transaction(c, |c| {
                check_fence(fence.as_ref(), c)?;
                let outcome = if incomplete {
                    jobs::Deletes::Applied(0)
                } else {
                    jobs::mark_missing_deleted_guarded(
                        c,
                        campaign,
                        listing_started,
                        deleted_at,
                        guard,
                    )?
                };
                let n = match outcome {
                    jobs::Deletes::Applied(n) => {
                        // A complete listing whose deletes went in (clears any hold).
                        state::mark_campaign_listed(c, campaign, listed_at)?;
                        n
                    }
                    jobs::Deletes::Held { missing, live } => {
                        tracing::warn!(
                            campaign,
                            missing,
                            live,
                            "a complete listing would mark {missing} of the campaign's {live} live \
                             jobs deleted (more than sync.mass_delete_ratio, or a listing of none): \
                             held until the next listing, made at once, agrees"
                        );
                        let jobs = i32::try_from(missing).unwrap_or(i32::MAX);
                        state::hold_deletes(c, campaign, deleted_at, jobs)?;
                        0
                    }
                };
                let counts = RunCounts {
                    jobs_changed: n as i64,
                    ..RunCounts::default()
                };
                runs::count_into_current(c, counts)?;
                Ok(n)
            })
        })
        .await?;
    client.heartbeat().beat();
    stats.marked_deleted += deleted as i64;
    stats.jobs_changed += deleted as i64;
    stats.campaigns_listed.push(campaign);
    Ok(server_time)
}

/// The server's clock when the request left: its `Date` (whole seconds, rounded down) less the
/// time the answer took to start, less one second for the rounding.
fn start_of_pull(server_date: Option<DateTime<Utc>>, sent: Instant) -> Option<DateTime<Utc>> {
    let elapsed = Duration::from_std(sent.elapsed()).unwrap_or(Duration::zero());
    server_date.map(|d| d - elapsed - Duration::seconds(1))
}

/// Streams a listing into the mirror: one task decodes batches while this one writes the previous
/// batch, so the network, JSON decoding and the database work at the same time, and memory holds
/// at most a few batches. Jobs of the campaigns the listing skips ([`Listing::skip_campaigns`])
/// are counted but neither decoded nor stored. Returns the campaigns of the jobs stored.
///
/// [`Listing::skip_campaigns`]: crate::api::Listing::skip_campaigns
async fn store_listing(
    db: &Db,
    mut listing: crate::api::Listing,
    touch: bool,
    (stop, heartbeat): (&StopFlag, &Heartbeat),
    stats: &mut PullStats,
    mut progress: Tracker<'_>,
) -> Result<BTreeSet<i64>, SyncError> {
    // Conversion to stored form happens here, on the decoding side, so the database thread only
    // compares and writes.
    let (tx, mut rx) = mpsc::channel::<Result<Decoded, ApiError>>(2);
    let reader = tokio::spawn(async move {
        let mut skipped = 0;
        loop {
            let next = listing.next_batch(BATCH_SIZE).await;
            let done = !matches!(next, Ok(Some(_)));
            let quarantined = listing.take_quarantined();
            let item = match next {
                Ok(Some(batch)) => Ok(Decoded {
                    received: batch.len() + (listing.skipped() - skipped) + quarantined.len(),
                    campaigns: batch.iter().map(|j| j.campaign).collect(),
                    store: batch.iter().map(JobContent::from_job).collect(),
                    quarantined,
                }),
                // The last items set aside, after the last batch.
                Ok(None) if !quarantined.is_empty() => Ok(Decoded {
                    received: quarantined.len(),
                    campaigns: BTreeSet::new(),
                    store: Vec::new(),
                    quarantined,
                }),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            skipped = listing.skipped();
            if tx.send(item).await.is_err() || done {
                break;
            }
        }
    });
    let mut campaigns = BTreeSet::new();
    // Only a mirror with jobs in quarantine checks each batch against it.
    let mut any_quarantined = db.run(quarantine::count).await? > 0;
    let result = async {
        while let Some(batch) = rx.recv().await {
            let batch = batch?;
            if stop.is_set() {
                return Err(SyncError::Stopped);
            }
            campaigns.extend(batch.campaigns);
            progress.add(batch.received as u64);
            // Pulled: the jobs stored or compared with the mirror. Jobs of the skipped campaigns
            // (listed in full earlier in the same pull) are read but not counted, so a backfill
            // of N jobs reports N, not N plus those its incremental pass re-read.
            let pulled = batch.store.len() as i64;
            if batch.store.is_empty() && batch.quarantined.is_empty() {
                continue;
            }
            let set_aside = batch.quarantined;
            let quarantined = set_aside.len() as i64;
            let unreadable = set_aside.iter().filter(|q| q.job_id.is_none()).count() as i64;
            for q in &set_aside {
                tracing::warn!(
                    job_id = q.job_id,
                    campaign = q.campaign,
                    reason = %q.reason,
                    "a job of the listing cannot be decoded: set aside in `quarantine`, the \
                     listing goes on"
                );
            }
            let release = any_quarantined;
            any_quarantined |= !set_aside.is_empty();
            let store = batch.store;
            let fence = db.fence().cloned();
            let upserted = db
                .run(move |c| {
                    // Redone from the watermark after a power loss: no sync at each commit.
                    with_relaxed_durability(c, |c| {
                        transaction(c, |c| {
                            // A pull that lost the sync lock writes no more of the mirror.
                            check_fence(fence.as_ref(), c)?;
                            let now = Ts::now();
                            let ids: Vec<(i64, i64)> =
                                store.iter().map(|j| (j.id, j.campaign)).collect();
                            let (up, conflicts) =
                                jobs::upsert_checked(c, store, ChangeSource::Pull, now, touch)?;
                            // The same id in two campaigns: the first stays, this one waits in
                            // quarantine (with its id: the listing is complete without it).
                            let conflicts: Vec<crate::job::Quarantined> = conflicts
                                .iter()
                                .map(|c| crate::job::Quarantined {
                                    job_id: Some(c.job.id),
                                    campaign: Some(c.job.campaign),
                                    reason: c.reason(),
                                    raw: String::new(),
                                })
                                .collect();
                            for q in &conflicts {
                                tracing::warn!(job_id = q.job_id, reason = %q.reason, "job quarantined");
                            }
                            let conflicted = conflicts.len() as i64;
                            if release {
                                // A job that decodes again (and was stored) leaves quarantine.
                                let stored: Vec<(i64, i64)> = ids
                                    .into_iter()
                                    .filter(|(id, campaign)| {
                                        !conflicts.iter().any(|q| {
                                            q.job_id == Some(*id) && q.campaign == Some(*campaign)
                                        })
                                    })
                                    .collect();
                                quarantine::release(c, &stored)?;
                            }
                            quarantine::put(c, &conflicts, now)?;
                            if !set_aside.is_empty() {
                                quarantine::put(c, &set_aside, now)?;
                                if touch {
                                    // Contained, though unreadable: not deleted for this listing.
                                    let ids: Vec<i64> =
                                        set_aside.iter().filter_map(|q| q.job_id).collect();
                                    jobs::touch_seen(c, &ids, now)?;
                                }
                            }
                            let counts = RunCounts {
                                jobs_pulled: pulled,
                                jobs_changed: up.changes as i64,
                                jobs_quarantined: quarantined + conflicted,
                                ..RunCounts::default()
                            };
                            runs::count_into_current(c, counts)?;
                            Ok((up, conflicted))
                        })
                    })
                })
                .await?;
            db.checkpoint_behind().await;
            heartbeat.beat();
            // Counted once committed: a stopped pull reports what the mirror holds.
            stats.jobs_pulled += pulled;
            let (upserted, conflicted) = upserted;
            stats.jobs_changed += upserted.changes as i64;
            stats.quarantined += quarantined + conflicted;
            stats.unreadable += unreadable;
        }
        Ok(())
    }
    .await;
    reader.abort();
    progress.finish();
    result.map(|()| campaigns)
}
