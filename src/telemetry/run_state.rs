//! What the daemon knows about its own cycles: it records them, the health server reads them
//! (`/healthz`, `/readyz`, `/status`, `/metrics`). Neither imports the other; both import this.

use chrono::{DateTime, Utc};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::sync::Mutex;

/// Counters and the latest outcome, updated after each cycle.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub started_at: Option<DateTime<Utc>>,
    pub scheduler_running: bool,
    pub shutting_down: bool,
    pub cycle_running: bool,
    pub cycles_finished: u64,
    pub runs_ok: u64,
    pub runs_failed: u64,
    /// Ticks skipped because this process's previous cycle was still running.
    pub ticks_skipped: u64,
    /// Ticks skipped because another process held the sync lock (a follower replica on
    /// PostgreSQL does this every tick: not a fault).
    pub ticks_as_follower: u64,
    /// Whether this process runs or ran the last cycle (`Some(true)`, set when the cycle takes
    /// the sync lock), found another process syncing (`Some(false)`), or has not tried yet.
    pub active_syncer: Option<bool>,
    pub last_run_seconds: f64,
    pub jobs_pulled: u64,
    pub jobs_changed: u64,
    pub pushed_ok: u64,
    pub pushed_failed: u64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The last cycle failed because the API refused the token.
    pub auth_failed: bool,
    /// A cycle of this process showed that it can sync: it pulled, or it was syncing when
    /// another process took its lock over.
    pub proven: bool,
    /// The last scheduled `verify` (`verify.schedule`): findings per kind, every kind listed.
    pub verify_counts: Vec<(String, u64)>,
    /// When that verify finished.
    pub verify_last_at: Option<DateTime<Utc>>,
    /// Changefeed rows the daily prune deleted before a consumer read them, per consumer.
    pub pruned_unread: Vec<(String, u64)>,
    /// The webhook sink of this process (when `webhook.url` is set).
    pub webhook: WebhookSnapshot,
}

/// What this process's webhook sink did.
#[derive(Debug, Default, Clone)]
pub struct WebhookSnapshot {
    /// It holds the webhook lock (the one deliverer).
    pub delivering: bool,
    /// It paused (a refusal, or tries exhausted) and has not delivered since.
    pub paused: bool,
    pub batches_delivered: u64,
    pub changes_delivered: u64,
    /// POSTs that failed (and were retried, or ended in a pause).
    pub failed_attempts: u64,
    pub last_delivered_at: Option<DateTime<Utc>>,
    /// The last failure, scrubbed.
    pub last_error: Option<String>,
}

impl Snapshot {
    /// This process ran cycles and none of them could sync: its first cycle failed (and every
    /// one since) before its pull completed — a wrong `api.base_url`, a blocked network, a
    /// refused token. A cycle whose push failed after a good pull, or that lost the sync lock to
    /// another replica, does not count: that replica is a follower like any other.
    pub fn first_cycle_failed(&self) -> bool {
        self.runs_ok == 0 && self.runs_failed > 0 && !self.proven
    }

    /// `active`, `follower` or `unknown` (no tick yet), for `/readyz`, `/status` and metrics.
    pub fn role(&self) -> &'static str {
        match self.active_syncer {
            Some(true) => "active",
            Some(false) => "follower",
            None => "unknown",
        }
    }
}

/// What a finished cycle adds to the counters: the daemon fills it from the engine's summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleOutcome {
    pub ok: bool,
    pub duration: std::time::Duration,
    pub jobs_pulled: i64,
    pub jobs_changed: i64,
    pub pushed_ok: i64,
    pub pushed_failed: i64,
    /// The cycle failed because the API refused the token.
    pub auth_failed: bool,
    /// The cycle's pull completed, or it lost the sync lock to another process: this process
    /// can sync (see [`Snapshot::first_cycle_failed`]).
    pub proven: bool,
    pub error: Option<String>,
}

/// The [`Snapshot`] behind a lock, shared by the daemon (writer) and the health server (reader),
/// and the durations of finished cycles (`jobsync_cycle_duration_seconds`).
#[derive(Debug)]
pub struct RunState {
    inner: Mutex<Snapshot>,
    durations: Histogram,
}

impl Default for RunState {
    fn default() -> Self {
        RunState {
            inner: Mutex::default(),
            // 0.5 s to about 4.5 h, tripling: an idle tick, a push of a backlog, a backfill.
            durations: Histogram::new(exponential_buckets(0.5, 3.0, 10)),
        }
    }
}

impl RunState {
    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.lock());
    }

    /// The finished cycles' durations (shared: a clone observes into the same histogram).
    pub fn durations(&self) -> Histogram {
        self.durations.clone()
    }

    pub fn record_cycle(&self, outcome: &CycleOutcome) {
        self.durations.observe(outcome.duration.as_secs_f64());
        self.update(|s| {
            s.cycle_running = false;
            s.active_syncer = Some(true);
            s.cycles_finished += 1;
            s.last_run_seconds = outcome.duration.as_secs_f64();
            s.jobs_pulled += outcome.jobs_pulled.max(0) as u64;
            s.jobs_changed += outcome.jobs_changed.max(0) as u64;
            s.pushed_ok += outcome.pushed_ok.max(0) as u64;
            s.pushed_failed += outcome.pushed_failed.max(0) as u64;
            s.auth_failed = outcome.auth_failed;
            s.proven |= outcome.proven;
            if outcome.ok {
                s.runs_ok += 1;
                s.last_success_at = Some(Utc::now());
                s.last_error = None;
            } else {
                s.runs_failed += 1;
                s.last_error = outcome.error.clone();
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way that
        // matters more than losing health reporting; keep serving them.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
