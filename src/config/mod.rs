//! Configuration (docs/contract.md §2), layered with figment; later layers win:
//! built-in defaults → `config/default.toml` (or `/etc/jobsync/config.toml`) → the file named by
//! `--config` / `JOBSYNC_CONFIG` → `JOBSYNC_*` environment variables (nesting with `__`, e.g.
//! `JOBSYNC_API__TOKEN`, `JOBSYNC_DATABASE__URL`, `JOBSYNC_SYNC__CAMPAIGNS=28,29`) → flags.
//!
//! The result is validated once at start ([`validate`]) and handed down as typed values.

pub mod conninfo;
mod hints;
mod load;
mod show;
mod types;
mod validate;

pub use load::{ConfigError, Overrides, load};
pub use show::{Setting, effective};
pub use types::*;

/// Tells [`crate::secret`] the secrets of this configuration (the token, the database password
/// in every form, the credentials of `api.base_url`), so that no text from outside (an API body echoing the request, a library
/// quoting a URL) and no log line shows them. [`load`] calls it.
pub fn register_secrets(config: &Config) {
    if let Some(token) = &config.api.token {
        crate::secret::register(token.expose());
    }
    for secret in conninfo::secrets(&config.database.url) {
        crate::secret::register(&secret);
    }
    for secret in crate::secret::api_url::secrets(&config.api.base_url) {
        crate::secret::register(&secret);
    }
    for secret in crate::secret::api_url::secrets(&config.webhook.url) {
        crate::secret::register(&secret);
    }
}
