//! The long-lived worker (`jobsync run`): one cycle at start, then one per tick of
//! `sync.schedule` (tokio-cron-scheduler, UTC), never two at once; a two-phase stop on
//! SIGTERM/SIGINT — readiness turns 503 first, then the cycle in flight stops at its next safe
//! point and is recorded. It records what it does in a [`RunState`] (in `telemetry`); the health
//! server, which the command-line face starts alongside, reads it. The daemon does not know the
//! server.

use crate::config::RetentionConfig;
use crate::db::repo::{retention, state as sync_state};
use crate::sync::cycle::{CycleError, CycleSummary, Engine, Trigger};
use crate::telemetry::{CycleOutcome, RunState};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the scheduler failed: {0}")]
    Scheduler(String),
}

/// Settings the daemon needs besides the engine.
pub struct DaemonSettings {
    pub schedule: String,
    pub retention: RetentionConfig,
    /// How long requests in flight may finish once a stop is requested.
    pub drain: std::time::Duration,
    /// `server.shutdown_grace_secs`: nothing outlasts it.
    pub grace: std::time::Duration,
    /// `verify.schedule` (empty: no verify) and how to run it.
    pub verify_schedule: String,
    pub verify: crate::verify::Options,
}

/// A daemon whose scheduler is running; [`Daemon::run`] runs the first cycle and waits for the
/// stop.
pub struct Daemon {
    engine: Engine,
    settings: DaemonSettings,
    run_state: Arc<RunState>,
    scheduler: JobScheduler,
    cycle_lock: Arc<Mutex<()>>,
}

/// Starts the scheduler, recording into `run_state` (from now on `scheduler_running`, so a
/// health server started after this call answers `/healthz` with 200 at once).
pub async fn start(
    engine: Engine,
    settings: DaemonSettings,
    run_state: Arc<RunState>,
) -> Result<Daemon, DaemonError> {
    run_state.update(|s| s.started_at = Some(chrono::Utc::now()));
    let cycle_lock = Arc::new(Mutex::new(()));

    let scheduler_error =
        |e: tokio_cron_scheduler::JobSchedulerError| DaemonError::Scheduler(e.to_string());
    let scheduler = JobScheduler::new().await.map_err(scheduler_error)?;
    let (tick_engine, tick_state, tick_lock) =
        (engine.clone(), run_state.clone(), cycle_lock.clone());
    let keep = settings.retention.clone();
    let job = Job::new_async(settings.schedule.as_str(), move |_id, _scheduler| {
        let (engine, state, lock) = (tick_engine.clone(), tick_state.clone(), tick_lock.clone());
        let keep = keep.clone();
        Box::pin(async move {
            tick(&engine, &state, &lock).await;
            prune_daily(&engine, &state, &keep).await;
        })
    })
    .map_err(scheduler_error)?;
    scheduler.add(job).await.map_err(scheduler_error)?;
    if !settings.verify_schedule.trim().is_empty() {
        // Its own job and its own lock: a verify never delays a cycle, nor waits for one.
        let (engine, state) = (engine.clone(), run_state.clone());
        let (options, running) = (settings.verify.clone(), Arc::new(Mutex::new(())));
        let job = Job::new_async(settings.verify_schedule.as_str(), move |_id, _scheduler| {
            let (engine, state) = (engine.clone(), state.clone());
            let (options, running) = (options.clone(), running.clone());
            Box::pin(async move { verify_tick(&engine, &state, &options, &running).await })
        })
        .map_err(scheduler_error)?;
        scheduler.add(job).await.map_err(scheduler_error)?;
    }
    scheduler.start().await.map_err(scheduler_error)?;
    run_state.update(|s| s.scheduler_running = true);
    Ok(Daemon {
        engine,
        settings,
        run_state,
        scheduler,
        cycle_lock,
    })
}

impl Daemon {
    /// Runs the first cycle now and the scheduled ones until `shutdown` resolves, then stops:
    /// readiness first, then the cycle in flight. `listen` is only logged.
    pub async fn run(self, listen: &str, shutdown: impl Future<Output = ()>) {
        let Daemon {
            engine,
            settings,
            run_state,
            mut scheduler,
            cycle_lock,
        } = self;
        tracing::info!(schedule = %settings.schedule, listen = %listen, "jobsync daemon started");

        // The first cycle runs now rather than at the first tick, so a fresh deployment is ready
        // soon.
        let first = {
            let (engine, state, lock) = (engine.clone(), run_state.clone(), cycle_lock.clone());
            tokio::spawn(async move { tick(&engine, &state, &lock).await })
        };

        shutdown.await;
        tracing::info!(
            drain_secs = settings.drain.as_secs(),
            "stopping: readiness now reports 503; no new request leaves, and those in flight get \
             until the deadline"
        );
        run_state.update(|s| s.shutting_down = true);
        crate::sync::cycle::stop_within(&engine, settings.drain, settings.grace);
        if let Err(e) = scheduler.shutdown().await {
            tracing::warn!(error = %e, "the scheduler did not stop cleanly");
        }
        run_state.update(|s| s.scheduler_running = false);
        let _ = first.await;
        // Waits for a scheduled cycle still in flight; it was told to stop.
        let _idle = cycle_lock.lock().await;
    }
}

/// Applies the retention settings when the last prune is a day old (or never happened).
async fn prune_daily(engine: &Engine, state: &RunState, keep: &RetentionConfig) {
    const LAST_PRUNE: &str = "last_prune_at";
    let keep = keep.clone();
    let pruned = engine
        .db
        .run(move |c| {
            let last = sync_state::get_time(c, LAST_PRUNE)?;
            if last.is_some_and(|at| chrono::Utc::now() - at < chrono::Duration::days(1)) {
                return Ok(None);
            }
            let pruned = retention::prune(c, &keep)?;
            sync_state::set_time(c, LAST_PRUNE, chrono::Utc::now())?;
            Ok(Some(pruned))
        })
        .await;
    match pruned {
        Ok(Some(p)) => {
            tracing::info!(
                changes = p.changes,
                outbox = p.outbox,
                runs = p.runs,
                deleted_jobs = p.deleted_jobs,
                "daily prune"
            );
            state.update(|s| {
                for (consumer, rows) in &p.unread {
                    match s.pruned_unread.iter_mut().find(|(c, _)| c == consumer) {
                        Some((_, n)) => *n += *rows as u64,
                        None => s.pruned_unread.push((consumer.clone(), *rows as u64)),
                    }
                }
            });
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "daily prune failed; it is tried again at the next tick")
        }
    }
}

/// One tick: a cycle, unless one is still running (then the tick is skipped).
async fn tick(engine: &Engine, state: &RunState, lock: &Mutex<()>) {
    if engine.stop.is_set() {
        return;
    }
    let Ok(_running) = lock.try_lock() else {
        tracing::info!("tick skipped: the previous cycle is still running");
        state.update(|s| s.ticks_skipped += 1);
        return;
    };
    state.update(|s| s.cycle_running = true);
    // Active from the moment this process holds the sync lock: a replica that took over and is
    // pushing a backlog is the active syncer, not a follower until its cycle ends.
    let holding = || state.update(|s| s.active_syncer = Some(true));
    match engine
        .cycle(Trigger::Schedule)
        .on_locked(holding)
        .run()
        .await
    {
        Ok(summary) => state.record_cycle(&outcome(&summary)),
        Err(CycleError::Busy(message)) => {
            // A follower replica on PostgreSQL says this every tick: INFO, not a warning.
            // `holder`, not `message`: the JSON line's own `message` key is the text after it.
            tracing::info!(holder = %message, "tick skipped: another process is the active syncer");
            state.update(|s| {
                s.cycle_running = false;
                s.ticks_as_follower += 1;
                s.active_syncer = Some(false);
            });
            if !state.snapshot().proven {
                prove_as_follower(engine, state).await;
            }
        }
        Err(CycleError::Db(e)) => {
            tracing::error!(error = %e, "the cycle could not start");
            state.update(|s| {
                s.cycle_running = false;
                s.runs_failed += 1;
                s.last_error = Some(e.to_string());
            });
        }
    }
}

/// A follower has no cycle of its own to show that its configuration works: it reads the API
/// once with its token (the call `jobsync check` makes) and its database once, and is ready
/// only when both answered. Tried at each follower tick until it succeeds.
async fn prove_as_follower(engine: &Engine, state: &RunState) {
    let api = engine.client.check().await;
    let db = engine.db.clone();
    let database = crate::db::blocking(move || db.ping()).await;
    match (api, database) {
        (Ok(()), Ok(())) => {
            tracing::info!("follower ready: its API token and database both answered");
            state.update(|s| {
                s.proven = true;
                s.auth_failed = false;
                s.last_error = None;
            });
        }
        (Err(e), _) => {
            tracing::warn!(error = %e, "follower not ready: the Jobs API check failed");
            state.update(|s| {
                s.auth_failed = e.is_auth();
                // The client's errors name endpoints, never the URL's credentials.
                s.last_error = Some(e.to_string());
            });
        }
        (_, Err(e)) => {
            tracing::warn!(error = %e, "follower not ready: the database check failed");
            // Database errors come scrubbed of the URL's password (`db`).
            state.update(|s| s.last_error = Some(e.to_string()));
        }
    }
}

/// One scheduled `verify` (`verify.schedule`), unless the last one still runs: read-only, no
/// sync lock, beside the cycles. Its counts go to the run state (`/metrics`); differences are
/// a WARN with their counts, the details being `jobsync verify`'s to show.
async fn verify_tick(
    engine: &Engine,
    state: &RunState,
    options: &crate::verify::Options,
    running: &Mutex<()>,
) {
    if engine.stop.is_set() {
        return;
    }
    let Ok(_running) = running.try_lock() else {
        tracing::info!("verify skipped: the previous one is still running");
        return;
    };
    match crate::verify::run(&engine.db, &engine.client, options).await {
        Ok(report) => {
            let counts: Vec<(String, u64)> = crate::verify::Kind::ALL
                .iter()
                .map(|k| (k.as_str().to_string(), report.count(*k)))
                .collect();
            let differences = report.differences();
            let summary: Vec<String> = counts
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            if differences > 0 {
                tracing::warn!(
                    differences,
                    findings = %summary.join(", "),
                    "verify found differences between the mirror and the API; `jobsync verify` lists them"
                );
            } else {
                tracing::info!(findings = %summary.join(", "), "verify: the mirror matches the API");
            }
            state.update(|s| {
                s.verify_counts = counts;
                s.verify_last_at = Some(report.finished_at);
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "verify could not complete; it runs again at its next tick")
        }
    }
}

/// What the run state counts of a finished cycle.
fn outcome(summary: &CycleSummary) -> CycleOutcome {
    CycleOutcome {
        ok: summary.ok,
        duration: summary.duration,
        jobs_pulled: summary.pull.jobs_pulled,
        jobs_changed: summary.pull.jobs_changed,
        pushed_ok: summary.push.ok,
        pushed_failed: summary.push.failed,
        auth_failed: summary.auth_failed,
        proven: summary.pulled || summary.lock_lost,
        error: summary.error.clone(),
    }
}
