//! Small facts kept between runs (the watermark, the last successful pull), and tracked campaigns.

use crate::db::schema::{campaigns, sync_state};
use crate::db::{Conn, DbError, Ts};
use crate::with_conn;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;

pub const WATERMARK: &str = "watermark";
pub const LAST_PULL_OK: &str = "last_pull_ok_at";

pub fn get(conn: &mut Conn, key: &str) -> Result<Option<String>, DbError> {
    with_conn!(conn, |c| Ok(sync_state::table
        .find(key)
        .select(sync_state::value)
        .first::<String>(c)
        .optional()?))
}

pub fn set(conn: &mut Conn, key: &str, value: &str) -> Result<(), DbError> {
    let now = Ts::now();
    with_conn!(conn, |c| {
        diesel::insert_into(sync_state::table)
            .values((
                sync_state::key.eq(key),
                sync_state::value.eq(value),
                sync_state::updated_at.eq(now),
            ))
            .on_conflict(sync_state::key)
            .do_update()
            .set((
                sync_state::value.eq(excluded(sync_state::value)),
                sync_state::updated_at.eq(excluded(sync_state::updated_at)),
            ))
            .execute(c)?;
        Ok(())
    })
}

/// A stored instant (RFC 3339).
pub fn get_time(conn: &mut Conn, key: &str) -> Result<Option<DateTime<Utc>>, DbError> {
    get(conn, key)?
        .map(|text| parse_time(key, &text))
        .transpose()
}

/// A stored instant and when it was saved (local clock), in one read.
pub fn get_time_with_saved_at(
    conn: &mut Conn,
    key: &str,
) -> Result<Option<(DateTime<Utc>, Ts)>, DbError> {
    let row: Option<(String, Ts)> = with_conn!(conn, |c| sync_state::table
        .find(key)
        .select((sync_state::value, sync_state::updated_at))
        .first(c)
        .optional())?;
    row.map(|(text, saved_at)| Ok((parse_time(key, &text)?, saved_at)))
        .transpose()
}

fn parse_time(key: &str, text: &str) -> Result<DateTime<Utc>, DbError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| DbError::Corrupt(format!("sync_state `{key}` = {text:?}: {e}")))
}

pub fn set_time(conn: &mut Conn, key: &str, value: DateTime<Utc>) -> Result<(), DbError> {
    set(conn, key, &Ts::from(value).to_string())
}

/// Campaigns to re-list in full, with when each was last listed completely.
pub fn tracked_campaigns(conn: &mut Conn) -> Result<Vec<(i64, Option<Ts>)>, DbError> {
    with_conn!(conn, |c| Ok(campaigns::table
        .order(campaigns::campaign.asc())
        .select((campaigns::campaign, campaigns::last_full_listing_at))
        .load(c)?))
}

/// Starts tracking campaigns (configured, or seen in an answer); known ones are left alone.
pub fn track_campaigns(conn: &mut Conn, ids: &[i64]) -> Result<usize, DbError> {
    let now = Ts::now();
    let rows: Vec<_> = ids
        .iter()
        .map(|id| (campaigns::campaign.eq(*id), campaigns::added_at.eq(now)))
        .collect();
    with_conn!(conn, |c| {
        let mut added = 0;
        for row in rows {
            added += diesel::insert_into(campaigns::table)
                .values(row)
                .on_conflict_do_nothing()
                .execute(c)?;
        }
        Ok(added)
    })
}

/// A complete listing of `campaign` started at `at`; a campaign set aside is so no longer.
pub fn mark_campaign_listed(conn: &mut Conn, campaign: i64, at: Ts) -> Result<(), DbError> {
    with_conn!(conn, |c| {
        diesel::update(campaigns::table.find(campaign))
            .set((
                campaigns::last_full_listing_at.eq(at),
                campaigns::refused_at.eq(None::<Ts>),
                campaigns::refused_status.eq(None::<i32>),
                campaigns::refused_reason.eq(None::<String>),
                campaigns::deletes_held_at.eq(None::<Ts>),
                campaigns::deletes_held.eq(None::<i32>),
            ))
            .execute(c)?;
        Ok(())
    })
}

/// Deletes a complete listing would have made, held until a second listing agrees.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HeldDeletes {
    pub campaign: i64,
    /// When the listing that would have deleted them was stored.
    #[serde(serialize_with = "crate::db::models::ts_as_rfc3339")]
    pub held_at: Ts,
    /// How many live jobs it would have marked deleted.
    pub jobs: i32,
}

/// Holds the deletes of `campaign`'s listing: `jobs` live jobs it did not contain.
pub fn hold_deletes(conn: &mut Conn, campaign: i64, at: Ts, jobs: i32) -> Result<(), DbError> {
    with_conn!(conn, |c| {
        diesel::update(campaigns::table.find(campaign))
            .set((
                campaigns::deletes_held_at.eq(Some(at)),
                campaigns::deletes_held.eq(Some(jobs)),
            ))
            .execute(c)?;
        Ok(())
    })
}

/// The campaigns whose deletes are held, by campaign.
pub fn held_deletes(conn: &mut Conn) -> Result<Vec<HeldDeletes>, DbError> {
    let rows: Vec<(i64, Option<Ts>, Option<i32>)> = with_conn!(conn, |c| {
        campaigns::table
            .filter(campaigns::deletes_held_at.is_not_null())
            .order(campaigns::campaign.asc())
            .select((
                campaigns::campaign,
                campaigns::deletes_held_at,
                campaigns::deletes_held,
            ))
            .load(c)?
    });
    Ok(rows
        .into_iter()
        .filter_map(|(campaign, at, jobs)| {
            Some(HeldDeletes {
                campaign,
                held_at: at?,
                jobs: jobs.unwrap_or_default(),
            })
        })
        .collect())
}

/// A campaign whose listing the API refused, set aside.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RefusedCampaign {
    pub campaign: i64,
    /// When (on the API's clock) its listing was last refused.
    #[serde(serialize_with = "crate::db::models::ts_as_rfc3339")]
    pub refused_at: Ts,
    pub status: i32,
    pub reason: String,
}

/// Sets `campaign` aside: its listing was refused at `at` with `status` and `reason`.
pub fn set_campaign_refused(
    conn: &mut Conn,
    campaign: i64,
    at: Ts,
    status: i32,
    reason: &str,
) -> Result<(), DbError> {
    with_conn!(conn, |c| {
        diesel::update(campaigns::table.find(campaign))
            .set((
                campaigns::refused_at.eq(Some(at)),
                campaigns::refused_status.eq(Some(status)),
                campaigns::refused_reason.eq(Some(reason)),
            ))
            .execute(c)?;
        Ok(())
    })
}

/// A `campaigns` row's refusal columns.
type RefusalColumns = (i64, Option<Ts>, Option<i32>, Option<String>);

/// The campaigns set aside, by campaign.
pub fn refused_campaigns(conn: &mut Conn) -> Result<Vec<RefusedCampaign>, DbError> {
    let rows: Vec<RefusalColumns> = with_conn!(conn, |c| {
        campaigns::table
            .filter(campaigns::refused_at.is_not_null())
            .order(campaigns::campaign.asc())
            .select((
                campaigns::campaign,
                campaigns::refused_at,
                campaigns::refused_status,
                campaigns::refused_reason,
            ))
            .load(c)?
    });
    Ok(rows
        .into_iter()
        .filter_map(|(campaign, at, status, reason)| {
            Some(RefusedCampaign {
                campaign,
                refused_at: at?,
                status: status.unwrap_or_default(),
                reason: reason.unwrap_or_default(),
            })
        })
        .collect())
}

/// The `sync_state` key of a pending `jobsync resync` request.
pub const RESYNC_REQUEST: &str = "resync_request";

/// A request for full listings in the next cycle (`jobsync resync`): who asked, when, and which
/// campaigns (`None`: every tracked one).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResyncRequest {
    /// The OS user who asked (`$USER`, else `unknown`).
    pub requested_by: String,
    /// When (local clock, RFC 3339).
    pub requested_at: String,
    /// The campaigns named, or `None` for every tracked campaign.
    pub campaigns: Option<Vec<i64>>,
}

impl ResyncRequest {
    /// This request and a later one as one: every campaign either named (all when either asks
    /// for all); the later asker and time.
    pub fn merged_with(self, later: ResyncRequest) -> ResyncRequest {
        let campaigns = match (self.campaigns, later.campaigns) {
            (Some(mut a), Some(b)) => {
                a.extend(b);
                a.sort_unstable();
                a.dedup();
                Some(a)
            }
            _ => None,
        };
        ResyncRequest { campaigns, ..later }
    }
}

/// The pending resync request and its stored text, if any.
pub fn resync_request(conn: &mut Conn) -> Result<Option<(ResyncRequest, String)>, DbError> {
    get(conn, RESYNC_REQUEST)?
        .map(|text| {
            serde_json::from_str(&text)
                .map(|r| (r, text.clone()))
                .map_err(|e| DbError::Corrupt(format!("sync_state `{RESYNC_REQUEST}`: {e}")))
        })
        .transpose()
}

/// Records `request`, merged into any request still pending.
pub fn request_resync(conn: &mut Conn, request: ResyncRequest) -> Result<ResyncRequest, DbError> {
    super::transaction(conn, |conn| {
        let merged = match resync_request(conn)? {
            Some((pending, _)) => pending.merged_with(request),
            None => request,
        };
        let text = serde_json::to_string(&merged)
            .map_err(|e| DbError::Corrupt(format!("resync request: {e}")))?;
        set(conn, RESYNC_REQUEST, &text)?;
        Ok(merged)
    })
}

/// Settles the resync request read as `read` (its stored text): removed when `remaining` is
/// empty, else narrowed to those campaigns. A request changed since it was read (a newer
/// `resync`) is left as it is, for the next cycle.
pub fn settle_resync(conn: &mut Conn, read: &str, remaining: &[i64]) -> Result<(), DbError> {
    super::transaction(conn, |conn| {
        if get(conn, RESYNC_REQUEST)?.as_deref() != Some(read) {
            return Ok(());
        }
        if remaining.is_empty() {
            with_conn!(conn, |c| diesel::delete(
                sync_state::table.find(RESYNC_REQUEST)
            )
            .execute(c))?;
            return Ok(());
        }
        let mut request: ResyncRequest = serde_json::from_str(read)
            .map_err(|e| DbError::Corrupt(format!("sync_state `{RESYNC_REQUEST}`: {e}")))?;
        request.campaigns = Some(remaining.to_vec());
        let text = serde_json::to_string(&request)
            .map_err(|e| DbError::Corrupt(format!("resync request: {e}")))?;
        set(conn, RESYNC_REQUEST, &text)
    })
}
