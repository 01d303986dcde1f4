//! Jobs of a listing that could not be decoded, set aside (`quarantine`): the rest of the
//! listing and the cycle go on. A job leaves when a later answer decodes.

use crate::db::schema::quarantine;
use crate::db::{Conn, DbError, Ts};
use crate::job::Quarantined;
use crate::with_conn;
use diesel::prelude::*;

/// A quarantined item, as stored.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = quarantine)]
pub struct QuarantineRow {
    pub item_key: String,
    pub job_id: Option<i64>,
    pub campaign: Option<i64>,
    pub reason: String,
    pub raw: String,
    #[serde(serialize_with = "crate::db::models::ts_as_rfc3339")]
    pub first_seen_at: Ts,
    #[serde(serialize_with = "crate::db::models::ts_as_rfc3339")]
    pub last_seen_at: Ts,
}

/// The key of an item: its job id when readable, else a hash of its text (stable for a build).
fn key_of(item: &Quarantined) -> String {
    use std::hash::{Hash, Hasher};
    match item.job_id {
        Some(id) => format!("job {id}"),
        None => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            item.campaign.hash(&mut h);
            item.raw.hash(&mut h);
            format!("item {:016x}", h.finish())
        }
    }
}

/// Stores (or refreshes) quarantined items seen at `now`. Returns how many.
pub fn put(conn: &mut Conn, items: &[Quarantined], now: Ts) -> Result<usize, DbError> {
    with_conn!(conn, |c| {
        for item in items {
            diesel::insert_into(quarantine::table)
                .values((
                    quarantine::item_key.eq(key_of(item)),
                    quarantine::job_id.eq(item.job_id),
                    quarantine::campaign.eq(item.campaign),
                    quarantine::reason.eq(&item.reason),
                    quarantine::raw.eq(&item.raw),
                    quarantine::first_seen_at.eq(now),
                    quarantine::last_seen_at.eq(now),
                ))
                .on_conflict(quarantine::item_key)
                .do_update()
                .set((
                    quarantine::campaign.eq(item.campaign),
                    quarantine::reason.eq(&item.reason),
                    quarantine::raw.eq(&item.raw),
                    quarantine::last_seen_at.eq(now),
                ))
                .execute(c)?;
        }
        Ok(items.len())
    })
}

/// Releases the quarantined jobs that a later answer decoded: `stored` holds each stored job's
/// id and campaign. A row is released when its campaign is that job's (or unknown); a job id
/// quarantined for coming in another campaign stays until that campaign's answer is fixed.
pub fn release(conn: &mut Conn, stored: &[(i64, i64)]) -> Result<usize, DbError> {
    let campaign_of: std::collections::HashMap<i64, i64> = stored.iter().copied().collect();
    let ids: Vec<i64> = campaign_of.keys().copied().collect();
    with_conn!(conn, |c| {
        let mut released = 0;
        for chunk in ids.chunks(super::IDS_PER_STATEMENT) {
            let rows: Vec<(String, Option<i64>, Option<i64>)> = quarantine::table
                .filter(quarantine::job_id.eq_any(chunk))
                .select((
                    quarantine::item_key,
                    quarantine::job_id,
                    quarantine::campaign,
                ))
                .load(c)?;
            let keys: Vec<String> = rows
                .into_iter()
                .filter(|(_, id, campaign)| {
                    campaign.is_none()
                        || id.and_then(|id| campaign_of.get(&id)) == campaign.as_ref()
                })
                .map(|(key, _, _)| key)
                .collect();
            if !keys.is_empty() {
                released +=
                    diesel::delete(quarantine::table.filter(quarantine::item_key.eq_any(keys)))
                        .execute(c)?;
            }
        }
        Ok(released)
    })
}

/// How many items are quarantined.
pub fn count(conn: &mut Conn) -> Result<i64, DbError> {
    with_conn!(conn, |c| Ok(quarantine::table.count().get_result(c)?))
}

/// Up to `limit` quarantined items, the most recently seen first.
pub fn list(conn: &mut Conn, limit: i64) -> Result<Vec<QuarantineRow>, DbError> {
    with_conn!(conn, |c| Ok(quarantine::table
        .order((quarantine::last_seen_at.desc(), quarantine::item_key.asc()))
        .limit(limit)
        .select(QuarantineRow::as_select())
        .load(c)?))
}
