//! A string that must never be shown: the API token. `Debug` and `Display` print a placeholder,
//! so the token cannot leak through logs, error messages or `status` output by accident.
//!
//! Text from outside (an API's error body, a library's error) may still quote a secret — a gateway
//! echoing the request's `Authorization` header, libpq quoting a connection string. [`scrub`] is
//! the one function every such text goes through before it reaches a log, `sync_runs.error`, an
//! outbox row's `last_error`, `status`, `/status` or the terminal: it masks every secret this
//! process knows ([`register`]: the token, the database password), any `Bearer …` credential, and
//! caps the length.

pub mod api_url;

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::sync::RwLock;

/// Secrets [`scrub`] masks wherever they appear.
static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());
/// Shorter secrets are masked only where they stand as a whole word ([`mask`]), and are not
/// registered for the log sink at all: masking every `abc` would garble messages, and such a
/// secret protects nothing anyway.
pub const MIN_SECRET_CHARS: usize = 4;
/// The longest text [`scrub`] lets through.
pub const MAX_TEXT_CHARS: usize = 1000;
/// What a secret is shown as, wherever jobsync shows text.
pub const MASK: &str = "***";

/// `text` with `secret` replaced by [`MASK`]: everywhere when it has [`MIN_SECRET_CHARS`] or
/// more characters, otherwise only where it is not part of a longer alphanumeric run. The one
/// masking rule, used by the log sink, [`scrub`] and the database URL's scrubber alike.
pub fn mask(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_string();
    }
    if secret.chars().count() >= MIN_SECRET_CHARS {
        return text.replace(secret, MASK);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (i, _) in text.match_indices(secret) {
        if i < at {
            continue;
        }
        let before = text[..i].chars().next_back();
        let after = text[i + secret.len()..].chars().next();
        let alone = |c: Option<char>| !c.is_some_and(char::is_alphanumeric);
        if alone(before) && alone(after) {
            out.push_str(&text[at..i]);
            out.push_str(MASK);
            at = i + secret.len();
        }
    }
    out.push_str(&text[at..]);
    out
}

/// Makes [`scrub`] and the log sink ([`mask_known`]) mask `secret` from now on (the token, each
/// time it is read; the database password; credentials in `api.base_url`). Its JSON-escaped
/// form is registered too: a JSON log line holds a secret with a `"` or `\` escaped.
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.chars().count() < MIN_SECRET_CHARS {
        return;
    }
    let escaped = serde_json::to_string(secret).unwrap_or_default();
    let escaped = escaped.trim_matches('"');
    let mut known = KNOWN.write().unwrap_or_else(|p| p.into_inner());
    for form in [secret, escaped] {
        if !form.is_empty() && !known.iter().any(|k| k == form) {
            known.push(form.to_string());
        }
    }
    // Longest first, so a secret containing another is masked whole.
    known.sort_by_key(|k| std::cmp::Reverse(k.len()));
}

/// `text` with every registered secret masked, or `None` when it holds none — the common case,
/// which costs one substring search per secret and no allocation. This is what the log sink
/// applies to every formatted line (see `telemetry`); [`scrub`] does more for stored text.
pub fn mask_known(text: &str) -> Option<String> {
    let known = KNOWN.read().unwrap_or_else(|p| p.into_inner());
    let mut masked: Option<String> = None;
    for secret in known.iter() {
        let current = masked.as_deref().unwrap_or(text);
        if current.contains(secret.as_str()) {
            masked = Some(mask(current, secret));
        }
    }
    masked
}

/// `text` fit to show: known secrets and `Bearer` credentials masked, NUL characters (which
/// PostgreSQL text cannot hold) replaced, at most [`MAX_TEXT_CHARS`] characters.
pub fn scrub(text: &str) -> String {
    let mut out = text.replace('\0', "\u{FFFD}");
    if let Some(masked) = mask_known(&out) {
        out = masked;
    }
    out = mask_bearer(&out);
    if out.chars().count() > MAX_TEXT_CHARS {
        let kept: String = out.chars().take(MAX_TEXT_CHARS).collect();
        let cut = out.chars().count() - MAX_TEXT_CHARS;
        out = format!("{kept}… ({cut} more characters)");
    }
    out
}

/// `Bearer abc.def` → `Bearer ***`, whatever the case of `Bearer`.
fn mask_bearer(text: &str) -> String {
    const WORD: &str = "bearer";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(found) = lower[from..].find(WORD) {
        let start = from + found;
        let after = start + WORD.len();
        let gap = text[after..]
            .char_indices()
            .find(|(_, c)| !(c.is_whitespace() || *c == ':' || *c == '='))
            .map_or(text.len() - after, |(i, _)| i);
        let token_start = after + gap;
        let token_len = text[token_start..]
            .char_indices()
            .find(|(_, c)| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ';' | '}'))
            .map_or(text.len() - token_start, |(i, _)| i);
        out.push_str(&text[from..token_start]);
        if gap > 0 && token_len > 0 {
            out.push_str(MASK);
        } else {
            out.push_str(&text[token_start..token_start + token_len]);
        }
        from = token_start + token_len;
    }
    out.push_str(&text[from..]);
    out
}

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it (the `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Text, or an integer taken as its digits: figment reads `JOBSYNC_API__TOKEN=98765432109876`
/// as a number, and a TOML file may hold `token = 98765432109876`. Anything else is refused with
/// a message that never quotes the value (serde's own would: "invalid type: floating point
/// `1.5`"), since the value is the secret.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// What [`Secret`]'s error says instead of quoting the value.
pub const NOT_TEXT: &str =
    "must be text: write it in quotes (in TOML, `token = \"…\"`); the value is not shown";

struct SecretVisitor;

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("text")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret::new(v))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(E::custom(NOT_TEXT))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(E::custom(NOT_TEXT))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Secret, E> {
        Err(E::custom(NOT_TEXT))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(serde::de::Error::custom(NOT_TEXT))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(serde::de::Error::custom(NOT_TEXT))
    }
}

/// What tells one version of a secret file (the token's, the webhook's) from another: its modification time, its length
/// and, on Unix, the file itself (device and inode: a Kubernetes Secret swap, or an editor
/// that writes a new file and renames it, makes a new inode even within the same second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    modified: std::time::SystemTime,
    len: u64,
    #[cfg(unix)]
    identity: (u64, u64),
}

impl FileVersion {
    pub fn of(path: &std::path::Path) -> std::io::Result<Self> {
        // Follows symlinks: a Secret mount's `token` is a link to the current version's file.
        let meta = std::fs::metadata(path)?;
        Ok(FileVersion {
            modified: meta.modified()?,
            len: meta.len(),
            #[cfg(unix)]
            identity: {
                use std::os::unix::fs::MetadataExt;
                (meta.dev(), meta.ino())
            },
        })
    }
}

/// The most a token file may hold: a token is a few hundred bytes at most.
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Reads a token file (`api.token_file`) whole, refusing one larger than
/// [`MAX_TOKEN_FILE_BYTES`] without reading it all: the wrong file (a log, a disk image) must not
/// fill the memory. The error is the cause, for the caller to word.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "it is larger than {} KiB, far more than a token; is it the right file?",
            MAX_TOKEN_FILE_BYTES / 1024
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_masks_known_secrets_bearer_credentials_and_caps_length() {
        register("s3cr3t-token-value");
        let echoed = "bad auth Bearer s3cr3t-token-value; again: s3cr3t-token-value";
        let shown = scrub(echoed);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("Bearer ***"), "{shown}");
        assert_eq!(
            scrub("authorization: bearer abc.def-ghi, next"),
            "authorization: bearer ***, next"
        );
        assert_eq!(scrub("no secret here"), "no secret here");
        assert_eq!(scrub("x\0y"), "x\u{FFFD}y");
        let long = scrub(&"a".repeat(5000));
        assert!(long.starts_with(&"a".repeat(MAX_TEXT_CHARS)));
        assert!(long.ends_with("(4000 more characters)"), "{long}");
    }

    #[test]
    fn mask_known_allocates_only_when_a_secret_is_there() {
        register("sink-s3cret\"quoted");
        assert_eq!(mask_known("nothing to hide"), None);
        assert_eq!(
            mask_known("a sink-s3cret\"quoted b").as_deref(),
            Some("a *** b")
        );
        // As a JSON log line writes it.
        assert_eq!(
            mask_known(r#"{"error":"sink-s3cret\"quoted"}"#).as_deref(),
            Some(r#"{"error":"***"}"#)
        );
    }

    #[test]
    fn a_secret_is_text_or_an_integer_taken_as_its_digits() {
        let read = |json: &str| serde_json::from_str::<Secret>(json).map_err(|e| e.to_string());
        assert_eq!(read(r#""t0k""#).unwrap().expose(), "t0k");
        assert_eq!(read("98765432109876").unwrap().expose(), "98765432109876");
        assert_eq!(read("-42").unwrap().expose(), "-42");
        for refused in ["9876.5", "true", "[9876]", r#"{"a": 9876}"#, "null"] {
            let err = read(refused).unwrap_err();
            assert!(err.contains("quotes") && !err.contains("9876"), "{err}");
        }
    }

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("tok-123");
        assert!(!format!("{s:?} {s}").contains("tok-123"));
        assert_eq!(s.expose(), "tok-123");
    }
}
