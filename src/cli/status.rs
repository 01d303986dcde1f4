//! `jobsync status`: what the database knows, without calling the API.

use super::{CliError, CliResult};
use crate::db::repo::{jobs, outbox, runs, state};
use crate::db::{Db, DbError};

pub async fn print(db: &Db) -> CliResult {
    let report = db
        .run(|conn| {
            let watermark = state::get(conn, state::WATERMARK)?;
            let last_pull_ok = state::get(conn, state::LAST_PULL_OK)?;
            let (live, deleted) = jobs::counts(conn)?;
            let counts = outbox::counts(conn)?;
            let oldest = outbox::oldest_pending(conn)?;
            let recent = runs::recent(conn, 5)?;
            let mut out = String::new();
            out += &format!("watermark:        {}\n", watermark.as_deref().unwrap_or("none yet"));
            out += &format!("last good pull:   {}\n", last_pull_ok.as_deref().unwrap_or("never"));
            out += &format!("mirror:           {live} jobs, {deleted} marked deleted upstream\n");
            let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
            out += &format!("outbox:           {}\n", counts.join(", "));
            if let Some(oldest) = oldest {
                out += &format!("oldest pending:   {oldest}\n");
            }
            out += "last runs:\n";
            if recent.is_empty() {
                out += "  none yet\n";
            }
            for r in recent {
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
    print!("{report}");
    Ok(())
}
