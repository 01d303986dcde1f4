//! Shared test helpers: fresh databases on both backends, the real simulator, the real daemon.
#![allow(dead_code, unused_imports)]

pub mod daemon;
pub mod db;
pub mod process;
pub mod proxy;
pub mod sim;

pub use daemon::*;
pub use db::*;
pub use process::*;
pub use proxy::*;
pub use sim::*;
