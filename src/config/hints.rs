//! "Did you mean …?": the known keys (derived from [`Config`] itself, so a new key is known
//! without being listed here), the closest of them to a misspelt one, and the check of the
//! `JOBSYNC_*` environment variables that name no key but look as if they meant one.

use super::types::Config;

/// Every key, `section.key`, sorted.
pub(super) fn known_keys() -> Vec<String> {
    // `api.token` is the one key `Config` does not serialise (a secret is never written out).
    let mut keys = vec!["api.token".to_string()];
    let value = serde_json::to_value(Config::default()).unwrap_or_default();
    for (section, fields) in value.as_object().into_iter().flatten() {
        for field in fields.as_object().into_iter().flat_map(|f| f.keys()) {
            keys.push(format!("{section}.{field}"));
        }
    }
    keys.sort();
    keys
}

/// The environment variable that sets `key`: `api.token_file` → `JOBSYNC_API__TOKEN_FILE`.
pub(super) fn env_name(key: &str) -> String {
    format!("JOBSYNC_{}", key.replace('.', "__").to_ascii_uppercase())
}

/// Levenshtein distance, in characters.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The candidate closest to `word`, if within `max` edits (the first of equals).
pub(super) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    max: usize,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// How many edits a misspelt name of this length may be from the one it meant: one for a
/// three-letter word, up to three for long ones.
fn typo_budget(word: &str) -> usize {
    (word.chars().count() / 3).clamp(1, 3)
}

/// What an unknown key (`field`, under `parent`: empty at the top level) most likely meant, as a
/// full key: a sibling spelt nearly the same (`api.tokenfile` → `api.token_file`), or, at the
/// top level of a file, a key of a section with that name (`token` → `api.token`). A section's
/// name ends with `.`: `[databse]` → `database.`.
pub(super) fn meant_key(parent: &[String], field: &str, siblings: &[&str]) -> Option<String> {
    let prefix: String = parent.iter().map(|p| format!("{p}.")).collect();
    let field = field.to_ascii_lowercase();
    if let Some(sibling) = closest(&field, siblings.iter().copied(), typo_budget(&field)) {
        return Some(if parent.is_empty() {
            format!("{sibling}.")
        } else {
            format!("{prefix}{sibling}")
        });
    }
    if !parent.is_empty() {
        return None;
    }
    let keys = known_keys();
    let leaves = keys
        .iter()
        .filter_map(|k| k.split_once('.').map(|(_, leaf)| leaf));
    let leaf = closest(&field, leaves, typo_budget(&field))?;
    keys.iter()
        .find(|k| k.ends_with(&format!(".{leaf}")))
        .cloned()
}

/// A `JOBSYNC_*` variable that sets no key but was most likely meant to, and the variable it
/// meant. `names` are the variables' names after `JOBSYNC_`, in any case, `JOBSYNC_CONFIG` left
/// out. Those `SECTION__KEY` names figment reads are not looked at (an unknown key there is
/// figment's error); the variables Kubernetes injects for a Service (`JOBSYNC_SERVICE_HOST`,
/// `JOBSYNC_PORT_9090_TCP`, and those of a Service named `jobsync-api`: `JOBSYNC_API_PORT`) are
/// not configuration and stay ignored, as does any name far from every key.
pub(super) fn misnamed_variable(
    names: impl IntoIterator<Item = String>,
) -> Option<(String, String)> {
    let keys: Vec<String> = known_keys().iter().map(|k| k.replace('.', "__")).collect();
    let sections: Vec<&str> = keys.iter().filter_map(|k| k.split("__").next()).collect();
    for name in names {
        let name = name.to_ascii_lowercase();
        let in_a_section = sections.iter().any(|s| name.starts_with(&format!("{s}__")));
        if in_a_section || kubernetes_service_variable(&name) {
            continue;
        }
        // A section then a single underscore: JOBSYNC_DATABASE_URL.
        let meant = match sections.iter().find(|s| name.starts_with(&format!("{s}_"))) {
            Some(section) => {
                let fixed = format!("{section}__{}", &name[section.len() + 1..]);
                let in_section = keys
                    .iter()
                    .filter(|k| k.starts_with(&format!("{section}__")));
                closest(&fixed, in_section.map(String::as_str), usize::MAX)
            }
            None => closest(&name, keys.iter().map(String::as_str), 3),
        };
        if let Some(meant) = meant {
            return Some((
                format!("JOBSYNC_{}", name.to_ascii_uppercase()),
                format!("JOBSYNC_{}", meant.to_ascii_uppercase()),
            ));
        }
    }
    None
}

/// `{SERVICE}_SERVICE_HOST`, `{SERVICE}_SERVICE_PORT[_NAME]`, `{SERVICE}_PORT[_N_PROTO[_…]]`
/// (Kubernetes' service links), for `name` after the `JOBSYNC_` prefix.
fn kubernetes_service_variable(name: &str) -> bool {
    let name = format!("_{}", name.to_ascii_uppercase());
    let port_number = name
        .match_indices("_PORT_")
        .any(|(at, m)| name[at + m.len()..].starts_with(|c: char| c.is_ascii_digit()));
    name.contains("_SERVICE_HOST")
        || name.contains("_SERVICE_PORT")
        || name.ends_with("_PORT")
        || port_number
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("tokenfile", "token_file"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("flaw", "lawn"), 2);
    }

    #[test]
    fn known_keys_come_from_the_configuration_itself() {
        let keys = known_keys();
        for key in [
            "api.token",
            "api.token_file",
            "database.url",
            "sync.campaigns",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key}: {keys:?}");
        }
        assert_eq!(env_name("api.token_file"), "JOBSYNC_API__TOKEN_FILE");
    }

    #[test]
    fn an_unknown_key_names_its_nearest_sibling_or_section() {
        let api = ["base_url", "token", "token_file", "timeout_secs"];
        let parent = ["api".to_string()];
        assert_eq!(
            meant_key(&parent, "tokenfile", &api).as_deref(),
            Some("api.token_file")
        );
        assert_eq!(meant_key(&parent, "colour", &api), None);
        let sections = ["api", "database", "sync"];
        assert_eq!(
            meant_key(&[], "databse", &sections).as_deref(),
            Some("database.")
        );
        assert_eq!(
            meant_key(&[], "token", &sections).as_deref(),
            Some("api.token")
        );
    }

    fn misnamed(names: &[&str]) -> Option<(String, String)> {
        misnamed_variable(names.iter().map(|n| n.to_string()))
    }

    #[test]
    fn a_variable_with_one_underscore_or_a_typo_names_the_one_meant() {
        let expect = |name: &str, meant: &str| {
            assert_eq!(
                misnamed(&[name]),
                Some((format!("JOBSYNC_{name}"), meant.to_string())),
                "{name}"
            );
        };
        expect("DATABASE_URL", "JOBSYNC_DATABASE__URL");
        expect("API_TOKEN", "JOBSYNC_API__TOKEN");
        expect("API_TOKEN_FILE", "JOBSYNC_API__TOKEN_FILE");
        expect("APITOKEN", "JOBSYNC_API__TOKEN");
        expect("DATABSE__URL", "JOBSYNC_DATABASE__URL");
        expect("SYNC_SCHEDULE", "JOBSYNC_SYNC__SCHEDULE");
    }

    #[test]
    fn kubernetes_service_links_and_other_names_stay_ignored() {
        for name in [
            "SERVICE_HOST",
            "SERVICE_PORT",
            "SERVICE_PORT_METRICS",
            "PORT",
            "PORT_9090_TCP",
            "PORT_9090_TCP_PROTO",
            "PORT_9090_TCP_ADDR",
            "PORT_9090_TCP_PORT",
            "API_SERVICE_HOST",
            "API_PORT_8080_TCP_ADDR",
            "DATABASE_PORT",
            "TEST_POSTGRES_URL",
            "BIN",
            "SOAK_POSTGRES_URL",
            "API__TOKENFILE",
        ] {
            assert_eq!(misnamed(&[name]), None, "{name}");
        }
    }
}
