//! `jobsync status`: what the database knows, without calling the API — and without writing to
//! the database: it is opened read-only ([`Db::read_only`]), not migrated, not created. A
//! database that does not exist, or that this binary would migrate first, is an error saying to
//! run `jobsync migrate`.

use super::{CliError, CliResult, db_options};
use crate::config::Config;
use crate::db::Db;
use crate::db::repo::report::{self, Report};

pub async fn run(config: &Config) -> CliResult {
    let url = config.database.url.clone();
    let options = db_options(config);
    let report = crate::db::blocking(move || Db::read_only(&url, options, |c| report::read(c, 5)))
        .await
        .map_err(CliError::from)?;
    out!("{}", render(report));
    Ok(())
}

fn render(r: Report) -> String {
    let mut out = String::new();
    out += &format!(
        "watermark:        {}\n",
        r.watermark.as_deref().unwrap_or("none yet")
    );
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
    for c in &r.changefeed_consumers {
        let paused = match (&c.paused_until, &c.paused_reason) {
            (Some(until), reason) => format!(
                "; PAUSED until {until}: {} (`jobsync webhook resume` resumes now)",
                reason.as_deref().unwrap_or("no reason recorded")
            ),
            _ => String::new(),
        };
        out += &format!(
            "consumer:         {} at seq {}, {} behind, updated {}{paused}\n",
            c.name, c.last_seq, c.lag, c.updated_at
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
    out
}
