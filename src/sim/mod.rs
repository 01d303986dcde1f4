//! A faithful local stand-in for the Jobs API (docs/contract.md §6): the eight documented
//! endpoints under `/j/` with bearer-token auth, control routes under `/_sim/` for tests, a dialer
//! that moves jobs through their states, injectable faults, and a clock that can be shifted.
//!
//! Everything lives in memory. `spawn` serves in a background task; `run_cli` is the
//! `jobsync simulate` command.

mod body;
mod cli;
mod clock;
mod control;
mod dialer;
mod faults;
mod gate;
#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod handle_tests;
mod json;
mod phone;
mod routes;
mod seed;
mod server;
mod state;
mod validate;

pub use cli::{SimulateArgs, SimulateError, run_cli};
pub use control::{ClockReading, Pending, Refused};
pub use faults::{FaultSettings, FaultUpdate, Faults, InjectedFault, RequestRecord, SimStats};
pub use gate::{Hold, HoldStatus};

use crate::job::Job;
use clock::SimClock;
use faults::RequestLog;
use gate::Gate;
use rand::SeedableRng;
use rand::rngs::StdRng;
use state::Store;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How the simulator starts; everything but the token and campaigns can be changed later through
/// the control routes.
#[derive(Clone)]
pub struct SimConfig {
    pub token: String,
    /// The campaigns that exist: a create into any other is refused.
    pub campaigns: Vec<i64>,
    pub jobs_per_campaign: usize,
    pub seed: u64,
    /// The dialer's period (0 = no dialer).
    pub dial_interval_ms: u64,
    pub faults: Faults,
    pub latency_ms: u64,
    /// Within ±100,000 hours.
    pub clock_offset_hours: f64,
    /// Let a reference be used by several jobs of a campaign (see `FaultSettings`).
    pub allow_duplicate_references: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            token: "dev-token".into(),
            campaigns: vec![28, 29],
            jobs_per_campaign: 0,
            seed: 1,
            dial_interval_ms: 0,
            faults: Faults::default(),
            latency_ms: 0,
            clock_offset_hours: 0.0,
            allow_duplicate_references: false,
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("token", &"***")
            .field("campaigns", &self.campaigns)
            .field("jobs_per_campaign", &self.jobs_per_campaign)
            .field("seed", &self.seed)
            .field("dial_interval_ms", &self.dial_interval_ms)
            .field("faults", &self.faults)
            .field("latency_ms", &self.latency_ms)
            .field("clock_offset_hours", &self.clock_offset_hours)
            .field(
                "allow_duplicate_references",
                &self.allow_duplicate_references,
            )
            .finish()
    }
}

impl SimConfig {
    fn fault_settings(&self) -> FaultSettings {
        FaultSettings {
            faults: self.faults,
            latency_ms: self.latency_ms,
            allow_duplicate_references: self.allow_duplicate_references,
            hold: None,
        }
    }

    /// Rates within 0..=1, delays (and the dialer's period) within ten minutes, `Retry-After`
    /// within a day, the clock offset finite and within ±100,000 hours, campaigns positive and
    /// listed once, at most [`MAX_SEEDED_JOBS`] to seed: the same bounds the flags and the
    /// control routes hold to, so that a configuration built in code cannot start a simulator
    /// that panics while seeding or on its first request, or seeds until memory runs out.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(bad) = self.campaigns.iter().find(|&&id| id <= 0) {
            return Err(format!(
                "campaigns: campaign ids are positive integers, not {bad}"
            ));
        }
        if let Some(twice) = repeated_campaign(&self.campaigns) {
            return Err(format!("campaigns: campaign {twice} is listed twice"));
        }
        if seeded_jobs(self.campaigns.len(), self.jobs_per_campaign).is_none() {
            return Err(format!(
                "jobs_per_campaign: {} campaigns × {} jobs is more than the {MAX_SEEDED_JOBS} \
                 jobs that may be seeded",
                self.campaigns.len(),
                self.jobs_per_campaign
            ));
        }
        faults::check_delay("dial_interval_ms", self.dial_interval_ms)?;
        self.fault_settings().check()?;
        clock::check_offset_hours(self.clock_offset_hours)
    }
}

/// The most jobs seeded at start, all campaigns together: ten million is beyond any benchmark
/// this machine's memory holds (a million take a few hundred MB); more is a typo that would
/// seed until memory runs out.
pub const MAX_SEEDED_JOBS: usize = 10_000_000;

/// The first campaign listed more than once, if any (its seeded references would collide).
fn repeated_campaign(campaigns: &[i64]) -> Option<i64> {
    let mut seen = std::collections::HashSet::new();
    campaigns.iter().copied().find(|id| !seen.insert(*id))
}

/// How many jobs `campaigns × per_campaign` seeds, or `None` beyond [`MAX_SEEDED_JOBS`].
fn seeded_jobs(campaigns: usize, per_campaign: usize) -> Option<usize> {
    campaigns
        .checked_mul(per_campaign)
        .filter(|&total| total <= MAX_SEEDED_JOBS)
}

/// A number as a message shows it: 1e308 written out is 309 digits, so large values are shown
/// in scientific notation.
fn shown(x: f64) -> String {
    if x.abs() < 1e9 || !x.is_finite() {
        x.to_string()
    } else {
        format!("{x:e}")
    }
}

/// The state every route shares.
struct Sim {
    token: String,
    store: Mutex<Store>,
    clock: SimClock,
    faults: Mutex<FaultSettings>,
    /// One generator for faults, the dialer and edits, seeded from `SimConfig::seed`.
    rng: Mutex<StdRng>,
    log: Mutex<RequestLog>,
    /// Slow commits started and not yet applied (`GET /_sim/pending`).
    late_applies: AtomicUsize,
    /// Requests held by the `hold` fault.
    gate: Gate,
}

impl Sim {
    /// Refuses a configuration out of range (`SimConfig::validate`).
    fn new(cfg: &SimConfig) -> Result<Self, String> {
        cfg.validate()?;
        let clock = SimClock::new(cfg.clock_offset_hours)?;
        let mut store = Store::new(&cfg.campaigns);
        store.set_allow_duplicate_references(cfg.allow_duplicate_references);
        seed::seed_jobs(
            &mut store,
            &cfg.campaigns,
            cfg.jobs_per_campaign,
            cfg.seed,
            clock.now(),
        );
        Ok(Sim {
            token: cfg.token.clone(),
            store: Mutex::new(store),
            clock,
            faults: Mutex::new(cfg.fault_settings()),
            rng: Mutex::new(StdRng::seed_from_u64(cfg.seed ^ 0x5eed_fa17)),
            log: Mutex::new(RequestLog::default()),
            late_applies: AtomicUsize::new(0),
            gate: Gate::default(),
        })
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn rng(&self) -> MutexGuard<'_, StdRng> {
        lock(&self.rng)
    }
}

/// A poisoned lock only means a handler panicked mid-change; the simulator keeps serving.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running simulator. Dropping the handle (or calling `shutdown`) stops it.
///
/// Its methods control the simulator directly, as the `/_sim/` routes do over HTTP (the same
/// functions behind both): a test or the demo in the same process needs no HTTP for them.
pub struct SimHandle {
    pub addr: SocketAddr,
    sim: Arc<Sim>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// `http://ADDR`, the base URL a client should be given.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every job (`GET /_sim/state`).
    pub fn state(&self) -> Vec<Job> {
        parse_jobs(self.sim.all_jobs())
    }

    /// Every job exactly as the API answers it, each a JSON value (`GET /_sim/state`).
    pub fn state_json(&self) -> Vec<serde_json::Value> {
        self.sim
            .all_jobs()
            .iter()
            .map(|json| serde_json::from_slice(json).expect("the simulator stores JSON"))
            .collect()
    }

    /// Inserts jobs as given, without the API's validation (`POST /_sim/jobs`): `id`, `state`
    /// and `created_at` are optional, an extra `modified_at` sets when the job counts as last
    /// modified. Answers the jobs inserted.
    pub fn insert_jobs(
        &self,
        jobs: Vec<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Vec<Job>, Refused> {
        self.sim.insert_jobs(jobs).map(parse_jobs)
    }

    /// Removes a job (`DELETE /_sim/jobs/ID`); answers it as it was, if it existed.
    pub fn delete_job(&self, id: i64) -> Option<Job> {
        self.sim.delete_job(id).map(|json| parse_job(&json))
    }

    /// The simulated clock (`GET /_sim/clock`).
    pub fn clock(&self) -> ClockReading {
        self.sim.clock_reading()
    }

    /// Shifts the simulated clock from real time (`POST /_sim/clock`).
    pub fn set_clock(&self, offset_hours: f64) -> Result<ClockReading, Refused> {
        self.sim.set_clock(offset_hours)
    }

    /// The fault settings (`GET /_sim/faults`).
    pub fn faults(&self) -> FaultSettings {
        self.sim.fault_settings()
    }

    /// Changes the settings given, all or none (`POST /_sim/faults`); answers them all.
    pub fn set_faults(&self, update: &FaultUpdate) -> Result<FaultSettings, Refused> {
        self.sim.set_faults(update)
    }

    /// Holds matching requests from now on, releasing those held so far (`POST /_sim/hold`).
    pub fn hold(&self, rule: Hold) -> Result<(), Refused> {
        self.sim.set_hold(Some(rule)).map(drop)
    }

    /// Opens the gate: every held request goes on (`POST /_sim/release`). Answers how many
    /// were held.
    pub fn release(&self) -> usize {
        self.sim
            .set_hold(None)
            .expect("opening the gate is always accepted")
    }

    /// The gate's rule and how many requests it holds (`GET /_sim/hold`).
    pub fn hold_status(&self) -> HoldStatus {
        self.sim.hold_status()
    }

    /// Requests held (or released and not yet answered).
    pub fn held(&self) -> usize {
        self.sim.gate.held()
    }

    /// Waits until the count of held requests satisfies `done` (at once if it already does);
    /// answers the count. No deadline: a test wraps it in its own.
    pub async fn wait_held(&self, mut done: impl FnMut(usize) -> bool) -> usize {
        let mut held = self.sim.gate.watch_held();
        *held
            .wait_for(|n| done(*n))
            .await
            .expect("the gate lives as long as the simulator")
    }

    /// Moves up to `n` queued or calling jobs one step, as the dialer does (`POST /_sim/dial`);
    /// answers how many moved.
    pub fn dial(&self, n: usize) -> usize {
        dialer::dial(&self.sim, n).len()
    }

    /// Changes up to `n` jobs as a person in the platform's UI would (`POST /_sim/edit`);
    /// answers how many changed.
    pub fn edit(&self, n: usize) -> usize {
        dialer::edit(&self.sim, n).len()
    }

    /// The request log (`GET /_sim/requests`).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.sim.requests()
    }

    /// Empties the request log (`POST /_sim/reset-log`); answers how many entries it held.
    pub fn reset_log(&self) -> usize {
        self.sim.reset_log()
    }

    /// Work started and not yet done (`GET /_sim/pending`).
    pub fn pending(&self) -> Pending {
        self.sim.pending()
    }

    /// Requests served and faults injected by kind since the simulator started (`GET
    /// /_sim/stats`): cumulative, beyond the request log's bound and its resets.
    pub fn stats(&self) -> SimStats {
        self.sim.stats()
    }

    /// Stops accepting, closes open connections and the dialer, and waits until they are gone.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Held requests are let go, so that no task waits on a gate nobody will open.
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            self.release();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn parse_job(json: &[u8]) -> Job {
    serde_json::from_slice(json).expect("the simulator stores each job as a Job")
}

fn parse_jobs(jobs: Vec<axum::body::Bytes>) -> Vec<Job> {
    jobs.iter().map(|json| parse_job(json)).collect()
}

/// Binds `listen` (port 0 picks a free port), seeds the jobs and serves in a background task.
/// A configuration out of range (see `SimConfig::validate`) is refused as `InvalidInput`.
pub async fn spawn(listen: SocketAddr, cfg: SimConfig) -> std::io::Result<SimHandle> {
    let sim =
        Sim::new(&cfg).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let sim = Arc::new(sim);
    tracing::info!(
        %addr,
        campaigns = ?cfg.campaigns,
        jobs = sim.store().len(),
        dial_interval_ms = cfg.dial_interval_ms,
        "simulator started"
    );
    let dialer = dialer::start(sim.clone(), cfg.dial_interval_ms);
    let router = server::router(sim.clone());
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        server::serve(listener, router, stopped).await;
        if let Some(dialer) = dialer {
            dialer.abort();
        }
    });
    Ok(SimHandle {
        addr,
        sim,
        stop: Some(stop),
        task: Some(task),
    })
}
