//! The shipped alerts (`deploy/kubernetes/components/monitoring/prometheusrule.yaml`) against what
//! the real daemon serves on `/metrics`: every `jobsync_*` name an expression uses is a served
//! metric, and every exact label matcher (`status="failed"`) a served label value. A renamed
//! metric or label would otherwise leave an alert that silently never fires.

mod common;

use common::*;
use jobsync::sim::SimConfig;
use std::collections::BTreeSet;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/kubernetes/components/monitoring/prometheusrule.yaml"
);

/// (alert name, expression) of every alert rule. serde_json reads no YAML: the file is read as
/// lines; an `expr:` is either inline or a block scalar (`|`, `>-`) of the lines indented deeper.
fn alert_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(RULES).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut alerts = Vec::new();
    let mut name = None;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some(alert) = trimmed.strip_prefix("alert:") {
            name = Some(alert.trim().to_string());
        }
        let Some(rest) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        let expr = if rest.starts_with('|') || rest.starts_with('>') {
            lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            rest.trim_matches(|c| c == '\'' || c == '"').to_string()
        };
        let name = name.take().expect("an expr: before its alert: name");
        alerts.push((name, expr));
    }
    alerts
}

/// Each `jobsync_*` metric name in an expression, with its `{...}` selector if one follows.
fn selectors(expr: &str) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("jobsync_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            rest = &tail[len..];
            continue;
        }
        let name = tail[..len].to_string();
        let after = &tail[len..];
        let selector = after
            .strip_prefix('{')
            .and_then(|s| s.split_once('}'))
            .map(|(inside, _)| inside.to_string());
        found.push((name, selector));
        rest = after;
    }
    found
}

/// Exact matchers `label="value"` of a selector; regex (`=~`) and negative ones are skipped.
fn exact_matchers(selector: &str) -> Vec<(String, String)> {
    selector
        .split(',')
        .filter_map(|m| {
            let (label, value) = m.split_once('=')?;
            let value = value.strip_prefix('"')?.strip_suffix('"')?;
            let label = label.trim();
            (!label.ends_with('!')).then(|| (label.to_string(), value.to_string()))
        })
        .collect()
}

/// Sample lines of `/metrics`: (metric name, the whole line).
fn samples(metrics: &str) -> Vec<(&str, &str)> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| (l.split(['{', ' ']).next().unwrap(), l))
        .collect()
}

/// Every metric family `/metrics` declares (a `# TYPE` line), whether or not it has samples yet.
fn families(metrics: &str) -> BTreeSet<&str> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next())
        .collect()
}

fn served(families: &BTreeSet<&str>, name: &str) -> bool {
    families.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| families.contains(base))
        })
}

#[test]
fn every_metric_and_label_an_alert_uses_is_served() {
    let alerts = alert_expressions();
    let alert_lines = std::fs::read_to_string(RULES)
        .unwrap()
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(
        alerts.len(),
        alert_lines,
        "an alert without an expr: {alerts:?}"
    );
    assert!(alerts.len() >= 5, "{alerts:?}");

    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 50,
        ..SimConfig::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&rt, &sim.base_url(), &dir.path().join("jobsync.db"), &[]);
    let (_, metrics) = daemon.wait_until("/metrics", |status, body| {
        status == 200 && metric(body, "jobsync_runs_total{status=\"ok\"}") >= 1.0
    });
    let families = families(&metrics);
    let samples = samples(&metrics);

    let mut checked = 0;
    for (alert, expr) in &alerts {
        let used = selectors(expr);
        assert!(!used.is_empty(), "{alert} uses no jobsync metric: {expr}");
        for (name, selector) in used {
            assert!(
                served(&families, &name),
                "{alert} uses {name}, which /metrics does not serve:\n{metrics}"
            );
            for (label, value) in selector.as_deref().map(exact_matchers).unwrap_or_default() {
                let pair = format!("{label}=\"{value}\"");
                assert!(
                    samples
                        .iter()
                        .any(|(n, line)| *n == name && line.contains(&pair)),
                    "{alert} selects {name}{{{pair}}}, which /metrics never serves:\n{metrics}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= alerts.len());
}

#[test]
fn a_refused_token_shows_in_the_series_the_token_alert_watches() {
    let (_, expr) = alert_expressions()
        .into_iter()
        .find(|(name, _)| name == "JobsyncTokenRefused")
        .expect("the JobsyncTokenRefused alert");
    let statuses: Vec<String> = expr
        .split_once("status=~\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(alternatives, _)| alternatives.split('|').map(str::to_string).collect())
        .expect("JobsyncTokenRefused selects statuses with status=~\"...\"");

    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 10,
        ..SimConfig::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(
        &rt,
        &sim.base_url(),
        &dir.path().join("jobsync.db"),
        &[("JOBSYNC_API__TOKEN", "wrong")],
    );
    daemon.wait_for_log("cycle failed");
    let (_, metrics) = daemon.get("/metrics");
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("jobsync_api_requests_total{"))
        .filter(|l| {
            statuses
                .iter()
                .any(|s| l.contains(&format!("status=\"{s}\"")))
        })
        .collect();
    assert!(
        !refused.is_empty(),
        "the refused token was answered with a status outside {statuses:?}:\n{metrics}"
    );
}

#[test]
fn the_expression_reader_finds_names_and_matchers() {
    let found = selectors(
        r#"max by (namespace) (jobsync_outbox_rows{status="failed"}) > x_jobsync_no + jobsync_a_sum"#,
    );
    assert_eq!(
        found,
        vec![
            (
                "jobsync_outbox_rows".to_string(),
                Some("status=\"failed\"".to_string())
            ),
            ("jobsync_a_sum".to_string(), None),
        ]
    );
    assert_eq!(
        exact_matchers(r#"status="failed",endpoint!="x",code=~"4..""#),
        vec![("status".to_string(), "failed".to_string())]
    );
}
