//! The sync engine: one cycle pulls the API's changes into the mirror, then pushes the outbox.
//! It talks to the API only through [`crate::api`] and to the database only through
//! [`crate::db::repo`]; the faces (CLI, daemon, server) call it, never the other way round.

pub mod cycle;
mod error;
pub mod pull;
pub mod push;

pub use error::SyncError;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Set on SIGTERM/SIGINT: the engine stops taking new work (no new request leaves; checked
/// between batches, rounds and bulk chunks), and the requests already in flight get until the
/// deadline, if one was given, before they are abandoned. The run is then recorded and the
/// engine returns [`SyncError::Stopped`].
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<StopState>);

#[derive(Debug, Default)]
struct StopState {
    set: AtomicBool,
    deadline: Mutex<Option<Instant>>,
}

impl StopFlag {
    pub fn new() -> Self {
        StopFlag::default()
    }

    /// Stops, letting requests in flight finish however long they take.
    pub fn stop(&self) {
        self.0.set.store(true, Ordering::SeqCst);
    }

    /// Stops, abandoning requests still in flight after `grace`.
    pub fn stop_within(&self, grace: Duration) {
        *self.0.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + grace);
        self.stop();
    }

    pub fn is_set(&self) -> bool {
        self.0.set.load(Ordering::SeqCst)
    }

    /// When requests in flight are abandoned, once stopped with a grace.
    pub fn deadline(&self) -> Option<Instant> {
        *self.0.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }
}
