//! Process-wide counts of things noticed deep in a layer that has no run state to hand, read by
//! `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Jobs stored with a NUL character replaced by U+FFFD (PostgreSQL text cannot hold it; see
/// `db::models::JobContent::from_job`).
static NUL_REPLACED_JOBS: AtomicU64 = AtomicU64::new(0);

/// One more job stored with a NUL character replaced.
pub fn count_nul_replaced_job() {
    NUL_REPLACED_JOBS.fetch_add(1, Ordering::Relaxed);
}

/// Jobs stored with a NUL character replaced since the process started.
pub fn nul_replaced_jobs() -> u64 {
    NUL_REPLACED_JOBS.load(Ordering::Relaxed)
}
