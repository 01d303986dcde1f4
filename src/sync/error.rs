//! Why a cycle could not complete. Item-level rejections are not errors: they are recorded in
//! the outbox and counted in the summary.

use crate::api::ApiError;
use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Api(ApiError),
    #[error(transparent)]
    Db(#[from] DbError),
    /// The words `sync_runs.error` records for a run a SIGTERM/SIGINT ended.
    #[error("stopped by a shutdown signal")]
    Stopped,
    /// Bulk calls of the push that could not reach the API after their retries (refused or
    /// broken connections, no answer in time). Their rows are recorded as usual; the push went
    /// on with the others.
    #[error(
        "{calls} bulk call(s) of the push could not reach the Jobs API after retries; their rows \
         are kept and settle in a later cycle (waiting for retry, or looked up if in doubt): {last}"
    )]
    PushUnreachable { calls: i64, last: ApiError },
}

impl From<ApiError> for SyncError {
    /// A request a stop request cut short is the stop, not an API failure.
    fn from(e: ApiError) -> Self {
        if e.is_stop() {
            SyncError::Stopped
        } else {
            SyncError::Api(e)
        }
    }
}

impl SyncError {
    /// Authentication failures are not retried in a loop; readiness reports them.
    pub fn is_auth(&self) -> bool {
        matches!(self, SyncError::Api(e) if e.is_auth())
    }
}
