//! `jobsync prune`: apply the retention settings now (the daemon also prunes daily).

use super::{CliResult, open_db};
use crate::config::Config;
use crate::db::repo::retention;

pub async fn run(config: &Config) -> CliResult {
    let db = open_db(config).await?;
    let keep = config.retention.clone();
    let pruned = db.run(move |c| retention::prune(c, &keep)).await?;
    outln!(
        "pruned: {} changefeed rows, {} done/superseded outbox rows, {} runs, {} jobs deleted upstream",
        pruned.changes,
        pruned.outbox,
        pruned.runs,
        pruned.deleted_jobs
    );
    for (consumer, rows) in &pruned.unread {
        outln!("warning: consumer {consumer} had not read {rows} of the pruned changefeed rows");
    }
    Ok(())
}
