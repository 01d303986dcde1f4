//! No duplicates, nothing lost — against an API behind a gateway that does not enforce unique
//! references, so that any blind re-send of a create is a visible duplicate upstream.
//!
//! SPEC: a create whose outcome is unknown (timeout, connection dropped after sending, any 5xx —
//! a gateway may answer after the API applied it — or an answer that does not match what was
//! sent) is in doubt, and is never re-sent before a lookup says it is absent. Each fault class
//! alone, then all together, then a create renamed by a merged patch, then an outage that
//! resets every connection: pushes repeat until nothing is open, and then every reference must
//! exist exactly once upstream, every row be settled on the right job, and the mirror equal the
//! simulator.

use crate::common::*;
use jobsync::api::ApiClient;
use jobsync::config::PushConfig;
use jobsync::db::Db;
use jobsync::db::models::{NewOutboxRow, OutboxRow};
use jobsync::shutdown::StopFlag;
use jobsync::sim::{SimConfig, SimHandle};
use jobsync::sync::push::PushTuning;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

on_both_backends!(
    creates_applied_then_answered_502_are_not_sent_again,
    slow_commits_past_the_client_timeout_are_not_sent_again,
    answers_dropped_after_applying_are_linked_not_sent_again,
    server_errors_before_applying_are_retried_to_exactly_one_job,
    throttling_is_retried_to_exactly_one_job,
    in_doubt_creates_are_found_with_the_api_clock_30_minutes_behind,
    in_doubt_creates_are_found_with_the_api_clock_30_minutes_ahead,
    every_gateway_fault_at_once_converges_to_exactly_one_job_each,
    a_create_renamed_by_a_merged_patch_whose_answer_was_lost_exists_once,
    an_api_resetting_every_connection_gets_each_reference_once_per_run,
);

/// Creates per scenario: six bulk calls of 25, so that a fault rate of 0.3 hits some of them.
const CREATES: usize = 150;
/// Every this many creates, one is patched by reference (half merged into the create, half
/// sent after the first push, when the create may be in doubt).
const PATCH_EVERY: usize = 10;
/// How long the pushes of one scenario may take to leave nothing open.
const CONVERGE_WITHIN: Duration = Duration::from_secs(90);
/// Between two pushes: the engine waits the client's timeout and a margin before it looks an
/// in-doubt create up, so the loop keeps pushing until that has happened.
const BETWEEN_RUNS: Duration = Duration::from_millis(200);

/// One fault class (or several) to converge under.
struct Scenario {
    name: &'static str,
    /// Set through `POST /_sim/faults` once the rows are in.
    faults: Value,
    /// Fault labels of the request log that must have fired, or the scenario proved nothing.
    fired: &'static [&'static str],
    clock_offset_hours: f64,
    /// The client's per-request timeout.
    timeout: Duration,
    /// Items per bulk call: smaller means more calls, so more draws of each fault.
    bulk_size: usize,
}

impl Scenario {
    fn new(name: &'static str, faults: Value, fired: &'static [&'static str]) -> Self {
        Scenario {
            name,
            faults,
            fired,
            clock_offset_hours: 0.0,
            timeout: Duration::from_secs(2),
            bulk_size: 25,
        }
    }
}

async fn creates_applied_then_answered_502_are_not_sent_again(t: &TestDb) {
    let scenario = Scenario::new(
        "applied_fail",
        json!({"applied_fail_rate": 0.3}),
        &["applied_fail"],
    );
    converge_under(t, scenario).await;
}

async fn slow_commits_past_the_client_timeout_are_not_sent_again(t: &TestDb) {
    let scenario = Scenario {
        timeout: Duration::from_secs(1),
        ..Scenario::new(
            "late_apply",
            json!({"late_apply_rate": 0.3, "late_apply_ms": 1500}),
            &["late_apply"],
        )
    };
    converge_under(t, scenario).await;
}

async fn answers_dropped_after_applying_are_linked_not_sent_again(t: &TestDb) {
    let scenario = Scenario::new(
        "applied_drop",
        json!({"applied_drop_rate": 0.3}),
        &["applied_drop"],
    );
    converge_under(t, scenario).await;
}

async fn server_errors_before_applying_are_retried_to_exactly_one_job(t: &TestDb) {
    let scenario = Scenario::new("fail", json!({"fail_rate": 0.3}), &["fail"]);
    converge_under(t, scenario).await;
}

async fn throttling_is_retried_to_exactly_one_job(t: &TestDb) {
    let scenario = Scenario::new(
        "throttle",
        json!({"throttle_rate": 0.3, "retry_after_secs": 0}),
        &["throttle"],
    );
    converge_under(t, scenario).await;
}

async fn in_doubt_creates_are_found_with_the_api_clock_30_minutes_behind(t: &TestDb) {
    let scenario = Scenario {
        clock_offset_hours: -0.5,
        ..Scenario::new(
            "clock_behind",
            json!({"applied_drop_rate": 0.3}),
            &["applied_drop"],
        )
    };
    converge_under(t, scenario).await;
}

async fn in_doubt_creates_are_found_with_the_api_clock_30_minutes_ahead(t: &TestDb) {
    let scenario = Scenario {
        clock_offset_hours: 0.5,
        ..Scenario::new(
            "clock_ahead",
            json!({"applied_drop_rate": 0.3}),
            &["applied_drop"],
        )
    };
    converge_under(t, scenario).await;
}

/// Six faults share each request here, so calls of 5 items (thirty-odd POSTs) and high rates
/// make every one of them fire, whatever the order the engine sends in.
async fn every_gateway_fault_at_once_converges_to_exactly_one_job_each(t: &TestDb) {
    let scenario = Scenario {
        clock_offset_hours: -0.5,
        timeout: Duration::from_secs(1),
        bulk_size: 5,
        ..Scenario::new(
            "all",
            json!({"applied_fail_rate": 0.35, "late_apply_rate": 0.25, "late_apply_ms": 1500,
                   "applied_drop_rate": 0.35, "fail_rate": 0.1, "throttle_rate": 0.1,
                   "retry_after_secs": 0, "drop_rate": 0.03}),
            &[
                "applied_fail",
                "late_apply",
                "applied_drop",
                "fail",
                "throttle",
            ],
        )
    };
    converge_under(t, scenario).await;
}

/// Creates `g-0` … `g-149` in campaign 28; every tenth is patched by reference — the first half
/// of those patches in the same batch (merged into their create), the rest sent later.
fn create_rows() -> (Vec<NewOutboxRow>, Vec<NewOutboxRow>) {
    let mut now = Vec::new();
    let mut later = Vec::new();
    for n in 0..CREATES {
        now.push(create(
            28,
            &reference(n),
            json!({"name": format!("Gateway {n}"), "numbers": ["+33612345678"]}),
        ));
        if n % PATCH_EVERY == 0 {
            let patch = patch_ref(28, &reference(n), json!({"city": "Lyon"}));
            if n < CREATES / 2 {
                now.push(patch);
            } else {
                later.push(patch);
            }
        }
    }
    (now, later)
}

fn reference(n: usize) -> String {
    format!("g-{n}")
}

/// A simulator that keeps a duplicate reference as a second job.
async fn start_gateway_sim(clock_offset_hours: f64) -> SimHandle {
    start_sim(SimConfig {
        allow_duplicate_references: true,
        clock_offset_hours,
        ..SimConfig::default()
    })
    .await
}

async fn converge_under(t: &TestDb, scenario: Scenario) {
    let started = Instant::now();
    let sim = start_gateway_sim(scenario.clock_offset_hours).await;
    let client = impatient_client(&sim, scenario.timeout, scenario.bulk_size);
    let (rows, later) = create_rows();
    for part in rows.chunks(40) {
        insert(&t.db, part);
    }
    set_faults(&sim, scenario.faults.clone()).await;
    let runs = push_until_settled(&t.db, &client, &later).await;
    settle(&sim).await;
    pull(&t.db, &client).await;

    let log = requests(&sim.base_url()).await;
    let fired = fault_counts(&log);
    let mut problems = problems_with_references(&sim, &all_rows(&t.db)).await;
    problems.extend(patches_lost(&sim).await);
    assert!(
        problems.is_empty(),
        "{}: {} (after {runs} push runs; faults fired: {fired:?})",
        scenario.name,
        problems.join("; ")
    );
    for label in scenario.fired {
        assert!(
            fired.get(*label).copied().unwrap_or(0) > 0,
            "{}: the fault `{label}` never fired ({fired:?})",
            scenario.name
        );
    }
    assert_mirror_equals_sim(&t.db, &sim).await;
    eprintln!(
        "{}: converged after {runs} push runs in {:.1}s; faults fired: {fired:?}",
        scenario.name,
        started.elapsed().as_secs_f64()
    );
}

/// Pushes (with no row backoff) until no row is pending or in flight, or the time is up; the
/// `later` rows go in after the first run. Answers how many runs it took.
async fn push_until_settled(db: &Db, client: &ApiClient, later: &[NewOutboxRow]) -> usize {
    let deadline = Instant::now() + CONVERGE_WITHIN;
    let mut runs = 0;
    // A slow commit lands 1.5 s after its request arrived; the engine looks a create in doubt up
    // the client's timeout plus this margin after giving up on it. The margin leaves seconds of
    // slack for a loaded machine, where the simulator's delayed apply itself runs late.
    let tuning = PushTuning {
        lookup_margin: Duration::from_secs(5),
        ..quick_tuning()
    };
    loop {
        push_with(db, client, tuning).await;
        runs += 1;
        if runs == 1 && !later.is_empty() {
            insert(db, later);
        }
        if open_rows(db) == 0 || Instant::now() > deadline {
            return runs;
        }
        tokio::time::sleep(BETWEEN_RUNS).await;
    }
}

/// Clears every fault (duplicates stay allowed) and waits for every slow commit to land, so that
/// what is counted upstream is final.
async fn settle(sim: &SimHandle) {
    set_faults(
        sim,
        json!({"fail_rate": 0.0, "throttle_rate": 0.0, "drop_rate": 0.0,
               "applied_drop_rate": 0.0, "applied_fail_rate": 0.0, "late_apply_rate": 0.0,
               "latency_ms": 0}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending: Value = reqwest::get(format!("{}/_sim/pending", sim.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if pending["late_applies"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "slow commits never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many requests of the log carry each fault label.
fn fault_counts(log: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for fault in log.iter().filter_map(|r| r["fault"].as_str()) {
        *counts.entry(fault.to_string()).or_default() += 1;
    }
    counts
}

/// What breaks the promise, one line per kind with a few examples: references existing more
/// than once or not at all, rows left open or failed, rows settled on the wrong job.
async fn problems_with_references(sim: &SimHandle, rows: &[OutboxRow]) -> Vec<String> {
    let upstream = sim_by_ref(sim).await;
    let copies = |r: &str| upstream.get(&(28, r.to_string())).map_or(0, Vec::len);
    let mut problems = Vec::new();
    let refs: Vec<String> = (0..CREATES).map(reference).collect();
    let twice: Vec<String> = refs
        .iter()
        .filter(|r| copies(r) > 1)
        .map(|r| format!("{r} ×{}", copies(r)))
        .collect();
    if !twice.is_empty() {
        problems.push(format!(
            "{} references exist more than once upstream (e.g. {})",
            twice.len(),
            examples(&twice)
        ));
    }
    let missing: Vec<String> = refs.iter().filter(|r| copies(r) == 0).cloned().collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} references missing upstream (e.g. {})",
            missing.len(),
            examples(&missing)
        ));
    }
    problems.extend(unsettled_rows(rows));
    // Rows of references that exist once (the others are reported above) on another job.
    let wrong_job: Vec<String> = rows
        .iter()
        .filter(|r| r.op == "create" && r.status != "failed")
        .filter_map(|r| {
            let key = (r.campaign?, r.reference.clone()?);
            let [job] = upstream.get(&key)?.as_slice() else {
                return None;
            };
            (r.result_job_id != Some(job.id)).then(|| {
                format!(
                    "row {} ({}) on {:?}, not {}",
                    r.id, key.1, r.result_job_id, job.id
                )
            })
        })
        .collect();
    if !wrong_job.is_empty() {
        problems.push(format!(
            "{} create rows not linked to their one upstream job (e.g. {})",
            wrong_job.len(),
            examples(&wrong_job)
        ));
    }
    problems
}

/// Rows left open, or failed: nothing may be lost.
fn unsettled_rows(rows: &[OutboxRow]) -> Vec<String> {
    let mut by_status: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for row in rows {
        if row.status != "done" && row.status != "superseded" {
            let detail = format!(
                "row {} {} {}: {}",
                row.id,
                row.op,
                row.reference.as_deref().unwrap_or("-"),
                row.last_error.as_deref().unwrap_or("no error")
            );
            by_status
                .entry(row.status.as_str())
                .or_default()
                .push(detail);
        }
    }
    by_status
        .into_iter()
        .map(|(status, rows)| format!("{} rows {status} (e.g. {})", rows.len(), examples(&rows)))
        .collect()
}

/// Patched references whose upstream job lacks the patch.
async fn patches_lost(sim: &SimHandle) -> Vec<String> {
    let upstream = sim_by_ref(sim).await;
    let lost: Vec<String> = (0..CREATES)
        .step_by(PATCH_EVERY)
        .map(reference)
        .filter(|r| {
            upstream
                .get(&(28, r.clone()))
                .is_some_and(|jobs| jobs.iter().any(|j| j.city.as_deref() != Some("Lyon")))
        })
        .collect();
    if lost.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "{} jobs patched by reference lack the patch (e.g. {})",
            lost.len(),
            examples(&lost)
        )]
    }
}

fn examples(items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(3).map(String::as_str).collect();
    shown.join(", ")
}

/// A create of `old` merged with a later patch renaming it to `new` is sent as a create of
/// `new`; its answer is lost. The lookup must look for what was sent, not for the row's own
/// reference, or the job is never found and the create goes out again.
async fn a_create_renamed_by_a_merged_patch_whose_answer_was_lost_exists_once(t: &TestDb) {
    let sim = start_gateway_sim(0.0).await;
    let client = impatient_client(&sim, Duration::from_secs(2), 25);
    insert(
        &t.db,
        &[
            create(28, "old", json!({"name": "Renamed"})),
            patch_ref(28, "old", json!({"reference": "new"})),
        ],
    );
    set_faults(&sim, json!({"applied_drop_rate": 1.0})).await;
    push(&t.db, &client).await;
    settle(&sim).await;
    let runs = 1 + push_until_settled(&t.db, &client, &[]).await;
    settle(&sim).await;
    pull(&t.db, &client).await;

    let log = requests(&sim.base_url()).await;
    let fired = fault_counts(&log);
    let upstream = sim_by_ref(&sim).await;
    let count = |r: &str| upstream.get(&(28, r.to_string())).map_or(0, Vec::len);
    let rows = all_rows(&t.db);
    let create_row = rows.iter().find(|r| r.op == "create").unwrap();
    let mut problems = unsettled_rows(&rows);
    if count("new") != 1 || count("old") != 0 {
        problems.insert(
            0,
            format!(
                "{} jobs under `new` and {} under `old`, wanted 1 and 0",
                count("new"),
                count("old")
            ),
        );
    }
    let new_id = upstream.get(&(28, "new".into())).map(|jobs| jobs[0].id);
    if create_row.status != "done" || create_row.result_job_id != new_id {
        problems.push(format!(
            "the create row is {} on job {:?}, wanted done on {new_id:?}: {:?}",
            create_row.status, create_row.result_job_id, create_row.last_error
        ));
    }
    assert!(
        problems.is_empty(),
        "renamed create: {} (after {runs} push runs; faults fired: {fired:?})",
        problems.join("; ")
    );
    assert!(fired.contains_key("applied_drop"), "{fired:?}");
    assert_mirror_equals_sim(&t.db, &sim).await;
}

/// How long the API resets every connection.
const OUTAGE: Duration = Duration::from_secs(30);

/// Every connection is reset after the request was read (nothing applied, nothing answered) for
/// 30 s, then the API recovers. Pushes run all along, with a client that retries and rows that
/// back off; the request log's `references` shows what each run sent.
async fn an_api_resetting_every_connection_gets_each_reference_once_per_run(t: &TestDb) {
    let sim = start_gateway_sim(0.0).await;
    // A client as configured in production, with its own retries and backoff (shortened).
    let mut opts = options(&sim, "dev-token");
    opts.max_attempts = 4;
    opts.min_backoff = Duration::from_millis(100);
    opts.max_backoff = Duration::from_secs(1);
    opts.bulk_size = 25;
    opts.timeout = Duration::from_secs(2);
    let client = ApiClient::new(opts).unwrap();
    let tuning = PushTuning {
        backoff_base: Duration::from_secs(1),
        backoff_cap: Duration::from_secs(4),
        lookup_margin: Duration::from_secs(1),
        ..PushTuning::default()
    };
    let (rows, later) = create_rows();
    insert(&t.db, &rows);
    insert(&t.db, &later);
    set_faults(&sim, json!({"drop_rate": 1.0})).await;
    let recovery = Instant::now() + OUTAGE;
    let deadline = recovery + Duration::from_secs(25);
    let mut seen = 0;
    let mut resent: Vec<String> = Vec::new();
    let mut runs = 0;
    let mut recovered = false;
    loop {
        if !recovered && Instant::now() >= recovery {
            settle(&sim).await;
            recovered = true;
            // No lookup could succeed during the outage, so no create may have been sent
            // again in it, in any run.
            let outage_log = requests(&sim.base_url()).await;
            resent.extend(
                sent_more_than_once(&outage_log, 0)
                    .into_iter()
                    .map(|(r, n)| format!("{r} ×{n} during the outage")),
            );
        }
        push_alone(
            &t.db,
            &client,
            // A create not found 2 s after its first send was never applied (the outage
            // refused everything before applying it).
            &PushConfig {
                settle_secs: 2,
                ..PushConfig::default()
            },
            tuning,
            &StopFlag::new(),
        )
        .await
        .expect("push runs");
        runs += 1;
        let log = requests(&sim.base_url()).await;
        resent.extend(
            sent_more_than_once(&log, seen)
                .into_iter()
                .map(|(r, n)| format!("{r} ×{n} in run {runs}")),
        );
        seen = log
            .iter()
            .filter_map(|r| r["seq"].as_u64())
            .max()
            .unwrap_or(seen);
        if (recovered && open_rows(&t.db) == 0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    settle(&sim).await;
    pull(&t.db, &client).await;

    let log = requests(&sim.base_url()).await;
    let fired = fault_counts(&log);
    let mut problems = Vec::new();
    if !resent.is_empty() {
        problems.push(format!(
            "{} references sent again before a lookup could say they were absent (e.g. {})",
            resent.len(),
            examples(&resent)
        ));
    }
    problems.extend(problems_with_references(&sim, &all_rows(&t.db)).await);
    problems.extend(patches_lost(&sim).await);
    assert!(
        problems.is_empty(),
        "outage: {} (after {runs} push runs; faults fired: {fired:?})",
        problems.join("; ")
    );
    assert!(fired.contains_key("drop"), "{fired:?}");
    assert_mirror_equals_sim(&t.db, &sim).await;
    eprintln!("outage: converged after {runs} push runs; faults fired: {fired:?}");
}

/// References that creates logged after `after_seq` carried more than once.
fn sent_more_than_once(log: &[Value], after_seq: u64) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for entry in log
        .iter()
        .filter(|r| r["seq"].as_u64().is_some_and(|seq| seq > after_seq))
    {
        for reference in entry["references"].as_array().into_iter().flatten() {
            *counts
                .entry(reference.as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    let mut repeated: Vec<(String, usize)> = counts.into_iter().filter(|(_, n)| *n > 1).collect();
    repeated.sort();
    repeated
}
