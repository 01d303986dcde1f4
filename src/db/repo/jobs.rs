//! The mirror: batch upserts that write only what really changed and record each change in the
//! changefeed, in the same transaction.

use super::{IDS_PER_STATEMENT, ROWS_PER_STATEMENT, changes, transaction};
use crate::db::models::{
    ChangeRow, ChangeSource, JobContent, MirrorRow, NewMirrorRow, StoredField,
};
use crate::db::schema::jobs;
use crate::db::{Conn, DbError, Ts};
use crate::job::{JOB_FIELDS, Job, job_fields};
use crate::with_conn;
use diesel::prelude::*;
use diesel::upsert::excluded;
use std::collections::HashMap;

/// What one upsert did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertStats {
    pub received: usize,
    /// Rows written to `jobs` (new, changed, or seen again after deletion).
    pub written: usize,
    /// Rows appended to `job_changes`.
    pub changes: usize,
    pub unchanged: usize,
}

impl std::ops::AddAssign for UpsertStats {
    fn add_assign(&mut self, o: Self) {
        self.received += o.received;
        self.written += o.written;
        self.changes += o.changes;
        self.unchanged += o.unchanged;
    }
}

/// Stores jobs as the API returned them. A job whose content is unchanged writes nothing unless
/// `touch` is set (a complete listing contains it: `last_seen_at` moves so delete detection
/// knows it is still there). Runs in one transaction.
pub fn upsert(
    conn: &mut Conn,
    batch: &[Job],
    source: ChangeSource,
    now: Ts,
    touch: bool,
) -> Result<UpsertStats, DbError> {
    let contents = batch.iter().map(JobContent::from_job).collect();
    transaction(conn, |conn| {
        upsert_contents(conn, contents, source, now, touch)
    })
}

/// [`upsert`] for jobs already in stored form (the pull converts them off the database thread),
/// inside the caller's transaction: the pull's batch, the push's chunk, each with its run counts.
/// It opens no savepoint of its own: on SQLite a savepoint journals every page it changes, and
/// nested in each batch of a backfill that doubled the pages written (a third of its system
/// time); its callers roll back as a whole anyway.
pub fn upsert_contents(
    conn: &mut Conn,
    batch: Vec<JobContent>,
    source: ChangeSource,
    now: Ts,
    touch: bool,
) -> Result<UpsertStats, DbError> {
    let (stats, conflicts) = upsert_checked(conn, batch, source, now, touch)?;
    for c in conflicts {
        tracing::warn!(
            job_id = c.job.id,
            campaign = c.job.campaign,
            mirrored_campaign = c.mirrored_campaign,
            "{}",
            c.reason()
        );
    }
    Ok(stats)
}

/// A job that came with a campaign other than the one the mirror holds it in: the API's ids
/// are unique and a job's campaign cannot change, so the same id in two campaigns is an answer
/// that cannot be stored (the changefeed would flip between the two at every listing).
#[derive(Debug, Clone)]
pub struct CampaignConflict {
    pub job: JobContent,
    pub mirrored_campaign: i64,
}

impl CampaignConflict {
    pub fn reason(&self) -> String {
        format!(
            "job {} came in campaign {}, but the mirror holds it in campaign {}: one id in two \
             campaigns; the mirror keeps campaign {}'s version",
            self.job.id, self.job.campaign, self.mirrored_campaign, self.mirrored_campaign
        )
    }
}

/// [`upsert_contents`], answering the jobs not stored because the mirror holds their id live in
/// another campaign.
pub fn upsert_checked(
    conn: &mut Conn,
    batch: Vec<JobContent>,
    source: ChangeSource,
    now: Ts,
    touch: bool,
) -> Result<(UpsertStats, Vec<CampaignConflict>), DbError> {
    let received = batch.len();
    // The last answer for an id wins when a batch holds it twice.
    let mut latest: HashMap<i64, usize> = HashMap::with_capacity(batch.len());
    for (i, job) in batch.iter().enumerate() {
        latest.insert(job.id, i);
    }
    let incoming: Vec<JobContent> = batch
        .into_iter()
        .enumerate()
        .filter(|(i, job)| latest[&job.id] == *i)
        .map(|(_, job)| job)
        .collect();
    let existing = load_existing(conn, &incoming)?;
    let (incoming, conflicts): (Vec<JobContent>, Vec<JobContent>) =
        incoming.into_iter().partition(|job| {
            existing.get(&job.id).is_none_or(|old| {
                old.remote_deleted_at.is_some() || old.content.campaign == job.campaign
            })
        });
    let conflicts: Vec<CampaignConflict> = conflicts
        .into_iter()
        .map(|job| CampaignConflict {
            mirrored_campaign: existing[&job.id].content.campaign,
            job,
        })
        .collect();
    let count = incoming.len();
    let plan = plan_writes(incoming, &existing, source, now, touch);
    insert_rows(conn, &plan.inserts)?;
    write_rows(conn, &plan.rows)?;
    touch_rows(conn, &plan.touched, now)?;
    changes::append(conn, &plan.changes)?;
    let stats = UpsertStats {
        received,
        written: plan.inserts.len() + plan.rows.len(),
        changes: plan.changes.len(),
        unchanged: count - plan.inserts.len() - plan.rows.len(),
    };
    Ok((stats, conflicts))
}

struct Plan {
    /// Rows the mirror does not hold yet.
    inserts: Vec<NewMirrorRow>,
    /// Rows that replace a stored one (changed, or seen again after deletion).
    rows: Vec<NewMirrorRow>,
    changes: Vec<ChangeRow>,
    touched: Vec<i64>,
}

fn plan_writes(
    incoming: Vec<JobContent>,
    existing: &HashMap<i64, MirrorRow>,
    source: ChangeSource,
    now: Ts,
    touch: bool,
) -> Plan {
    let mut plan = Plan {
        inserts: Vec::new(),
        rows: Vec::new(),
        changes: Vec::new(),
        touched: Vec::new(),
    };
    for content in incoming {
        let change = |kind, old_state, fields: &[&str]| {
            changes::row(
                content.id,
                content.campaign,
                content.reference.clone(),
                kind,
                old_state,
                Some(content.state),
                fields,
                source.as_str(),
                now,
            )
        };
        let (first_seen_at, change) = match existing.get(&content.id) {
            None => (now, change("created", None, &JOB_FIELDS)),
            Some(old) if old.remote_deleted_at.is_some() => {
                (old.first_seen_at, change("created", None, &JOB_FIELDS))
            }
            Some(old) => {
                let fields = content.changed_fields(&old.content);
                if fields.is_empty() {
                    if touch {
                        plan.touched.push(content.id);
                    }
                    continue;
                }
                let change = change("updated", Some(old.content.state), &fields);
                (old.first_seen_at, change)
            }
        };
        let row = NewMirrorRow {
            content,
            first_seen_at,
            last_seen_at: now,
            remote_deleted_at: None,
        };
        if existing.contains_key(&row.content.id) {
            plan.rows.push(row);
        } else {
            plan.inserts.push(row);
        }
        plan.changes.push(change);
    }
    plan
}

/// Inserts new rows: PostgreSQL takes them in one `COPY` (binary), several times cheaper for it
/// than multi-row `INSERT`s, whose thousands of bound parameters it parses one by one; SQLite in
/// many per (cached) statement.
fn insert_rows(conn: &mut Conn, rows: &[NewMirrorRow]) -> Result<(), DbError> {
    match conn {
        Conn::Pg(c) if !rows.is_empty() => {
            let flat: Vec<CopyRow<'_>> = rows.iter().map(CopyRow::from).collect();
            diesel::copy_from(jobs::table)
                .from_insertable(&flat)
                .execute(&mut **c)?;
            Ok(())
        }
        _ => super::insert_in_fixed_batches!(conn, jobs::table, rows),
    }
}

macro_rules! mirror_columns {
    (
        key $id:ident : $id_ty:ty = $($id_rule:ident)*;
        $( $(#[$attr:meta])* $f:ident : $ty:ty = $($rule:ident)* ),* $(,)?
    ) => {
        /// A mirror row flattened for `COPY`: Diesel's binary `COPY` takes no embedded struct.
        #[derive(Insertable)]
        #[diesel(table_name = jobs, treat_none_as_default_value = false)]
        struct CopyRow<'a> {
            $id: <$id_ty as StoredField>::Borrowed<'a>,
            $( $f: <$ty as StoredField>::Borrowed<'a>, )*
            first_seen_at: Ts,
            last_seen_at: Ts,
            remote_deleted_at: Option<Ts>,
        }

        impl<'a> From<&'a NewMirrorRow> for CopyRow<'a> {
            fn from(row: &'a NewMirrorRow) -> Self {
                let c = &row.content;
                CopyRow {
                    $id: <$id_ty as StoredField>::borrow(&c.$id),
                    $( $f: <$ty as StoredField>::borrow(&c.$f), )*
                    first_seen_at: row.first_seen_at,
                    last_seen_at: row.last_seen_at,
                    remote_deleted_at: row.remote_deleted_at,
                }
            }
        }

        /// Replaces stored rows, many per statement.
        fn write_rows(conn: &mut Conn, rows: &[NewMirrorRow]) -> Result<(), DbError> {
            with_conn!(conn, |c| {
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    diesel::insert_into(jobs::table)
                        .values(chunk)
                        .on_conflict(jobs::$id)
                        .do_update()
                        .set((
                            ( $( jobs::$f.eq(excluded(jobs::$f)), )* ),
                            (
                                jobs::first_seen_at.eq(excluded(jobs::first_seen_at)),
                                jobs::last_seen_at.eq(excluded(jobs::last_seen_at)),
                                jobs::remote_deleted_at.eq(excluded(jobs::remote_deleted_at)),
                            ),
                        ))
                        .execute(c)?;
                }
                Ok(())
            })
        }
    };
}
job_fields!(mirror_columns);

fn touch_rows(conn: &mut Conn, ids: &[i64], now: Ts) -> Result<(), DbError> {
    with_conn!(conn, |c| {
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            diesel::update(jobs::table.filter(jobs::id.eq_any(chunk)))
                .set(jobs::last_seen_at.eq(now))
                .execute(c)?;
        }
        Ok(())
    })
}

/// The stored rows of these jobs. Ids above the mirror's highest cannot be stored yet, so a
/// batch made only of such ids (a backfill listed in id order) needs no lookup.
fn load_existing(
    conn: &mut Conn,
    incoming: &[JobContent],
) -> Result<HashMap<i64, MirrorRow>, DbError> {
    let Some(lowest) = incoming.iter().map(|c| c.id).min() else {
        return Ok(HashMap::new());
    };
    let highest_stored: Option<i64> = with_conn!(conn, |c| jobs::table
        .select(diesel::dsl::max(jobs::id))
        .first(c)?);
    if highest_stored.is_none_or(|max| lowest > max) {
        return Ok(HashMap::new());
    }
    load_by_id(conn, incoming.iter().map(|c| c.id))
}

/// Mirror rows by id.
pub fn load_by_id(
    conn: &mut Conn,
    ids: impl IntoIterator<Item = i64>,
) -> Result<HashMap<i64, MirrorRow>, DbError> {
    let ids: Vec<i64> = ids.into_iter().collect();
    let mut found = HashMap::with_capacity(ids.len());
    with_conn!(conn, |c| {
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let rows: Vec<MirrorRow> = jobs::table
                .filter(jobs::id.eq_any(chunk))
                .select(MirrorRow::as_select())
                .load(c)?;
            found.extend(rows.into_iter().map(|r| (r.content.id, r)));
        }
        Ok(found)
    })
}

pub fn get(conn: &mut Conn, id: i64) -> Result<Option<MirrorRow>, DbError> {
    Ok(load_by_id(conn, [id])?.remove(&id))
}

/// Every mirror row, in id order (tests and comparisons).
pub fn all(conn: &mut Conn) -> Result<Vec<MirrorRow>, DbError> {
    with_conn!(conn, |c| Ok(jobs::table
        .order(jobs::id.asc())
        .select(MirrorRow::as_select())
        .load(c)?))
}

/// After a complete, error-free listing of `campaign` that started at `listing_started`: every
/// live row of the campaign the listing did not contain (its `last_seen_at` is older) gets
/// `remote_deleted_at` and a `deleted` change. Returns how many.
pub fn mark_missing_deleted(
    conn: &mut Conn,
    campaign: i64,
    listing_started: Ts,
    now: Ts,
) -> Result<usize, DbError> {
    match mark_missing_deleted_guarded(conn, campaign, listing_started, now, None)? {
        Deletes::Applied(n) => Ok(n),
        Deletes::Held { .. } => unreachable!("no guard, nothing held"),
    }
}

/// What a complete listing's delete detection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletes {
    /// This many live jobs the listing did not contain were marked deleted.
    Applied(usize),
    /// The guard held them: `missing` of the campaign's `live` jobs were not in the listing.
    Held { missing: usize, live: usize },
}

/// [`mark_missing_deleted`] behind the mass-delete guard: when `guard` is `Some(ratio)` and the
/// listing misses more than `ratio` of the campaign's live jobs (or contained none of more than
/// [`FEW_JOBS`]), nothing is marked and [`Deletes::Held`] says how many it would have been.
pub fn mark_missing_deleted_guarded(
    conn: &mut Conn,
    campaign: i64,
    listing_started: Ts,
    now: Ts,
    guard: Option<f64>,
) -> Result<Deletes, DbError> {
    transaction(conn, |conn| {
        let gone: Vec<(i64, Option<String>, i32)> = with_conn!(conn, |c| jobs::table
            .filter(jobs::campaign.eq(campaign))
            .filter(jobs::remote_deleted_at.is_null())
            .filter(jobs::last_seen_at.lt(listing_started))
            .select((jobs::id, jobs::reference, jobs::state))
            .load(c)?);
        if let (Some(ratio), false) = (guard, gone.is_empty()) {
            let live: i64 = with_conn!(conn, |c| jobs::table
                .filter(jobs::campaign.eq(campaign))
                .filter(jobs::remote_deleted_at.is_null())
                .count()
                .get_result(c)?);
            let (missing, live) = (gone.len(), live as usize);
            let seen = live.saturating_sub(missing);
            if missing as f64 > ratio * live as f64 || (seen == 0 && live > FEW_JOBS) {
                return Ok(Deletes::Held { missing, live });
            }
        }
        let gone = gone
            .into_iter()
            .map(|(id, reference, state)| (id, campaign, reference, state))
            .collect();
        mark_deleted(conn, gone, ChangeSource::Pull, now).map(Deletes::Applied)
    })
}

/// A listing of no jobs for a campaign with more live jobs than this is held by the guard,
/// whatever `sync.mass_delete_ratio` says.
pub const FEW_JOBS: usize = 3;

/// Sets `remote_deleted_at` of the given live rows (`id, campaign, reference, state`) and
/// appends a `deleted` change for each. Returns how many.
fn mark_deleted(
    conn: &mut Conn,
    gone: Vec<(i64, i64, Option<String>, i32)>,
    source: ChangeSource,
    at: Ts,
) -> Result<usize, DbError> {
    let ids: Vec<i64> = gone.iter().map(|g| g.0).collect();
    with_conn!(conn, |c| {
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            diesel::update(jobs::table.filter(jobs::id.eq_any(chunk)))
                .set(jobs::remote_deleted_at.eq(at))
                .execute(c)?;
        }
        Ok::<_, DbError>(())
    })?;
    let rows: Vec<ChangeRow> = gone
        .into_iter()
        .map(|(id, campaign, reference, state)| {
            changes::row(
                id,
                campaign,
                reference,
                "deleted",
                Some(state),
                None,
                &[],
                source.as_str(),
                at,
            )
        })
        .collect();
    changes::append(conn, &rows)?;
    Ok(rows.len())
}

/// Marks the rows among `ids` seen by a listing at `now` (`last_seen_at`) without changing them:
/// jobs the listing contained in a form that could not be read are not deleted for it.
pub fn touch_seen(conn: &mut Conn, ids: &[i64], now: Ts) -> Result<usize, DbError> {
    with_conn!(conn, |c| {
        let mut touched = 0;
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            touched += diesel::update(jobs::table.filter(jobs::id.eq_any(chunk)))
                .set(jobs::last_seen_at.eq(now))
                .execute(c)?;
        }
        Ok(touched)
    })
}

/// Counts: live rows, rows marked deleted.
pub fn counts(conn: &mut Conn) -> Result<(i64, i64), DbError> {
    with_conn!(conn, |c| {
        let live = jobs::table
            .filter(jobs::remote_deleted_at.is_null())
            .count()
            .get_result(c)?;
        let deleted = jobs::table
            .filter(jobs::remote_deleted_at.is_not_null())
            .count()
            .get_result(c)?;
        Ok((live, deleted))
    })
}

/// Live mirror rows by (campaign, reference), for the references given; a reference that
/// several live rows share is returned apart, with their ids, since no row can stand for it.
pub fn find_by_references(conn: &mut Conn, keys: &[(i64, String)]) -> Result<ByReference, DbError> {
    let mut per_campaign: HashMap<i64, Vec<&str>> = HashMap::new();
    for (campaign, reference) in keys {
        per_campaign.entry(*campaign).or_default().push(reference);
    }
    let mut found = ByReference::default();
    for (campaign, references) in per_campaign {
        for chunk in references.chunks(IDS_PER_STATEMENT) {
            let rows: Vec<MirrorRow> = with_conn!(conn, |c| jobs::table
                .filter(jobs::campaign.eq(campaign))
                .filter(jobs::reference.eq_any(chunk))
                .filter(jobs::remote_deleted_at.is_null())
                .order(jobs::id.asc())
                .select(MirrorRow::as_select())
                .load(c)?);
            for row in rows {
                let Some(reference) = row.content.reference.clone() else {
                    continue;
                };
                let key = (campaign, reference);
                if let Some(ids) = found.ambiguous.get_mut(&key) {
                    ids.push(row.content.id);
                } else if let Some(first) = found.unique.remove(&key) {
                    found
                        .ambiguous
                        .insert(key, vec![first.content.id, row.content.id]);
                } else {
                    found.unique.insert(key, row);
                }
            }
        }
    }
    Ok(found)
}

/// What [`find_by_references`] found.
#[derive(Debug, Default)]
pub struct ByReference {
    /// References held by exactly one live row.
    pub unique: HashMap<(i64, String), MirrorRow>,
    /// References held by several live rows: their ids.
    pub ambiguous: HashMap<(i64, String), Vec<i64>>,
}

/// Marks live rows the API answered 404 for as deleted at `at` (the API's clock), with a
/// `deleted` change each. Call inside the transaction that records the answer.
pub fn mark_gone(conn: &mut Conn, ids: &[i64], at: Ts) -> Result<usize, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let gone: Vec<(i64, i64, Option<String>, i32)> = with_conn!(conn, |c| jobs::table
        .filter(jobs::id.eq_any(ids))
        .filter(jobs::remote_deleted_at.is_null())
        .select((jobs::id, jobs::campaign, jobs::reference, jobs::state))
        .load(c)?);
    mark_deleted(conn, gone, ChangeSource::Push, at)
}

/// Those of `ids` the mirror holds as deleted upstream (`remote_deleted_at` set).
pub fn deleted_among(conn: &mut Conn, ids: &[i64]) -> Result<Vec<i64>, DbError> {
    let ids = ids.to_vec();
    with_conn!(conn, |c| Ok(jobs::table
        .filter(jobs::id.eq_any(&ids))
        .filter(jobs::remote_deleted_at.is_not_null())
        .select(jobs::id)
        .load(c)?))
}

/// Live mirror rows of `campaign` with an id above `after`, in id order, at most `limit`: their
/// id and reference (`verify` pages through a campaign with it).
pub fn live_ids_after(
    conn: &mut Conn,
    campaign: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, Option<String>)>, DbError> {
    with_conn!(conn, |c| Ok(jobs::table
        .filter(jobs::campaign.eq(campaign))
        .filter(jobs::remote_deleted_at.is_null())
        .filter(jobs::id.gt(after))
        .order(jobs::id.asc())
        .limit(limit)
        .select((jobs::id, jobs::reference))
        .load(c)?))
}
