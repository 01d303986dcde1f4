//! Waiting for new changefeed rows (contract §8, instant wake-ups). On PostgreSQL a connection of
//! its own `LISTEN`s on [`NOTIFY_CHANNEL`], which every append notifies at commit: a wait ends
//! within [`NOTICE_CHECK`] of the commit. Reading what arrived is a non-blocking read of the
//! socket (no query, no round trip), so checking often costs nothing on the server. On SQLite,
//! and whenever the listening connection is lost, a wait is a plain poll of `fallback`.
//!
//! [`NOTIFY_CHANNEL`]: super::repo::changes::NOTIFY_CHANNEL

use super::{Conn, Db};
use std::time::Duration;
use tokio::time::Instant;

/// How often a wait reads the listening connection's socket for a notification.
pub const NOTICE_CHECK: Duration = Duration::from_millis(10);

/// The poll interval of a follower of the feed: 0.5 s on SQLite (nothing to listen on); 5 s on
/// PostgreSQL, where the notification is what wakes it and the poll only covers a lost
/// listening connection.
pub fn fallback(db: &Db) -> Duration {
    if db.sqlite_path().is_some() {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    }
}

/// Waits for changefeed commits; see the module's text.
pub struct ChangeListener {
    db: Db,
    /// The listening connection (PostgreSQL), once it is established.
    conn: Option<Conn>,
    fallback: Duration,
}

impl ChangeListener {
    /// A listener on `db`; `fallback` is the poll interval where there is nothing to listen on
    /// (SQLite) or the connection is lost, and the longest any wait lasts.
    pub fn new(db: &Db, fallback: Duration) -> ChangeListener {
        ChangeListener {
            db: db.clone(),
            conn: None,
            fallback,
        }
    }

    /// Starts listening (PostgreSQL) if not listening yet: call before reading the feed, so a
    /// commit between the read and the wait still wakes the wait. A failure is logged; waits
    /// then poll.
    pub async fn listen(&mut self) {
        if self.conn.is_some() || self.db.sqlite_path().is_some() {
            return;
        }
        let db = self.db.clone();
        let listening = super::blocking(move || {
            let mut conn = db.conn()?;
            if let Conn::Pg(c) = &mut conn {
                use diesel::RunQueryDsl;
                diesel::sql_query(format!("LISTEN {}", super::repo::changes::NOTIFY_CHANNEL))
                    .execute(&mut **c)?;
            }
            Ok::<_, super::DbError>(conn)
        })
        .await;
        match listening {
            Ok(conn) => self.conn = Some(conn),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot LISTEN for changefeed commits; polling every {:?} instead",
                self.fallback
            ),
        }
    }

    /// Waits until a changefeed commit is notified, `fallback` passes, or `stop` resolves
    /// (then `false`).
    pub async fn wait(&mut self, stop: impl std::future::Future<Output = ()>) -> bool {
        let deadline = Instant::now() + self.fallback;
        tokio::pin!(stop);
        loop {
            if self.notified() {
                return true;
            }
            let step = match self.conn {
                Some(_) => NOTICE_CHECK.min(deadline.saturating_duration_since(Instant::now())),
                None => deadline.saturating_duration_since(Instant::now()),
            };
            if step.is_zero() {
                return true;
            }
            tokio::select! {
                _ = &mut stop => return false,
                _ = tokio::time::sleep(step) => {}
            }
        }
    }

    /// Whether notifications arrived (all of them are consumed). A dead connection is dropped:
    /// waits poll until [`ChangeListener::listen`] establishes another.
    fn notified(&mut self) -> bool {
        let Some(Conn::Pg(c)) = &mut self.conn else {
            return false;
        };
        let mut any = false;
        let mut failed = None;
        for notice in c.notifications_iter() {
            match notice {
                Ok(_) => any = true,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            tracing::warn!(error = %e, "the changefeed listener's connection failed; polling until it is back");
            self.drop_conn();
            return true;
        }
        any
    }

    fn drop_conn(&mut self) {
        if let Some(Conn::Pg(mut c)) = self.conn.take() {
            use diesel::RunQueryDsl;
            let _ = diesel::sql_query("UNLISTEN *").execute(&mut *c);
        }
    }
}

impl Drop for ChangeListener {
    fn drop(&mut self) {
        // The connection goes back to the pool: it must not keep listening.
        self.drop_conn();
    }
}
