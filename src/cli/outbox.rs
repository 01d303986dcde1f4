//! `jobsync outbox list [--status S] [--limit N]` and `jobsync outbox retry (--id N… | --failed)`:
//! look at the outbox from the database (no API call), and re-queue failed rows.

use super::{CliError, CliResult, OutboxCommand, open_db};
use crate::config::Config;
use crate::db::models::{OutboxRow, OutboxStatus};
use crate::db::repo::outbox;

pub async fn run(config: &Config, cmd: OutboxCommand) -> CliResult {
    match cmd {
        OutboxCommand::List { status, limit } => list(config, status, limit).await,
        OutboxCommand::Retry { ids, failed } => retry(config, ids, failed).await,
    }
}

async fn list(config: &Config, status: Option<String>, limit: i64) -> CliResult {
    let status = match status.as_deref().map(str::parse::<OutboxStatus>) {
        None => None,
        Some(Ok(status)) => Some(status),
        Some(Err(e)) => return Err(CliError::usage(e)),
    };
    if limit <= 0 {
        return Err(CliError::usage("--limit must be positive"));
    }
    let db = open_db(config).await?;
    let rows = db.run(move |c| outbox::list(c, status, limit)).await?;
    if rows.is_empty() {
        println!("no outbox rows");
    }
    for row in &rows {
        println!("{}", describe(row));
    }
    Ok(())
}

/// One line per row: id, op, target, status, attempts, HTTP status, resulting job, error.
fn describe(row: &OutboxRow) -> String {
    let target = match (row.job_id, row.campaign, &row.reference) {
        (Some(id), _, _) => format!("job {id}"),
        (None, Some(c), Some(r)) => format!("campaign {c} reference {r}"),
        (None, Some(c), None) => format!("campaign {c}"),
        (None, None, Some(r)) => format!("reference {r}"),
        (None, None, None) => "no target".into(),
    };
    let mut line = format!(
        "#{} {} {target} {} attempts={}",
        row.id, row.op, row.status, row.attempts
    );
    if let Some(status) = row.http_status {
        line += &format!(" http={status}");
    }
    if let Some(job) = row.result_job_id {
        line += &format!(" result_job_id={job}");
    }
    if let Some(error) = &row.last_error {
        line += &format!(" error: {error}");
    }
    line
}

async fn retry(config: &Config, ids: Vec<i64>, all_failed: bool) -> CliResult {
    let db = open_db(config).await?;
    if all_failed {
        let n = db.run(|c| outbox::retry(c, None)).await?;
        println!("re-queued {n} failed row(s)");
        return Ok(());
    }
    let wanted = ids.clone();
    let (requeued, found) = db
        .run(move |c| {
            let found = outbox::get_many(c, &wanted)?;
            let failed: Vec<i64> = found
                .iter()
                .filter(|r| r.status == OutboxStatus::Failed)
                .map(|r| r.id)
                .collect();
            Ok((outbox::retry(c, Some(&failed))?, found))
        })
        .await?;
    println!("re-queued {requeued} failed row(s)");
    let skipped: Vec<String> = ids
        .iter()
        .filter_map(|id| match found.iter().find(|r| r.id == *id) {
            None => Some(format!("{id} (no such row)")),
            Some(r) if r.status != OutboxStatus::Failed => Some(format!("{id} ({})", r.status)),
            Some(_) => None,
        })
        .collect();
    if !skipped.is_empty() {
        println!("not re-queued, because not failed: {}", skipped.join(", "));
    }
    Ok(())
}
