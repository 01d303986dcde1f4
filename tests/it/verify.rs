//! `jobsync verify` and `jobsync resync` (contract §8): a converged mirror verifies clean; each
//! kind of finding, planted alone, is named (stale, missing, extra, lost, duplicate, stuck, feed);
//! a job modified upstream while the listing runs is `in_motion`, not drift; `resync` makes the
//! next cycle list in full, so an upstream delete reaches the mirror. The exit codes (0, 3, 1)
//! are checked once through the real binary.

use crate::common::*;
use chrono::{Duration, Utc};
use jobsync::config::SyncConfig;
use jobsync::db::repo::state::{self, ResyncRequest};
use jobsync::sim::{Hold, SimConfig, SimHandle};
use jobsync::sync::cycle::Engine;
use jobsync::verify::{self, Kind, Report};
use serde_json::{Value, json};

on_both_backends!(
    a_converged_mirror_verifies_clean,
    a_mirror_row_edited_behind_jobsyncs_back_is_stale,
    a_mirror_row_deleted_is_missing,
    a_job_deleted_upstream_with_no_full_listing_since_is_extra,
    a_done_create_whose_job_is_not_upstream_is_lost,
    a_crm_create_duplicated_upstream_is_a_duplicate,
    a_row_in_flight_past_its_deadline_is_stuck,
    a_changefeed_row_altered_is_a_feed_finding,
    a_job_modified_during_the_listing_is_in_motion_not_drift,
    resync_lists_in_full_at_the_next_cycle_and_verify_then_finds_only_the_duplicate,
    a_named_campaign_narrows_the_listing,
);

const JOBS_PER_CAMPAIGN: i64 = 8;
/// The CRM's own create, pushed by the fixture.
const CRM_REFERENCE: &str = "crm-1";

/// A simulator holding jobs last modified an hour ago (so that none counts as in motion), a
/// mirror converged on it by two cycles, and one CRM create pushed and `done`.
async fn converged(t: &TestDb) -> (SimHandle, Engine) {
    let sim = start_sim(SimConfig {
        allow_duplicate_references: true,
        ..SimConfig::default()
    })
    .await;
    let an_hour_ago = (Utc::now() - Duration::hours(1)).to_rfc3339();
    let jobs: Vec<serde_json::Map<String, Value>> = [28, 29]
        .iter()
        .flat_map(|campaign| {
            let at = an_hour_ago.clone();
            (1..=JOBS_PER_CAMPAIGN).map(move |n| {
                fields(json!({
                    "campaign": campaign, "reference": format!("seed-{campaign}-{n}"),
                    "name": format!("Contact {n}"), "city": "Paris",
                    "numbers": ["+33612345678"], "modified_at": at,
                }))
            })
        })
        .collect();
    sim.insert_jobs(jobs).expect("jobs inserted");
    let engine = engine_with(
        &t.db,
        client(&sim),
        SyncConfig {
            campaigns: vec![28, 29],
            ..SyncConfig::default()
        },
    );
    cycle(&engine).await;
    insert(
        &t.db,
        &[create(28, CRM_REFERENCE, json!({"name": "From the CRM"}))],
    );
    let summary = cycle(&engine).await;
    assert_eq!(summary.push.ok, 1, "the CRM's create is pushed");
    (sim, engine)
}

fn options() -> verify::Options {
    verify::Options {
        stuck_after_cycles: 1,
        ..verify::Options::default()
    }
}

async fn verify_now(engine: &Engine) -> Report {
    verify::run(&engine.db, &engine.client, &options())
        .await
        .expect("verify completes")
}

/// The kinds found, with their counts (zeros left out).
fn found(report: &Report) -> Vec<(Kind, u64)> {
    report
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (*k, *n))
        .collect()
}

fn exec(t: &TestDb, sql: &str) -> usize {
    execute_sql(&t.db, sql)
}

/// A job of `campaign` upstream (from the fixture's, not the CRM's).
fn seeded_job(sim: &SimHandle, campaign: i64, n: i64) -> Value {
    let reference = format!("seed-{campaign}-{n}");
    sim.state_json()
        .into_iter()
        .find(|j| j["reference"] == reference.as_str())
        .expect("a seeded job")
}

fn crm_job_id(t: &TestDb) -> i64 {
    all_rows(&t.db)
        .iter()
        .find(|r| r.reference.as_deref() == Some(CRM_REFERENCE))
        .and_then(|r| r.result_job_id)
        .expect("the CRM's create is done")
}

async fn a_converged_mirror_verifies_clean(t: &TestDb) {
    let (_sim, engine) = converged(t).await;
    let report = verify_now(&engine).await;
    assert_eq!(found(&report), vec![], "{:?}", report.findings);
    assert!(report.is_clean());
    assert_eq!(report.campaigns, vec![28, 29]);
    assert!(report.findings.is_empty());
    assert_eq!(report.counts.len(), Kind::ALL.len(), "every kind counted");
}

async fn a_mirror_row_edited_behind_jobsyncs_back_is_stale(t: &TestDb) {
    let (sim, engine) = converged(t).await;
    let job = seeded_job(&sim, 28, 3);
    let id = job["id"].as_i64().unwrap();
    assert_eq!(
        exec(
            t,
            &format!("UPDATE jobs SET city = 'Secret-Town' WHERE id = {id}")
        ),
        1
    );
    let report = verify_now(&engine).await;
    assert_eq!(found(&report), vec![(Kind::Stale, 1)]);
    let finding = &report.findings[0];
    assert_eq!(finding.job_id, Some(id));
    assert_eq!(finding.campaign, Some(28));
    assert_eq!(finding.reference.as_deref(), Some("seed-28-3"));
    assert_eq!(finding.fields, vec!["city"]);
    // Field names, never values.
    let line = serde_json::to_string(finding).unwrap();
    assert!(
        !line.contains("Secret-Town") && !line.contains("Paris"),
        "{line}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&line).unwrap(),
        json!({"kind": "stale", "job_id": id, "campaign": 28, "reference": "seed-28-3",
               "fields": ["city"]})
    );
    assert!(!report.is_clean());
}

async fn a_mirror_row_deleted_is_missing(t: &TestDb) {
    let (sim, engine) = converged(t).await;
    let id = seeded_job(&sim, 29, 2)["id"].as_i64().unwrap();
    assert_eq!(exec(t, &format!("DELETE FROM jobs WHERE id = {id}")), 1);
    let report = verify_now(&engine).await;
    assert_eq!(found(&report), vec![(Kind::Missing, 1)]);
    let finding = &report.findings[0];
    assert_eq!(
        (
            finding.job_id,
            finding.campaign,
            finding.reference.as_deref()
        ),
        (Some(id), Some(29), Some("seed-29-2"))
    );
    // Read-only: the mirror still lacks it.
    let mut c = t.db.conn().unwrap();
    assert!(jobsync::db::repo::jobs::get(&mut c, id).unwrap().is_none());
}

async fn a_job_deleted_upstream_with_no_full_listing_since_is_extra(t: &TestDb) {
    let (sim, engine) = converged(t).await;
    let id = seeded_job(&sim, 28, 5)["id"].as_i64().unwrap();
    sim.delete_job(id).expect("deleted upstream");
    // An incremental cycle does not see a delete.
    cycle(&engine).await;
    let report = verify_now(&engine).await;
    assert_eq!(found(&report), vec![(Kind::Extra, 1)]);
    assert_eq!(report.findings[0].job_id, Some(id));
    assert_eq!(report.findings[0].reference.as_deref(), Some("seed-28-5"));
}

async fn a_done_create_whose_job_is_not_upstream_is_lost(t: &TestDb) {
    let (_sim, engine) = converged(t).await;
    // A create recorded `done` for a job the API never held.
    insert(
        &t.db,
        &[create(29, "crm-never-there", json!({"name": "X"}))],
    );
    assert_eq!(
        exec(
            t,
            "UPDATE outbox SET status = 'done', result_job_id = 987654 \
             WHERE reference = 'crm-never-there'"
        ),
        1
    );
    let report = verify_now(&engine).await;
    assert_eq!(found(&report), vec![(Kind::Lost, 1)]);
    let finding = &report.findings[0];
    assert_eq!(
        (
            finding.job_id,
            finding.campaign,
            finding.reference.as_deref()
        ),
        (Some(987654), Some(29), Some("crm-never-there"))
    );
}

async fn a_crm_create_duplicated_upstream_is_a_duplicate(t: &TestDb) {
    let (sim, engine) = converged(t).await;
    let original = crm_job_id(t);
    // A second job with the reference jobsync created, as a blind re-send on an API without a
    // uniqueness check would leave; pulled into the mirror like any job.
    let copy = sim
        .insert_jobs(vec![fields(
            json!({"campaign": 28, "reference": CRM_REFERENCE, "name": "From the CRM"}),
        )])
        .unwrap()[0]
        .id;
    cycle(&engine).await;
    let report = verify_now(&engine).await;
    assert_eq!(found(&report), vec![(Kind::Duplicate, 1)]);
    let finding = &report.findings[0];
    assert_eq!(finding.job_id, Some(copy), "names the copy, not {original}");
    assert_eq!(finding.reference.as_deref(), Some(CRM_REFERENCE));
    assert_eq!(finding.fields, vec!["reference"]);
}

async fn a_row_in_flight_past_its_deadline_is_stuck(t: &TestDb) {
    let (sim, engine) = converged(t).await;
    let id = seeded_job(&sim, 28, 1)["id"].as_i64().unwrap();
    insert(&t.db, &[patch_id(id, json!({"label": "x"}))]);
    // In flight since long before the last (successful) cycle: past its deadline.
    exec(
        t,
        "UPDATE outbox SET status = 'in_flight', next_attempt_at = '2000-01-01 00:00:00' \
         WHERE op = 'patch'",
    );
    let report = verify_now(&engine).await;
    assert_eq!(found(&report), vec![(Kind::Stuck, 1)]);
    assert_eq!(report.findings[0].job_id, Some(id));
    // A row whose deadline is still ahead is not stuck, nor one that fewer good cycles followed
    // than the push allows.
    let strict = verify::Options {
        stuck_after_cycles: 50,
        ..options()
    };
    let report = verify::run(&engine.db, &engine.client, &strict)
        .await
        .unwrap();
    assert_eq!(found(&report), vec![]);
    exec(
        t,
        "UPDATE outbox SET next_attempt_at = '2999-01-01 00:00:00' WHERE op = 'patch'",
    );
    assert_eq!(found(&verify_now(&engine).await), vec![]);
}

async fn a_changefeed_row_altered_is_a_feed_finding(t: &TestDb) {
    let (sim, engine) = converged(t).await;
    let job = seeded_job(&sim, 29, 4);
    let id = job["id"].as_i64().unwrap();
    // The job's last change says it was cancelled; the mirror (and the API) say queued.
    let altered = exec(
        t,
        &format!(
            "UPDATE job_changes SET new_state = 4 WHERE seq = \
             (SELECT MAX(seq) FROM job_changes WHERE job_id = {id})"
        ),
    );
    assert_eq!(altered, 1);
    let report = verify_now(&engine).await;
    assert_eq!(found(&report), vec![(Kind::Feed, 1)]);
    assert_eq!(report.findings[0].job_id, Some(id));
    assert_eq!(report.findings[0].fields, vec!["state"]);
    // A removed row leaves the job's earlier row last — or none, and then nothing is judged.
    exec(t, &format!("DELETE FROM job_changes WHERE job_id = {id}"));
    assert_eq!(found(&verify_now(&engine).await), vec![]);
}

async fn a_job_modified_during_the_listing_is_in_motion_not_drift(t: &TestDb) {
    let (sim, engine) = converged(t).await;
    let mut job = seeded_job(&sim, 28, 6);
    let id = job["id"].as_i64().unwrap();
    hold(&sim, Hold::new(Some("GET"), "/j/jobs?campaign=28"));
    let (db, api) = (engine.db.clone(), engine.client.clone());
    let task = tokio::spawn(async move { verify::run(&db, &api, &options()).await });
    wait_held(&sim, 1).await;
    // A person edits the job in the platform's UI while the listing's request is at the API.
    job["city"] = json!("Lyon");
    sim.insert_jobs(vec![fields(job)]).unwrap();
    release(&sim);
    let report = task.await.unwrap().expect("verify completes");
    assert_eq!(found(&report), vec![(Kind::InMotion, 1)]);
    assert!(report.is_clean(), "in motion is not drift");
    let finding = &report.findings[0];
    assert_eq!(finding.job_id, Some(id));
    assert_eq!(finding.fields, vec!["city"]);
    // The next cycle brings it in line.
    cycle(&engine).await;
    assert_eq!(found(&verify_now(&engine).await), vec![]);
}

async fn resync_lists_in_full_at_the_next_cycle_and_verify_then_finds_only_the_duplicate(
    t: &TestDb,
) {
    let (sim, engine) = converged(t).await;
    let gone = seeded_job(&sim, 28, 7)["id"].as_i64().unwrap();
    sim.delete_job(gone).unwrap();
    sim.insert_jobs(vec![fields(
        json!({"campaign": 28, "reference": CRM_REFERENCE}),
    )])
    .unwrap();
    let summary = cycle(&engine).await;
    assert!(
        summary.pull.campaigns_listed.is_empty(),
        "not due yet: {summary:?}"
    );
    let report = verify_now(&engine).await;
    assert_eq!(found(&report), vec![(Kind::Extra, 1), (Kind::Duplicate, 1)]);

    // A connection of the test's own is not held across cycles (SQLite's pool is small).
    let conn = || t.db.conn().unwrap();
    state::request_resync(
        &mut conn(),
        ResyncRequest {
            requested_by: "alice".into(),
            requested_at: Utc::now().to_rfc3339(),
            campaigns: None,
        },
    )
    .unwrap();
    let status = jobsync::db::repo::report::read(&mut conn(), 1).unwrap();
    let shown = serde_json::to_value(&status).unwrap();
    let pending = status.resync_pending.expect("status shows the request");
    assert_eq!(
        (pending.requested_by.as_str(), pending.campaigns),
        ("alice", None)
    );
    assert!(
        shown["resync_pending"].is_object()
            && shown["resync_pending"].get("requested_by").is_none(),
        "/status shows the request, not who asked: {}",
        shown["resync_pending"]
    );

    let summary = cycle(&engine).await;
    assert_eq!(summary.pull.campaigns_listed, vec![28, 29]);
    assert_eq!(summary.pull.marked_deleted, 1);
    assert!(
        state::resync_request(&mut conn()).unwrap().is_none(),
        "settled"
    );
    let row = jobsync::db::repo::jobs::get(&mut conn(), gone)
        .unwrap()
        .unwrap();
    assert!(
        row.remote_deleted_at.is_some(),
        "the delete is in the mirror"
    );

    let report = verify_now(&engine).await;
    assert_eq!(found(&report), vec![(Kind::Duplicate, 1)]);
    // Settled: the cycle after lists nothing in full again.
    assert!(cycle(&engine).await.pull.campaigns_listed.is_empty());
}

async fn a_named_campaign_narrows_the_listing(t: &TestDb) {
    let (sim, engine) = converged(t).await;
    let id = seeded_job(&sim, 29, 1)["id"].as_i64().unwrap();
    exec(t, &format!("UPDATE jobs SET name = 'Z' WHERE id = {id}"));
    let only_28 = verify::Options {
        campaigns: vec![28],
        ..options()
    };
    let report = verify::run(&engine.db, &engine.client, &only_28)
        .await
        .unwrap();
    assert_eq!(report.campaigns, vec![28]);
    assert_eq!(found(&report), vec![]);

    // A resync of one campaign lists that one only, and is settled by it.
    state::request_resync(
        &mut t.db.conn().unwrap(),
        ResyncRequest {
            requested_by: "bob".into(),
            requested_at: Utc::now().to_rfc3339(),
            campaigns: Some(vec![29]),
        },
    )
    .unwrap();
    let summary = cycle(&engine).await;
    assert_eq!(summary.pull.campaigns_listed, vec![29]);
    assert!(
        state::resync_request(&mut t.db.conn().unwrap())
            .unwrap()
            .is_none()
    );
}

/// The binary: exit 0 on a clean mirror, 3 with differences (NDJSON with `--json`), 1 when the
/// API cannot be reached; `resync` exits 0 and `status` shows it.
#[test]
fn the_cli_exits_0_clean_3_on_differences_and_1_when_it_cannot_complete() {
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        jobs_per_campaign: 5,
        ..SimConfig::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    let env = [("JOBSYNC_SYNC__CAMPAIGNS", "28,29")];
    let out = once(&sim.base_url(), &db_path, &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Seeded jobs may have been modified moments ago: let them settle behind the watermark.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let run = |args: &[&str]| {
        jobsync_command(&sim.base_url(), &db_path)
            .envs(env)
            .args(args)
            .output()
            .unwrap()
    };

    let clean = run(&["verify"]);
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(stdout.contains("differences: 0"), "{stdout}");
    assert!(stdout.contains("in_motion"), "{stdout}");

    let deleted = sim.state()[0].id;
    sim.delete_job(deleted).unwrap();
    let drift = run(&["verify", "--json"]);
    assert_eq!(
        drift.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&drift.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&drift.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["kind"], "extra");
    assert_eq!(lines[0]["job_id"], deleted);
    let keys: Vec<&String> = lines[0].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    let stderr = String::from_utf8_lossy(&drift.stderr);
    assert!(stderr.contains("extra 1"), "{stderr}");

    let resync = run(&["resync", "--campaign", "28"]);
    assert_eq!(resync.status.code(), Some(0));
    let status = run(&["status"]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains("resync pending:   campaigns 28"), "{shown}");

    let unreachable = jobsync_command("http://127.0.0.1:9", &db_path)
        .env("JOBSYNC_API__MAX_ATTEMPTS", "1")
        .env("JOBSYNC_API__TIMEOUT_SECS", "2")
        .arg("verify")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(unreachable.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("verify could not complete"), "{stderr}");
    rt.block_on(sim.shutdown());
}

/// `verify.schedule`: the daemon runs verify beside its cycles and exports the counts. A mirror
/// row edited behind jobsync's back shows as `jobsync_verify_findings{kind="stale"} 1`, with
/// the time of the verify; the cycles go on meanwhile.
#[test]
fn the_daemon_runs_verify_on_its_schedule_and_exports_the_findings() {
    let rt = runtime();
    let sim = rt.block_on(start_sim(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 20,
        ..SimConfig::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobsync.db");
    // Listed once at start, then incremental pulls only: the edited row stays as it is.
    let daemon = Daemon::start(
        &rt,
        &sim.base_url(),
        &db_path,
        &[("JOBSYNC_VERIFY__SCHEDULE", "*/2 * * * * *")],
    );
    daemon.wait_until("/metrics", |_, body| {
        metric(body, "jobsync_verify_last_timestamp_seconds") > 0.0
    });
    let db = jobsync::db::Db::open(&format!("sqlite://{}", db_path.display())).unwrap();
    let id = sim.state()[3].id;
    let edited = execute_sql(
        &db,
        &format!("UPDATE jobs SET city = 'Elsewhere' WHERE id = {id}"),
    );
    assert_eq!(edited, 1);
    let (_, metrics) = daemon.wait_until("/metrics", |_, body| {
        metric(body, "jobsync_verify_findings{kind=\"stale\"}") >= 1.0
    });
    assert_eq!(
        metric(&metrics, "jobsync_verify_findings{kind=\"missing\"}"),
        0.0
    );
    assert!(metric(&metrics, "jobsync_runs_total{status=\"ok\"}") >= 1.0);
    assert!(daemon.terminate().success());
}
