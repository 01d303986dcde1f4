//! The state an operator asks about, read in one go: `jobsync status` prints it, the server's
//! `/status` serves it as JSON. No personal data, no secrets.

use super::{jobs, outbox, runs, state};
use crate::db::models::RunRow;
use crate::db::{Conn, DbError};
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
    pub last_runs: Vec<RunRow>,
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
        last_runs: runs::recent(conn, recent)?,
    })
}

fn as_map<S: Serializer>(pairs: &[(String, i64)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}
