//! Shared test helpers: fresh databases on both backends, the real simulator, the real daemon,
//! sync engines and push runs against the simulator, and runtimes for `fn` tests.
#![allow(dead_code, unused_imports)]

pub mod daemon;
pub mod db;
pub mod engine;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod push;
pub mod rt;
pub mod sim;

pub use daemon::*;
pub use db::*;
pub use engine::*;
pub use pg::*;
pub use process::*;
pub use proxy::*;
pub use push::*;
pub use rt::*;
pub use sim::*;
