//! `verify`: compares the mirror with the API, field for field, and audits the outbox and the
//! changefeed — without writing anything (no sync lock is taken; requests go through the normal
//! [`ApiClient`], so its rate limit holds). `jobsync verify` prints the [`Report`]; the daemon can
//! run [`run`] on a schedule and export its counts.
//!
//! # Findings
//!
//! Each [`Finding`] names a [`Kind`], the job (`job_id`, `campaign`, `reference`) and, for a
//! difference of content, the names of the fields that differ — never their values.
//!
//! Upstream against the mirror, per campaign listed in full (the tracked campaigns, or those
//! named):
//! - [`Kind::Missing`]: the listing holds the job; the mirror does not hold it live (no row, or a
//!   row marked deleted upstream).
//! - [`Kind::Extra`]: the mirror holds the job live; the listing does not.
//! - [`Kind::Stale`]: both hold it; some fields differ (`fields` names them).
//! - [`Kind::InMotion`]: one of the three above, for a job the API reports modified (`GET
//!   /j/jobs?campaign=N&modified_since=T`, asked once the comparison is done) since T: the start
//!   of the listing, or the start of the mirror's last pull (its watermark) less a minute when
//!   that is earlier — both on the API's clock. Such a job changed while the check ran, or after
//!   the mirror last caught up: the next cycle brings it in line. Not drift: it does not make
//!   `jobsync verify` exit 3.
//!
//! The outbox, for the campaigns listed:
//! - [`Kind::Lost`]: a `done` create whose job is not upstream: no job of its campaign carries
//!   the reference it sent (`sent_payload`'s, else the row's), and the job it settled on
//!   (`result_job_id`) is neither in the listing nor modified since, nor known to the mirror as
//!   deleted upstream (the platform removed it after jobsync created it: the create did reach
//!   the API). (Contract: every `done`
//!   create's job exists upstream under the campaign and reference sent.)
//! - [`Kind::Duplicate`]: a reference a `done` create sent is carried by more than one job of
//!   its campaign upstream; `job_id` names a copy other than the one the row settled on. One
//!   finding per reference.
//!
//! The outbox, in the database only:
//! - [`Kind::Stuck`]: a row `in_flight` past its deadline for more than the push allows. Its
//!   deadline is its `next_attempt_at` (set when it was sent, or by the last lookup: when its
//!   request can no longer land, or when it may next be looked up); the push settles such a row
//!   within `push.max_row_attempts` cycles (contract §8, "Every row is settleable"). A row is
//!   stuck when at least [`Options::stuck_after_cycles`] (`push.max_row_attempts`) successful
//!   cycles (`sync_runs` with status `ok`) started after its deadline and it is still in flight.
//!
//! The changefeed, in the database only:
//! - [`Kind::Feed`]: a mirror job whose last changefeed row (highest `seq`) disagrees with it: a
//!   live job whose last `new_state` is not its `state`, or a job marked deleted whose last row is
//!   not `deleted`. Jobs whose rows were all pruned are not judged.
//!
//! # Bounded memory
//!
//! The API's listing is not documented as sorted, so the two sides are not merged in id order:
//! the listing is read in batches, each batch compared with the mirror rows of its ids (one
//! query), and the ids seen kept in a sorted vector (8 bytes a job), with a 16-byte hash of each
//! reference for the outbox audit; the mirror's live ids of the campaign are then read in id
//! order, in pages, and looked up in that vector. A campaign of 1,000,000 jobs takes about 24 MiB
//! plus 16 bytes per difference; at most [`Options::max_findings`] findings are kept in detail,
//! the rest only counted.

mod findings;
mod local;
mod upstream;

pub use findings::{Finding, Kind, Report};

use crate::api::{ApiClient, ApiError};
use crate::db::repo::state;
use crate::db::{Db, DbError};
use chrono::Utc;

/// What to verify and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The campaigns to list; empty: every tracked campaign. Named campaigns also narrow the
    /// `stuck` and `feed` checks to their rows.
    pub campaigns: Vec<i64>,
    /// Successful cycles after its deadline past which a row still `in_flight` is stuck
    /// (`push.max_row_attempts`).
    pub stuck_after_cycles: u32,
    /// Findings kept in detail; the others are counted only.
    pub max_findings: usize,
    /// Jobs read from the listing (and looked up in the mirror) at once.
    pub batch_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            campaigns: Vec::new(),
            stuck_after_cycles: 20,
            max_findings: 1000,
            batch_size: 1000,
        }
    }
}

/// Why a verification could not complete.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("listing campaign {campaign} failed: {source}")]
    Listing {
        campaign: i64,
        #[source]
        source: ApiError,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Verifies the mirror against the API: lists each campaign in full, compares, audits the outbox
/// and the changefeed. Writes nothing.
pub async fn run(db: &Db, client: &ApiClient, options: &Options) -> Result<Report, VerifyError> {
    let started_at = Utc::now();
    let (tracked, watermark) = db
        .run(|c| {
            let tracked: Vec<i64> = state::tracked_campaigns(c)?
                .into_iter()
                .map(|t| t.0)
                .collect();
            Ok((tracked, state::get_time(c, state::WATERMARK)?))
        })
        .await?;
    let mut campaigns = if options.campaigns.is_empty() {
        tracked
    } else {
        options.campaigns.clone()
    };
    campaigns.sort_unstable();
    campaigns.dedup();
    let mut out = findings::Collector::new(options.max_findings);
    let mut notes = Vec::new();
    for &campaign in &campaigns {
        let settled_before = watermark.map(|w| w - upstream::WATERMARK_MARGIN);
        let checked = upstream::Campaign {
            db,
            client,
            campaign,
            settled_before,
            batch_size: options.batch_size.max(1),
        };
        if let Some(note) = checked.verify(&mut out).await? {
            notes.push(note);
        }
    }
    let named = (!options.campaigns.is_empty()).then_some(campaigns.as_slice());
    local::stuck(db, named, options.stuck_after_cycles, &mut out).await?;
    local::feed(db, named, &mut out).await?;
    Ok(out.into_report(campaigns, notes, started_at, Utc::now()))
}
