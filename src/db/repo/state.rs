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

pub fn mark_campaign_listed(conn: &mut Conn, campaign: i64, at: Ts) -> Result<(), DbError> {
    with_conn!(conn, |c| {
        diesel::update(campaigns::table.find(campaign))
            .set(campaigns::last_full_listing_at.eq(at))
            .execute(c)?;
        Ok(())
    })
}
