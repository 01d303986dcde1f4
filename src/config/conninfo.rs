//! Database connection strings read the way libpq reads them, so that a password never reaches a
//! message: [`redact`] for showing a URL, [`scrub`] for text that may quote one (libpq's own
//! errors do), [`check_url`] for refusing a URL libpq would misread before it gets the chance to
//! echo it.
//!
//! Forms handled: `scheme://user:password@hosts/db?…&password=…` (any scheme but `sqlite://`,
//! which holds a path), libpq keyword strings (`host=… password=…`), and `user:password@host`
//! without a scheme. A URL whose structure is unclear is shown as `scheme://*** (unparseable)`:
//! guessing which part is the password could echo it.
//!
//! It lives in `config`, where the URL is read and validated, and `db` re-exports it (`db` may
//! import `config`, never the other way). The mask and its rule for short secrets are
//! `secret`'s, as everywhere.

use crate::secret::{MASK, mask};

/// Parameters whose value is a secret (libpq: `password`, and `sslpassword` for the client key).
const SECRET_KEYS: [&str; 2] = ["password", "sslpassword"];

/// A database URL or connection string with every password replaced by `***`, for messages.
pub fn redact(input: &str) -> String {
    let shown = if input.starts_with("sqlite://") {
        // A file path: nothing secret, and `@` or `:` in it mean nothing.
        return input.to_string();
    } else if let Some(end) = input.find("://") {
        let scheme = &input[..end];
        match parse_url(input) {
            Ok(url) => url.masked(input),
            Err(_) if is_scheme(scheme) => format!("{scheme}://{MASK} (unparseable)"),
            Err(_) => format!("{MASK} (unparseable)"),
        }
    } else if input.contains('=') {
        match parse_keywords(input) {
            Ok(pairs) => mask_keywords(input, &pairs),
            Err(_) => format!("{MASK} (unparseable)"),
        }
    } else if let Some(at) = input.rfind('@') {
        // `user:password@host` without a scheme.
        match input[..at].find(':') {
            Some(colon) => format!("{}:{MASK}{}", &input[..colon], &input[at..]),
            None => input.to_string(),
        }
    } else {
        input.to_string()
    };
    // A user or host name that happens to equal the password would still show it.
    mask_secrets(&shown, &secrets(input))
}

/// `text` (an error message, a log line) with the URL and any secret it holds masked.
pub fn scrub(text: &str, url: &str) -> String {
    if url.is_empty() || url.starts_with("sqlite://") {
        return text.to_string();
    }
    let text = text.replace(url, &redact(url));
    mask_secrets(&text, &secrets(url))
}

/// Whether libpq reads `url` the way it looks: refuses what [`redact`] would show as unparseable.
/// The reason never quotes the URL.
pub fn check_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ()).map_err(|reason| {
        format!(
            "not a valid URL: {reason}; percent-encode special characters of the password (@ as %40, / as %2F, ? as %3F, % as %25)"
        )
    })
}

fn is_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Byte ranges of a URL that [`redact`] replaces.
#[derive(Debug, Default)]
struct ParsedUrl {
    password: Option<std::ops::Range<usize>>,
    secret_params: Vec<std::ops::Range<usize>>,
}

impl ParsedUrl {
    fn masked(&self, input: &str) -> String {
        let mut ranges: Vec<_> = self
            .password
            .iter()
            .chain(&self.secret_params)
            .filter(|r| !r.is_empty())
            .cloned()
            .collect();
        ranges.sort_by_key(|r| r.start);
        let mut out = String::with_capacity(input.len());
        let mut at = 0;
        for r in ranges {
            out.push_str(&input[at..r.start]);
            out.push_str(MASK);
            at = r.end;
        }
        out.push_str(&input[at..]);
        out
    }
}

/// Splits a URL as libpq does (`fe-connect.c`, `conninfo_uri_parse_options`): the user part ends
/// at the first `@` met before any `/`; then a comma-separated host list (`[v6]` or a name, each
/// with an optional `:port`), `/dbname`, `?key=value&…`. Stricter than libpq where libpq would
/// read something else than the writer meant (an unencoded `@` or `?` in a password), or where
/// its error would quote the password (a bad `%` escape).
fn parse_url(input: &str) -> Result<ParsedUrl, &'static str> {
    let start = input.find("://").ok_or("no `scheme://`")? + 3;
    if !is_scheme(&input[..start - 3]) {
        return Err("no valid scheme before `://`");
    }
    let bytes = input.as_bytes();
    let mut parsed = ParsedUrl::default();
    let mut p = start;
    let user_end = input[start..]
        .find(['@', '/'])
        .map(|i| start + i)
        .filter(|&i| bytes[i] == b'@');
    if let Some(at) = user_end {
        let userinfo = &input[start..at];
        if userinfo.contains(['?', '#', '[', ']']) {
            return Err("a `?`, `#`, `[` or `]` in the user or password");
        }
        check_escapes(userinfo)?;
        if let Some(colon) = userinfo.find(':') {
            parsed.password = Some(start + colon + 1..at);
        }
        p = at + 1;
    }
    // The host list.
    loop {
        if bytes.get(p) == Some(&b'[') {
            let close = input[p..]
                .find(']')
                .ok_or("an IPv6 host without its closing `]`")?;
            p += close + 1;
        } else {
            let end = input[p..]
                .find([':', '/', '?', ','])
                .map_or(input.len(), |i| p + i);
            let host = &input[p..end];
            if host.contains(['@', '[', ']', '#']) {
                return Err("an `@`, `[`, `]` or `#` in the host");
            }
            check_escapes(host)?;
            p = end;
        }
        if bytes.get(p) == Some(&b':') {
            let end = input[p + 1..]
                .find(['/', '?', ','])
                .map_or(input.len(), |i| p + 1 + i);
            if !input[p + 1..end].bytes().all(|b| b.is_ascii_digit()) {
                return Err("a port that is not a number");
            }
            p = end;
        }
        if bytes.get(p) == Some(&b',') {
            p += 1;
        } else {
            break;
        }
    }
    match bytes.get(p) {
        None | Some(b'/') | Some(b'?') => {}
        Some(_) => return Err("an unexpected character after the host"),
    }
    let query_start = input[p..].find('?').map(|i| p + i);
    check_escapes(&input[p..query_start.unwrap_or(input.len())])?;
    if let Some(q) = query_start {
        let mut at = q + 1;
        for param in input[q + 1..].split('&') {
            let eq = param.find('=').ok_or("a query parameter without `=`")?;
            let (key, value) = (&param[..eq], &param[eq + 1..]);
            check_escapes(key)?;
            check_escapes(value)?;
            if is_secret_key(&decode(key)) {
                parsed.secret_params.push(at + eq + 1..at + param.len());
            }
            at += param.len() + 1;
        }
    }
    Ok(parsed)
}

fn check_escapes(s: &str) -> Result<(), &'static str> {
    let bytes = s.as_bytes();
    for (i, _) in s.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).ok_or(BAD_ESCAPE)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(BAD_ESCAPE);
        }
        if hex == b"00" {
            return Err("%00 in the URL");
        }
    }
    Ok(())
}

const BAD_ESCAPE: &str = "a `%` not followed by two hexadecimal digits";

/// Percent-decoding, lossy: for comparing keys and finding secrets, never for connecting.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS
        .iter()
        .any(|k| key.trim().eq_ignore_ascii_case(k))
}

/// A libpq keyword string's `key = value` pairs, as byte ranges (the value's includes its quotes).
type Pairs = Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>;

fn parse_keywords(input: &str) -> Result<Pairs, &'static str> {
    let bytes = input.as_bytes();
    let mut pairs = Vec::new();
    let mut p = 0;
    let skip_space = |mut p: usize| {
        while bytes.get(p).is_some_and(u8::is_ascii_whitespace) {
            p += 1;
        }
        p
    };
    loop {
        p = skip_space(p);
        if p >= bytes.len() {
            return Ok(pairs);
        }
        let key_start = p;
        while p < bytes.len() && bytes[p] != b'=' && !bytes[p].is_ascii_whitespace() {
            p += 1;
        }
        let key = key_start..p;
        p = skip_space(p);
        if bytes.get(p) != Some(&b'=') {
            return Err("a keyword without `=`");
        }
        p = skip_space(p + 1);
        let value_start = p;
        if bytes.get(p) == Some(&b'\'') {
            p += 1;
            loop {
                match bytes.get(p) {
                    None => return Err("an unterminated quote"),
                    Some(b'\\') => p += 2,
                    Some(b'\'') => {
                        p += 1;
                        break;
                    }
                    Some(_) => p += 1,
                }
            }
        } else {
            while p < bytes.len() && !bytes[p].is_ascii_whitespace() {
                p += if bytes[p] == b'\\' { 2 } else { 1 };
            }
        }
        p = p.min(bytes.len());
        pairs.push((key, value_start..p));
    }
}

fn mask_keywords(input: &str, pairs: &Pairs) -> String {
    let mut out = String::with_capacity(input.len());
    let mut at = 0;
    for (key, value) in pairs {
        if is_secret_key(&input[key.clone()]) && !value.is_empty() {
            out.push_str(&input[at..value.start]);
            out.push_str(MASK);
            at = value.end;
        }
    }
    out.push_str(&input[at..]);
    out
}

/// Every string of `input` that may be a password, raw and percent-decoded, read generously: by
/// libpq's rules, and by the looser ones a reader might assume (the last `@`), whether or not the
/// input parses.
pub fn secrets(input: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    if input.starts_with("sqlite://") {
        return found;
    }
    let mut add = |s: &str| {
        for candidate in [s.to_string(), decode(s)] {
            let candidate = candidate.trim_matches('\'').to_string();
            if !candidate.trim().is_empty() && !found.contains(&candidate) {
                found.push(candidate);
            }
        }
    };
    if let Ok(url) = parse_url(input) {
        for r in url.password.iter().chain(&url.secret_params) {
            add(&input[r.clone()]);
        }
    }
    let rest = input.find("://").map_or(input, |i| &input[i + 3..]);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    for userinfo in [
        authority.find('@').map(|at| &authority[..at]),
        rest.rfind('@').map(|at| &rest[..at]),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(colon) = userinfo.find(':') {
            add(&userinfo[colon + 1..]);
        }
    }
    for param in rest.split(['?', '&', ' ', '\t', '\n']) {
        if let Some((key, value)) = param.split_once('=')
            && is_secret_key(&decode(key))
        {
            add(value);
        }
    }
    if let Ok(pairs) = parse_keywords(input) {
        for (key, value) in pairs {
            if is_secret_key(&input[key]) {
                add(&input[value]);
            }
        }
    }
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found
}

fn mask_secrets(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    for secret in secrets {
        if secret != MASK {
            text = mask(&text, secret);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_password_of_the_user_part() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact("postgresql://u:s3cr%40t%2Fx@h:5432/db?sslmode=require"),
            "postgresql://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(redact("postgres://:secret@h/db"), "postgres://:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact("postgres://"), "postgres://");
        assert_eq!(redact("mysql://root:pw1234@h/db"), "mysql://root:***@h/db");
        // libpq's reading: the user part ends at the first `@`, before any `/`.
        assert_eq!(
            redact("postgres://u:secret@h/db?application_name=a@b"),
            "postgres://u:***@h/db?application_name=a@b"
        );
    }

    #[test]
    fn masks_password_parameters() {
        assert_eq!(
            redact("postgres://u@h/db?password=secret&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        assert_eq!(
            redact("postgres://h/db?sslmode=require&sslpassword=keypass"),
            "postgres://h/db?sslmode=require&sslpassword=***"
        );
        assert_eq!(
            redact("postgres://h/db?PASSWORD=secret"),
            "postgres://h/db?PASSWORD=***"
        );
        // A percent-encoded key is still the key.
        assert_eq!(
            redact("postgres://h/db?pass%77ord=secret"),
            "postgres://h/db?pass%77ord=***"
        );
        assert_eq!(
            redact("postgres://u:a1b2@h/db?password=c3d4"),
            "postgres://u:***@h/db?password=***"
        );
    }

    #[test]
    fn keeps_multi_host_and_socket_urls_readable() {
        assert_eq!(
            redact("postgres://u:secret@h1:5432,h2:5433,[::1]:5434/db?target_session_attrs=any"),
            "postgres://u:***@h1:5432,h2:5433,[::1]:5434/db?target_session_attrs=any"
        );
        assert_eq!(
            redact("postgresql://%2Fvar%2Frun%2Fpostgresql/db"),
            "postgresql://%2Fvar%2Frun%2Fpostgresql/db"
        );
        assert_eq!(
            redact("postgres:///db?host=/tmp&password=secret"),
            "postgres:///db?host=/tmp&password=***"
        );
        assert!(check_url("postgres://u:p@h1,h2:5432/db?options=-csearch_path%3Dx").is_ok());
    }

    #[test]
    fn shows_only_the_scheme_of_an_unparseable_url() {
        for url in [
            "postgres://u:secret@[::1/db",
            "postgres://u:sec%zzret@h/db",
            "postgres://u:secret@h/d%zzb",
            "postgres://u:secret@h/db?password=x%z",
            "postgres://u:sec@ret@h/db",
            "postgres://u:sec?ret@h/db",
            "postgres://u:secret@h:port/db",
            "postgres://u:secret@h/db?password",
            "postgres://u:%00secret@h/db",
        ] {
            assert_eq!(redact(url), "postgres://*** (unparseable)", "{url}");
            assert!(check_url(url).is_err(), "{url}");
            assert!(!check_url(url).unwrap_err().contains("secret"), "{url}");
        }
        assert_eq!(redact("1x://u:secret@h"), "*** (unparseable)");
    }

    #[test]
    fn masks_libpq_keyword_strings() {
        assert_eq!(
            redact("host=127.0.0.1 password=secret dbname=x"),
            "host=127.0.0.1 password=*** dbname=x"
        );
        assert_eq!(
            redact("host = h  password = 'se cr\\'et' user=u"),
            "host = h  password = *** user=u"
        );
        assert_eq!(redact("sslpassword=abc host=h"), "sslpassword=*** host=h");
        assert_eq!(redact("host=h password='secret"), "*** (unparseable)");
        assert_eq!(redact("host=h password"), "*** (unparseable)");
    }

    #[test]
    fn leaves_sqlite_paths_and_plain_text_alone() {
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(redact("sqlite:///srv/a:b@c.db"), "sqlite:///srv/a:b@c.db");
        assert_eq!(redact("jobsync.db"), "jobsync.db");
        assert_eq!(redact("u:secret@h/db"), "u:***@h/db");
    }

    #[test]
    fn a_user_or_host_equal_to_the_password_is_masked_too() {
        assert_eq!(
            redact("postgres://hunter2:hunter2@h/db"),
            "postgres://***:***@h/db"
        );
    }

    #[test]
    fn scrubs_messages_that_quote_the_url_or_its_password() {
        let url = "postgres://u:Sup3rSecret@[::1/db";
        let libpq = format!(
            "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"{url}\""
        );
        let clean = scrub(&libpq, url);
        assert!(!clean.contains("Sup3rSecret"), "{clean}");
        assert!(clean.contains("postgres://*** (unparseable)"), "{clean}");

        let url = "postgres://u:Sup3r%zzSecret@h/db";
        let clean = scrub("invalid percent-encoded token: \"Sup3r%zzSecret\"", url);
        assert_eq!(clean, "invalid percent-encoded token: \"***\"");

        let url = "postgres://u:p%40ssw0rd@h/db";
        assert_eq!(
            scrub("password p@ssw0rd refused", url),
            "password *** refused"
        );

        let url = "host=h password=Sup3rSecret";
        assert_eq!(scrub("bad: Sup3rSecret", url), "bad: ***");

        // Short passwords are masked only as whole words.
        let url = "postgres://u:ab@h/db";
        assert_eq!(
            scrub("connection to ab failed: abort", url),
            "connection to *** failed: abort"
        );
        assert_eq!(scrub("anything", "sqlite://x.db"), "anything");
    }
}
