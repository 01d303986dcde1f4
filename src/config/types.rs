//! The typed configuration, with the built-in defaults of docs/contract.md §2.

use crate::secret::Secret;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    pub database: DatabaseConfig,
    pub sync: SyncConfig,
    pub push: PushConfig,
    pub retention: RetentionConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub verify: VerifyConfig,
    pub webhook: WebhookConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub base_url: String,
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    pub timeout_secs: u64,
    pub max_attempts: u32,
    pub requests_per_second: f64,
    pub concurrency: usize,
    pub bulk_size: usize,
    /// A `Date` header further than this from both the local clock and the API's last good
    /// `Date` is not believed.
    pub max_date_skew_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            base_url: "http://127.0.0.1:8080".into(),
            token: None,
            token_file: None,
            timeout_secs: 30,
            max_attempts: 8,
            requests_per_second: 10.0,
            concurrency: 4,
            bulk_size: 1000,
            max_date_skew_secs: 86_400,
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// After loading, the URL in use: `url_file`'s content when that is what named it.
    pub url: String,
    /// A file whose trimmed content is the URL (a Kubernetes Secret mount), read once at load.
    pub url_file: Option<PathBuf>,
    /// PostgreSQL: the schema jobsync's tables, its migrations table and its advisory-lock keys
    /// live in, created if absent (contract §8). `public` by default.
    pub schema: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://jobsync.db".into(),
            url_file: None,
            schema: "public".into(),
        }
    }
}

/// The URL may hold a password: `Debug` shows it redacted.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &super::conninfo::redact(&self.url))
            .field("url_file", &self.url_file)
            .field("schema", &self.schema)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    pub schedule: String,
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub campaigns: Vec<i64>,
    pub overlap_secs: u64,
    pub full_resync_after_hours: u64,
    pub max_staleness_secs: u64,
    /// Liveness fails when a running cycle has made no progress (no API answer received, no
    /// batch committed) for this long; PostgreSQL statements time out after it too.
    pub stall_secs: u64,
    /// A complete listing that would mark more than this share of a campaign's live jobs deleted
    /// is held until a second listing agrees.
    pub mass_delete_ratio: f64,
    /// The longest one listing may take, however fast its jobs come: an answer that streams
    /// ever-new jobs without end is abandoned there (not complete; the watermark stays) and the
    /// cycle goes on to the push.
    pub listing_deadline_secs: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            schedule: "0 */5 * * * *".into(),
            campaigns: Vec::new(),
            overlap_secs: 300,
            full_resync_after_hours: 24,
            max_staleness_secs: 1800,
            stall_secs: 600,
            mass_delete_ratio: 0.5,
            listing_deadline_secs: 1800,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    pub max_row_attempts: u32,
    /// Outbox rows a push reads and plans at once: memory against throughput (each window's
    /// last calls drain before the next window's first ones leave).
    pub window_rows: u32,
    /// A create in doubt that a lookup found absent is sent again only once a lookup at least
    /// this long after its first send finds it absent too (contract §8): an API without a
    /// uniqueness check can still duplicate a create whose commit takes longer than this.
    pub settle_secs: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            max_row_attempts: 20,
            window_rows: 3_000,
            settle_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    pub changes_days: u32,
    pub outbox_days: u32,
    pub runs_days: u32,
    pub deleted_jobs_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            changes_days: 90,
            outbox_days: 30,
            runs_days: 30,
            deleted_jobs_days: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `""` disables the health/metrics server.
    pub listen: String,
    /// On SIGTERM/SIGINT, how long requests in flight may finish before they are abandoned
    /// (below Kubernetes' default 30 s grace period, so the run is recorded before SIGKILL).
    pub shutdown_grace_secs: u64,
}

impl ServerConfig {
    /// How long the requests in flight get once a stop is requested: the grace less a few
    /// seconds to record the run and exit.
    pub fn drain_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_grace_secs.saturating_sub(3).max(1))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:9090".into(),
            shutdown_grace_secs: 25,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `None`: pretty on a terminal, JSON otherwise.
    pub format: Option<LogFormat>,
}

/// The daemon's own `jobsync verify` (contract §8).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// When the daemon runs `verify` (cron with seconds, UTC), beside the sync and never
    /// blocking it; its counts go to `/metrics`. Empty: never.
    pub schedule: String,
}

/// The webhook sink (contract §8): the changefeed POSTed in `seq` order to `url`, signed per
/// Standard Webhooks with the secret in `secret_file`. Empty `url`: no sink.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// A file holding the `whsec_`-prefixed base64 secret; re-read when it changes.
    pub secret_file: Option<PathBuf>,
    /// Changefeed rows per POST.
    pub batch_size: u32,
    /// How long one POST may take, connecting included.
    pub timeout_secs: u64,
    /// Tries of one batch before the sink pauses.
    pub max_attempts: u32,
    /// The first pause after a refusal or exhausted attempts; each pause in a row doubles it, up
    /// to an hour. The sink then resumes on its own (or at `jobsync webhook resume`).
    pub pause_secs: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            secret_file: None,
            batch_size: 100,
            timeout_secs: 10,
            max_attempts: 8,
            pause_secs: 60,
        }
    }
}

/// Traces (contract §8): spans of each cycle exported over OTLP/HTTP (JSON) when
/// `otlp_endpoint` is set; off by default.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans go to its
    /// `/v1/traces`. Empty: no export.
    pub otlp_endpoint: String,
}

/// Which backend `database.url` names. Anything but these two schemes is refused, never
/// silently turned into a new SQLite file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("the SQLite path is empty; write `sqlite://jobsync.db` or `sqlite:///var/lib/jobsync/jobsync.db`".into());
            }
            Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Refused here rather than handed to libpq, whose error would quote it.
            super::conninfo::check_url(url)?;
            Ok(DatabaseUrl::Postgres(url.to_string()))
        } else if !url.contains("://") && url.contains('=') {
            Err("a libpq keyword string is not accepted; write it as a URL, `postgres://USER:PASSWORD@HOST:PORT/DB`".into())
        } else {
            Err("unknown scheme; use `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`".into())
        }
    }
}

/// Accepts `[28, 29]` (TOML, or `JOBSYNC_SYNC__CAMPAIGNS=[28,29]`) and `"28,29"`
/// (`JOBSYNC_SYNC__CAMPAIGNS=28,29`, which figment reads as a string), and a lone `28`.
fn list_or_comma_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<i64>),
        One(i64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::List(list) => Ok(list),
        Raw::One(n) => Ok(vec![n]),
        Raw::Text(text) => text
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<i64>().map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{s}` is not a campaign id; write a list such as 28,29"
                    ))
                })
            })
            .collect(),
    }
}

impl Config {
    /// Commands that call the API (`run`, `--once`, `check`) need a token; others do not.
    pub fn require_token(&self, command: &str) -> Result<(), super::ConfigError> {
        let missing = |detail: &str| {
            Err(super::ConfigError::Missing(format!(
                "`{command}` calls the API and needs a token: {detail}"
            )))
        };
        match (&self.api.token, &self.api.token_file) {
            (Some(_), Some(_)) => Err(super::ConfigError::TokenConflict),
            (Some(token), None) if token.is_empty() => {
                missing("api.token is empty; set JOBSYNC_API__TOKEN")
            }
            (Some(_), None) => Ok(()),
            (None, Some(path)) => match crate::secret::read_token_file(path) {
                Ok(text) if !text.trim().is_empty() => Ok(()),
                Ok(_) => missing(&format!("api.token_file {} is empty", path.display())),
                Err(e) => missing(&format!(
                    "api.token_file {} cannot be read ({e}); check the Secret is mounted there",
                    path.display()
                )),
            },
            (None, None) => missing(
                "set JOBSYNC_API__TOKEN, or api.token_file to a file holding it (a Kubernetes Secret mount)",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_token() {
        let mut config = Config::default();
        config.api.token = Some(Secret::new("s3cr3t-token"));
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn token_is_required_only_when_asked() {
        let mut config = Config::default();
        let err = config.require_token("run").unwrap_err().to_string();
        assert!(err.contains("JOBSYNC_API__TOKEN"), "{err}");
        config.api.token = Some(Secret::new("t"));
        assert!(config.require_token("run").is_ok());
        config.api.token_file = Some("/nonexistent/token".into());
        assert!(
            config
                .require_token("run")
                .unwrap_err()
                .to_string()
                .contains("keep one")
        );
        config.api.token = None;
        let err = config.require_token("check").unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/token") && err.contains("cannot be read"),
            "{err}"
        );
    }

    #[test]
    fn database_urls_choose_the_backend() {
        assert!(matches!(
            DatabaseUrl::parse("sqlite://a.db"),
            Ok(DatabaseUrl::Sqlite(_))
        ));
        assert!(matches!(
            DatabaseUrl::parse("postgresql://h/db"),
            Ok(DatabaseUrl::Postgres(_))
        ));
        assert!(DatabaseUrl::parse("sqlite://").is_err());
        assert!(DatabaseUrl::parse("jobsync.db").is_err());
        let err = DatabaseUrl::parse("postgres://u:secret@[::1/db").unwrap_err();
        assert!(err.contains("IPv6") && !err.contains("secret"), "{err}");
        let err = DatabaseUrl::parse("host=h password=secret").unwrap_err();
        assert!(err.contains("keyword") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_a_database_password() {
        let mut config = Config::default();
        config.database.url = "postgres://u:s3cr3t-pw@h/db?sslpassword=k3y-pass".into();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("k3y-pass"),
            "{shown}"
        );
        assert!(shown.contains("postgres://u:***@h/db"), "{shown}");
    }
}
