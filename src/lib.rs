//! jobsync keeps a CRM and a call-campaign platform's Jobs API in step: it pulls every job change
//! into a local mirror, pushes the CRM's outbox upstream exactly once, and records a changefeed.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod job;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod sim;
pub mod sync;
pub mod telemetry;
pub mod verify;
pub mod webhook;
