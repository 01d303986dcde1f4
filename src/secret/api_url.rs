//! Credentials an `api.base_url` may carry: a password in its userinfo
//! (`https://user:PASSWORD@host`) or a key in its query (`https://host/?api_key=KEY`), as some
//! gateways want. They are secrets like the token: [`secrets`] lists them (and the forms they
//! travel in) for [`crate::secret::register`], and [`redact`] is the URL fit to show.

use reqwest::Url;

const MASK: &str = "***";

/// The secrets of a base URL: the userinfo password and every query value, each as written and
/// percent-decoded, and the `Basic` credential reqwest derives from the userinfo (a gateway may
/// echo the `Authorization` header). Empty when the URL does not parse (validation refuses it).
pub fn secrets(url: &str) -> Vec<String> {
    let Ok(parsed) = Url::parse(url.trim()) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    if let Some(password) = parsed.password() {
        let decoded = percent_decoded(password);
        let user = percent_decoded(parsed.username());
        found.push(basic_credential(&user, &decoded));
        found.push(password.to_string());
        found.push(decoded);
    }
    for pair in parsed.query().unwrap_or_default().split('&') {
        if let Some((_, value)) = pair.split_once('=') {
            found.push(value.to_string());
            found.push(percent_decoded(&value.replace('+', " ")));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

/// The URL with its userinfo password and query values masked:
/// `http://user:***@host/?api_key=***`. A URL that does not parse is masked from its scheme on
/// (`ftp://***`), since where its secrets are cannot be told.
pub fn redact(url: &str) -> String {
    match Url::parse(url.trim()) {
        Ok(parsed) => redact_url(&parsed),
        Err(_) => match url.find("://") {
            Some(at) => format!("{}://{MASK}", &url[..at]),
            None => MASK.to_string(),
        },
    }
}

/// [`redact`] for a parsed URL (the client's, with a path appended).
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some(MASK));
    }
    if let Some(query) = url.query() {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}={MASK}"),
                None => pair.to_string(),
            })
            .collect();
        shown.set_query(Some(&masked.join("&")));
    }
    shown.to_string()
}

/// `%41` → `A`; invalid escapes are kept as written.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `base64(user:password)`, the credential of the `Authorization: Basic` header reqwest sends
/// for a URL with userinfo.
fn basic_credential(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_password_the_query_values_and_the_basic_credential() {
        let found = secrets("http://jobsync:hunter%232@gw.example.com/api/?api_key=s3cret&x=a+b");
        for expected in ["hunter%232", "hunter#2", "s3cret", "a+b", "a b"] {
            assert!(found.iter().any(|s| s == expected), "{expected}: {found:?}");
        }
        // base64("jobsync:hunter#2")
        assert!(
            found.iter().any(|s| s == "am9ic3luYzpodW50ZXIjMg=="),
            "{found:?}"
        );
        assert!(secrets("https://api.example.com").is_empty());
        assert!(secrets("not a url").is_empty());
    }

    #[test]
    fn shows_the_url_with_its_credentials_masked() {
        assert_eq!(
            redact("http://jobsync:hunter2@gw.example.com/api/?api_key=s3cret&debug"),
            "http://jobsync:***@gw.example.com/api/?api_key=***&debug"
        );
        assert_eq!(
            redact("https://api.example.com/"),
            "https://api.example.com/"
        );
        assert_eq!(redact("ftp//u:p@x?k=v"), "***");
        assert_eq!(redact("http://u:p@[::1/?k=v"), "http://***");
    }

    #[test]
    fn encodes_basic_credentials_as_base64() {
        assert_eq!(basic_credential("a", ""), "YTo=");
        assert_eq!(basic_credential("ab", ""), "YWI6");
        assert_eq!(
            basic_credential("Aladdin", "open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
