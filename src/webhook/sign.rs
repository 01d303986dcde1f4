//! Standard Webhooks signing (contract §8): the secret is `whsec_` followed by base64 of the key
//! bytes, read from `webhook.secret_file` and re-read when the file changes (a rotated Secret is
//! picked up without a restart); a delivery's `webhook-signature` is `v1,` + base64 of
//! HMAC-SHA256(key, `{webhook-id}.{webhook-timestamp}.{body}`).

use crate::secret::FileVersion;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::path::{Path, PathBuf};

/// The signing key, from its file.
pub struct Signer {
    path: PathBuf,
    cached: Option<(FileVersion, ring::hmac::Key)>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.path.display())
    }
}

impl Signer {
    /// Reads the secret once, so that a missing or malformed file fails at start with a one-line
    /// error naming the file and the fix.
    pub fn new(path: &Path) -> Result<Signer, String> {
        let mut signer = Signer {
            path: path.to_path_buf(),
            cached: None,
        };
        signer.key()?;
        Ok(signer)
    }

    /// The key to sign with now: re-read when the file changed; the last good key is kept (and
    /// the problem logged) when the file cannot be read or no longer holds a valid secret.
    fn key(&mut self) -> Result<&ring::hmac::Key, String> {
        let version = FileVersion::of(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()));
        let stale = match (&version, &self.cached) {
            (Ok(now), Some((was, _))) => now != was,
            _ => true,
        };
        if stale {
            match version.and_then(|v| read_key(&self.path).map(|key| (v, key))) {
                Ok(read) => self.cached = Some(read),
                Err(e) if self.cached.is_some() => tracing::warn!(
                    "webhook.secret_file: {e}; signing with the secret read before until it is fixed"
                ),
                Err(e) => return Err(format!("webhook.secret_file: {e}")),
            }
        }
        Ok(&self.cached.as_ref().expect("set above").1)
    }

    /// `v1,<base64 signature>` of `id.timestamp.body`.
    pub fn sign(&mut self, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
        let key = self.key()?;
        let mut context = ring::hmac::Context::with_key(key);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        Ok(format!("v1,{}", STANDARD.encode(context.sign().as_ref())))
    }
}

/// The key in a secret file: one line `whsec_<base64>`, surrounding whitespace ignored.
fn read_key(path: &Path) -> Result<ring::hmac::Key, String> {
    let text = crate::secret::read_token_file(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim();
    let Some(encoded) = text.strip_prefix("whsec_") else {
        return Err(format!(
            "{} does not hold a Standard Webhooks secret: expected one line `whsec_` followed by \
             base64, as the receiver's library generates it (or make one: echo \
             \"whsec_$(head -c 32 /dev/urandom | base64)\" > FILE, and give the receiver the same)",
            path.display()
        ));
    };
    let bytes = STANDARD.decode(encoded).map_err(|e| {
        format!(
            "{}: the text after `whsec_` is not base64 ({e}); copy the receiver's secret whole",
            path.display()
        )
    })?;
    if bytes.len() < 16 {
        return Err(format!(
            "{}: the secret holds {} bytes, fewer than the 16 a signing key needs; generate \
             another (24 to 64 random bytes)",
            path.display(),
            bytes.len()
        ));
    }
    // Masked wherever jobsync shows text, like the token.
    crate::secret::register(text);
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (its README's test vector).
    #[test]
    fn signs_the_specifications_example() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let mut signer = Signer::new(&path).unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signer
                .sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
                .unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn refuses_a_file_without_a_secret_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "hunter2hunter2\n").unwrap();
        let err = Signer::new(&path).unwrap_err();
        assert!(err.contains("whsec_") && err.contains("secret"), "{err}");
        std::fs::write(&path, "whsec_!!!notbase64").unwrap();
        assert!(Signer::new(&path).unwrap_err().contains("not base64"));
        let err = Signer::new(&dir.path().join("absent")).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
    }
}
