//! A listing answer decoded as it streams in: memory holds one batch of jobs and one element's
//! bytes, whatever the size of the campaign.

use super::client::describe_decode_error;
use super::error::ApiError;
use super::split::ArraySplitter;
use crate::job::Job;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::{BoxStream, StreamExt};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The largest job a listing may hold: far above any real job (about a kilobyte), and a bound on
/// the memory one element can take.
pub const MAX_JOB_BYTES: usize = 1024 * 1024;

/// A batch of a listing holds jobs of at most about this many bytes (as received), whatever
/// their number: the pull keeps a few batches in memory at once.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// The most of a quarantined item's text that is kept.
pub const QUARANTINE_RAW_BYTES: usize = 4096;

pub use crate::job::Quarantined;

pub struct Listing {
    /// The server's clock when it answered (the `Date` header), for the pull watermark.
    pub server_date: Option<DateTime<Utc>>,
    endpoint: String,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    splitter: ArraySplitter,
    finished: bool,
    /// At the stop's deadline, the rest of the body is abandoned.
    stop: crate::shutdown::StopFlag,
    /// The longest wait for the next complete job (`api.timeout_secs`): a body that trickles,
    /// or pads without end, fails instead of holding the cycle.
    item_timeout: Duration,
    last_item: Instant,
    /// When the whole listing must have ended, and the setting that says so (see
    /// [`Listing::set_deadline`]).
    deadline: Option<(Instant, Duration)>,
    /// Beaten at each job received: a long listing is progress, however slowly its batches fill.
    heartbeat: crate::telemetry::Heartbeat,
    /// Campaigns whose jobs are only counted, not decoded (see [`Listing::skip_campaigns`]).
    skip: BTreeSet<i64>,
    skipped: usize,
    quarantined: Vec<Quarantined>,
    /// The ids handed out so far: an id seen twice is set aside, more than [`MAX_REPEATS`]
    /// ids seen twice mean the answer repeats itself.
    seen: SeenIds,
    repeats: usize,
}

/// Ids seen twice in one listing beyond which it is taken for a loop and abandoned.
pub const MAX_REPEATS: usize = 100;

/// The job ids of one listing, to tell a listing that loops (the same jobs over and over, never
/// ending) from a long one: a bitmap over a window of 2^26 ids around the first (8 MiB at most,
/// 125 KiB for a million sequential ids), and a set for ids outside it.
#[derive(Debug, Default)]
struct SeenIds {
    base: Option<i64>,
    words: Vec<u64>,
    outside: std::collections::HashSet<i64>,
}

impl SeenIds {
    const SPAN: i64 = 1 << 26;

    /// Whether `id` was not seen before (and is now).
    fn insert(&mut self, id: i64) -> bool {
        let base = *self
            .base
            .get_or_insert_with(|| (id.div_euclid(64) * 64).saturating_sub(Self::SPAN / 2));
        let offset = id.checked_sub(base).filter(|o| (0..Self::SPAN).contains(o));
        let Some(offset) = offset else {
            return self.outside.insert(id);
        };
        let word = (offset / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (offset % 64);
        let new = self.words[word] & bit == 0;
        self.words[word] |= bit;
        new
    }
}

impl std::fmt::Debug for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listing")
            .field("endpoint", &self.endpoint)
            .field("server_date", &self.server_date)
            .field("jobs_so_far", &self.splitter.items())
            .finish()
    }
}

impl Listing {
    pub(super) fn new(
        endpoint: String,
        server_date: Option<DateTime<Utc>>,
        response: reqwest::Response,
        stop: crate::shutdown::StopFlag,
        item_timeout: Duration,
        heartbeat: crate::telemetry::Heartbeat,
    ) -> Self {
        Listing {
            server_date,
            endpoint,
            body: response.bytes_stream().boxed(),
            splitter: ArraySplitter::new(),
            finished: false,
            stop,
            item_timeout,
            last_item: Instant::now(),
            deadline: None,
            heartbeat,
            skip: BTreeSet::new(),
            skipped: 0,
            quarantined: Vec::new(),
            seen: SeenIds::default(),
            repeats: 0,
        }
    }

    /// Jobs of these campaigns are read for their `campaign` field only, counted in
    /// [`Listing::skipped`] and not handed out: the pull's incremental pass skips the campaigns it
    /// has just listed in full, and decoding each of their jobs only to drop it was most of that
    /// pass's time. A job whose `campaign` cannot be read is decoded in full, so a malformed one
    /// still fails the listing with its field named.
    pub fn skip_campaigns(&mut self, skip: BTreeSet<i64>) {
        self.skip = skip;
    }

    /// The listing fails once it has taken `limit` since its request left (`started`), however
    /// fast its jobs still come (`sync.listing_deadline_secs`): an answer that streams ever-new
    /// jobs never ends, and the loop detector cannot tell it from a large campaign.
    pub(super) fn with_deadline(mut self, started: Instant, limit: Duration) -> Self {
        self.deadline = Some((started + limit, limit));
        self
    }

    /// How many jobs so far belonged to a skipped campaign.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The items set aside since the last call: each could not be decoded as a job (a wrong
    /// type, an invalid date, a number out of range, invalid text). The rest of the listing goes
    /// on.
    pub fn take_quarantined(&mut self) -> Vec<Quarantined> {
        std::mem::take(&mut self.quarantined)
    }

    /// Up to `max` more jobs (at least one, unless some were of skipped campaigns: skipped jobs
    /// count towards `max`), or `None` once the whole array has been read. An
    /// error (malformed JSON, a wrong type, a truncated array, a broken connection) ends the
    /// listing: jobs handed out before it were valid, but the listing is not complete.
    pub async fn next_batch(&mut self, max: usize) -> Result<Option<Vec<Job>>, ApiError> {
        if self.finished {
            return Ok(None);
        }
        let max = max.max(1);
        let mut batch = Vec::with_capacity(max.min(4096));
        // Skipped jobs count towards `max` too: a listing of skipped jobs only still returns
        // (empty) batches as it goes, for the caller's progress and heartbeat.
        let skipped_before = self.skipped;
        // Bounded in bytes as well as in jobs: 2,000 jobs of 400 KB would be 800 MB at once.
        let mut bytes_in_batch = 0usize;
        loop {
            while batch.len() + (self.skipped - skipped_before) < max
                && bytes_in_batch < MAX_BATCH_BYTES
            {
                let index = self.splitter.items();
                let decoded = match self.splitter.next_item() {
                    Ok(Some(bytes)) if in_campaigns(bytes, &self.skip) => {
                        self.skipped += 1;
                        self.received();
                        continue;
                    }
                    Ok(Some(bytes)) => match decode_item(bytes, index) {
                        Ok(job) => {
                            bytes_in_batch += bytes.len();
                            Ok(job)
                        }
                        Err(reason) => {
                            self.quarantined.push(quarantine(bytes, reason));
                            self.received();
                            continue;
                        }
                    },
                    Ok(None) => break,
                    Err(detail) => Err(detail),
                };
                let job = decoded.map_err(|detail| self.fail(detail))?;
                if !self.seen.insert(job.id) {
                    let index = self.splitter.items() - 1;
                    self.repeats += 1;
                    if self.repeats > MAX_REPEATS {
                        return Err(self.fail(format!(
                            "item {index} is job {} again, the {} id seen twice: the listing \
                             repeats itself (an answer that loops never ends), so it is \
                             abandoned; nothing of it counts as complete and the watermark stays",
                            job.id, self.repeats
                        )));
                    }
                    // A few repeats are an id used twice (in two campaigns, say): the first is
                    // kept, the repeat set aside.
                    self.quarantined.push(Quarantined {
                        job_id: Some(job.id),
                        campaign: Some(job.campaign),
                        reason: format!(
                            "item {index}: job {} appears a second time in one listing (here in \
                             campaign {}); the first is kept",
                            job.id, job.campaign
                        ),
                        raw: String::new(),
                    });
                    self.received();
                    continue;
                }
                self.received();
                batch.push(job.truncated_to_micros());
            }
            if batch.len() + (self.skipped - skipped_before) >= max
                || bytes_in_batch >= MAX_BATCH_BYTES
            {
                return Ok(Some(batch));
            }
            if self.splitter.buffered() > MAX_JOB_BYTES {
                let index = self.splitter.items();
                return Err(self.fail(format!(
                    "item {index} is larger than {} MiB, far beyond any real job; the answer is \
                     not a listing jobsync can store",
                    MAX_JOB_BYTES / (1024 * 1024)
                )));
            }
            let next_item_due = self.last_item + self.item_timeout;
            let (deadline, limit) = self
                .deadline
                .unwrap_or((next_item_due + Duration::from_secs(1), Duration::ZERO));
            let next = tokio::select! {
                biased;
                () = self.stop.abandoned() => {
                    self.finished = true;
                    return Err(ApiError::Abandoned { endpoint: self.endpoint.clone() });
                }
                () = tokio::time::sleep_until(deadline.into()), if deadline <= next_item_due => {
                    self.finished = true;
                    let jobs = self.splitter.items();
                    return Err(ApiError::InvalidAnswer {
                        endpoint: self.endpoint.clone(),
                        detail: format!(
                            "the listing was still going after {}s and {jobs} job(s), past \
                             sync.listing_deadline_secs: abandoned (an answer that never ends); \
                             nothing of it counts as complete and the watermark stays. Raise \
                             sync.listing_deadline_secs if a campaign really takes that long to list",
                            limit.as_secs()
                        ),
                    });
                }
                () = tokio::time::sleep_until(next_item_due.into()) => {
                    self.finished = true;
                    let jobs = self.splitter.items();
                    return Err(ApiError::InvalidAnswer {
                        endpoint: self.endpoint.clone(),
                        detail: format!(
                            "the listing sent no complete job within {}s after {jobs} job(s) (a \
                             stalled or trickling answer; raise `api.timeout_secs` if the API is \
                             that slow)",
                            self.item_timeout.as_secs_f64()
                        ),
                    });
                }
                next = self.body.next() => next,
            };
            match next {
                Some(Ok(chunk)) => self.splitter.push(&chunk),
                Some(Err(e)) => return Err(self.broken(&e)),
                None => {
                    self.finished = true;
                    self.splitter.finish().map_err(|detail| self.fail(detail))?;
                    let any = !batch.is_empty() || self.skipped > skipped_before;
                    return Ok(any.then_some(batch));
                }
            }
        }
    }

    /// A job (or an item set aside) came in: progress.
    fn received(&mut self) {
        self.last_item = Instant::now();
        self.heartbeat.beat();
    }

    fn fail(&mut self, detail: String) -> ApiError {
        self.finished = true;
        ApiError::Decode {
            endpoint: self.endpoint.clone(),
            detail,
        }
    }

    fn broken(&mut self, err: &reqwest::Error) -> ApiError {
        self.finished = true;
        let jobs = self.splitter.items();
        match ApiError::from_reqwest(&self.endpoint, err, std::time::Duration::ZERO) {
            ApiError::Timeout { endpoint, .. } => ApiError::Network {
                endpoint,
                message: format!("the listing stalled after {jobs} job(s) and timed out"),
            },
            ApiError::Network { endpoint, message } | ApiError::Connect { endpoint, message } => {
                ApiError::Network {
                    endpoint,
                    message: format!("the listing broke off after {jobs} job(s): {message}"),
                }
            }
            other => other,
        }
    }
}

/// Whether the job in `bytes` belongs to one of `campaigns`, reading its `campaign` field only
/// (serde skips the others without building them). `false` when it cannot tell.
fn in_campaigns(bytes: &[u8], campaigns: &BTreeSet<i64>) -> bool {
    #[derive(serde::Deserialize)]
    struct CampaignOf {
        campaign: i64,
    }
    !campaigns.is_empty()
        && serde_json::from_slice::<CampaignOf>(bytes)
            .is_ok_and(|j| campaigns.contains(&j.campaign))
}

/// Decodes element `index` (0-based) of the array as a job, naming the item, its job id when
/// that can be read, and the field at fault (never the value).
/// Plain serde first: tracking the path costs a seventh of a backfill's CPU, and is only needed
/// to word the error of an item that does not decode.
/// Sets an item aside: its id and campaign if they can be read, the reason, and its text capped
/// at [`QUARANTINE_RAW_BYTES`] with every run of six digits or more masked (phone numbers; a
/// job's id and campaign are kept in their own columns) and secrets masked.
fn quarantine(bytes: &[u8], reason: String) -> Quarantined {
    #[derive(serde::Deserialize)]
    struct Keys {
        id: Option<serde_json::Value>,
        campaign: Option<serde_json::Value>,
    }
    let keys = serde_json::from_slice::<Keys>(bytes).ok();
    let int = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_i64);
    let mut end = bytes.len().min(QUARANTINE_RAW_BYTES);
    while end > 0 && end < bytes.len() && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    let text = String::from_utf8_lossy(&bytes[..end]);
    Quarantined {
        job_id: int(keys.as_ref().and_then(|k| k.id.as_ref())),
        campaign: int(keys.as_ref().and_then(|k| k.campaign.as_ref())),
        reason,
        raw: crate::secret::scrub(&mask_digit_runs(&text)),
    }
}

/// Replaces every run of six digits or more with `******`.
fn mask_digit_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            run.push(ch);
            continue;
        }
        out.push_str(if run.len() >= 6 { "******" } else { &run });
        run.clear();
        out.push(ch);
    }
    out.push_str(if run.len() >= 6 { "******" } else { &run });
    out
}

fn decode_item(bytes: &[u8], index: usize) -> Result<Job, String> {
    #[derive(serde::Deserialize)]
    struct IdOf {
        id: i64,
    }
    if let Ok(job) = serde_json::from_slice(bytes) {
        return Ok(job);
    }
    let what = match serde_json::from_slice::<IdOf>(bytes) {
        Ok(IdOf { id }) => format!("item {index} of the array (job {id})"),
        Err(_) => format!("item {index} of the array"),
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| describe_decode_error(&e, &what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing_of(body: &'static str) -> Listing {
        let response = axum::http::Response::new(body);
        Listing::new(
            "GET /j/jobs".into(),
            None,
            reqwest::Response::from(response),
            crate::shutdown::StopFlag::new(),
            Duration::from_secs(5),
            crate::telemetry::Heartbeat::default(),
        )
    }

    #[tokio::test]
    async fn jobs_of_skipped_campaigns_are_counted_not_handed_out() {
        // Job 1 would not decode (`numbers` of the wrong type), but its campaign is skipped.
        let mut listing = listing_of(
            r#"[{"id": 1, "campaign": 1, "state": 0, "numbers": [612]},
                {"id": 2, "campaign": 2, "state": 0},
                {"id": 3, "campaign": 1, "state": 0},
                {"id": 4, "campaign": 3, "state": 0}]"#,
        );
        listing.skip_campaigns(BTreeSet::from([1]));
        let first = listing.next_batch(2).await.unwrap().unwrap();
        let ids: Vec<i64> = first.iter().map(|j| j.id).collect();
        // Skipped jobs count towards the batch's size: 1 skipped + job 2.
        assert_eq!(ids, [2]);
        assert_eq!(listing.skipped(), 1);
        let second = listing.next_batch(2).await.unwrap().unwrap();
        assert_eq!(second.iter().map(|j| j.id).collect::<Vec<_>>(), [4]);
        assert_eq!(listing.skipped(), 2);
        assert!(listing.next_batch(2).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_id_twice_is_set_aside_and_a_listing_that_repeats_itself_fails() {
        let mut listing = listing_of(
            r#"[{"id": 1, "campaign": 1, "state": 0}, {"id": 2, "campaign": 1, "state": 0},
                {"id": 1, "campaign": 2, "state": 0}]"#,
        );
        let batch = listing.next_batch(10).await.unwrap().unwrap();
        assert_eq!(batch.iter().map(|j| j.campaign).collect::<Vec<_>>(), [1, 1]);
        let q = listing.take_quarantined();
        assert_eq!((q[0].job_id, q[0].campaign), (Some(1), Some(2)), "{q:?}");

        let looping: String = std::iter::once("[".to_string())
            .chain((0..300).map(|n| format!(r#"{{"id": {}, "campaign": 1, "state": 0}},"#, n % 3)))
            .chain(std::iter::once(
                r#"{"id": 9, "campaign": 1, "state": 0}]"#.to_string(),
            ))
            .collect();
        let mut listing = listing_of(Box::leak(looping.into_boxed_str()));
        let err = listing.next_batch(1000).await.unwrap_err().to_string();
        assert!(
            err.contains("repeats itself") && err.contains("101"),
            "{err}"
        );
    }

    #[test]
    fn seen_ids_tell_repeats_near_and_far() {
        let mut seen = SeenIds::default();
        for id in [1_000_000, 999_999, 1_000_064, i64::MAX, -5, 1 << 40] {
            assert!(seen.insert(id), "{id} is new");
        }
        for id in [1_000_000, 999_999, 1_000_064, i64::MAX, -5, 1 << 40] {
            assert!(!seen.insert(id), "{id} was seen");
        }
        assert!(seen.words.len() <= (SeenIds::SPAN / 64) as usize);
    }

    #[tokio::test]
    async fn a_job_whose_campaign_cannot_be_read_is_quarantined_with_its_field_named() {
        let mut listing = listing_of(
            r#"[{"id": 1, "campaign": "one", "state": 0, "numbers": ["+33612345678"]},
                {"id": 2, "campaign": 2, "state": 0}]"#,
        );
        listing.skip_campaigns(BTreeSet::from([1]));
        let batch = listing.next_batch(10).await.unwrap().unwrap();
        assert_eq!(batch.iter().map(|j| j.id).collect::<Vec<_>>(), [2]);
        let quarantined = listing.take_quarantined();
        assert_eq!(quarantined.len(), 1);
        let q = &quarantined[0];
        assert_eq!((q.job_id, q.campaign), (Some(1), None));
        assert!(
            q.reason.contains("item 0") && q.reason.contains("campaign"),
            "{q:?}"
        );
        assert!(
            !q.raw.contains("33612345678") && q.raw.contains("******"),
            "{q:?}"
        );
    }

    #[tokio::test]
    async fn a_listing_of_skipped_jobs_only_still_reports_them() {
        let mut listing = listing_of(r#"[{"id": 1, "campaign": 1, "state": 0}]"#);
        listing.skip_campaigns(BTreeSet::from([1]));
        assert!(listing.next_batch(10).await.unwrap().unwrap().is_empty());
        assert_eq!(listing.skipped(), 1);
        assert!(listing.next_batch(10).await.unwrap().is_none());
    }

    #[test]
    fn names_the_item_and_field_of_a_wrong_type() {
        let err = decode_item(
            br#"{"id": 7, "campaign": 28, "state": 0, "numbers": [612]}"#,
            4,
        )
        .unwrap_err();
        assert!(
            err.contains("item 4 of the array (job 7)") && err.contains("field `numbers[0]`"),
            "{err}"
        );
        assert!(!err.contains("612"), "never the value: {err}");
        let err = decode_item(b"3", 0).unwrap_err();
        assert!(
            err.contains("item 0") && err.contains("invalid type"),
            "{err}"
        );
        let err = decode_item(br#"{"id": 7, "state": 0}"#, 1).unwrap_err();
        assert!(err.contains("campaign"), "{err}");
    }
}
