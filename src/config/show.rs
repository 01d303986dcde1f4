//! `jobsync config show` (contract §8): the effective configuration, each key with its value
//! (secrets masked) and the layer it came from, as figment's metadata tells it.

use super::hints::{env_name, known_keys};
use super::load::{DEFAULTS, FLAG_KEYS, FLAGS, load_layered, shown_value};
use super::{ConfigError, Overrides};
use figment::providers::Serialized;
use figment::value::{Empty, Value};
use figment::{Figment, Provider, Source};

/// One key of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// `section.key`.
    pub key: String,
    /// As it would be written (strings quoted), secrets masked; `(unset)` when it has none.
    pub value: String,
    /// `default`, `file PATH`, `env JOBSYNC_X__Y` or `flag --database-url`.
    pub source: String,
}

/// Every key of the configuration [`super::load`] would return, in key order. Fails as `load`
/// does on an invalid configuration.
pub fn effective(overrides: &Overrides) -> Result<Vec<Setting>, ConfigError> {
    let (config, figment) = load_layered(overrides)?;
    let values = Serialized::defaults(&config)
        .data()
        .ok()
        .and_then(|mut profiles| profiles.remove(&figment::Profile::Default))
        .map(Value::from)
        .unwrap_or_else(|| Value::from(figment::value::Dict::new()));
    Ok(known_keys()
        .into_iter()
        .map(|key| {
            let value = match (key.as_str(), values.find_ref(&key)) {
                ("api.token", _) if config.api.token.is_some() => "***".to_string(),
                (_, None | Some(Value::Empty(_, Empty::None | Empty::Unit))) => {
                    "(unset)".to_string()
                }
                // As written when there is nothing to mask (`redact` normalises the URL).
                (
                    "api.base_url" | "telemetry.otlp_endpoint" | "webhook.url",
                    Some(Value::String(_, url)),
                ) => {
                    if crate::secret::api_url::secrets(url).is_empty() {
                        format!("{url:?}")
                    } else {
                        format!("{:?}", crate::secret::api_url::redact(url))
                    }
                }
                (_, Some(value)) => shown_value(&key, value),
            };
            let source = match (key.as_str(), &config.database.url_file) {
                // The URL is the file's content: where the file was named is its source.
                ("database.url", Some(path)) if layer(&figment, &key) != flag("database.url") => {
                    format!(
                        "database.url_file {} ({})",
                        path.display(),
                        layer(&figment, "database.url_file")
                    )
                }
                _ => layer(&figment, &key),
            };
            Setting { key, value, source }
        })
        .collect())
}

/// The layer `key`'s value came from.
fn layer(figment: &Figment, key: &str) -> String {
    let Some(metadata) = figment.find_metadata(key) else {
        return "default".into();
    };
    match &metadata.source {
        Some(Source::File(path)) => format!("file {}", path.display()),
        _ if metadata.name == DEFAULTS => "default".into(),
        _ if metadata.name == FLAGS => flag(key),
        _ if metadata.name.contains("environment") => format!("env {}", env_name(key)),
        _ => metadata.name.to_string(),
    }
}

fn flag(key: &str) -> String {
    let name = FLAG_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("", |(_, flag)| flag);
    format!("flag {name}")
}
