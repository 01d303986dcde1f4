//! What can go wrong talking to the Jobs API, classified for the retry policy and worded for an
//! operator. No variant ever carries the token: requests are described by method and path only.

use std::error::Error as _;
use std::time::Duration;

/// One failed exchange with the Jobs API. `endpoint` is the method and path, e.g.
/// `POST /j/jobs/bulk/create` or `GET /j/jobs/42`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("{endpoint} answered HTTP {status}: {message}")]
    Http {
        endpoint: String,
        status: u16,
        message: String,
        /// The server's `Retry-After`, when it sent one (429 and 503 usually do).
        retry_after: Option<Duration>,
    },
    #[error(
        "{endpoint} refused the API token (HTTP {status}: {message}); check `api.token` / \
         `api.token_file` (a token that is wrong, expired or lacks access to this account)"
    )]
    Auth {
        endpoint: String,
        status: u16,
        message: String,
    },
    /// `message` is the address tried and the cause, e.g. `http://10.0.0.5:8080: connection
    /// refused`.
    #[error(
        "cannot reach the Jobs API for {endpoint} ({message}); nothing was sent — check \
         `api.base_url` and that the API is up and reachable"
    )]
    Connect { endpoint: String, message: String },
    /// The request may have reached the API: for one that changes something (a POST), the API
    /// may have applied it; a read (a GET) changed nothing.
    #[error("the connection broke during {endpoint}: {message}; {}", outcome(.endpoint))]
    Network { endpoint: String, message: String },
    #[error(
        "{endpoint} did not answer within {}s; {} (raise `api.timeout_secs` if the API is slow)",
        .timeout.as_secs_f64(), outcome(.endpoint)
    )]
    Timeout { endpoint: String, timeout: Duration },
    /// `api.base_url` says `https://` but the server there answered the TLS handshake in plain
    /// HTTP: nothing was sent, and retrying will not heal it. `origin` is the address tried,
    /// `suggested` the same with `http://` (and the port kept).
    #[error(
        "{endpoint} was not sent: the server at {origin} answered plain HTTP to a TLS handshake; \
         use http:// in `api.base_url` ({suggested}) or put TLS in front of the API"
    )]
    PlainHttp {
        endpoint: String,
        origin: String,
        suggested: String,
    },
    /// The API answered with a redirect to another origin, which jobsync does not follow: its
    /// token is for `api.base_url`'s origin only (and reqwest would drop it, so the other origin
    /// would answer 401). Retrying will not heal it.
    #[error(
        "{endpoint} was redirected (HTTP {status}) from {from} to another origin, {to}; jobsync \
         does not send its token to another origin: set `api.base_url` to {suggested} if the API \
         lives there"
    )]
    CrossOriginRedirect {
        endpoint: String,
        status: u16,
        from: String,
        to: String,
        suggested: String,
    },
    #[error("could not decode the answer of {endpoint}: {detail}")]
    Decode { endpoint: String, detail: String },
    #[error("{endpoint} gave an answer jobsync cannot use: {detail}")]
    InvalidAnswer { endpoint: String, detail: String },
    /// A stop request came before the request left: nothing was sent.
    #[error("{endpoint} was not sent: jobsync is stopping")]
    Stopped { endpoint: String },
    /// The stop's deadline passed while the request was in flight.
    #[error("{endpoint} was abandoned at the shutdown deadline; {}", outcome(.endpoint))]
    Abandoned { endpoint: String },
    #[error("the API token cannot be used: {0}")]
    Token(String),
    #[error("invalid API client settings: {0}")]
    Config(String),
}

impl ApiError {
    /// Whether the same request may succeed if sent again later: network errors, timeouts, 5xx and
    /// 429. Auth, other 4xx, and answers that cannot be decoded are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Http { status, .. } => *status == 429 || *status >= 500,
            ApiError::Connect { .. } | ApiError::Network { .. } | ApiError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// Whether the server certainly did not apply the request, so that even a non-idempotent
    /// request (a create) may be sent again: a failed connect, or a 429 (throttling answers
    /// before any work). Not a 5xx: a gateway answers 502/504 after the API behind it applied
    /// the request, and an API may fail after its commit.
    pub fn surely_not_applied(&self) -> bool {
        match self {
            ApiError::Http { status, .. } => *status == 429,
            ApiError::Connect { .. } | ApiError::Auth { .. } | ApiError::Token(_) => true,
            ApiError::PlainHttp { .. } => true,
            ApiError::Config(_) | ApiError::Stopped { .. } => true,
            _ => false,
        }
    }

    /// Whether a stop request cut the request short (before it left, or at the deadline).
    pub fn is_stop(&self) -> bool {
        matches!(self, ApiError::Stopped { .. } | ApiError::Abandoned { .. })
    }

    /// Whether the token was refused: a run should stop rather than keep trying.
    pub fn is_auth(&self) -> bool {
        matches!(self, ApiError::Auth { .. } | ApiError::Token(_))
    }

    /// The HTTP status of an answer that was an error, if there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Http { status, .. } | ApiError::Auth { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `Retry-After` the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Why the API could not be reached at all, in a few words, for `jobsync check`: a refused
    /// or failed connection, no answer in time, a connection that broke. `None` when the API
    /// answered.
    pub fn unreachable_cause(&self) -> Option<String> {
        match self {
            ApiError::Connect { message, .. } | ApiError::Network { message, .. } => {
                Some(message.clone())
            }
            ApiError::Timeout { timeout, .. } => {
                Some(format!("no answer within {}s", timeout.as_secs_f64()))
            }
            _ => None,
        }
    }

    /// Classifies a transport error from reqwest.
    pub(crate) fn from_reqwest(endpoint: &str, err: &reqwest::Error, timeout: Duration) -> Self {
        let endpoint = endpoint.to_owned();
        let causes = || std::iter::successors(err.source(), |&e| e.source());
        if let Some(redirect) = causes().find_map(|e| e.downcast_ref::<CrossOrigin>()) {
            return ApiError::CrossOriginRedirect {
                endpoint,
                status: redirect.status,
                from: redirect.from.clone(),
                to: redirect.to.clone(),
                suggested: redirect.suggested.clone(),
            };
        }
        if let Some(url) = err.url().filter(|url| url.scheme() == "https")
            && causes().any(|e| e.to_string().contains(PLAIN_HTTP_TO_TLS))
        {
            let host = url.host_str().unwrap_or_default();
            return ApiError::PlainHttp {
                endpoint,
                origin: url.origin().ascii_serialization(),
                suggested: match url.port_or_known_default() {
                    Some(port) => format!("http://{host}:{port}"),
                    None => format!("http://{host}"),
                },
            };
        }
        if err.is_connect() {
            let cause = connect_cause(err);
            ApiError::Connect {
                endpoint,
                message: match err.url() {
                    Some(url) => format!("{}: {cause}", url.origin().ascii_serialization()),
                    None => cause,
                },
            }
        } else if err.is_timeout() {
            ApiError::Timeout { endpoint, timeout }
        } else {
            ApiError::Network {
                endpoint,
                message: error_chain(err),
            }
        }
    }
}

/// rustls's words (`Error::InvalidMessage(InvalidContentType)`) for a first answer to its
/// handshake that is no TLS record at all — the `H` of `HTTP/1.1 400 Bad Request`, a server
/// speaking plain HTTP on that port.
const PLAIN_HTTP_TO_TLS: &str = "received corrupt message of type InvalidContentType";

/// Whether a request to `endpoint` ("POST /j/jobs/bulk/create") may change something at the
/// API. Only a read (GET, HEAD, OPTIONS) certainly does not; an endpoint without a method is
/// taken as a write.
fn changes_something(endpoint: &str) -> bool {
    let method = endpoint.split_once(' ').map_or("", |(method, _)| method);
    !matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// What a request cut short may have done: a write may or may not have been applied; a read
/// changed nothing.
fn outcome(endpoint: &str) -> &'static str {
    if changes_something(endpoint) {
        "the API may or may not have applied the request"
    } else {
        "nothing was changed by it (a read), so retrying it is safe"
    }
}

/// The redirect policy's refusal of a hop to another origin (see the client's redirect policy),
/// found again in reqwest's error by [`ApiError::from_reqwest`]. Origins and URLs as shown to
/// the operator: never with credentials.
#[derive(Debug, Clone)]
pub(crate) struct CrossOrigin {
    pub(crate) status: u16,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) suggested: String,
}

impl std::fmt::Display for CrossOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "redirected (HTTP {}) from {} to another origin, {}",
            self.status, self.from, self.to
        )
    }
}

impl std::error::Error for CrossOrigin {}

/// The error and its causes in one line ("error sending request: connection closed before message
/// completed"). reqwest's own message names the URL, never a header, so no token can appear.
fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Why a connection could not be made, in a few words ("connection refused", "dns error:
/// failed to lookup address information: Name or service not known"), without reqwest's own
/// "error sending request for url (…)" that repeats the whole URL and query.
fn connect_cause(err: &reqwest::Error) -> String {
    let causes = std::iter::successors(err.source(), |&e| e.source());
    for cause in causes.clone() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::TimedOut => return "the connection timed out".into(),
                _ => {}
            }
        }
    }
    let mut text = String::new();
    for cause in causes {
        let cause = cause.to_string();
        // hyper's wrapper says nothing its source does not.
        if cause.starts_with("client error (") || text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    if text.is_empty() {
        return error_chain(err);
    }
    // "… (os error 111)" means nothing to a reader.
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text.truncate(at),
        _ => {}
    }
    text
}

/// A short human message from an error answer's body: the API's `message` (or `error`) when the
/// body is JSON, "an HTML page" for a proxy's error page, else the start of the text.
pub(crate) fn body_message(body: &[u8]) -> String {
    const MAX: usize = 300;
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        for key in ["message", "error", "detail"] {
            if let Some(text) = value.get(key).and_then(|v| v.as_str()) {
                return text.chars().take(MAX).collect();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if looks_like_html(text.as_bytes()) {
        return "an HTML page instead of the API's JSON (is `api.base_url` the Jobs API, not a \
                proxy or login page?)"
            .into();
    }
    if text.is_empty() {
        return "no message".into();
    }
    text.chars().take(MAX).collect()
}

pub(crate) fn looks_like_html(body: &[u8]) -> bool {
    let start = body.trim_ascii_start();
    start.first() == Some(&b'<')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> ApiError {
        ApiError::Http {
            endpoint: "GET /j/jobs".into(),
            status,
            message: "x".into(),
            retry_after: None,
        }
    }

    #[test]
    fn classifies_retryable_errors() {
        for status in [429, 500, 502, 503, 504] {
            assert!(http(status).is_retryable(), "{status}");
        }
        assert!(http(429).surely_not_applied());
        for status in [500, 502, 503, 504] {
            assert!(
                !http(status).surely_not_applied(),
                "a gateway may answer {status} after"
            );
        }
        for status in [400, 404, 409, 413, 422] {
            assert!(!http(status).is_retryable(), "{status}");
        }
        let e = "GET /j/jobs".to_string();
        let timeout = ApiError::Timeout {
            endpoint: e.clone(),
            timeout: Duration::from_secs(30),
        };
        assert!(timeout.is_retryable() && !timeout.surely_not_applied());
        let dropped = ApiError::Network {
            endpoint: e.clone(),
            message: "closed".into(),
        };
        assert!(dropped.is_retryable() && !dropped.surely_not_applied());
        let connect = ApiError::Connect {
            endpoint: e.clone(),
            message: "refused".into(),
        };
        assert!(connect.is_retryable() && connect.surely_not_applied());
        let auth = ApiError::Auth {
            endpoint: e.clone(),
            status: 403,
            message: "forbidden".into(),
        };
        assert!(!auth.is_retryable() && auth.is_auth());
        assert!(auth.to_string().contains("api.token"), "{auth}");
        let decode = ApiError::Decode {
            endpoint: e,
            detail: "bad".into(),
        };
        assert!(!decode.is_retryable() && !decode.surely_not_applied());
    }

    #[test]
    fn only_a_request_that_changes_something_may_or_may_not_have_been_applied() {
        let cut_short = |endpoint: &str| {
            let endpoint = endpoint.to_string();
            [
                ApiError::Network {
                    endpoint: endpoint.clone(),
                    message: "connection closed before message completed".into(),
                },
                ApiError::Timeout {
                    endpoint: endpoint.clone(),
                    timeout: Duration::from_secs(30),
                },
                ApiError::Abandoned { endpoint },
            ]
        };
        for endpoint in [
            "POST /j/jobs/bulk/create",
            "PATCH /j/jobs/42",
            "DELETE /j/jobs/42",
            "POST /j/jobs/42/unqueue",
        ] {
            for err in cut_short(endpoint) {
                let text = err.to_string();
                assert!(
                    text.contains(endpoint)
                        && text.contains("the API may or may not have applied the request")
                        && !text.contains("nothing was changed"),
                    "{text}"
                );
            }
        }
        for endpoint in ["GET /j/jobs", "GET /j/jobs/42"] {
            for err in cut_short(endpoint) {
                let text = err.to_string();
                assert!(
                    text.contains(endpoint)
                        && text.contains("nothing was changed by it (a read)")
                        && !text.contains("may or may not"),
                    "{text}"
                );
                assert_eq!(text.lines().count(), 1, "{text}");
            }
        }
        let network = &cut_short("GET /j/jobs")[0];
        assert_eq!(
            network.to_string(),
            "the connection broke during GET /j/jobs: connection closed before message \
             completed; nothing was changed by it (a read), so retrying it is safe"
        );
        assert!(network.is_retryable(), "still retried");
        let timeout = &cut_short("GET /j/jobs")[1];
        assert!(
            timeout.to_string().contains("raise `api.timeout_secs`"),
            "{timeout}"
        );
    }

    #[test]
    fn a_plain_http_answer_to_tls_and_a_cross_origin_redirect_are_not_retried() {
        let plain = ApiError::PlainHttp {
            endpoint: "POST /j/jobs".into(),
            origin: "https://api.internal".into(),
            suggested: "http://api.internal:443".into(),
        };
        assert!(!plain.is_retryable() && plain.surely_not_applied());
        assert!(plain.unreachable_cause().is_none(), "check shows the hint");
        let moved = ApiError::CrossOriginRedirect {
            endpoint: "POST /j/jobs".into(),
            status: 307,
            from: "http://old".into(),
            to: "https://new".into(),
            suggested: "https://new/api".into(),
        };
        assert!(!moved.is_retryable() && !moved.is_auth());
        assert!(
            !moved.surely_not_applied(),
            "a create answered so stays in doubt"
        );
        for err in [plain, moved] {
            assert_eq!(err.to_string().lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn extracts_a_short_message_from_an_error_body() {
        assert_eq!(
            body_message(br#"{"message": "bad campaign"}"#),
            "bad campaign"
        );
        assert_eq!(body_message(b"  plain text \n"), "plain text");
        assert!(body_message(b"<!DOCTYPE html><html>").contains("HTML page"));
        assert_eq!(body_message(b""), "no message");
        assert_eq!(body_message(&[b'a'; 1000]).len(), 300);
    }
}
