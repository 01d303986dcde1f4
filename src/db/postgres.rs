//! PostgreSQL: the session set-up (keepalives, timeouts, `application_name`), the schema of
//! `database.schema`, and the hints added to connection errors.

use super::*;

/// How long a jobsync session may stay idle inside a transaction before the server ends it. No
/// transaction of jobsync waits for anything but the database, so only a process that stopped
/// answering (cut off from the server, frozen) stays so long; its open transactions (the fence
/// read `FOR SHARE` among them) would otherwise keep the next syncer waiting. `import`, which
/// streams a file through one transaction, turns it off for its own session.
pub const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(30);

/// Sets each new PostgreSQL connection's `statement_timeout`, the server's TCP keepalives on its
/// session (the server ends the session of a process cut off from it, and so releases the sync
/// lock it held, within about 25 s rather than after the kernel's two hours) and
/// [`IDLE_IN_TRANSACTION`].
#[derive(Debug)]
pub(super) struct PgSession {
    statement_timeout: Option<Duration>,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PgSession {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
             SET tcp_keepalives_count = 3; SET idle_in_transaction_session_timeout = {}",
            IDLE_IN_TRANSACTION.as_millis()
        ))
        .map_err(diesel::r2d2::Error::QueryError)?;
        // The server gives up on a client that stopped acknowledging what it sends within 30 s
        // (a partition while it answers). PostgreSQL 12 and later; older servers refuse it.
        let _ = conn.batch_execute("SET tcp_user_timeout = 30000");
        match self.statement_timeout {
            // In milliseconds; 0 would mean "no timeout", so at least 1.
            Some(timeout) => conn
                .batch_execute(&format!(
                    "SET statement_timeout = {}",
                    timeout.as_millis().clamp(1, i32::MAX as u128)
                ))
                .map_err(diesel::r2d2::Error::QueryError),
            None => Ok(()),
        }
    }
}

/// `url` with libpq's TCP keepalives and user timeout, unless it sets them itself: a server that
/// vanished (a failover, a partition) fails this process's statements within about 30 s instead
/// of the kernel's default of two hours (keepalives) or fifteen minutes (retransmissions).
/// Ignored on a Unix socket.
pub(super) fn with_keepalives(url: &str) -> String {
    const SETTINGS: [(&str, &str); 4] = [
        ("keepalives_idle", "10"),
        ("keepalives_interval", "5"),
        ("keepalives_count", "3"),
        ("tcp_user_timeout", "30000"),
    ];
    let name = session_name();
    let settings = SETTINGS
        .iter()
        .copied()
        .chain([("fallback_application_name", name.as_str())]);
    let missing = settings.filter(|(key, _)| !url.contains(key));
    let is_url = url.contains("://");
    let mut out = url.to_string();
    for (key, value) in missing {
        let sep = match (is_url, out.contains('?')) {
            (false, _) => ' ',
            (true, true) => '&',
            (true, false) => '?',
        };
        out.push(sep);
        out.push_str(key);
        out.push('=');
        if is_url {
            out.push_str(&value.replace(' ', "%20"));
        } else {
            out.push('\'');
            out.push_str(value);
            out.push('\'');
        }
    }
    out
}

/// The `application_name` this process's PostgreSQL sessions start with, unless the URL names
/// one: `jobsync pid N`. [`Db::cancel_statements`] finds them by it.
pub(super) fn session_name() -> String {
    format!("jobsync pid {}", std::process::id())
}

pub(super) fn connect_pg(url: &str, options: DbOptions) -> Result<Backend, DbError> {
    let schema = options.schema.as_deref().filter(|s| *s != "public");
    let session_url = match schema {
        // `-c search_path=S` for every session, the lock's and the cancelling one's included.
        Some(schema) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            with_keepalives(&format!("{url}{sep}options=-csearch_path%3D{schema}"))
        }
        None => with_keepalives(url),
    };
    let mut first = PgConnection::establish(&session_url).map_err(|e| {
        // libpq repeats its message once per address tried, and adds a second line of advice
        // that the hint replaces; the first line says it. It may quote the URL, or a part of it
        // that holds the password, and so may the hint (a database name): both are scrubbed.
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        let first = first.split_whitespace().collect::<Vec<_>>().join(" ");
        let reason = match pg_hint(&first) {
            Some(hint) => format!("{}: {first}; {hint}", redact(url)),
            None => format!("{}: {first}", redact(url)),
        };
        DbError::Connect {
            backend: "postgres",
            reason: scrub(&reason, url),
        }
    })?;
    if let Some(schema) = schema {
        ensure_schema(&mut first, schema).map_err(|reason| DbError::Connect {
            backend: "postgres",
            reason: scrub(&reason, url),
        })?;
    }
    drop(first);
    let url: Arc<str> = Arc::from(url);
    let pool = Pool::builder()
        .max_size(8)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(30))
        .connection_customizer(Box::new(PgSession {
            statement_timeout: options.statement_timeout,
        }))
        .error_handler(Box::new(PoolErrorLog::Pg(url.clone())))
        .build_unchecked(ConnectionManager::new(session_url.clone()));
    let session_url_kept = session_url;
    Ok(Backend::Pg {
        pool,
        session_url: Arc::from(session_url_kept.as_str()),
        url,
        statement_timeout: options.statement_timeout,
    })
}

/// Creates `schema` unless it exists (checked first: `CREATE SCHEMA IF NOT EXISTS` needs the
/// CREATE privilege on the database even when the schema is there, which a role that was given
/// only its schema lacks).
pub(super) fn ensure_schema(conn: &mut PgConnection, schema: &str) -> Result<(), String> {
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        found: bool,
    }
    let exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS found")
            .bind::<diesel::sql_types::Text, _>(schema)
            .get_result::<Found>(conn)
            .map_err(|e| format!("cannot look up schema `{schema}`: {e}"))?;
    if exists.found {
        return Ok(());
    }
    // A plain name (database.schema is validated): no quoting needed.
    diesel::sql_query(format!("CREATE SCHEMA {schema}"))
        .execute(conn)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "cannot create schema `{schema}` (database.schema): {e}; create it as a role that \
                 may, owned by jobsync's role: `CREATE SCHEMA {schema} AUTHORIZATION <jobsync \
                 role>`, or `GRANT CREATE ON DATABASE <db> TO <jobsync role>`"
            )
        })
}

/// What to do about a libpq connection error (its first line), when the cause is one a user
/// meets first: a wrong password, a server that is not there, a database not created yet.
pub(super) fn pg_hint(message: &str) -> Option<String> {
    // `"NAME"` after `marker`, as libpq quotes names in its messages.
    let quoted = |marker: &str| {
        let rest = &message[message.find(marker)? + marker.len()..];
        let rest = rest.strip_prefix('"')?;
        Some(rest[..rest.find('"')?].to_string())
    };
    if message.contains("password authentication failed")
        || message.contains("no password supplied")
        || (message.contains("role \"") && message.contains("does not exist"))
    {
        return Some("check the user and password in database.url".into());
    }
    if let Some(name) = quoted("database ").filter(|_| message.contains("does not exist")) {
        return Some(format!(
            "create it (`createdb {name}`, as a user allowed to) or fix the name in database.url"
        ));
    }
    if message.contains("no pg_hba.conf entry") {
        return Some(
            "the server does not accept this client, user or database: allow it in the \
             server's pg_hba.conf, or check database.url"
                .into(),
        );
    }
    let unreachable = [
        "Connection refused",
        "could not translate host name",
        "timeout expired",
        "No route to host",
        "Network is unreachable",
        "No such file or directory",
        "Connection timed out",
    ];
    if unreachable.iter().any(|m| message.contains(m)) {
        // libpq names the place: `server at "HOST", port PORT`, `server on socket "PATH"`, or
        // `host name "HOST"`.
        const PORT: &str = "\", port ";
        let place = match (quoted("server at "), message.find(PORT)) {
            (Some(host), Some(at)) => {
                let port: String = message[at + PORT.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                Some(format!("{host}:{port}"))
            }
            _ => quoted("server on socket ").or_else(|| quoted("host name ")),
        };
        return Some(match place {
            Some(place) => format!(
                "is the PostgreSQL server running and reachable at {place}? check the host and \
                 port in database.url"
            ),
            None => "is the PostgreSQL server running and reachable? check the host and port in \
                     database.url"
                .into(),
        });
    }
    None
}
