//! The stop request shared by every layer that waits: set on SIGTERM/SIGINT, read by the pull,
//! the push and the API client's retry loop and backoff sleeps. Two `CancellationToken`s:
//! `stopping` fires at once (no new request leaves, no retry, no backoff sleep goes on), and
//! `abandon` fires at the drain deadline (requests still in flight are dropped where they are:
//! a create dropped so is in doubt, and the next cycle looks it up).
//!
//! It lives outside `sync` and `api` because both read it, and neither may import the other.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<StopState>);

#[derive(Debug, Default)]
struct StopState {
    stopping: CancellationToken,
    abandon: CancellationToken,
    deadline: Mutex<Option<Instant>>,
}

impl StopFlag {
    pub fn new() -> Self {
        StopFlag::default()
    }

    /// Stops, letting requests in flight finish however long they take.
    pub fn stop(&self) {
        self.0.stopping.cancel();
    }

    /// Stops, abandoning requests still in flight after `grace`. Needs a tokio runtime (a timer
    /// task fires the deadline).
    pub fn stop_within(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        *self.0.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        let abandon = self.0.abandon.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            abandon.cancel();
        });
        self.stop();
    }

    pub fn is_set(&self) -> bool {
        self.0.stopping.is_cancelled()
    }

    /// Resolves once a stop is requested.
    pub async fn stopping(&self) {
        self.0.stopping.cancelled().await
    }

    /// Resolves once requests in flight must be abandoned (never, for a stop without a grace).
    pub async fn abandoned(&self) {
        self.0.abandon.cancelled().await
    }

    pub fn is_abandoned(&self) -> bool {
        self.0.abandon.is_cancelled()
    }

    /// When requests in flight are abandoned, once stopped with a grace.
    pub fn deadline(&self) -> Option<Instant> {
        *self.0.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The daemon's proof of life for a running cycle: the last moment it made progress (an API
/// answer received, a batch committed). `/healthz` fails when a running cycle has made none for
/// `sync.stall_secs`.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<HeartbeatState>);

#[derive(Debug)]
struct HeartbeatState {
    origin: Instant,
    /// Milliseconds since `origin` at the last beat.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat(Arc::new(HeartbeatState {
            origin: Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }))
    }
}

impl Heartbeat {
    /// Progress was made now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.0.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0
            .last_ms
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the last beat.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.0.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.0.origin.elapsed().saturating_sub(last)
    }
}
