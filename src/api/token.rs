//! Where the bearer token comes from. A token file (a Kubernetes Secret mount) is re-read whenever
//! it changes — its modification time, its length or its identity (a Secret mount swaps a
//! symlink to a new file) — so a rotated token is picked up without a restart.
//!
//! A token must be one line of characters an HTTP header may carry: a file holding two lines (the
//! token and a note, two tokens) is refused at once, naming the file, rather than failing each
//! request as a broken connection.

use super::error::ApiError;
use crate::secret::{FileVersion, Secret};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone)]
pub enum TokenSource {
    Static(Secret),
    File(PathBuf),
}

#[derive(Debug)]
pub(crate) struct TokenProvider {
    source: TokenSource,
    /// For a file: the version last read, and the token read then.
    cached: Mutex<Option<(FileVersion, Secret)>>,
}

impl TokenProvider {
    /// Reads the token once, so that a missing file, an empty token or one that cannot be sent
    /// fails at start.
    pub(crate) fn new(source: TokenSource) -> Result<Self, ApiError> {
        let provider = TokenProvider {
            source,
            cached: Mutex::new(None),
        };
        provider.current()?;
        Ok(provider)
    }

    /// The token to send now.
    pub(crate) fn current(&self) -> Result<Secret, ApiError> {
        match &self.source {
            TokenSource::Static(secret) if secret.is_empty() => Err(ApiError::Token(
                "`api.token` is empty; set it or `api.token_file`".into(),
            )),
            TokenSource::Static(secret) => match unsendable(secret.expose()) {
                Some(why) => Err(ApiError::Token(format!(
                    "`api.token` {why}; it must be the token alone, on one line (check how \
                     JOBSYNC_API__TOKEN or the configuration file sets it)"
                ))),
                None => Ok(secret.clone()),
            },
            TokenSource::File(path) => self.read_file(path),
        }
    }

    fn read_file(&self, path: &Path) -> Result<Secret, ApiError> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let version = FileVersion::of(path);
        match (&*cached, &version) {
            (Some((seen, token)), Ok(now)) if seen == now => return Ok(token.clone()),
            // The file vanished for a moment (a Secret mount swaps a symlink): keep the last token.
            (Some((_, token)), Err(_)) => return Ok(token.clone()),
            _ => {}
        }
        let version = version.map_err(|e| read_error(path, &e))?;
        let text = crate::secret::read_token_file(path).map_err(|e| read_error(path, &e))?;
        let token = Secret::new(text.trim());
        // A rotated token is masked in error text as the first one was; each line of a file
        // refused for holding several is masked too.
        crate::secret::register(token.expose());
        for line in token.expose().lines() {
            crate::secret::register(line);
        }
        if token.is_empty() {
            return Err(ApiError::Token(format!(
                "`api.token_file` {} is empty; put the API token in it",
                path.display()
            )));
        }
        if let Some(why) = unsendable(token.expose()) {
            return Err(ApiError::Token(format!(
                "`api.token_file` {} {why}; it must hold the token alone (a trailing newline is \
                 fine)",
                path.display()
            )));
        }
        if cached.is_some() {
            tracing::info!(path = %path.display(), "API token file changed, using the new token");
        }
        *cached = Some((version, token.clone()));
        Ok(token)
    }
}

/// Why `token` cannot be sent in an `Authorization` header, in a few words that never quote it
/// ("holds 2 lines", "holds a character not allowed in an HTTP header (U+0007)"), or `None`
/// when it can. The rule is the header's (http's `HeaderValue`): any byte but the controls other
/// than tab, and DEL.
fn unsendable(token: &str) -> Option<String> {
    let lines = token.lines().count();
    if lines > 1 {
        return Some(format!("holds {lines} lines"));
    }
    if token.contains(['\n', '\r']) {
        return Some("holds a line break".into());
    }
    token
        .chars()
        .find(|&c| (c < ' ' && c != '\t') || c == '\u{7f}')
        .map(|c| {
            format!(
                "holds a character not allowed in an HTTP header (the control character U+{:04X})",
                u32::from(c)
            )
        })
}

fn read_error(path: &Path, err: &dyn std::fmt::Display) -> ApiError {
    ApiError::Token(format!(
        "cannot read `api.token_file` {}: {err}; check the path and its permissions",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// Sets `path`'s modification time to `at`.
    fn touch(path: &Path, at: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    /// A fixed modification time, as a rewrite within the same second (or a tool that keeps
    /// times) leaves it.
    fn same_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn a_token_file_larger_than_64_kib_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, vec![b'a'; 5_000_000]).unwrap();
        let err = TokenProvider::new(TokenSource::File(path))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("larger than 64 KiB") && err.contains("api.token_file"),
            "{err}"
        );
    }

    #[test]
    fn rereads_the_file_when_it_changes_and_trims_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let provider = TokenProvider::new(TokenSource::File(path.clone())).unwrap();
        assert_eq!(provider.current().unwrap().expose(), "first");
        std::fs::write(&path, "  second  \n").unwrap();
        touch(&path, SystemTime::now() + Duration::from_secs(5));
        assert_eq!(provider.current().unwrap().expose(), "second");
    }

    #[test]
    fn rereads_a_file_rewritten_with_the_same_mtime_and_another_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first-token\n").unwrap();
        touch(&path, same_time());
        let provider = TokenProvider::new(TokenSource::File(path.clone())).unwrap();
        assert_eq!(provider.current().unwrap().expose(), "first-token");
        // Rewritten in place (the same inode), its time put back.
        std::fs::write(&path, "the-rotated-token\n").unwrap();
        touch(&path, same_time());
        assert_eq!(provider.current().unwrap().expose(), "the-rotated-token");
    }

    /// A Kubernetes Secret mount: `token` links to `..data/token`, `..data` to a timestamped
    /// directory; an update writes a new directory and swaps `..data` in one rename. The new
    /// token here has the same length and modification time: only the file's identity differs.
    #[cfg(unix)]
    #[test]
    fn rereads_a_secret_mount_swapped_to_a_new_file_with_the_same_mtime_and_length() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let version = |name: &str, token: &str| {
            let at = dir.path().join(name);
            std::fs::create_dir(&at).unwrap();
            std::fs::write(at.join("token"), token).unwrap();
            touch(&at.join("token"), same_time());
        };
        version("..2026_01", "token-aaaa\n");
        symlink("..2026_01", dir.path().join("..data")).unwrap();
        symlink("..data/token", dir.path().join("token")).unwrap();
        let path = dir.path().join("token");
        let provider = TokenProvider::new(TokenSource::File(path.clone())).unwrap();
        assert_eq!(provider.current().unwrap().expose(), "token-aaaa");

        version("..2026_02", "token-bbbb\n");
        symlink("..2026_02", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        let old = std::fs::metadata(dir.path().join("..2026_01/token")).unwrap();
        let new = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (old.modified().unwrap(), old.len()),
            (new.modified().unwrap(), new.len()),
            "only the identity tells the versions apart"
        );
        assert_eq!(provider.current().unwrap().expose(), "token-bbbb");
        // Unchanged since: the cached token, the same.
        assert_eq!(provider.current().unwrap().expose(), "token-bbbb");
    }

    #[test]
    fn refuses_a_missing_or_empty_token() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TokenProvider::new(TokenSource::File(dir.path().join("nope"))).unwrap_err();
        assert!(missing.to_string().contains("api.token_file"), "{missing}");
        let path = dir.path().join("empty");
        std::fs::write(&path, " \n").unwrap();
        let empty = TokenProvider::new(TokenSource::File(path)).unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
        let blank = TokenProvider::new(TokenSource::Static(Secret::new(""))).unwrap_err();
        assert!(blank.to_string().contains("api.token"), "{blank}");
    }

    #[test]
    fn refuses_a_token_of_several_lines_or_with_a_control_character_never_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        for (text, why) in [
            ("tok-line-one\ntok-line-two\n", "holds 2 lines"),
            ("tok-line-one\r\n\r\ntok-line-two", "holds 3 lines"),
            (
                "tok-with\u{7}bell",
                "holds a character not allowed in an HTTP header (the control character U+0007)",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = TokenProvider::new(TokenSource::File(path.clone()))
                .unwrap_err()
                .to_string();
            let named = format!("`api.token_file` {} {why}", path.display());
            assert!(
                err.contains(&named) && err.contains("it must hold the token alone"),
                "{err}"
            );
            assert!(!err.contains("tok-"), "the token is not shown: {err}");
        }
        // Whitespace around the token, a trailing newline included, is fine; so is a tab.
        std::fs::write(&path, "\n  tok\ten \r\n\n").unwrap();
        let provider = TokenProvider::new(TokenSource::File(path)).unwrap();
        assert_eq!(provider.current().unwrap().expose(), "tok\ten");

        for (text, why) in [
            ("tok-one\ntok-two", "holds 2 lines"),
            ("tok-one\n", "holds a line break"),
        ] {
            let err = TokenProvider::new(TokenSource::Static(Secret::new(text)))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("`api.token` {why}")) && err.contains("the token alone"),
                "{err}"
            );
            assert!(!err.contains("tok-"), "the token is not shown: {err}");
        }
    }
}
