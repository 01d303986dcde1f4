//! The `hold` fault: a gate that keeps matching `/j/` requests open, unanswered and not yet
//! applied, until it is released — so that a test can stop a client exactly while a request of
//! its is at the API (kill it, watch its ticks being skipped) instead of guessing with latency.
//!
//! A held request waits in a task of its own that holds its whole body: once released it is
//! applied and logged even when its client has gone meanwhile, as an API that had received the
//! request would. The count of held requests goes up when one is caught and down once it was
//! answered (or its task ended otherwise), so `held == 0` after a release means every request
//! the gate held has landed.

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Which requests the gate holds: those of `method` (any when absent) whose path and query as
/// sent (`/j/jobs?campaign=3`) start with `prefix`, once `after` of them went through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub prefix: String,
    /// Matching requests let through before the gate closes (counted from when it was set).
    #[serde(default)]
    pub after: u64,
}

impl Hold {
    /// Holds every matching request from now on.
    pub fn new(method: Option<&str>, prefix: &str) -> Self {
        Hold {
            method: method.map(str::to_string),
            prefix: prefix.to_string(),
            after: 0,
        }
    }

    /// Lets the first `n` matching requests through.
    pub fn after(mut self, n: u64) -> Self {
        self.after = n;
        self
    }

    pub fn check(&self) -> Result<(), String> {
        if !self.prefix.starts_with("/j/") {
            return Err(format!(
                "hold.prefix must start with /j/ (only API requests are held), not {:?}",
                self.prefix
            ));
        }
        match &self.method {
            Some(m) if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) => Err(format!(
                "hold.method must be an HTTP method in capitals (GET, POST), not {m:?}"
            )),
            _ => Ok(()),
        }
    }

    fn matches(&self, method: &str, path: &str, query: Option<&str>) -> bool {
        if self.method.as_deref().is_some_and(|m| m != method) {
            return false;
        }
        match query {
            None => path.starts_with(&self.prefix),
            Some(query) => format!("{path}?{query}").starts_with(&self.prefix),
        }
    }
}

/// What `GET /_sim/hold` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldStatus {
    pub hold: Option<Hold>,
    /// Requests caught and not yet answered.
    pub held: usize,
}

/// The gate's moving parts; its rule is `FaultSettings::hold`, read and changed under the
/// faults lock together with these, so that no request is caught by a rule already replaced.
pub struct Gate {
    /// Matching requests let through since the rule was set (`Hold::after`).
    passed: std::sync::atomic::AtomicU64,
    /// Bumped on every release: a held request waits for it to move.
    releases: watch::Sender<u64>,
    held: watch::Sender<usize>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            passed: Default::default(),
            releases: watch::Sender::new(0),
            held: watch::Sender::new(0),
        }
    }
}

impl Gate {
    /// Under the faults lock: a ticket when `rule` holds this request.
    pub fn catch(
        &self,
        rule: Option<&Hold>,
        method: &str,
        path: &str,
        query: Option<&str>,
    ) -> Option<Ticket> {
        use std::sync::atomic::Ordering;
        let rule = rule.filter(|rule| rule.matches(method, path, query))?;
        if self.passed.load(Ordering::SeqCst) < rule.after {
            self.passed.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        self.held.send_modify(|n| *n += 1);
        Some(Ticket {
            released: self.releases.subscribe(),
            held: self.held.clone(),
        })
    }

    /// Under the faults lock, after the rule changed: every held request goes on, and the count
    /// of `after` starts again. Answers how many were held.
    pub fn reopen(&self) -> usize {
        self.passed.store(0, std::sync::atomic::Ordering::SeqCst);
        self.releases.send_modify(|generation| *generation += 1);
        *self.held.borrow()
    }

    pub fn held(&self) -> usize {
        *self.held.borrow()
    }

    /// Follows the count of held requests (`SimHandle::wait_held`).
    pub fn watch_held(&self) -> watch::Receiver<usize> {
        self.held.subscribe()
    }
}

/// One held request: released when the gate reopens; counted as held until dropped.
pub struct Ticket {
    released: watch::Receiver<u64>,
    held: watch::Sender<usize>,
}

impl Ticket {
    pub async fn released(&mut self) {
        // An error means the simulator is gone: nothing is left to wait for.
        let _ = self.released.changed().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.held.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_matches_method_and_target_prefix_after_its_allowance() {
        let gate = Gate::default();
        let rule = Hold::new(Some("POST"), "/j/jobs/bulk/create").after(1);
        let catch = |method, path, query| gate.catch(Some(&rule), method, path, query);
        assert!(catch("GET", "/j/jobs/bulk/create", None).is_none());
        assert!(catch("POST", "/j/jobs", None).is_none());
        assert!(
            catch("POST", "/j/jobs/bulk/create", None).is_none(),
            "after 1"
        );
        assert_eq!(gate.held(), 0);
        let ticket = catch("POST", "/j/jobs/bulk/create", None).expect("held");
        assert_eq!(gate.held(), 1);
        drop(ticket);
        assert_eq!(gate.held(), 0);
        let by_query = Hold::new(None, "/j/jobs?campaign=3");
        let caught = gate.catch(Some(&by_query), "GET", "/j/jobs", Some("campaign=3&x=1"));
        assert!(caught.is_some());
        assert!(
            gate.catch(Some(&by_query), "GET", "/j/jobs", Some("campaign=2"))
                .is_none()
        );
        assert!(gate.catch(None, "GET", "/j/jobs", None).is_none());
    }

    #[tokio::test]
    async fn a_held_request_waits_for_the_release() {
        let gate = Gate::default();
        let rule = Hold::new(None, "/j/");
        let mut ticket = gate.catch(Some(&rule), "GET", "/j/jobs", None).unwrap();
        let waiting = tokio::spawn(async move {
            ticket.released().await;
            ticket
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(gate.reopen(), 1);
        let ticket = waiting.await.unwrap();
        assert_eq!(gate.held(), 1, "counted until answered");
        drop(ticket);
        assert_eq!(gate.held(), 0);
    }

    #[test]
    fn a_rule_is_checked() {
        assert!(Hold::new(None, "/j/jobs").check().is_ok());
        assert!(Hold::new(Some("POST"), "/j/").check().is_ok());
        assert!(Hold::new(None, "/_sim/state").check().is_err());
        assert!(Hold::new(Some("post"), "/j/").check().is_err());
        assert!(Hold::new(Some(""), "/j/").check().is_err());
    }
}
