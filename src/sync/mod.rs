//! The sync engine: one cycle pulls the API's changes into the mirror, then pushes the outbox.
//! It talks to the API only through [`crate::api`] and to the database only through
//! [`crate::db::repo`]; the faces (CLI, daemon, server) call it, never the other way round.

pub mod cycle;
mod error;
pub mod pull;
pub mod push;

pub use error::SyncError;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set on SIGTERM/SIGINT: the engine stops taking new work at the next safe point (between
/// batches and push rounds), records the run, and returns.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn new() -> Self {
        StopFlag::default()
    }

    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
