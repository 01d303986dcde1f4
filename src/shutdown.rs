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
