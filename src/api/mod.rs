//! The Jobs API: wire models shared with the simulator, and the resilient client (retry policy,
//! rate limit, streaming listings, bulk helpers). It knows no database and no configuration file:
//! callers hand it a typed [`ClientOptions`].

mod bulk;
mod client;
mod error;
mod limit;
pub mod listing;
pub mod models;
mod retry;
mod split;
mod token;

/// The request counters live with the rest of the observation, in [`crate::telemetry`].
pub use crate::telemetry::ApiStats;
pub use bulk::{Halt, ItemOutcome};
pub use client::{ApiClient, ClientOptions, ListQuery};
pub use error::ApiError;
pub use listing::{Listing, Quarantined};
pub use token::TokenSource;
