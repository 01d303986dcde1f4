//! `jobsync status`: what the database knows, without calling the API.

use super::{CliError, CliResult};
use crate::db::repo::report;
use crate::db::{Db, DbError};

pub async fn print(db: &Db) -> CliResult {
    let report = db
        .run(|conn| {
            let r = report::read(conn, 5)?;
            let mut out = String::new();
            out += &format!("watermark:        {}\n", r.watermark.as_deref().unwrap_or("none yet"));
            let last_pull = r.last_successful_pull.as_deref().unwrap_or("never");
            out += &format!("last good pull:   {last_pull}\n");
            let (live, deleted) = (r.mirror.jobs, r.mirror.deleted_upstream);
            out += &format!("mirror:           {live} jobs, {deleted} marked deleted upstream\n");
            let counts: Vec<String> = r.outbox.iter().map(|(s, n)| format!("{s} {n}")).collect();
            out += &format!("outbox:           {}\n", counts.join(", "));
            if let Some(oldest) = &r.oldest_pending_outbox_row {
                out += &format!("oldest pending:   {oldest}\n");
            }
            for refused in &r.campaigns_set_aside {
                out += &format!(
                    "set aside:        campaign {} since {} — {}\n",
                    refused.campaign, refused.refused_at, refused.reason
                );
            }
            if r.jobs_quarantined > 0 {
                out += &format!(
                    "quarantined:      {} jobs that could not be decoded (table quarantine)\n",
                    r.jobs_quarantined
                );
            }
            for held in &r.deletes_held {
                out += &format!(
                    "deletes held:     campaign {} since {} — a listing would mark {} jobs \
                     deleted; applied if the next listing agrees\n",
                    held.campaign, held.held_at, held.jobs
                );
            }
            if let Some(resync) = &r.resync_pending {
                let which = match &resync.campaigns {
                    Some(list) => format!("campaigns {}", super::resync::join(list)),
                    None => "every tracked campaign".to_string(),
                };
                out += &format!(
                    "resync pending:   {which}, asked by {} at {}; listed in full at the next cycle\n",
                    resync.requested_by, resync.requested_at
                );
            }
            out += "last runs:\n";
            if r.last_runs.is_empty() {
                out += "  none yet\n";
            }
            for r in r.last_runs {
                out += &format!(
                    "  #{} {} {} {} started {} pulled {} changed {} pushed {} ok / {} failed, {} api calls{}\n",
                    r.id,
                    r.trigger,
                    r.mode,
                    r.status,
                    r.started_at,
                    r.jobs_pulled,
                    r.jobs_changed,
                    r.pushed_ok,
                    r.pushed_failed,
                    r.api_calls,
                    r.error.map(|e| format!(" — {e}")).unwrap_or_default()
                );
            }
            Ok::<_, DbError>(out)
        })
        .await
        .map_err(CliError::from)?;
    out!("{report}");
    Ok(())
}
