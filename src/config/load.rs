//! Builds the figment layers and turns every failure into a [`ConfigError`] that names the key,
//! the value and where it came from.

use super::types::{Config, DatabaseUrl};
use super::validate::validate;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Environment prefix; `JOBSYNC_CONFIG` names a file and is not a key.
const ENV_PREFIX: &str = "JOBSYNC_";
/// Top-level sections an environment variable may set. Anything else with the prefix (such as
/// the `JOBSYNC_SERVICE_HOST` / `JOBSYNC_PORT` variables Kubernetes injects for a Service named
/// `jobsync`) is not configuration and is ignored.
const SECTIONS: [&str; 10] = [
    "api",
    "database",
    "sync",
    "push",
    "retention",
    "server",
    "log",
    "telemetry",
    "verify",
    "webhook",
];
/// Keys whose value is, or may hold, a secret: a configuration error never shows their value,
/// and the environment gives them as the variable's text (see [`RawEnv`]).
pub(crate) const SECRET_KEYS: [&str; 4] =
    ["api.token", "database.url", "api.base_url", "webhook.url"];
const SHIPPED_FILES: [&str; 2] = ["config/default.toml", "/etc/jobsync/config.toml"];
/// Names of the layers built here, as figment's metadata reports them.
pub(super) const DEFAULTS: &str = "built-in defaults";
pub(super) const FLAGS: &str = "command-line flags";
/// The keys the command-line layer sets, and the flag that sets each.
pub(super) const FLAG_KEYS: [(&str, &str); 2] = [
    ("database.url", "--database-url"),
    ("api.base_url", "--api-base-url"),
];

/// The command-line layer: flags that every command accepts.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub database_url: Option<String>,
    pub api_base_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: `{key}` = {value} (from {origin}): {reason}")]
    Invalid {
        key: String,
        value: String,
        origin: String,
        reason: String,
    },
    #[error("configuration file {path} cannot be read: {reason}")]
    File { path: String, reason: String },
    /// A TOML file that does not parse.
    #[error(
        "the configuration file {path} has a syntax error at line {line}{column}: {reason}; fix \
         it (config/default.toml in the repository shows the format)"
    )]
    Syntax {
        path: String,
        line: usize,
        /// `, column N`, or empty when unknown.
        column: String,
        reason: String,
    },
    /// Both ways of giving the token.
    #[error(
        "api.token and api.token_file are both set: keep one (JOBSYNC_API__TOKEN or \
         JOBSYNC_API__TOKEN_FILE, or the same keys in a configuration file)"
    )]
    TokenConflict,
    #[error("missing configuration: {0}")]
    Missing(String),
    /// A `JOBSYNC_*` variable that sets nothing but looks meant to (its value is not shown: it
    /// may be a secret).
    #[error(
        "environment variable {name} sets no configuration key: did you mean {meant}? (a key's \
         variable is JOBSYNC_<SECTION>__<KEY>, two underscores between section and key); rename \
         it, or unset it"
    )]
    UnknownVariable { name: String, meant: String },
    /// Anything else the layers could not be read for.
    #[error("invalid configuration: {0}")]
    Other(String),
}

/// Loads and validates the configuration. Secrets are registered with [`crate::secret`] as soon
/// as the layers are read — before any key is checked, so that no error about another key (or
/// about the secret's own type) can show one — and again once the configuration is complete
/// (`database.url_file`'s URL).
pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
    load_layered(overrides).map(|(config, _)| config)
}

/// [`load`], with the layers it read (for `config show`, which tells each key's layer).
pub(super) fn load_layered(overrides: &Overrides) -> Result<(Config, Figment), ConfigError> {
    let figment = layers(overrides)?;
    register_raw_secrets(&figment);
    let mut config: Config = figment.extract().map_err(|e| from_figment(&figment, e))?;
    read_url_file(&figment, &mut config)?;
    super::register_secrets(&config);
    validate(&config).map_err(|(key, reason)| invalid(&figment, key, reason))?;
    Ok((config, figment))
}

/// Registers the secret keys' values as the layers give them, whatever their type (an all-digit
/// token is a number to figment).
fn register_raw_secrets(figment: &Figment) {
    for key in SECRET_KEYS {
        let Some(text) = figment.find_value(key).ok().as_ref().and_then(value_text) else {
            continue;
        };
        match key {
            "api.token" => crate::secret::register(&text),
            "database.url" => super::conninfo::secrets(&text)
                .iter()
                .for_each(|s| crate::secret::register(s)),
            _ => crate::secret::api_url::secrets(&text)
                .iter()
                .for_each(|s| crate::secret::register(s)),
        }
    }
}

/// A scalar value as text: a string as is, a number as its digits.
fn value_text(value: &figment::value::Value) -> Option<String> {
    match value {
        figment::value::Value::String(_, s) => Some(s.clone()),
        figment::value::Value::Num(..) => serde_json::to_string(value).ok(),
        _ => None,
    }
}

/// `database.url_file`: the URL is the file's trimmed content. Set together with `database.url`
/// in a file or the environment, it is refused ("keep one"), as for the token; the
/// `--database-url` flag, the most specific layer, overrides it (and the file is not read).
fn read_url_file(figment: &Figment, config: &mut Config) -> Result<(), ConfigError> {
    const KEY: &str = "database.url_file";
    let Some(path) = config.database.url_file.clone() else {
        return Ok(());
    };
    let url_layer = figment.find_metadata("database.url");
    match url_layer.map(|m| m.name.as_ref()) {
        Some(FLAGS) => return Ok(()),
        None | Some(DEFAULTS) => {}
        Some(_) => {
            let url_origin = url_layer
                .map(|m| describe_source(m, &["database", "url"]))
                .unwrap_or_default();
            return Err(invalid(
                figment,
                KEY,
                format!(
                    "database.url is set too (from {url_origin}); keep one: the URL, or the file holding it (only the --database-url flag overrides the file)"
                ),
            ));
        }
    }
    let url = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_string(),
        Err(e) => {
            return Err(invalid(
                figment,
                KEY,
                format!("the file cannot be read ({e}); check the Secret is mounted there"),
            ));
        }
    };
    if url.is_empty() {
        return Err(invalid(
            figment,
            KEY,
            "the file is empty; it must hold the database URL".into(),
        ));
    }
    DatabaseUrl::parse(&url).map_err(|reason| {
        invalid(
            figment,
            KEY,
            format!(
                "the file holds {}, which is not usable: {reason}",
                super::conninfo::redact(&url)
            ),
        )
    })?;
    config.database.url = url;
    Ok(())
}

fn layers(overrides: &Overrides) -> Result<Figment, ConfigError> {
    let mut figment = Figment::from(Named::new(DEFAULTS, Config::default()));
    if let Some(shipped) = SHIPPED_FILES.iter().map(Path::new).find(|p| p.exists()) {
        figment = figment.merge(Toml::file_exact(shipped));
    }
    let explicit = overrides
        .config_file
        .clone()
        .or_else(|| std::env::var_os("JOBSYNC_CONFIG").map(PathBuf::from));
    if let Some(path) = explicit {
        if !path.is_file() {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                reason: "no such file; check --config / JOBSYNC_CONFIG".into(),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let env = Env::prefixed(ENV_PREFIX).ignore(&["config"]);
    refuse_misnamed_variables(&env)?;
    let parsed = env
        .clone()
        .filter(|key| in_a_section(key.as_str()) && !is_secret_key(key.as_str()))
        .split("__");
    let raw = env.filter(|key| is_secret_key(key.as_str())).split("__");
    figment = figment.merge(parsed).merge(RawEnv(raw));
    Ok(figment.merge(Named::new(FLAGS, flags_dict(overrides))))
}

/// A `JOBSYNC_DATABASE_URL` (one underscore) or a `JOBSYNC_APITOKEN` would otherwise be ignored
/// without a word, like the variables Kubernetes injects, and the default used instead.
fn refuse_misnamed_variables(env: &Env) -> Result<(), ConfigError> {
    let names = env.iter().map(|(name, _)| name.as_str().to_string());
    match super::hints::misnamed_variable(names) {
        Some((name, meant)) => Err(ConfigError::UnknownVariable { name, meant }),
        None => Ok(()),
    }
}

/// Whether an environment variable (its name after the prefix) names a key of a section.
fn in_a_section(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECTIONS.iter().any(|s| name.starts_with(&format!("{s}__")))
}

/// Whether an environment variable (its name after the prefix) names one of [`SECRET_KEYS`].
fn is_secret_key(name: &str) -> bool {
    let key = name.to_ascii_lowercase().replace("__", ".");
    SECRET_KEYS.contains(&key.as_str())
}

/// The environment variables of [`SECRET_KEYS`], each as the text it holds. figment's `Env`
/// parses values, so `JOBSYNC_API__TOKEN=98765432109876` would be a number, `1e5` a float and
/// `true` a boolean: a token is text whatever it looks like.
struct RawEnv(Env);

impl Provider for RawEnv {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut sections = Dict::new();
        for (key, text) in self.0.iter() {
            let Some((section, name)) = key.as_str().split_once('.') else {
                continue;
            };
            let section = sections
                .entry(section.to_string())
                .or_insert_with(|| Dict::new().into());
            if let figment::value::Value::Dict(_, dict) = section {
                dict.insert(name.to_string(), text.into());
            }
        }
        Ok(Profile::Default.collect(sections))
    }
}

fn flags_dict(overrides: &Overrides) -> Dict {
    let mut dict = Dict::new();
    let mut put = |section: &str, key: &str, value: &Option<String>| {
        if let Some(v) = value {
            let mut inner = Dict::new();
            inner.insert(key.into(), v.clone().into());
            dict.insert(section.into(), inner.into());
        }
    };
    put("database", "url", &overrides.database_url);
    put("api", "base_url", &overrides.api_base_url);
    dict
}

/// A serialisable value as a provider with a name that error messages can show.
struct Named<T> {
    name: &'static str,
    value: T,
}

impl<T: Serialize> Named<T> {
    fn new(name: &'static str, value: T) -> Self {
        Named { name, value }
    }
}

impl<T: Serialize> Provider for Named<T> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(&self.value).data()
    }
}

fn invalid(figment: &Figment, key: &str, reason: String) -> ConfigError {
    let value = figment
        .find_value(key)
        .ok()
        .map(|v| shown_value(key, &v))
        .unwrap_or_else(|| "(unset)".into());
    let path: Vec<&str> = key.split('.').collect();
    let source = figment
        .find_metadata(key)
        .map(|m| describe_source(m, &path))
        .unwrap_or_else(|| "built-in defaults".into());
    ConfigError::Invalid {
        key: key.into(),
        value,
        origin: source,
        reason,
    }
}

fn from_figment(figment: &Figment, err: figment::Error) -> ConfigError {
    let key = err.path.join(".");
    let source = err
        .metadata
        .as_ref()
        .map(|m| describe_source(m, &err.path.iter().map(String::as_str).collect::<Vec<_>>()))
        .unwrap_or_else(|| "configuration".into());
    let value = figment
        .find_value(&key)
        .ok()
        .map(|v| shown_value(&key, &v))
        .unwrap_or_else(|| "(unset)".into());
    let reason = match &err.kind {
        figment::error::Kind::UnknownField(field, expected) => {
            let parent = match err.path.split_last() {
                Some((last, parent)) if last == field => parent,
                _ => &err.path[..],
            };
            let from_env = err
                .metadata
                .as_ref()
                .is_some_and(|m| m.name.contains("environment"));
            return ConfigError::Invalid {
                key: parent
                    .iter()
                    .chain([field])
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("."),
                value: "…".into(),
                origin: source,
                reason: unknown_key_reason(parent, field, expected, from_env),
            };
        }
        kind if SECRET_KEYS.contains(&key.as_str()) => {
            format!(
                "{}; see the configuration reference in the README",
                without_value(kind)
            )
        }
        kind => format!("{kind}; see the configuration reference in the README"),
    };
    match &err.kind {
        figment::error::Kind::Message(msg) if key.is_empty() => {
            let file = match err.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(Source::File(path)) => Some(path.display().to_string()),
                _ => None,
            };
            match (file, toml_syntax_error(msg)) {
                (Some(path), Some((line, column, reason))) => ConfigError::Syntax {
                    path,
                    line,
                    column: column.map_or(String::new(), |c| format!(", column {c}")),
                    reason,
                },
                _ => ConfigError::Other(format!(
                    "{} (from {source})",
                    msg.split_whitespace().collect::<Vec<_>>().join(" ")
                )),
            }
        }
        _ => ConfigError::Invalid {
            key,
            value,
            origin: source,
            reason,
        },
    }
}

/// "unknown key", with the key most likely meant when one is spelt nearly the same, written as
/// the layer it came from writes it (a file's key or section, an environment variable).
fn unknown_key_reason(parent: &[String], field: &str, siblings: &[&str], from_env: bool) -> String {
    const REFERENCE: &str = "the configuration reference in the README lists every key";
    let meant = super::hints::meant_key(parent, field, siblings);
    match meant {
        Some(key) if from_env => format!(
            "unknown key; did you mean {}? ({REFERENCE})",
            super::hints::env_name(&key)
        ),
        Some(section) if section.ends_with('.') => format!(
            "unknown section; did you mean `[{}]`? ({REFERENCE})",
            section.trim_end_matches('.')
        ),
        Some(key) => match key.split_once('.') {
            Some((section, leaf)) if parent.is_empty() => format!(
                "unknown key; did you mean `{key}` (`{leaf}` under `[{section}]`)? ({REFERENCE})"
            ),
            _ => format!("unknown key; did you mean `{key}`? ({REFERENCE})"),
        },
        None => format!("unknown key; check its spelling: {REFERENCE}"),
    }
}

/// figment's description of what was wrong, without the value it quotes ("invalid type: found
/// unsigned int `98765432109876`, expected a string" becomes "invalid type: found unsigned int,
/// expected a string"), for keys whose value is a secret.
fn without_value(kind: &figment::error::Kind) -> String {
    use figment::error::{Actual, Kind};
    let what = |actual: &Actual| {
        let shown = actual.to_string();
        let cut = shown.find(['`', '"']).unwrap_or(shown.len());
        shown[..cut].trim().to_string()
    };
    match kind {
        Kind::InvalidType(actual, expected) => {
            format!("invalid type: found {}, expected {expected}", what(actual))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value: found {}, expected {expected}", what(actual))
        }
        Kind::UnknownVariant(_, expected) => {
            format!("unknown variant, expected one of {}", expected.join(", "))
        }
        Kind::Message(message) => message.clone(),
        other => other.to_string(),
    }
}

/// The line, column and reason of a TOML parser's message, which spans several lines:
///
/// ```text
/// TOML parse error at line 2, column 21
///   |
/// 2 | base_url = "http://x
///   |                     ^
/// invalid basic string
/// ```
///
/// The quoted source line is left out: it may hold a secret (a token on that line).
fn toml_syntax_error(msg: &str) -> Option<(usize, Option<usize>, String)> {
    let number_after = |marker: &str| -> Option<usize> {
        let rest = &msg[msg.find(marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    if !msg.starts_with("TOML parse error") {
        return None;
    }
    let line = number_after(" at line ")?;
    let column = number_after(", column ");
    // What follows the caret line is the reason, possibly over several lines.
    let lines: Vec<&str> = msg.lines().collect();
    let caret = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with('|') && l.contains('^'));
    let reason: Vec<&str> = lines[caret.map_or(1, |c| c + 1)..]
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('|'))
        .collect();
    let reason = if reason.is_empty() {
        "not valid TOML".to_string()
    } else {
        reason.join(": ")
    };
    Some((line, column, reason))
}

/// Never shows the token, nor a database password; strings are quoted so an empty value is
/// visible.
pub(super) fn shown_value(key: &str, value: &figment::value::Value) -> String {
    if key == "api.token" {
        return "***".into();
    }
    match value {
        figment::value::Value::String(_, s) if key == "database.url" => {
            format!("{:?}", super::conninfo::redact(s))
        }
        figment::value::Value::String(_, s) if key == "api.base_url" => {
            format!("{:?}", crate::secret::api_url::redact(s))
        }
        _ if SECRET_KEYS.contains(&key) => "***".into(),
        figment::value::Value::String(_, s) => format!("{s:?}"),
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}

fn describe_source(metadata: &Metadata, path: &[&str]) -> String {
    match &metadata.source {
        Some(Source::File(file)) => format!("file {}", file.display()),
        Some(Source::Custom(text)) => text.clone(),
        _ if metadata.name.contains("environment") => {
            format!(
                "environment variable {ENV_PREFIX}{}",
                path.join("__").to_uppercase()
            )
        }
        _ => metadata.name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_syntax_errors_give_line_column_and_reason_but_not_the_line_itself() {
        let msg = "TOML parse error at line 2, column 21\n  |\n2 | token = \"s3cret\n  |                     ^\ninvalid basic string\n";
        assert_eq!(
            toml_syntax_error(msg),
            Some((2, Some(21), "invalid basic string".to_string()))
        );
        let msg = "TOML parse error at line 3, column 1\n  |\n3 | [api]\n  | ^\ninvalid table header\nduplicate key `api` in document root\n";
        assert_eq!(
            toml_syntax_error(msg),
            Some((
                3,
                Some(1),
                "invalid table header: duplicate key `api` in document root".to_string()
            ))
        );
        assert_eq!(toml_syntax_error("missing field `x`"), None);
    }
}
