//! Shared test helpers: fresh databases on both backends, and the real simulator.
#![allow(dead_code, unused_imports)]

pub mod db;
pub mod process;
pub mod sim;

pub use db::*;
pub use process::*;
pub use sim::*;
