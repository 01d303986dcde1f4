//! Why a cycle could not complete. Item-level rejections are not errors: they are recorded in
//! the outbox and counted in the summary.

use crate::api::ApiError;
use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("stopped by a shutdown signal before the cycle finished")]
    Stopped,
}

impl SyncError {
    /// Authentication failures are not retried in a loop; readiness reports them.
    pub fn is_auth(&self) -> bool {
        matches!(self, SyncError::Api(e) if e.is_auth())
    }
}
