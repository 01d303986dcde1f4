//! One push round, planned from the open outbox rows and the mirror (SPEC §4): invalid rows fail
//! alone; per target, the longest prefix of its rows (in id order) that coalesces into one
//! operation is taken; rows behind it wait for the next round.
//!
//! Coalescing rules:
//! - create + patch… → one create with the merged fields (later fields win);
//! - a create never sent, followed by an unqueue → nothing is sent, both rows (and any patches
//!   between them) are superseded;
//! - patch + patch… → one patch; unqueue + unqueue… → one unqueue;
//! - a create whose job the mirror already has is a patch (only the fields that differ from the
//!   mirror are sent, and nothing at all when none do).
//!
//! A row that is not ready (backing off, failed retryably earlier in this run, or a create whose
//! outcome is still unknown) holds back every later row of its target, so per-target order holds.

use super::validate::{Intent, Op, RowInput, Target, validate};
use crate::api::models::JobFields;
use crate::db::Ts;
use crate::db::models::{MirrorRow, OpenRow, canonical_json};
use crate::db::repo::outbox::{IN_FLIGHT, PENDING};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// The key of a job that the mirror does not know yet: its campaign and reference.
pub type RefKey = (i64, String);

/// What the planner reads besides the rows.
pub struct Mirror {
    /// Live mirror rows by id (those the rows name).
    pub by_id: HashMap<i64, MirrorRow>,
    /// Live mirror rows by campaign and reference (those the rows name).
    pub by_ref: HashMap<RefKey, MirrorRow>,
}

/// One row of a group, with what the outcome needs to know about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub id: i64,
    pub attempts: i32,
}

/// One operation to send: the surviving row and the rows merged into it.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub op: Op,
    pub survivor: Member,
    pub merged: Vec<Member>,
    /// The job a patch or unqueue applies to.
    pub job_id: Option<i64>,
    /// For a create, every field (with campaign and reference); for a patch, the fields to change
    /// (without `id`); empty for an unqueue.
    pub fields: JobFields,
    /// A create sent for the first time: `first_sent_at` is set when it leaves.
    pub first_send: bool,
}

impl Group {
    pub fn rows(&self) -> impl Iterator<Item = Member> + '_ {
        std::iter::once(self.survivor).chain(self.merged.iter().copied())
    }
}

/// A create whose job already holds every field it asks for: done without a call.
#[derive(Debug, Clone, PartialEq)]
pub struct AlreadyApplied {
    pub survivor: i64,
    pub merged: Vec<i64>,
    pub job_id: i64,
}

#[derive(Debug, Default)]
pub struct RoundPlan {
    pub failed: Vec<(i64, String)>,
    pub superseded: Vec<(i64, String)>,
    pub already_applied: Vec<AlreadyApplied>,
    pub groups: Vec<Group>,
}

impl RoundPlan {
    pub fn is_empty(&self) -> bool {
        self.failed.is_empty()
            && self.superseded.is_empty()
            && self.already_applied.is_empty()
            && self.groups.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Id(i64),
    Ref(RefKey),
}

struct Entry<'a> {
    row: &'a OpenRow,
    intent: Intent,
    /// A create whose job the mirror already has: sent as a patch.
    existing: Option<&'a MirrorRow>,
    /// The next entry of the same target.
    next: Option<usize>,
}

/// The validated intent of a stored row.
pub fn intent_of(row: &OpenRow) -> Result<Intent, String> {
    validate(RowInput::from(row))
}

/// The (campaign, reference) keys and ids the rows name, for loading the mirror.
pub fn targets_named(rows: &[OpenRow]) -> (Vec<RefKey>, Vec<i64>) {
    let mut refs = Vec::new();
    let mut ids = Vec::new();
    for row in rows {
        if let (Some(id), false) = (row.job_id, row.op == "create") {
            ids.push(id);
        } else if let (Some(c), Some(r)) = (row.campaign, &row.reference) {
            refs.push((c, r.clone()));
        }
    }
    (refs, ids)
}

/// [`plan_validated`], validating the rows first.
#[cfg(test)]
pub fn plan_round(rows: &[OpenRow], mirror: &Mirror, blocked: &HashSet<i64>, now: Ts) -> RoundPlan {
    plan_validated(rows, validate_all(rows), mirror, blocked, now)
}

/// Rows per validating thread, below which one thread does it all.
const ROWS_PER_THREAD: usize = 8192;

/// Every row's intent, in row order. Parsing the payloads is most of a large round's planning
/// and each row stands alone, so a large outbox is split across the machine's cores.
pub fn validate_all(rows: &[OpenRow]) -> Vec<Result<Intent, String>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(rows.len() / ROWS_PER_THREAD).max(1);
    if threads == 1 {
        return rows.iter().map(intent_of).collect();
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = rows
            .chunks(rows.len().div_ceil(threads))
            .map(|part| scope.spawn(move || part.iter().map(intent_of).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Plans one round from the rows and their intents (`intents[i]` is `rows[i]`'s). `blocked`
/// rows are left alone in this run and hold back their target.
///
/// A large outbox (a CRM's backfill) holds one row per target, a hundred thousand of them: the
/// rows of a target are chained through one vector rather than kept in a vector per target, and
/// each key is built once and moved, not cloned.
pub fn plan_validated(
    rows: &[OpenRow],
    intents: Vec<Result<Intent, String>>,
    mirror: &Mirror,
    blocked: &HashSet<i64>,
    now: Ts,
) -> RoundPlan {
    let mut plan = RoundPlan::default();
    // Taken out target by target once every row is chained.
    let mut entries: Vec<Option<Entry>> = Vec::with_capacity(rows.len());
    // Per target: its first and last entry, in the order targets first appear.
    let mut chains: Vec<(usize, usize)> = Vec::new();
    let mut chain_of: HashMap<Key, usize> = HashMap::with_capacity(rows.len());
    for (row, intent) in rows.iter().zip(intents) {
        let mut intent = match intent {
            Ok(intent) => intent,
            Err(reason) => {
                plan.failed.push((row.id, reason));
                continue;
            }
        };
        let target = std::mem::replace(&mut intent.target, Target::Id(0));
        // A reference the mirror does not know is valid only behind a pending create of it,
        // which gave it a chain.
        let (key, existing) = match key_of(target, intent.op, mirror, |k| chain_of.contains_key(k))
        {
            Ok(found) => found,
            Err(reason) => {
                plan.failed.push((row.id, reason));
                continue;
            }
        };
        let index = entries.len();
        entries.push(Some(Entry {
            row,
            intent,
            existing: if row.op == "create" { existing } else { None },
            next: None,
        }));
        match chain_of.get(&key) {
            Some(&chain) => {
                let last = &mut chains[chain].1;
                if let Some(entry) = &mut entries[*last] {
                    entry.next = Some(index);
                }
                *last = index;
            }
            None => {
                chain_of.insert(key, chains.len());
                chains.push((index, index));
            }
        }
    }
    let mut keys: Vec<Option<Key>> = vec![None; chains.len()];
    for (key, chain) in chain_of {
        keys[chain] = Some(key);
    }
    for ((first, _), key) in chains.into_iter().zip(keys) {
        let Some(key) = key else { continue };
        let mut ready = Vec::new();
        let mut next = Some(first);
        while let Some(index) = next {
            let Some(entry) = entries[index].take() else {
                break;
            };
            if !is_ready(entry.row, blocked, now) {
                break;
            }
            next = entry.next;
            ready.push(entry);
        }
        if !ready.is_empty() {
            take_prefix(ready, &key, &mut plan);
        }
    }
    plan
}

fn key_of(
    target: Target,
    op: Op,
    mirror: &Mirror,
    pending_create: impl Fn(&Key) -> bool,
) -> Result<(Key, Option<&MirrorRow>), String> {
    match target {
        Target::Id(id) => match mirror.by_id.get(&id) {
            Some(job) => Ok((Key::Id(id), Some(job))),
            None => Err(format!(
                "job {id} is unknown: the mirror has no live job with this id (never pulled, or \
                 deleted upstream)"
            )),
        },
        Target::Ref {
            campaign,
            reference,
        } => {
            let k = (campaign, reference);
            if let Some(job) = mirror.by_ref.get(&k) {
                return Ok((Key::Id(job.content.id), Some(job)));
            }
            let key = Key::Ref(k);
            if op == Op::Create || pending_create(&key) {
                Ok((key, None))
            } else {
                let Key::Ref((campaign, reference)) = key else {
                    unreachable!("built just above")
                };
                Err(format!(
                    "no job with reference `{reference}` in campaign {campaign}: neither the \
                     mirror nor an earlier pending create knows it"
                ))
            }
        }
    }
}

fn is_ready(row: &OpenRow, blocked: &HashSet<i64>, now: Ts) -> bool {
    if blocked.contains(&row.id) {
        return false;
    }
    match row.status.as_str() {
        PENDING => row.next_attempt_at <= now,
        // A patch or unqueue left in flight (a crash, a timeout) is safe to send again; a create
        // is first looked up (resolve.rs) and comes back pending.
        IN_FLIGHT => row.op != "create",
        _ => false,
    }
}

fn member(row: &OpenRow) -> Member {
    Member {
        id: row.id,
        attempts: row.attempts,
    }
}

/// Takes the longest coalescing prefix of `entries` (all ready) into `plan`.
fn take_prefix(mut entries: Vec<Entry>, key: &Key, plan: &mut RoundPlan) {
    let mut fields = std::mem::take(&mut entries[0].intent.fields);
    let head = &entries[0];
    let mut merged = Vec::new();
    match (head.intent.op, key) {
        (Op::Create, Key::Ref(_)) => {
            for e in &entries[1..] {
                match e.intent.op {
                    Op::Patch => {
                        fields.extend(e.intent.fields.clone());
                        merged.push(member(e.row));
                    }
                    Op::Unqueue if head.row.first_sent_at.is_none() => {
                        cancel_unsent_create(head.row.id, &merged, e.row.id, plan);
                        return;
                    }
                    _ => break,
                }
            }
            plan.groups.push(Group {
                op: Op::Create,
                survivor: member(head.row),
                merged,
                job_id: None,
                fields,
                first_send: head.row.first_sent_at.is_none(),
            });
        }
        (Op::Create | Op::Patch, Key::Id(job_id)) => {
            let mut existing = head.existing;
            fields.remove("campaign");
            for e in &entries[1..] {
                if e.intent.op == Op::Unqueue {
                    break;
                }
                let mut more = e.intent.fields.clone();
                more.remove("campaign");
                fields.extend(more);
                existing = existing.or(e.existing);
                merged.push(member(e.row));
            }
            if let Some(job) = existing {
                // A create of a job that exists: only what differs is worth sending.
                fields = fields_that_differ(fields, job);
                if fields.is_empty() {
                    plan.already_applied.push(AlreadyApplied {
                        survivor: head.row.id,
                        merged: merged.iter().map(|m| m.id).collect(),
                        job_id: *job_id,
                    });
                    return;
                }
            }
            plan.groups.push(Group {
                op: Op::Patch,
                survivor: member(head.row),
                merged,
                job_id: Some(*job_id),
                fields,
                first_send: false,
            });
        }
        (Op::Unqueue, Key::Id(job_id)) => {
            for e in entries[1..]
                .iter()
                .take_while(|e| e.intent.op == Op::Unqueue)
            {
                merged.push(member(e.row));
            }
            plan.groups.push(Group {
                op: Op::Unqueue,
                survivor: member(head.row),
                merged,
                job_id: Some(*job_id),
                fields: JobFields::new(),
                first_send: false,
            });
        }
        // Only a create can name a job the mirror does not know (key_of sees to it).
        (Op::Patch | Op::Unqueue, Key::Ref(_)) => unreachable!("a Ref key starts with a create"),
    }
}

fn cancel_unsent_create(create: i64, patches: &[Member], unqueue: i64, plan: &mut RoundPlan) {
    plan.superseded.push((
        create,
        format!(
            "merged into outbox row {unqueue}: unqueued before it was ever sent, so nothing was \
             sent"
        ),
    ));
    for p in patches {
        plan.superseded.push((
            p.id,
            format!("merged into outbox row {create}, which was unqueued before it was sent"),
        ));
    }
    plan.superseded.push((
        unqueue,
        format!(
            "merged into outbox row {create}: the create it cancels was never sent, so nothing \
             was sent"
        ),
    ));
}

/// The fields whose value differs from the mirror's job (compared by value, datetimes as
/// instants).
fn fields_that_differ(fields: JobFields, job: &MirrorRow) -> JobFields {
    let current = match serde_json::to_value(job.to_job()) {
        Ok(Value::Object(map)) => map,
        _ => return fields,
    };
    fields
        .into_iter()
        .filter(|(key, value)| {
            let old = current.get(key).unwrap_or(&Value::Null);
            !same_value(key, old, value)
        })
        .collect()
}

fn same_value(key: &str, old: &Value, new: &Value) -> bool {
    if key == "appointment" {
        let instant = |v: &Value| v.as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok());
        if let (Some(a), Some(b)) = (instant(old), instant(new)) {
            return Ts::from(a) == Ts::from(b);
        }
    }
    canonical_json(old) == canonical_json(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::JobContent;
    use serde_json::json;

    fn ts() -> Ts {
        Ts::now()
    }

    fn row(
        id: i64,
        op: &str,
        c: Option<i64>,
        r: Option<&str>,
        job: Option<i64>,
        p: Value,
    ) -> OpenRow {
        OpenRow {
            id,
            op: op.into(),
            campaign: c,
            reference: r.map(str::to_string),
            job_id: job,
            payload: p.to_string(),
            status: PENDING.into(),
            attempts: 0,
            last_error: None,
            next_attempt_at: ts(),
            first_sent_at: None,
        }
    }

    fn mirror_job(id: i64, reference: &str, name: &str) -> MirrorRow {
        let job = serde_json::from_value(json!({
            "id": id, "campaign": 28, "reference": reference, "name": name, "state": 0,
            "numbers": ["+33612345678"]
        }))
        .unwrap();
        MirrorRow {
            content: JobContent::from_job(&job),
            first_seen_at: ts(),
            last_seen_at: ts(),
            remote_deleted_at: None,
        }
    }

    fn mirror(jobs: Vec<MirrorRow>) -> Mirror {
        Mirror {
            by_ref: jobs
                .iter()
                .map(|j| ((28, j.content.reference.clone().unwrap()), j.clone()))
                .collect(),
            by_id: jobs.into_iter().map(|j| (j.content.id, j)).collect(),
        }
    }

    fn plan(rows: &[OpenRow], m: &Mirror) -> RoundPlan {
        plan_round(
            rows,
            m,
            &HashSet::new(),
            Ts::from(Utc::now() + chrono::Duration::seconds(1)),
        )
    }

    #[test]
    fn create_and_patches_become_one_create() {
        let rows = [
            row(
                1,
                "create",
                Some(28),
                Some("a"),
                None,
                json!({"name": "A", "city": "X"}),
            ),
            row(2, "patch", Some(28), Some("a"), None, json!({"city": "Y"})),
            row(3, "patch", Some(28), Some("a"), None, json!({"label": "L"})),
        ];
        let p = plan(&rows, &mirror(vec![]));
        assert_eq!(p.groups.len(), 1);
        let g = &p.groups[0];
        assert_eq!((g.op, g.survivor.id, g.merged.len()), (Op::Create, 1, 2));
        assert_eq!(g.fields["city"], "Y");
        assert_eq!(g.fields["label"], "L");
        assert!(g.first_send);
    }

    #[test]
    fn unsent_create_then_unqueue_sends_nothing() {
        let rows = [
            row(1, "create", Some(28), Some("a"), None, json!({})),
            row(2, "patch", Some(28), Some("a"), None, json!({"city": "Y"})),
            row(3, "unqueue", Some(28), Some("a"), None, json!({})),
            row(4, "patch", Some(28), Some("a"), None, json!({"city": "Z"})),
        ];
        let p = plan(&rows, &mirror(vec![]));
        assert!(p.groups.is_empty());
        let ids: Vec<i64> = p.superseded.iter().map(|s| s.0).collect();
        assert_eq!(ids, [1, 2, 3], "row 4 waits for the next round");
        assert!(p.superseded[0].1.contains("merged into outbox row 3"));
        assert!(p.superseded[2].1.contains("merged into outbox row 1"));
    }

    #[test]
    fn a_create_already_sent_is_not_cancelled_by_an_unqueue() {
        let mut create = row(1, "create", Some(28), Some("a"), None, json!({}));
        create.first_sent_at = Some(ts());
        let rows = [
            create,
            row(2, "unqueue", Some(28), Some("a"), None, json!({})),
        ];
        let p = plan(&rows, &mirror(vec![]));
        assert_eq!(p.groups.len(), 1);
        assert_eq!(p.groups[0].op, Op::Create);
        assert!(!p.groups[0].first_send);
        assert!(p.superseded.is_empty());
    }

    #[test]
    fn patches_merge_and_stop_at_an_unqueue() {
        let m = mirror(vec![mirror_job(7, "a", "A")]);
        let rows = [
            row(
                1,
                "patch",
                None,
                None,
                Some(7),
                json!({"city": "X", "name": "B"}),
            ),
            row(2, "patch", Some(28), Some("a"), None, json!({"city": "Y"})),
            row(3, "unqueue", None, None, Some(7), json!({})),
            row(4, "unqueue", None, None, Some(7), json!({})),
        ];
        let p = plan(&rows, &m);
        assert_eq!(p.groups.len(), 1);
        let g = &p.groups[0];
        assert_eq!((g.op, g.job_id, g.merged.len()), (Op::Patch, Some(7), 1));
        assert_eq!(
            g.fields,
            json!({"city": "Y", "name": "B"})
                .as_object()
                .unwrap()
                .clone()
        );
        // Next round (rows 1-2 settled): the two unqueues become one.
        let p = plan(&rows[2..], &m);
        assert_eq!((p.groups[0].op, p.groups[0].merged.len()), (Op::Unqueue, 1));
    }

    #[test]
    fn a_create_of_a_known_job_sends_only_what_differs() {
        let m = mirror(vec![mirror_job(7, "a", "A")]);
        let same = [row(
            1,
            "create",
            Some(28),
            Some("a"),
            None,
            json!({"name": "A"}),
        )];
        let p = plan(&same, &m);
        assert_eq!(
            p.already_applied,
            [AlreadyApplied {
                survivor: 1,
                merged: vec![],
                job_id: 7
            }]
        );
        let differs = [row(
            1,
            "create",
            Some(28),
            Some("a"),
            None,
            json!({"name": "B", "numbers": ["+33612345678"]}),
        )];
        let p = plan(&differs, &m);
        assert_eq!(p.groups[0].op, Op::Patch);
        assert_eq!(
            p.groups[0].fields,
            json!({"name": "B"}).as_object().unwrap().clone()
        );
    }

    #[test]
    fn bad_and_orphan_rows_fail_alone_and_blocked_rows_hold_their_target() {
        let rows = [
            row(1, "create", Some(28), None, None, json!({})),
            row(
                2,
                "patch",
                Some(28),
                Some("ghost"),
                None,
                json!({"name": "x"}),
            ),
            row(3, "patch", None, None, Some(99), json!({"name": "x"})),
            row(4, "create", Some(28), Some("b"), None, json!({})),
            row(5, "patch", Some(28), Some("b"), None, json!({"name": "x"})),
        ];
        let p = plan(&rows, &mirror(vec![]));
        let failed: Vec<i64> = p.failed.iter().map(|f| f.0).collect();
        assert_eq!(failed, [1, 2, 3]);
        assert_eq!(p.groups.len(), 1);
        let blocked = HashSet::from([4]);
        let p = plan_round(&rows[3..], &mirror(vec![]), &blocked, Ts::now());
        assert!(p.groups.is_empty(), "row 5 waits behind row 4");
    }

    #[test]
    fn parallel_validation_keeps_every_row_in_its_place() {
        // Large enough to be split across threads on any machine with two cores or more.
        let n = 3 * ROWS_PER_THREAD as i64;
        let rows: Vec<OpenRow> = (1..=n)
            .map(|id| match id % 1000 {
                0 => row(id, "create", Some(28), None, None, json!({})),
                1 => row(id, "patch", None, None, Some(id), json!({"state": 2})),
                _ => row(
                    id,
                    "create",
                    Some(28),
                    Some(&format!("r{id}")),
                    None,
                    json!({"name": id.to_string()}),
                ),
            })
            .collect();
        let one_by_one: Vec<_> = rows.iter().map(intent_of).collect();
        let parallel = validate_all(&rows);
        assert_eq!(parallel.len(), rows.len());
        assert!(parallel == one_by_one, "same intents, in row order");
        let bad = (1..=n).filter(|id| id % 1000 <= 1).count();
        assert_eq!(parallel.iter().filter(|i| i.is_err()).count(), bad);
    }
}
