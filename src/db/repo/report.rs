//! The state an operator asks about, read in one go: `jobsync status` prints it, the server's
//! `/status` serves it as JSON. No personal data, no secrets.

use super::{jobs, outbox, runs, state};
use crate::db::models::RunRow;
use crate::db::{Conn, DbError};
use crate::with_conn;
use serde::{Serialize, Serializer};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub watermark: Option<String>,
    pub last_successful_pull: Option<String>,
    pub mirror: MirrorCounts,
    /// Rows by status, every status present, in lifecycle order.
    #[serde(serialize_with = "as_map")]
    pub outbox: Vec<(String, i64)>,
    pub oldest_pending_outbox_row: Option<String>,
    /// Campaigns whose listing the API refused, set aside (not listed in full, tried hourly).
    pub campaigns_set_aside: Vec<state::RefusedCampaign>,
    /// Jobs set aside because they could not be decoded (table `quarantine`).
    pub jobs_quarantined: i64,
    /// Campaigns whose last listing's deletes the mass-delete guard holds.
    pub deletes_held: Vec<state::HeldDeletes>,
    /// A `jobsync resync` waiting for the next cycle's full listings.
    pub resync_pending: Option<PendingResync>,
    /// Changefeed readers jobsync keeps a position for (`changes --consumer`, the webhook sink),
    /// with their lag and any pause.
    pub changefeed_consumers: Vec<super::consumers::ConsumerStatus>,
    pub last_runs: Vec<RunRow>,
}

/// A pending `jobsync resync`, as `status` shows it; who asked is left out of the JSON of
/// `/status`, which serves no personal data.
#[derive(Debug, Clone, Serialize)]
pub struct PendingResync {
    #[serde(skip)]
    pub requested_by: String,
    pub requested_at: String,
    /// The campaigns named; `None`: every tracked campaign.
    pub campaigns: Option<Vec<i64>>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct MirrorCounts {
    pub jobs: i64,
    pub deleted_upstream: i64,
}

/// Reads the report, with the `recent` latest runs.
pub fn read(conn: &mut Conn, recent: i64) -> Result<Report, DbError> {
    let (jobs, deleted_upstream) = jobs::counts(conn)?;
    Ok(Report {
        watermark: state::get(conn, state::WATERMARK)?,
        last_successful_pull: state::get(conn, state::LAST_PULL_OK)?,
        mirror: MirrorCounts {
            jobs,
            deleted_upstream,
        },
        outbox: outbox::counts(conn)?,
        oldest_pending_outbox_row: outbox::oldest_pending(conn)?.map(|t| t.to_string()),
        campaigns_set_aside: state::refused_campaigns(conn)?,
        deletes_held: state::held_deletes(conn)?,
        jobs_quarantined: super::quarantine::count(conn)?,
        resync_pending: state::resync_request(conn)?.map(|(r, _)| PendingResync {
            requested_by: r.requested_by,
            requested_at: r.requested_at,
            campaigns: r.campaigns,
        }),
        changefeed_consumers: super::consumers::all_with_lag(conn)?,
        last_runs: runs::recent(conn, recent)?,
    })
}

fn as_map<S: Serializer>(pairs: &[(String, i64)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

/// What a database holds of jobsync's, read without migrating it: a table not created yet counts
/// as empty. `demo` asks before it writes into a database it was pointed at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    pub jobs: i64,
    pub outbox_rows: i64,
    pub sync_runs: i64,
    /// `sync_state` value under [`DEMO_MARKER`], when `demo` created the database.
    pub demo_marker: Option<String>,
}

impl Holdings {
    pub fn is_empty(&self) -> bool {
        self.jobs == 0 && self.outbox_rows == 0 && self.sync_runs == 0
    }
}

/// The `sync_state` key `demo` writes when it starts on an empty database.
pub const DEMO_MARKER: &str = "demo_database";

pub fn holdings(conn: &mut Conn) -> Result<Holdings, DbError> {
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Text};
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut exists = |table: &str| -> Result<bool, DbError> {
        let found =
            with_conn!(&mut *conn,
            sqlite |c| diesel::sql_query(
                "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?",
            )
            .bind::<Text, _>(table)
            .get_result::<Count>(c)?,
            // `to_regclass` follows the search path, as the unqualified queries below do.
            postgres |c| diesel::sql_query(
                "SELECT count(*) AS n FROM (SELECT to_regclass($1) AS t) r WHERE t IS NOT NULL",
            )
            .bind::<Text, _>(table)
            .get_result::<Count>(c)?,
        );
        Ok(found.n > 0)
    };
    let present: Vec<bool> = ["jobs", "outbox", "sync_runs", "sync_state"]
        .into_iter()
        .map(&mut exists)
        .collect::<Result<_, _>>()?;
    let mut count = |table: &str| -> Result<i64, DbError> {
        let sql = format!("SELECT count(*) AS n FROM {table}");
        Ok(crate::with_conn!(&mut *conn, |c| diesel::sql_query(&sql)
            .get_result::<Count>(c))?
        .n)
    };
    let mut holdings = Holdings::default();
    if present[0] {
        holdings.jobs = count("jobs")?;
    }
    if present[1] {
        holdings.outbox_rows = count("outbox")?;
    }
    if present[2] {
        holdings.sync_runs = count("sync_runs")?;
    }
    if present[3] {
        holdings.demo_marker = state::get(conn, DEMO_MARKER)?;
    }
    Ok(holdings)
}
