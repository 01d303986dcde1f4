//! Where the bearer token comes from. A token file (a Kubernetes Secret mount) is re-read whenever
//! its modification time changes, so a rotated token is picked up without a restart.

use super::error::ApiError;
use crate::secret::Secret;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Clone)]
pub enum TokenSource {
    Static(Secret),
    File(PathBuf),
}

#[derive(Debug)]
pub(crate) struct TokenProvider {
    source: TokenSource,
    /// For a file: the modification time last read, and the token read then.
    cached: Mutex<Option<(SystemTime, Secret)>>,
}

impl TokenProvider {
    /// Reads the token once, so that a missing file or an empty token fails at start.
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
            TokenSource::Static(secret) => Ok(secret.clone()),
            TokenSource::File(path) => self.read_file(path),
        }
    }

    fn read_file(&self, path: &Path) -> Result<Secret, ApiError> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let modified = std::fs::metadata(path).and_then(|m| m.modified());
        match (&*cached, &modified) {
            (Some((seen, token)), Ok(now)) if seen == now => return Ok(token.clone()),
            // The file vanished for a moment (a Secret mount swaps a symlink): keep the last token.
            (Some((_, token)), Err(_)) => return Ok(token.clone()),
            _ => {}
        }
        let modified = modified.map_err(|e| read_error(path, &e))?;
        let text = crate::secret::read_token_file(path).map_err(|e| read_error(path, &e))?;
        let token = Secret::new(text.trim());
        // A rotated token is masked in error text as the first one was.
        crate::secret::register(token.expose());
        if token.is_empty() {
            return Err(ApiError::Token(format!(
                "`api.token_file` {} is empty; put the API token in it",
                path.display()
            )));
        }
        if cached.is_some() {
            tracing::info!(path = %path.display(), "API token file changed, using the new token");
        }
        *cached = Some((modified, token.clone()));
        Ok(token)
    }
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
    use std::time::Duration;

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
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(provider.current().unwrap().expose(), "second");
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
}
