//! What `verify` found: the kinds, one finding, the report, and the collector that keeps a bounded
//! number of findings in detail while counting them all.

use crate::job::JOB_FIELDS;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// The kind of a finding (see the module's documentation for each definition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Missing,
    Extra,
    Stale,
    InMotion,
    Lost,
    Duplicate,
    Stuck,
    Feed,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Missing,
        Kind::Extra,
        Kind::Stale,
        Kind::InMotion,
        Kind::Lost,
        Kind::Duplicate,
        Kind::Stuck,
        Kind::Feed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Stale => "stale",
            Kind::InMotion => "in_motion",
            Kind::Lost => "lost",
            Kind::Duplicate => "duplicate",
            Kind::Stuck => "stuck",
            Kind::Feed => "feed",
        }
    }

    /// Whether the kind is a difference (exit 3): all but `in_motion`.
    pub fn is_difference(self) -> bool {
        self != Kind::InMotion
    }

    pub(super) fn code(self) -> u8 {
        self as u8
    }

    pub(super) fn from_code(code: u8) -> Kind {
        Kind::ALL[usize::from(code)]
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding: what, which job, and which fields (names only, never values).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub job_id: Option<i64>,
    pub campaign: Option<i64>,
    pub reference: Option<String>,
    pub fields: Vec<&'static str>,
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The campaigns listed in full.
    pub campaigns: Vec<i64>,
    /// Findings per kind, every kind present.
    pub counts: BTreeMap<Kind, u64>,
    /// The first findings in detail (differences first, then `in_motion`, per campaign).
    pub findings: Vec<Finding>,
    /// Findings counted but not kept in detail.
    pub omitted: u64,
    /// What could not be judged (e.g. a listing with unreadable items).
    pub notes: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

impl Report {
    pub fn count(&self, kind: Kind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// Findings that are differences (every kind but `in_motion`).
    pub fn differences(&self) -> u64 {
        self.counts
            .iter()
            .filter(|(k, _)| k.is_difference())
            .map(|(_, n)| n)
            .sum()
    }

    pub fn is_clean(&self) -> bool {
        self.differences() == 0
    }
}

/// The names of the fields set in `mask` (bit i: `JOB_FIELDS[i]`).
pub(super) fn field_names(mask: u32) -> Vec<&'static str> {
    JOB_FIELDS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The mask of the named fields.
pub(super) fn field_mask(names: &[&str]) -> u32 {
    JOB_FIELDS
        .iter()
        .enumerate()
        .filter(|(_, name)| names.contains(name))
        .fold(0, |mask, (i, _)| mask | (1 << i))
}

/// Counts every finding; keeps the first `max` in detail.
pub(super) struct Collector {
    counts: BTreeMap<Kind, u64>,
    findings: Vec<Finding>,
    omitted: u64,
    max: usize,
}

impl Collector {
    pub fn new(max: usize) -> Self {
        Collector {
            counts: Kind::ALL.iter().map(|k| (*k, 0)).collect(),
            findings: Vec::new(),
            omitted: 0,
            max,
        }
    }

    /// Whether another finding would be kept in detail.
    pub fn has_room(&self) -> bool {
        self.findings.len() < self.max
    }

    /// How many more findings would be kept in detail.
    pub fn room(&self) -> usize {
        self.max.saturating_sub(self.findings.len())
    }

    /// Counts one finding of `kind`; builds it (only) when it is kept in detail.
    pub fn add(&mut self, kind: Kind, finding: impl FnOnce() -> Finding) {
        *self.counts.entry(kind).or_default() += 1;
        if self.has_room() {
            self.findings.push(finding());
        } else {
            self.omitted += 1;
        }
    }

    /// Counts `total` findings of `kind` of which `detailed` are given (those that fit are kept).
    pub fn add_counted(&mut self, kind: Kind, total: u64, detailed: Vec<Finding>) {
        *self.counts.entry(kind).or_default() += total;
        let mut kept = 0u64;
        for finding in detailed {
            if !self.has_room() {
                break;
            }
            self.findings.push(finding);
            kept += 1;
        }
        self.omitted += total.saturating_sub(kept);
    }

    pub fn into_report(
        self,
        campaigns: Vec<i64>,
        notes: Vec<String>,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
    ) -> Report {
        Report {
            campaigns,
            counts: self.counts,
            findings: self.findings,
            omitted: self.omitted,
            notes,
            started_at,
            finished_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip_field_names() {
        let names = ["name", "state", "created_at"];
        assert_eq!(field_names(field_mask(&names)), names);
        assert!(JOB_FIELDS.len() <= 32, "a u32 mask holds every field");
    }

    #[test]
    fn keeps_at_most_max_findings_and_counts_the_rest() {
        let mut c = Collector::new(2);
        for id in 0..5 {
            c.add(Kind::Stale, || Finding {
                kind: Kind::Stale,
                job_id: Some(id),
                campaign: None,
                reference: None,
                fields: vec![],
            });
        }
        c.add_counted(Kind::Stuck, 3, vec![]);
        let r = c.into_report(vec![], vec![], Utc::now(), Utc::now());
        assert_eq!((r.count(Kind::Stale), r.count(Kind::Stuck)), (5, 3));
        assert_eq!((r.findings.len(), r.omitted), (2, 6));
        assert_eq!(r.differences(), 8);
    }

    #[test]
    fn in_motion_is_not_a_difference() {
        let mut c = Collector::new(10);
        c.add(Kind::InMotion, || Finding {
            kind: Kind::InMotion,
            job_id: Some(1),
            campaign: Some(28),
            reference: None,
            fields: vec![],
        });
        let r = c.into_report(vec![28], vec![], Utc::now(), Utc::now());
        assert!(r.is_clean());
        assert_eq!(Kind::from_code(Kind::Feed.code()), Kind::Feed);
    }
}
