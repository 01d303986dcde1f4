//! `jobsync verify [--campaign N …] [--json]`: the mirror against the API, the outbox and the
//! changefeed against both (see [`crate::verify`] for each kind of finding). Read-only: no sync
//! lock, no write. A summary table on stdout, or with `--json` one NDJSON line per finding (kind,
//! job_id, campaign, reference, fields: field names, never values). Exit 0 clean, 3 differences
//! found (`in_motion` is not one), 1 could not complete.

use super::{CliError, CliResult, context};
use crate::config::Config;
use crate::shutdown::StopFlag;
use crate::verify::{self, Finding, Kind, Report};

/// Findings listed under the table (all of those kept go to `--json`).
const TABLE_FINDINGS: usize = 50;

pub async fn run(config: &Config, campaigns: Vec<i64>, json: bool) -> CliResult {
    if let Some(bad) = campaigns.iter().find(|c| **c <= 0) {
        return Err(CliError::usage(format!(
            "--campaign: campaign ids are positive integers, not {bad}"
        )));
    }
    let engine = super::unless_stopped(
        "while connecting",
        context::engine(config, "verify", StopFlag::new()),
    )
    .await?;
    let options = verify::Options {
        campaigns,
        stuck_after_cycles: config.push.max_row_attempts,
        ..verify::Options::default()
    };
    let report = tokio::select! {
        report = verify::run(&engine.db, &engine.client, &options) => report
            .map_err(|e| CliError::failed(format!("verify could not complete: {e}")))?,
        () = super::shutdown_signal() => {
            return Err(CliError::failed("verify stopped before it completed (SIGINT/SIGTERM)"));
        }
    };
    if json {
        for finding in &report.findings {
            outln!("{}", ndjson(finding));
        }
        if report.omitted > 0 {
            eprintln!(
                "verify: {} more findings counted but not listed (the first {} are)",
                report.omitted,
                report.findings.len()
            );
        }
    } else {
        out!("{}", table(&report));
    }
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    match report.differences() {
        0 => Ok(()),
        n => Err(CliError {
            code: 3,
            message: format!(
                "verify found {n} difference{} between the mirror, the outbox and the API ({})",
                if n == 1 { "" } else { "s" },
                summary(&report)
            ),
        }),
    }
}

/// One finding as an NDJSON line, its keys in the contract's order.
fn ndjson(f: &Finding) -> String {
    serde_json::to_string(f).unwrap_or_else(|_| "{}".into())
}

/// `stale 1, extra 2` — the kinds found, differences only.
fn summary(report: &Report) -> String {
    Kind::ALL
        .iter()
        .filter(|k| k.is_difference() && report.count(**k) > 0)
        .map(|k| format!("{k} {}", report.count(*k)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn table(report: &Report) -> String {
    let listed = if report.campaigns.is_empty() {
        "no campaign tracked yet, none listed".to_string()
    } else {
        let ids: Vec<String> = report.campaigns.iter().map(i64::to_string).collect();
        format!("campaigns {} listed in full", ids.join(", "))
    };
    let took = (report.finished_at - report.started_at).num_milliseconds() as f64 / 1000.0;
    let mut out = format!("verify: {listed} ({took:.1}s)\n");
    out += &format!("{:<12}{:>10}\n", "kind", "findings");
    for kind in Kind::ALL {
        let n = report.count(kind);
        let comment = match kind {
            Kind::InMotion if n > 0 => {
                "  changed upstream while checked or since the last pull: not a difference"
            }
            _ => "",
        };
        out += &format!("{:<12}{:>10}{comment}\n", kind.as_str(), n);
    }
    out += &format!("differences: {}\n", report.differences());
    if !report.findings.is_empty() {
        out += "findings:\n";
        for f in report.findings.iter().take(TABLE_FINDINGS) {
            out += &format!("  {:<10}", f.kind.as_str());
            if let Some(id) = f.job_id {
                out += &format!(" job {id}");
            }
            if let Some(campaign) = f.campaign {
                out += &format!(" campaign {campaign}");
            }
            if let Some(reference) = &f.reference {
                out += &format!(" reference {reference}");
            }
            if !f.fields.is_empty() {
                out += &format!(" fields {}", f.fields.join(","));
            }
            out += "\n";
        }
        let unlisted =
            (report.findings.len().saturating_sub(TABLE_FINDINGS)) as u64 + report.omitted;
        if unlisted > 0 {
            out += &format!(
                "  … and {unlisted} more (--json lists up to {})\n",
                report.findings.len()
            );
        }
    }
    out
}
