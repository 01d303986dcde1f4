//! `jobsync resync [--campaign N …]`: asks the next cycle (the daemon's or `--once`) to list every
//! tracked campaign, or those named, in full — delete detection on demand. The request is kept in
//! `sync_state` (`resync_request`: who asked, when, which campaigns), merged with any request
//! still pending, and settled by the pull once those listings completed; `jobsync status` shows
//! it meanwhile. No API call, no sync lock.

use super::{CliError, CliResult, open_db};
use crate::config::Config;
use crate::db::DbError;
use crate::db::repo::state::{self, ResyncRequest};

pub async fn run(config: &Config, campaigns: Vec<i64>) -> CliResult {
    if let Some(bad) = campaigns.iter().find(|c| **c <= 0) {
        return Err(CliError::usage(format!(
            "--campaign: campaign ids are positive integers, not {bad}"
        )));
    }
    let request = ResyncRequest {
        requested_by: asker(),
        requested_at: crate::db::Ts::now().to_string(),
        campaigns: (!campaigns.is_empty()).then(|| {
            let mut list = campaigns.clone();
            list.sort_unstable();
            list.dedup();
            list
        }),
    };
    let db = open_db(config).await?;
    let (pending, tracked) = db
        .run(move |c| {
            let pending = state::request_resync(c, request)?;
            let tracked: Vec<i64> = state::tracked_campaigns(c)?
                .into_iter()
                .map(|t| t.0)
                .collect();
            Ok::<_, DbError>((pending, tracked))
        })
        .await?;
    let which = match &pending.campaigns {
        Some(list) => format!("campaigns {}", join(list)),
        None if tracked.is_empty() => {
            "every tracked campaign (none yet: the next cycle tracks sync.campaigns)".into()
        }
        None => format!("every tracked campaign ({})", join(&tracked)),
    };
    outln!(
        "resync requested by {} at {}: {which} will be listed in full at the next cycle \
         (daemon or --once); `jobsync status` shows the request until then",
        pending.requested_by,
        pending.requested_at
    );
    let untracked: Vec<i64> = campaigns
        .iter()
        .copied()
        .filter(|c| !tracked.contains(c))
        .collect();
    if !untracked.is_empty() {
        outln!(
            "note: campaigns {} are not tracked yet; the next cycle tracks them and re-lists \
             them in full every sync.full_resync_after_hours from then on",
            join(&untracked)
        );
    }
    Ok(())
}

/// Who asked: the OS user (`$USER`, else `$LOGNAME`), or `unknown`.
fn asker() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// `28, 29`.
pub(super) fn join(campaigns: &[i64]) -> String {
    campaigns
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
