//! Configuration (SPEC §2), layered with figment; later layers win:
//! built-in defaults → `config/default.toml` (or `/etc/jobsync/config.toml`) → the file named by
//! `--config` / `JOBSYNC_CONFIG` → `JOBSYNC_*` environment variables (nesting with `__`, e.g.
//! `JOBSYNC_API__TOKEN`, `JOBSYNC_DATABASE__URL`, `JOBSYNC_SYNC__CAMPAIGNS=28,29`) → flags.
//!
//! The result is validated once at start ([`validate`]) and handed down as typed values.

pub mod conninfo;
mod load;
mod types;
mod validate;

pub use load::{ConfigError, Overrides, load};
pub use types::*;
