//! `jobsync demo`: the one-command tour. Starts the simulator in-process, syncs into a local
//! SQLite file (`jobsync-demo.db`, or `--database-url`), lets the simulated dialer call some
//! jobs, syncs again, and prints what happened — mirror, changefeed, runs.

use super::{CliError, CliResult, context, once};
use crate::config::Config;
use crate::db::models::NewOutboxRow;
use crate::db::repo::{changes, jobs, outbox};
use crate::db::{Db, redact};
use crate::secret::Secret;
use crate::sim::{SimConfig, SimHandle};
use crate::sync::StopFlag;
use crate::sync::cycle::{Engine, Trigger, run_cycle};
use serde_json::json;

const DEMO_DB: &str = "sqlite://jobsync-demo.db";
const CAMPAIGNS: [i64; 2] = [28, 29];

pub async fn run(config: &Config, database_url_given: bool) -> CliResult {
    let url = if database_url_given {
        config.database.url.clone()
    } else {
        // The demo's own file: every tour starts from an empty mirror.
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let _ = std::fs::remove_file(format!("jobsync-demo.db{suffix}"));
        }
        DEMO_DB.to_string()
    };
    println!(
        "jobsync demo: a simulated Jobs API on loopback, mirrored into {}\n",
        redact(&url)
    );
    let sim = crate::sim::spawn(
        "127.0.0.1:0".parse().expect("a socket address"),
        SimConfig {
            campaigns: CAMPAIGNS.to_vec(),
            jobs_per_campaign: 500,
            ..SimConfig::default()
        },
    )
    .await
    .map_err(|e| CliError::failed(format!("cannot start the simulator: {e}")))?;
    println!(
        "1. simulator listening on {} with campaigns 28 and 29, 500 jobs each",
        sim.base_url()
    );

    // The tour is an ordinary configuration pointed at the in-process simulator.
    let mut demo = config.clone();
    demo.database.url = url;
    demo.api.base_url = sim.base_url();
    demo.api.token = Some(Secret::new(SimConfig::default().token));
    demo.api.token_file = None;
    demo.sync.campaigns = CAMPAIGNS.to_vec();
    let engine = context::engine(&demo, "demo", StopFlag::new()).await?;
    let db = engine.db.clone();
    let seq_before = last_seq(&db).await?;
    cycle(
        &engine,
        "2. first cycle (a backfill: each campaign is listed in full)",
    )
    .await?;

    let dialled = sim_post(&sim, "/_sim/dial", 25).await? + sim_post(&sim, "/_sim/edit", 5).await?;
    println!(
        "\n3. the simulated dialer called jobs and an agent edited some: {dialled} jobs changed upstream"
    );
    let rows = crm_changes();
    let written = rows.len();
    db.run(move |c| outbox::insert(c, &rows)).await?;
    println!(
        "   meanwhile the CRM wrote {written} outbox rows: two new contacts, a label for one of them, an edit, a cancellation"
    );
    let seq_mid = last_seq(&db).await?;
    cycle(
        &engine,
        "4. second cycle (incremental pull, then the push of the outbox)",
    )
    .await?;
    let pushed = db.run(|c| outbox::list(c, None, 10)).await?;
    println!("\n   the outbox after the push (`jobsync outbox list`):");
    for row in pushed.iter().rev() {
        println!(
            "   #{} {:7} {:10} job {:>5}  {}",
            row.id,
            row.op,
            row.status,
            row.result_job_id.map_or("-".into(), |id| id.to_string()),
            row.last_error.as_deref().unwrap_or("")
        );
    }

    let new = db.run(move |c| changes::since(c, seq_mid, 5)).await?;
    println!(
        "\n5. the changefeed the CRM reads (`jobsync changes --since {seq_mid}`), first rows:"
    );
    for row in &new {
        println!("   {}", super::changes::to_json(row));
    }
    let (live, deleted) = db.run(jobs::counts).await?;
    let total = last_seq(&db).await? - seq_before;
    println!(
        "\nmirror: {live} jobs ({deleted} deleted upstream); {total} changefeed rows written by this demo"
    );
    let again = if database_url_given {
        "--database-url URL".to_string()
    } else {
        format!("--database-url {DEMO_DB}")
    };
    println!("next: `jobsync {again} status`, `… changes`, `jobsync simulate` + `jobsync --once`");
    sim.shutdown().await;
    Ok(())
}

async fn cycle(engine: &Engine, title: &str) -> CliResult {
    println!("\n{title}");
    let summary = run_cycle(engine, Trigger::Once)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    println!("   {}", once::describe(&summary));
    match summary.error {
        None => Ok(()),
        Some(e) => Err(CliError::failed(e)),
    }
}

/// What a CRM writes: only `op`, `campaign`, `reference`, `job_id` and `payload`.
fn crm_changes() -> Vec<NewOutboxRow> {
    let row =
        |op: &str, reference: Option<&str>, job_id: Option<i64>, payload: serde_json::Value| {
            NewOutboxRow {
                op: op.into(),
                campaign: reference.map(|_| 28),
                reference: reference.map(str::to_string),
                job_id,
                payload: payload.to_string(),
            }
        };
    vec![
        row(
            "create",
            Some("crm-1001"),
            None,
            json!({"name": "Ada Lovelace", "numbers": ["0612345678"], "city": "Paris"}),
        ),
        row(
            "create",
            Some("crm-1002"),
            None,
            json!({"name": "Alan Turing", "numbers": ["0698765432"]}),
        ),
        row("patch", Some("crm-1001"), None, json!({"label": "vip"})),
        row("patch", None, Some(3), json!({"city": "Lyon"})),
        row("unqueue", None, Some(4), json!({})),
    ]
}

async fn last_seq(db: &Db) -> Result<i64, CliError> {
    Ok(db.run(changes::last_seq).await?)
}

async fn sim_post(sim: &SimHandle, route: &str, n: usize) -> Result<usize, CliError> {
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}{route}", sim.base_url()))
        .json(&serde_json::json!({ "n": n }))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| CliError::failed(format!("simulator {route}: {e}")))?
        .json()
        .await
        .map_err(|e| CliError::failed(format!("simulator {route}: {e}")))?;
    Ok(answer.as_array().map_or(0, Vec::len))
}
