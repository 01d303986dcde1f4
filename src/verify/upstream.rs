//! One campaign, listed in full and compared with the mirror; then its `done` creates audited
//! against the same listing.

use super::VerifyError;
use super::findings::{Collector, Finding, Kind, field_mask, field_names};
use crate::api::{ApiClient, ListQuery, Listing};
use crate::db::Db;
use crate::db::models::JobContent;
use crate::db::repo::{jobs, outbox};
use chrono::{DateTime, Duration, Utc};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::Instant;

/// The mirror's last pull began at its watermark; jobs modified a little before it may have
/// committed after the pull read them (the next pull's overlap catches them), so they count as in
/// motion too.
pub(super) const WATERMARK_MARGIN: Duration = Duration::seconds(60);
/// `modified_since` must lie within the past 48 hours.
const API_WINDOW: Duration = Duration::hours(46);
/// Without a `Date` header, the local clock minus this stands in for the API's.
const CLOCK_SKEW_MARGIN: Duration = Duration::seconds(60);
/// Mirror ids read at once when looking for extra jobs; `done` creates read at once.
const PAGE: i64 = 5000;

/// A difference found before knowing whether its job is in motion: 16 bytes, whatever the
/// number (a mirror far behind its API has one per job).
#[derive(Debug, Clone, Copy)]
struct Pending {
    id: i64,
    fields: u32,
    kind: u8,
}

pub(super) struct Campaign<'a> {
    pub db: &'a Db,
    pub client: &'a ApiClient,
    pub campaign: i64,
    /// The mirror's watermark less [`WATERMARK_MARGIN`]: changes before it are in the mirror.
    pub settled_before: Option<DateTime<Utc>>,
    pub batch_size: usize,
}

/// What the listing held, for the checks after it.
struct Upstream {
    /// Every id of the listing, sorted.
    ids: Vec<i64>,
    /// (hash of the reference, id) of every job with a reference, sorted.
    references: Vec<(u64, i64)>,
    /// Items whose id could not be read: which jobs the listing lacked cannot be said.
    unreadable: bool,
    /// The API's clock when the listing's request left.
    started: DateTime<Utc>,
}

impl Campaign<'_> {
    /// Lists the campaign, compares, audits its `done` creates. Returns a note when part of it
    /// could not be judged.
    pub async fn verify(&self, out: &mut Collector) -> Result<Option<String>, VerifyError> {
        let mut pending: Vec<Pending> = Vec::new();
        // References of the first differences, for their findings in detail.
        let mut references: HashMap<i64, Option<String>> = HashMap::new();
        let keep = out.room().saturating_mul(2).max(16);
        let upstream = self
            .compare_listing(&mut pending, &mut references, keep)
            .await?;
        let mut note = None;
        if upstream.unreadable {
            note = Some(format!(
                "campaign {}: the listing holds items whose id cannot be read (see the pull's \
                 quarantine); jobs only the mirror holds were not judged",
                self.campaign
            ));
        } else {
            self.find_extra(&upstream.ids, &mut pending, &mut references, keep)
                .await?;
        }
        let in_motion = self.in_motion(upstream.started).await?;
        // Differences first, then the jobs in motion.
        let moving = |id: i64| in_motion.binary_search(&id).is_ok();
        for p in pending.iter().filter(|p| !moving(p.id)) {
            let kind = Kind::from_code(p.kind);
            out.add(kind, || self.finding(kind, p, &references));
        }
        for p in pending.iter().filter(|p| moving(p.id)) {
            out.add(Kind::InMotion, || {
                self.finding(Kind::InMotion, p, &references)
            });
        }
        drop(pending);
        self.audit_creates(&upstream, &in_motion, out).await?;
        Ok(note)
    }

    fn finding(
        &self,
        kind: Kind,
        p: &Pending,
        references: &HashMap<i64, Option<String>>,
    ) -> Finding {
        Finding {
            kind,
            job_id: Some(p.id),
            campaign: Some(self.campaign),
            reference: references.get(&p.id).cloned().flatten(),
            fields: field_names(p.fields),
        }
    }

    fn failed(&self, source: crate::api::ApiError) -> VerifyError {
        VerifyError::Listing {
            campaign: self.campaign,
            source,
        }
    }

    /// Reads the full listing in batches, comparing each with the mirror rows of its ids.
    async fn compare_listing(
        &self,
        pending: &mut Vec<Pending>,
        references: &mut HashMap<i64, Option<String>>,
        keep: usize,
    ) -> Result<Upstream, VerifyError> {
        let sent = Instant::now();
        let query = ListQuery {
            campaign: Some(self.campaign),
            modified_since: None,
        };
        let mut listing = self
            .client
            .list_jobs(query)
            .await
            .map_err(|e| self.failed(e))?;
        let started = self.request_left(&listing, sent);
        tracing::info!(campaign = self.campaign, "verify: listing campaign in full");
        let mut upstream = Upstream {
            ids: Vec::new(),
            references: Vec::new(),
            unreadable: false,
            started,
        };
        loop {
            let batch = listing
                .next_batch(self.batch_size)
                .await
                .map_err(|e| self.failed(e))?;
            for q in listing.take_quarantined() {
                match q.job_id {
                    Some(id) => upstream.ids.push(id),
                    None => upstream.unreadable = true,
                }
            }
            let Some(batch) = batch else { break };
            let ids: Vec<i64> = batch.iter().map(|j| j.id).collect();
            let mirror = self.db.run(move |c| jobs::load_by_id(c, ids)).await?;
            for job in batch {
                upstream.ids.push(job.id);
                if let Some(reference) = &job.reference {
                    upstream.references.push((hash(reference), job.id));
                }
                let (kind, fields) = match mirror.get(&job.id) {
                    Some(row) if row.remote_deleted_at.is_none() => {
                        let changed = JobContent::from_job(&job).changed_fields(&row.content);
                        if changed.is_empty() {
                            continue;
                        }
                        (Kind::Stale, field_mask(&changed))
                    }
                    _ => (Kind::Missing, 0),
                };
                if references.len() < keep {
                    references.insert(job.id, job.reference.clone());
                }
                pending.push(Pending {
                    id: job.id,
                    fields,
                    kind: kind.code(),
                });
            }
        }
        upstream.ids.sort_unstable();
        upstream.ids.dedup();
        upstream.references.sort_unstable();
        upstream.references.dedup();
        Ok(upstream)
    }

    /// The API's clock when the listing's request left: its `Date` (whole seconds) less the time
    /// the answer took, less a second for the rounding.
    fn request_left(&self, listing: &Listing, sent: Instant) -> DateTime<Utc> {
        let elapsed = Duration::from_std(sent.elapsed()).unwrap_or(Duration::zero());
        match listing.server_date.or_else(|| self.client.server_now()) {
            Some(date) => date - elapsed - Duration::seconds(1),
            None => Utc::now() - elapsed - CLOCK_SKEW_MARGIN,
        }
    }

    /// Live mirror jobs of the campaign, in id order, that the listing did not hold.
    async fn find_extra(
        &self,
        listed: &[i64],
        pending: &mut Vec<Pending>,
        references: &mut HashMap<i64, Option<String>>,
        keep: usize,
    ) -> Result<(), VerifyError> {
        let campaign = self.campaign;
        let mut after = i64::MIN;
        loop {
            let page = self
                .db
                .run(move |c| jobs::live_ids_after(c, campaign, after, PAGE))
                .await?;
            let Some(last) = page.last() else { break };
            after = last.0;
            let full = page.len() as i64 == PAGE;
            for (id, reference) in page {
                if listed.binary_search(&id).is_ok() {
                    continue;
                }
                if references.len() < keep {
                    references.insert(id, reference);
                }
                pending.push(Pending {
                    id,
                    fields: 0,
                    kind: Kind::Extra.code(),
                });
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Ids of the campaign's jobs the API reports modified since the listing began, or since the
    /// mirror's last pull when that is earlier, sorted.
    async fn in_motion(&self, listing_started: DateTime<Utc>) -> Result<Vec<i64>, VerifyError> {
        let mut since = match self.settled_before {
            Some(settled) => settled.min(listing_started),
            None => listing_started,
        };
        // Within the window the API accepts; a mirror whose last pull is older than that is
        // listed in full by its next cycle anyway.
        let now = self.client.server_now().unwrap_or(listing_started);
        since = since.max(now - API_WINDOW);
        let query = ListQuery {
            campaign: Some(self.campaign),
            modified_since: Some(since),
        };
        let mut listing = self
            .client
            .list_jobs(query)
            .await
            .map_err(|e| self.failed(e))?;
        let mut ids = Vec::new();
        while let Some(batch) = listing
            .next_batch(self.batch_size)
            .await
            .map_err(|e| self.failed(e))?
        {
            ids.extend(batch.iter().map(|j| j.id));
            ids.extend(listing.take_quarantined().iter().filter_map(|q| q.job_id));
        }
        ids.extend(listing.take_quarantined().iter().filter_map(|q| q.job_id));
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The campaign's `done` creates against the listing: `lost` and `duplicate`.
    async fn audit_creates(
        &self,
        upstream: &Upstream,
        in_motion: &[i64],
        out: &mut Collector,
    ) -> Result<(), VerifyError> {
        let campaign = self.campaign;
        let mut after = i64::MIN;
        let mut duplicates_seen: HashSet<u64> = HashSet::new();
        loop {
            let page = self
                .db
                .run(move |c| outbox::done_creates_after(c, campaign, after, PAGE))
                .await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            let full = page.len() as i64 == PAGE;
            // Jobs the platform deleted after jobsync created them, a deletion the mirror has
            // seen: not lost (the create reached the API; someone removed its job since).
            let settled_on: Vec<i64> = page.iter().filter_map(|r| r.result_job_id).collect();
            let mut deleted = self
                .db
                .run(move |c| jobs::deleted_among(c, &settled_on))
                .await?;
            deleted.sort_unstable();
            for row in page {
                let Some(reference) = row.reference_sent() else {
                    continue;
                };
                let key = hash(&reference);
                let from = upstream.references.partition_point(|(h, _)| *h < key);
                let holders: Vec<i64> = upstream.references[from..]
                    .iter()
                    .take_while(|(h, _)| *h == key)
                    .map(|(_, id)| *id)
                    .collect();
                if holders.len() > 1 {
                    if duplicates_seen.insert(key) {
                        let copy = holders
                            .iter()
                            .copied()
                            .find(|id| Some(*id) != row.result_job_id)
                            .unwrap_or(holders[0]);
                        out.add(Kind::Duplicate, || Finding {
                            kind: Kind::Duplicate,
                            job_id: Some(copy),
                            campaign: Some(campaign),
                            reference: Some(reference.clone()),
                            fields: vec!["reference"],
                        });
                    }
                } else if holders.is_empty() {
                    let found = row.result_job_id.is_some_and(|id| {
                        upstream.ids.binary_search(&id).is_ok()
                            || in_motion.binary_search(&id).is_ok()
                            || deleted.binary_search(&id).is_ok()
                    });
                    if !found {
                        out.add(Kind::Lost, || Finding {
                            kind: Kind::Lost,
                            job_id: row.result_job_id,
                            campaign: Some(campaign),
                            reference: Some(reference.clone()),
                            fields: vec![],
                        });
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(())
    }
}

/// A reference's 64-bit hash (SipHash with fixed keys): that another reference of a campaign of
/// a million shares it by chance is a one-in-10^13 event.
fn hash(reference: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    reference.hash(&mut hasher);
    hasher.finish()
}
