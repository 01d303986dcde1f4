//! `jobsync demo`: the one-command tour. Starts the simulator in-process, syncs into a local
//! SQLite file (`jobsync-demo.db`, or `--database-url`), lets the simulated dialer call some
//! jobs, syncs again, and prints what happened — mirror, changefeed, runs.

use super::{CliError, CliResult, once};
use crate::api::{ApiClient, ClientOptions, TokenSource};
use crate::config::{Config, PushConfig, SyncConfig};
use crate::db::Db;
use crate::db::repo::{changes, jobs};
use crate::secret::Secret;
use crate::sim::{SimConfig, SimHandle};
use crate::sync::StopFlag;
use crate::sync::cycle::{Engine, Trigger, run_cycle};

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
    println!("jobsync demo: a simulated Jobs API on loopback, mirrored into {url}\n");
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

    let db = tokio::task::spawn_blocking(move || Db::open(&url))
        .await
        .map_err(|e| CliError::failed(e.to_string()))??;
    let engine = Engine {
        db: db.clone(),
        client: demo_client(&sim)?,
        sync: SyncConfig {
            campaigns: CAMPAIGNS.to_vec(),
            ..config.sync.clone()
        },
        push: PushConfig::default(),
        stop: StopFlag::new(),
    };
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
    let seq_mid = last_seq(&db).await?;
    cycle(
        &engine,
        "4. second cycle (incremental: only what changed since the watermark)",
    )
    .await?;

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
    println!(
        "next: `jobsync --database-url {} status`, `… changes`, `jobsync simulate` + `jobsync --once`",
        DEMO_DB
    );
    sim.shutdown().await;
    Ok(())
}

fn demo_client(sim: &SimHandle) -> Result<ApiClient, CliError> {
    let url = sim
        .base_url()
        .parse()
        .map_err(|e| CliError::failed(format!("{e}")))?;
    let mut options = ClientOptions::new(url, TokenSource::Static(Secret::new("dev-token")));
    options.requests_per_second = 100.0;
    ApiClient::new(options).map_err(|e| CliError::failed(e.to_string()))
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
