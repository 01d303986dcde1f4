//! The proof of life of a running cycle, beaten by the layers that make progress (the API
//! client on each answer, the pull on each committed batch) and read by `/healthz`. It is
//! observation, so it lives in `telemetry` beside the run's other records.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
