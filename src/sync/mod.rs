//! The sync engine: one cycle pulls the API's changes into the mirror, then pushes the outbox.
//! It talks to the API only through [`crate::api`] and to the database only through
//! [`crate::db::repo`]; the faces (CLI, daemon, server) call it, never the other way round.

pub mod cycle;
mod error;
pub mod pull;
pub mod push;

pub use error::SyncError;
