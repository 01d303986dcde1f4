//! One sync cycle: take the sync lock, record the run, pull, push, record the outcome.
//! The daemon's scheduler and `jobsync --once` both run [`Engine::cycle`]; the cycle composes
//! the engine's [`Pull`] and [`Push`], each with one `run(&mut stats)`.

use super::SyncError;
use super::pull::{self, Pull};
use super::push::{self, Push};
use crate::api::{ApiClient, ApiError};
use crate::config::{PushConfig, SyncConfig};
use crate::db::lock::{LOCK_CHECK_EVERY, SyncLock};
use crate::db::repo::runs::{self, RunOutcome};
use crate::db::{Db, DbError, Ts};
use crate::shutdown::StopFlag;
use crate::telemetry::progress::{LogProgress, ProgressSink};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What started a cycle (`sync_runs.trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Once,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Once => "once",
        }
    }
}

/// Everything a cycle needs, built once at start.
#[derive(Clone)]
pub struct Engine {
    pub db: Db,
    pub client: ApiClient,
    pub sync: SyncConfig,
    pub push: PushConfig,
    pub stop: StopFlag,
}

/// What a finished cycle did (also recorded in `sync_runs`).
#[derive(Debug, Clone, PartialEq)]
pub struct CycleSummary {
    pub run_id: i64,
    pub ok: bool,
    pub mode: &'static str,
    pub pull: pull::PullStats,
    pub push: push::PushStats,
    pub api_calls: i64,
    pub duration: Duration,
    pub error: Option<String>,
    pub auth_failed: bool,
    /// The pull completed (the push may still have failed the run).
    pub pulled: bool,
    /// The run failed because this process lost the sync lock mid-cycle (another took it over).
    pub lock_lost: bool,
    /// Ended early by a stop request (SIGTERM/SIGINT): recorded `failed`, but not an error of
    /// the process.
    pub stopped: bool,
}

/// Why no cycle ran at all.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// Another process holds the sync lock: this cycle is skipped.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Engine {
    /// One pull with this engine's database, client, settings and stop flag.
    pub fn pull(&self) -> Pull<'_> {
        Pull::new(&self.db, &self.client, &self.sync, &self.stop)
    }

    /// One push with this engine's database, client, settings and stop flag.
    pub fn push(&self) -> Push<'_> {
        Push::new(&self.db, &self.client, &self.push, &self.stop)
    }

    /// One cycle (lock, pull, push, record), run with [`Cycle::run`].
    pub fn cycle(&self, trigger: Trigger) -> Cycle<'_> {
        Cycle {
            engine: self,
            trigger,
            progress: &LogProgress,
            on_locked: None,
        }
    }
}

/// One sync cycle: built by [`Engine::cycle`], with its progress going to the log unless
/// [`Cycle::progress`] names another sink.
pub struct Cycle<'a> {
    engine: &'a Engine,
    trigger: Trigger,
    progress: &'a dyn ProgressSink,
    on_locked: Option<Box<dyn FnOnce() + Send + 'a>>,
}

impl<'a> Cycle<'a> {
    /// Where the progress of long work (a backfill's listings) goes.
    pub fn progress(self, progress: &'a dyn ProgressSink) -> Self {
        Cycle { progress, ..self }
    }

    /// Called as soon as this process holds the sync lock and has recorded its run, before any
    /// pull or push: the daemon reports itself the active syncer from there, not only once the
    /// cycle (a long push, a backfill) has ended.
    pub fn on_locked(self, on_locked: impl FnOnce() + Send + 'a) -> Self {
        Cycle {
            on_locked: Some(Box::new(on_locked)),
            ..self
        }
    }

    /// Runs the cycle. A cycle that starts but fails (API down, undecodable answer) returns `Ok`
    /// with `ok: false`: the failure is recorded in `sync_runs` like any outcome.
    ///
    /// The whole cycle runs in a `cycle` span (`trigger`, and `run_id` once recorded): every log
    /// line of the cycle carries it, and with `telemetry.otlp_endpoint` set it is the root of the
    /// run's trace (`pull`, each `listing`, `push`, each `bulk_call` under it).
    pub async fn run(self) -> Result<CycleSummary, CycleError> {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "cycle",
            trigger = self.trigger.as_str(),
            run_id = tracing::field::Empty
        );
        let on_locked = self.on_locked.unwrap_or_else(|| Box::new(|| {}));
        cycle_in_span(self.engine, self.trigger, self.progress, on_locked)
            .instrument(span)
            .await
    }
}

async fn cycle_in_span(
    engine: &Engine,
    trigger: Trigger,
    progress: &dyn ProgressSink,
    on_locked: impl FnOnce(),
) -> Result<CycleSummary, CycleError> {
    let db = engine.db.clone();
    let (lock, run_id) = crate::db::blocking(move || {
        let lock = match SyncLock::try_acquire(&db) {
            Ok(lock) => lock,
            Err(DbError::Locked(msg)) => return Ok(Err(msg)),
            Err(e) => return Err(e),
        };
        let mut c = db.conn()?;
        let abandoned = runs::fail_abandoned(&mut c)?;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "marked runs left running by a stopped process as failed"
            );
        }
        Ok(Ok((
            lock,
            runs::start(&mut c, trigger.as_str(), Ts::now())?,
        )))
    })
    .await?
    .map_err(CycleError::Busy)?;
    tracing::Span::current().record("run_id", run_id);
    on_locked();
    let started = Instant::now();
    engine.client.heartbeat().beat();
    let calls_before = engine.client.stats().total();
    tracing::info!(run_id, trigger = trigger.as_str(), "cycle started");

    // Every write of the cycle goes through the fenced handle: once another process took the
    // lock, the database refuses them (contract §8, Fencing). The keeper notices a dead lock
    // session sooner, and its queries keep the session from idling out.
    let fence = lock.fence();
    let lock = Arc::new(Mutex::new(lock));
    let (end_keeper, ended) = tokio::sync::oneshot::channel::<()>();
    let keeper = tokio::spawn(keep_lock(Arc::clone(&lock), ended));
    let fenced = Engine {
        db: engine.db.fenced(Arc::clone(&fence)),
        ..engine.clone()
    };
    let mut pulled = pull::PullStats::default();
    let mut pushed = push::PushStats::default();
    let mut pull_done = false;
    let result: Result<(), SyncError> = async {
        let pull = fenced.pull().progress(progress).run(&mut pulled).await;
        // An answer of the pull the sync cannot use (an undecodable or looping listing) fails
        // the run, but the API is up and the CRM's rows do not wait for it: the push runs. Any
        // other failure (unreachable API, refused token, database, lost lock, stop) ends here.
        let pull_failure = match pull {
            Ok(()) => {
                pull_done = true;
                None
            }
            Err(SyncError::Api(e @ (ApiError::Decode { .. } | ApiError::InvalidAnswer { .. }))) => {
                tracing::warn!(error = %e, "the pull failed on the API's answer; pushing anyway");
                Some(SyncError::Api(e))
            }
            Err(e) => return Err(e),
        };
        fenced.push().run(&mut pushed).await?;
        pull_failure.map_or(Ok(()), Err)
    }
    .await;
    // Ended and awaited, so that its hold on the lock is gone before the lock is released.
    let _ = end_keeper.send(());
    let _ = keeper.await;
    // Whatever error a stop request caused on its way out (a request abandoned, a retry cut
    // short), the run was stopped: that is what it records. A lost lock is said as such, whatever
    // error it surfaced as.
    let stopped = result.is_err() && engine.stop.is_set() && !fence.is_lost();
    let result = match result {
        Err(_) if fence.is_lost() => Err(SyncError::Db(DbError::LockLost(fence.reason()))),
        Err(_) if stopped => Err(SyncError::Stopped),
        other => other,
    };
    let summary = CycleSummary {
        run_id,
        ok: result.is_ok(),
        mode: if pulled.full { "full" } else { "incremental" },
        api_calls: (engine.client.stats().total() - calls_before) as i64,
        duration: started.elapsed(),
        auth_failed: result.as_ref().err().is_some_and(SyncError::is_auth),
        pulled: pull_done,
        lock_lost: fence.is_lost(),
        stopped,
        error: result.err().map(|e| crate::secret::scrub(&e.to_string())),
        pull: pulled,
        push: pushed,
    };
    let outcome = RunOutcome {
        mode: summary.mode.into(),
        ok: summary.ok,
        jobs_pulled: summary.pull.jobs_pulled,
        jobs_changed: summary.pull.jobs_changed,
        pushed_ok: summary.push.ok,
        pushed_failed: summary.push.failed,
        api_calls: summary.api_calls,
        error: summary.error.clone(),
    };
    engine
        .db
        .run(move |c| {
            runs::finish(c, run_id, &outcome)?;
            // Released here, on a blocking thread: on PostgreSQL unlocking is a query.
            drop(lock);
            Ok(())
        })
        .await?;
    match &summary.error {
        None => tracing::info!(
            run_id,
            mode = summary.mode,
            api_calls = summary.api_calls,
            "cycle finished"
        ),
        Some(error) if stopped => tracing::info!(run_id, error = %error, "cycle stopped"),
        Some(error) => tracing::error!(run_id, error = %error, "cycle failed"),
    }
    Ok(summary)
}

/// Checks the cycle's lock every [`LOCK_CHECK_EVERY`] until told to end ([`SyncLock::check_alive`]):
/// a lost lock is marked on its fence, which stops the cycle's writes.
async fn keep_lock(lock: Arc<Mutex<SyncLock>>, mut end: tokio::sync::oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LOCK_CHECK_EVERY) => {}
            _ = &mut end => return,
        }
        let lock = Arc::clone(&lock);
        let checked = crate::db::blocking(move || {
            let mut lock = lock.lock().unwrap_or_else(|p| p.into_inner());
            lock.check_alive();
            Ok::<(), DbError>(())
        })
        .await;
        if checked.is_err() {
            return;
        }
    }
}

/// Asks the engine to stop (SIGTERM/SIGINT), and bounds how long that takes, database waits
/// included: requests in flight get until `drain`; then the statements still waiting in the
/// database are cancelled (PostgreSQL: a CRM's lock held on a table the cycle writes), so the
/// cycle records its run and ends; and should anything still hold the process at `grace` less a
/// second (a SQLite write lock a CRM keeps, whose busy wait nothing can cancel), it exits 0 there,
/// with an ERROR, before Kubernetes' SIGKILL. The run a cycle could not record is marked failed
/// ("abandoned") by the next one.
pub fn stop_within(engine: &Engine, drain: Duration, grace: Duration) {
    engine.stop.stop_within(drain);
    let db = engine.db.clone();
    tokio::spawn(async move {
        tokio::time::sleep(drain).await;
        match crate::db::blocking(move || db.cancel_statements()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                statements = n,
                "stop deadline reached: cancelled the database statements still waiting"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "stop deadline reached: could not cancel the database statements still waiting"
            ),
        }
    });
    let last_moment = grace.saturating_sub(Duration::from_secs(1)).max(drain);
    std::thread::spawn(move || {
        std::thread::sleep(last_moment);
        tracing::error!(
            grace_secs = grace.as_secs(),
            "shutdown grace ending with work still blocked (a database wait that cannot be \
             cancelled): exiting now; the next cycle marks the unfinished run failed and looks up \
             the creates left in doubt"
        );
        std::process::exit(0);
    });
}
