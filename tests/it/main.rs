//! The integration tests, one crate (one binary to compile and link) with one module per area.
//!
//! `common` is the shared harness; every other module is the tests of one area, named as its
//! tests are (`cargo test pull::`, `cargo test sim_contract::bulk::`).

mod common;

mod architecture;
mod bulk_split;
mod changefeed_consumers;
mod cli_config;
mod client;
mod daemon;
mod db;
mod demo;
mod deploy_alerts;
mod failover;
mod fencing;
mod first_hour;
mod first_hour_hints;
mod health_server;
mod hostile_answers;
mod import;
mod pg_schema;
mod pull;
mod pull_crash;
mod pull_failures;
mod pull_hardened;
mod push;
mod push_chaos;
mod push_crm_writer;
mod push_faults;
mod push_gateway;
mod push_hardened;
mod push_kill;
mod push_settle;
mod readme;
mod runtime;
mod secrets_sink;
mod server_clock;
mod side_effects;
mod sim_contract;
mod sim_limits;
mod traces;
mod verify;
mod webhook;
