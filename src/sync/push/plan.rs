//! One push round, planned from the open outbox rows and the mirror (docs/contract.md §4): invalid
//! rows fail alone; per target, the longest prefix of its rows (in id order) that coalesces into
//! one operation is taken; rows behind it wait for the next round.
//!
//! Coalescing rules:
//! - create + patch… → one create with the merged fields (later fields win);
//! - a create never sent, followed by an unqueue → nothing is sent, both rows (and any patches
//!   between them) are superseded;
//! - patch + patch… → one patch; unqueue + unqueue… → one unqueue;
//! - a create whose job the mirror already has (or that a lookup linked to its job) is a patch of
//!   the fields that differ from the mirror; with none differing, the patch still goes out (one
//!   unchanged field) to confirm that the job exists: a create is settled by the API, never by
//!   the mirror alone, and a 404 sends the create after all.
//!
//! A row that is not ready (backing off, failed retryably earlier in this run, or a create whose
//! outcome is in doubt) holds back every later row of its target, so per-target order holds; a
//! target that a pass over the outbox has already met (in an earlier window) is held in later
//! windows of the same pass ([`Held`]): its rows there go in a later pass, after the earlier
//! ones settled.
//!
//! Ambiguous rows fail alone: a `job_id` that contradicts the row's `campaign` + `reference`, or
//! a reference that two live mirror jobs of the campaign share.

use super::validate::{Intent, Op, RowInput, Target, validate};
use crate::api::models::JobFields;
use crate::db::Ts;
use crate::db::models::{MirrorRow, OpenRow, OutboxStatus, canonical_json};
use crate::job::{self, Shape};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::HashMap;

/// The key of a job that the mirror does not know yet: its campaign and reference.
pub type RefKey = (i64, String);

/// What the planner reads besides the rows.
pub struct Mirror {
    /// Live mirror rows by id (those the rows name).
    pub by_id: HashMap<i64, MirrorRow>,
    /// Live mirror rows by campaign and reference (those the rows name).
    pub by_ref: HashMap<RefKey, MirrorRow>,
    /// References that several live mirror jobs share: the ids of those jobs.
    pub ambiguous: HashMap<RefKey, Vec<i64>>,
}

/// Targets met by an earlier window of the same pass: their later rows wait for the next pass.
///
/// A Bloom filter of the 64-bit hashes of the targets' keys, sized for the pass: a pass over a
/// million targets costs 2 MiB, whatever the outbox holds, so a pass never has to end early to
/// bound its memory (it did at 200,000 targets, and each new pass began again at the first open
/// row: a blocked backlog larger than that was re-read up to a thousand times and the rows
/// behind it never sent). A false positive (about 1 in 2,000 at the sized load) or a collision
/// only defers a row to the next pass. Each filter draws its own seed, so that the next pass
/// does not meet the same false positives again (with a fixed one, the same few rows were held in
/// every pass, and every pass called for another).
#[derive(Debug, Clone)]
pub struct Held {
    words: Vec<u64>,
    /// The number of bits, less one (a power of two).
    mask: u64,
    seed: u64,
}

/// Bits set per target: the optimum for 16 bits per target.
const PROBES: u64 = 7;

impl Held {
    /// Sized for about `targets` targets, 16 bits each (64 KiB at least, 8 MiB at most).
    pub fn with_capacity(targets: usize) -> Held {
        let bits = targets
            .saturating_mul(16)
            .clamp(1 << 19, 1 << 26)
            .next_power_of_two();
        Held {
            words: vec![0; bits / 64],
            mask: bits as u64 - 1,
            seed: rand::random(),
        }
    }

    pub fn new() -> Held {
        Held::with_capacity(0)
    }

    /// The bits of `hash`, by double hashing of the hash mixed with the seed (SplitMix64's
    /// finaliser).
    fn probes(&self, hash: u64) -> impl Iterator<Item = u64> + use<> {
        let mut hash = hash ^ self.seed;
        hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        hash ^= hash >> 31;
        let step = hash.rotate_left(32) | 1;
        let mask = self.mask;
        (0..PROBES).map(move |i| hash.wrapping_add(i.wrapping_mul(step)) & mask)
    }

    pub fn insert(&mut self, hash: u64) {
        for bit in self.probes(hash) {
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    /// Whether `hash` was inserted (or, rarely, looks so).
    pub fn contains(&self, hash: &u64) -> bool {
        self.probes(*hash)
            .all(|bit| self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }
}

/// Outbox row ids, as a bitmap over the range of ids met: a push that left a million rows
/// blocked (in doubt, backing off) keeps them in 125 KiB, where a hash set took 19 MiB (and its
/// copy for each window's planning as much again): the push of a million creates answered 502
/// peaked at 84 MiB with one.
#[derive(Debug, Clone, Default)]
pub struct RowSet {
    /// The id of the first bit (a multiple of 64).
    base: i64,
    words: Vec<u64>,
    len: usize,
}

impl RowSet {
    fn slot(&self, id: i64) -> Option<(usize, u64)> {
        let offset = id.checked_sub(self.base).filter(|o| *o >= 0)?;
        let word = usize::try_from(offset / 64).ok()?;
        (word < self.words.len()).then(|| (word, 1 << (offset % 64)))
    }

    pub fn contains(&self, id: &i64) -> bool {
        self.slot(*id)
            .is_some_and(|(word, bit)| self.words[word] & bit != 0)
    }

    pub fn insert(&mut self, id: i64) {
        let aligned = id.div_euclid(64) * 64;
        if self.words.is_empty() {
            self.base = aligned;
        } else if aligned < self.base {
            let grow = usize::try_from((self.base - aligned) / 64).unwrap_or(usize::MAX);
            self.words.splice(0..0, std::iter::repeat_n(0, grow));
            self.base = aligned;
        }
        let word = usize::try_from((aligned - self.base) / 64).unwrap_or(usize::MAX);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (id - aligned);
        if self.words[word] & bit == 0 {
            self.words[word] |= bit;
            self.len += 1;
        }
    }

    pub fn remove(&mut self, id: &i64) {
        if let Some((word, bit)) = self.slot(*id)
            && self.words[word] & bit != 0
        {
            self.words[word] &= !bit;
            self.len -= 1;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

impl Extend<i64> for RowSet {
    fn extend<I: IntoIterator<Item = i64>>(&mut self, ids: I) {
        for id in ids {
            self.insert(id);
        }
    }
}

impl<const N: usize> From<[i64; N]> for RowSet {
    fn from(ids: [i64; N]) -> Self {
        let mut set = RowSet::default();
        set.extend(ids);
        set
    }
}

impl Default for Held {
    fn default() -> Self {
        Held::new()
    }
}

impl<'a> Extend<&'a u64> for Held {
    fn extend<I: IntoIterator<Item = &'a u64>>(&mut self, hashes: I) {
        for hash in hashes {
            self.insert(*hash);
        }
    }
}

impl<const N: usize> From<[u64; N]> for Held {
    fn from(hashes: [u64; N]) -> Self {
        let mut held = Held::new();
        held.extend(&hashes);
        held
    }
}

/// The hash a target is held by.
pub fn key_hash(key: &Key) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
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
    /// A patch that stands for a create of a job the mirror (or a lookup) knows: a 404 means the
    /// job is gone upstream, and the create is sent after all.
    pub confirms_create: bool,
}

impl Group {
    pub fn rows(&self) -> impl Iterator<Item = Member> + '_ {
        std::iter::once(self.survivor).chain(self.merged.iter().copied())
    }
}

#[derive(Debug, Default)]
pub struct RoundPlan {
    pub failed: Vec<(i64, String)>,
    /// `(row, the row it was merged into, why)`.
    pub superseded: Vec<(i64, i64, String)>,
    pub groups: Vec<Group>,
    /// Every target the rows name (hashes of their keys): held for the rest of the pass.
    pub touched: Vec<u64>,
    /// Some rows were ready but had to wait (behind their target's prefix, or for a target held
    /// by an earlier window): another pass has work.
    pub more: bool,
}

impl RoundPlan {
    pub fn is_empty(&self) -> bool {
        self.failed.is_empty() && self.superseded.is_empty() && self.groups.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
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

/// The validated intent of a stored row. A create that was sent merged with later rows, and
/// then linked to its job by a lookup, carries the fields as sent.
pub fn intent_of(row: &OpenRow) -> Result<Intent, String> {
    let mut intent = validate(RowInput::from(row))?;
    if intent.op == Op::Create
        && let Some(sent) = &row.sent_payload
        && let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(sent)
    {
        intent.fields = fields;
    }
    Ok(intent)
}

/// The (campaign, reference) keys and ids the rows name, for loading the mirror.
pub fn targets_named(rows: &[OpenRow]) -> (Vec<RefKey>, Vec<i64>) {
    let mut refs = Vec::new();
    let mut ids = Vec::new();
    for row in rows {
        if let Some(id) = row.job_id.or(row.result_job_id) {
            ids.push(id);
        }
        if let (Some(c), Some(r)) = (row.campaign, &row.reference) {
            refs.push((c, r.clone()));
        }
    }
    (refs, ids)
}

/// [`plan_validated`], validating the rows first.
#[cfg(test)]
pub fn plan_round(rows: &[OpenRow], mirror: &Mirror, blocked: &RowSet, now: Ts) -> RoundPlan {
    plan_validated(rows, validate_all(rows), mirror, blocked, &Held::new(), now)
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
    blocked: &RowSet,
    held: &Held,
    now: Ts,
) -> RoundPlan {
    let mut plan = RoundPlan::default();
    // Taken out target by target once every row is chained.
    let mut entries: Vec<Option<Entry>> = Vec::with_capacity(rows.len());
    // Per target: its first and last entry, in the order targets first appear.
    let mut chains: Vec<(usize, usize)> = Vec::new();
    let mut chain_of: HashMap<Key, usize> = HashMap::with_capacity(rows.len());
    // Per chain: the hash of its job's (campaign, reference), when the mirror knows both.
    let mut aliases: Vec<Option<u64>> = Vec::new();
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
        let known = |k: &Key| chain_of.contains_key(k) || held.contains(&key_hash(k));
        let (key, existing) = match key_of(row, target, intent.op, mirror, known) {
            Ok(found) => found,
            Err(reason) => {
                plan.failed.push((row.id, reason));
                continue;
            }
        };
        // A job the mirror knows is also held by its (campaign, reference): an earlier window
        // may have named it that way before the mirror knew it (its create was in flight).
        let alias = existing
            .and_then(|job| Some((job.content.campaign, job.content.reference.clone()?)))
            .map(|k| key_hash(&Key::Ref(k)));
        let index = entries.len();
        entries.push(Some(Entry {
            row,
            intent,
            existing: if intent_is_create(row) {
                existing
            } else {
                None
            },
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
                aliases.push(alias);
            }
        }
    }
    let mut keys: Vec<Option<Key>> = vec![None; chains.len()];
    for (key, chain) in chain_of {
        keys[chain] = Some(key);
    }
    for (((first, _), key), alias) in chains.into_iter().zip(keys).zip(aliases) {
        let Some(key) = key else { continue };
        let hash = key_hash(&key);
        plan.touched.push(hash);
        plan.touched.extend(alias);
        if held.contains(&hash) || alias.is_some_and(|a| held.contains(&a)) {
            let head_ready = entries[first]
                .as_ref()
                .is_some_and(|e| is_ready(e.row, blocked, now));
            plan.more |= head_ready;
            continue;
        }
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
            let taken = take_prefix(&mut ready, &key, &mut plan);
            plan.more |= taken < ready.len();
        }
    }
    plan
}

fn intent_is_create(row: &OpenRow) -> bool {
    row.op == Op::Create.as_str()
}

fn key_of<'m>(
    row: &OpenRow,
    target: Target,
    op: Op,
    mirror: &'m Mirror,
    known: impl Fn(&Key) -> bool,
) -> Result<(Key, Option<&'m MirrorRow>), String> {
    // A create a lookup linked to its job: that job, whatever its reference is now.
    if op == Op::Create
        && let Some(job_id) = row.result_job_id
    {
        return match mirror.by_id.get(&job_id) {
            Some(job) => Ok((Key::Id(job_id), Some(job))),
            // Gone from the mirror since the link: the create is sent again.
            None => match target {
                Target::Ref {
                    campaign,
                    reference,
                } => Ok((Key::Ref((campaign, reference)), None)),
                Target::Id(_) => Err("a create needs campaign and reference".into()),
            },
        };
    }
    match target {
        Target::Id(id) => {
            let Some(job) = mirror.by_id.get(&id) else {
                return Err(format!(
                    "job {id} is unknown: the mirror has no live job with this id (never \
                     pulled, or deleted upstream)"
                ));
            };
            if let (Some(campaign), Some(reference)) = (row.campaign, row.reference.as_deref())
                && !reference.is_empty()
                && (job.content.campaign != campaign
                    || job.content.reference.as_deref() != Some(reference))
            {
                return Err(format!(
                    "ambiguous target: job_id {id} contradicts campaign {campaign} + reference \
                     `{reference}` (job {id} is campaign {} reference {}); name the job one way \
                     only",
                    job.content.campaign,
                    job.content
                        .reference
                        .as_deref()
                        .map_or("(none)".into(), |r| format!("`{r}`"))
                ));
            }
            Ok((Key::Id(id), Some(job)))
        }
        Target::Ref {
            campaign,
            reference,
        } => {
            let k = (campaign, reference);
            if let Some(ids) = mirror.ambiguous.get(&k) {
                let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
                return Err(format!(
                    "ambiguous target: reference `{}` is held by {} live jobs in campaign \
                     {campaign} (ids {}); name the job by job_id",
                    k.1,
                    ids.len(),
                    ids.join(", ")
                ));
            }
            if let Some(job) = mirror.by_ref.get(&k) {
                return Ok((Key::Id(job.content.id), Some(job)));
            }
            let key = Key::Ref(k);
            if op == Op::Create || known(&key) {
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

fn is_ready(row: &OpenRow, blocked: &RowSet, now: Ts) -> bool {
    if blocked.contains(&row.id) || row.in_doubt {
        // A create in doubt is looked up (resolve.rs) before anything of its target is sent.
        return false;
    }
    match row.status {
        OutboxStatus::Pending => row.next_attempt_at <= now,
        // A patch or unqueue left in flight (a crash, a timeout, a lost lock) is safe to send
        // again once its request can no longer land (`next_attempt_at`, set when it was sent).
        // So is a create linked to its job (`result_job_id`): what was in flight was the patch
        // of its missing fields. A create sent as a create is in doubt until settled, and looked
        // up (above).
        OutboxStatus::InFlight => {
            (!intent_is_create(row) || row.result_job_id.is_some()) && row.next_attempt_at <= now
        }
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
/// Returns how many of the entries it took.
fn take_prefix(entries: &mut [Entry], key: &Key, plan: &mut RoundPlan) -> usize {
    let mut fields = std::mem::take(&mut entries[0].intent.fields);
    let head = &entries[0];
    let mut merged = Vec::new();
    match (head.intent.op, key) {
        (Op::Create, Key::Ref((_, reference))) => {
            for e in &entries[1..] {
                match e.intent.op {
                    // A patch that removes or changes the reference waits for its create: merged,
                    // the create would leave without the reference it is looked up by, should its
                    // answer be lost.
                    Op::Patch if changes_reference(&e.intent.fields, reference) => break,
                    Op::Patch => {
                        fields.extend(e.intent.fields.clone());
                        merged.push(member(e.row));
                    }
                    Op::Unqueue if head.row.first_sent_at.is_none() => {
                        cancel_unsent_create(head.row.id, &merged, e.row.id, plan);
                        return merged.len() + 2;
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
                confirms_create: false,
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
            let confirms_create = head.intent.op == Op::Create;
            if let Some(job) = existing {
                // A job that exists: only what differs is worth sending.
                fields = fields_that_differ(fields, job);
                if fields.is_empty() && confirms_create {
                    // Still sent, unchanged, so that the API (not the mirror) says the job is
                    // there.
                    let reference = job.content.reference.clone();
                    fields.insert("reference".into(), reference.into());
                }
            }
            plan.groups.push(Group {
                op: Op::Patch,
                survivor: member(head.row),
                merged,
                job_id: Some(*job_id),
                fields,
                first_send: false,
                confirms_create,
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
                confirms_create: false,
            });
        }
        // Only a create can name a job the mirror does not know (key_of sees to it).
        (Op::Patch | Op::Unqueue, Key::Ref(_)) => unreachable!("a Ref key starts with a create"),
    }
    1 + plan.groups.last().map_or(0, |g| g.merged.len())
}

/// Whether a patch's fields set the reference to something else than `reference` (or remove it).
fn changes_reference(fields: &JobFields, reference: &str) -> bool {
    fields
        .get("reference")
        .is_some_and(|r| r.as_str() != Some(reference))
}

fn cancel_unsent_create(create: i64, patches: &[Member], unqueue: i64, plan: &mut RoundPlan) {
    plan.superseded.push((
        create,
        unqueue,
        ": unqueued before it was ever sent, so nothing was sent".into(),
    ));
    for p in patches {
        plan.superseded.push((
            p.id,
            create,
            ", which was unqueued before it was sent".into(),
        ));
    }
    plan.superseded.push((
        unqueue,
        create,
        ": the create it cancels was never sent, so nothing was sent".into(),
    ));
}

/// The fields whose value differs from the mirror's job (compared by value, datetimes as
/// instants).
pub fn fields_that_differ(fields: JobFields, job: &MirrorRow) -> JobFields {
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
    if job::field(key).is_some_and(|f| f.shape == Shape::DateTime) {
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
            status: OutboxStatus::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_at: ts(),
            first_sent_at: None,
            in_doubt: false,
            sent_payload: None,
            result_job_id: None,
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
            ambiguous: HashMap::new(),
        }
    }

    fn plan(rows: &[OpenRow], m: &Mirror) -> RoundPlan {
        plan_held(rows, m, &Held::new())
    }

    /// Plans a window in which the `held` targets were met by an earlier window.
    fn plan_held(rows: &[OpenRow], m: &Mirror, held: &Held) -> RoundPlan {
        let soon = Ts::from(Utc::now() + chrono::Duration::seconds(1));
        plan_validated(rows, validate_all(rows), m, &RowSet::default(), held, soon)
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
        assert_eq!((p.superseded[0].1, p.superseded[2].1), (3, 1));
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
    fn a_create_of_a_known_job_is_confirmed_by_a_patch_of_what_differs() {
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
        let g = &p.groups[0];
        assert_eq!(
            (g.op, g.job_id, g.confirms_create),
            (Op::Patch, Some(7), true)
        );
        assert_eq!(
            g.fields,
            json!({"reference": "a"}).as_object().unwrap().clone(),
            "nothing differs: the API still confirms the job exists"
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
    fn ambiguous_targets_fail_alone() {
        let mut m = mirror(vec![mirror_job(5, "five", "A"), mirror_job(6, "six", "B")]);
        m.ambiguous.insert((28, "twice".into()), vec![8, 9]);
        let rows = [
            row(
                1,
                "patch",
                Some(28),
                Some("five"),
                Some(6),
                json!({"name": "x"}),
            ),
            row(
                2,
                "patch",
                Some(28),
                Some("twice"),
                None,
                json!({"name": "x"}),
            ),
            row(
                3,
                "create",
                Some(28),
                Some("twice"),
                None,
                json!({"name": "x"}),
            ),
            row(
                4,
                "patch",
                Some(28),
                Some("six"),
                Some(6),
                json!({"name": "x"}),
            ),
        ];
        let p = plan(&rows, &m);
        let failed: Vec<i64> = p.failed.iter().map(|f| f.0).collect();
        assert_eq!(failed, [1, 2, 3]);
        assert!(
            p.failed[0].1.contains("job_id 6 contradicts"),
            "{}",
            p.failed[0].1
        );
        assert!(
            p.failed[1].1.contains("held by 2 live jobs"),
            "{}",
            p.failed[1].1
        );
        assert_eq!(p.groups.len(), 1, "a consistent job_id + reference is fine");
    }

    #[test]
    fn a_linked_create_patches_its_job_with_the_fields_sent() {
        let m = mirror(vec![mirror_job(7, "new", "A")]);
        let mut linked = row(
            1,
            "create",
            Some(28),
            Some("old"),
            None,
            json!({"name": "A"}),
        );
        linked.result_job_id = Some(7);
        linked.sent_payload =
            Some(json!({"campaign": 28, "reference": "new", "name": "B"}).to_string());
        let p = plan(&[linked], &m);
        let g = &p.groups[0];
        assert_eq!(
            (g.op, g.job_id, g.confirms_create),
            (Op::Patch, Some(7), true)
        );
        assert_eq!(g.fields, json!({"name": "B"}).as_object().unwrap().clone());
    }

    #[test]
    fn a_row_set_holds_exactly_its_ids_whatever_their_order() {
        let mut set = RowSet::default();
        assert!(!set.contains(&1), "empty");
        set.insert(70);
        assert!(
            !set.contains(&69) && !set.contains(&1),
            "ids just below its first word"
        );
        for id in [1_000_000, 5, 64, 63, 999_999, -3, 5] {
            set.insert(id);
        }
        assert_eq!(set.len(), 7);
        for id in [1_000_000, 5, 64, 63, 999_999, -3, 70] {
            assert!(set.contains(&id), "{id}");
        }
        for id in [0, 4, 6, 62, 65, 1_000_001, -2, -65, i64::MIN, i64::MAX] {
            assert!(!set.contains(&id), "{id}");
        }
        set.remove(&64);
        set.remove(&64);
        assert!(!set.contains(&64));
        assert_eq!(set.len(), 6);
    }

    #[test]
    fn held_targets_are_never_missed_and_rarely_imagined() {
        let n = 100_000u64;
        let mut held = Held::with_capacity(n as usize);
        held.extend(
            &(0..n)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect::<Vec<_>>(),
        );
        let missed = (0..n)
            .filter(|i| !held.contains(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .count();
        assert_eq!(missed, 0, "a target met is always held");
        let imagined = (n..2 * n)
            .filter(|i| held.contains(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .count();
        // About 0.03 % at this load: a row deferred now and then, never a pass in a loop.
        assert!(imagined < 100, "{imagined} false positives in {n}");
    }

    #[test]
    fn a_target_held_by_an_earlier_window_waits_and_is_not_unknown() {
        let m = mirror(vec![mirror_job(7, "known", "K")]);
        let held = Held::from([key_hash(&Key::Ref((28, "a".into()))), key_hash(&Key::Id(7))]);
        let rows = [
            row(10, "patch", Some(28), Some("a"), None, json!({"name": "x"})),
            row(11, "patch", None, None, Some(7), json!({"name": "y"})),
            row(
                12,
                "patch",
                Some(28),
                Some("known"),
                None,
                json!({"name": "z"}),
            ),
            row(13, "create", Some(28), Some("b"), None, json!({})),
        ];
        let p = plan_held(&rows, &m, &held);
        assert!(p.failed.is_empty(), "{:?}", p.failed);
        assert_eq!(p.groups.len(), 1, "only the create of another target goes");
        assert_eq!(p.groups[0].survivor.id, 13);
        assert!(p.more, "the held rows were ready: another pass sends them");
    }

    #[test]
    fn a_target_held_under_its_reference_is_held_once_the_mirror_knows_its_id() {
        // An earlier window named the job by reference while its create was in flight; the
        // mirror learnt the job since. Its later rows, now keyed by id, still wait.
        let m = mirror(vec![mirror_job(7, "a", "A")]);
        let held = Held::from([key_hash(&Key::Ref((28, "a".into())))]);
        let rows = [
            row(
                20,
                "patch",
                Some(28),
                Some("a"),
                None,
                json!({"city": "Nice"}),
            ),
            row(21, "patch", None, None, Some(7), json!({"label": "x"})),
        ];
        let p = plan_held(&rows, &m, &held);
        assert!(p.groups.is_empty(), "{:?}", p.groups);
        assert!(p.more);
        assert!(p.touched.contains(&key_hash(&Key::Id(7))));
    }

    #[test]
    fn a_create_in_doubt_holds_its_target() {
        let mut create = row(1, "create", Some(28), Some("a"), None, json!({}));
        create.in_doubt = true;
        create.status = OutboxStatus::InFlight;
        create.first_sent_at = Some(ts());
        let rows = [
            create,
            row(2, "patch", Some(28), Some("a"), None, json!({"name": "x"})),
        ];
        let p = plan(&rows, &mirror(vec![]));
        assert!(p.is_empty(), "{p:?}");
        assert!(!p.more, "nothing can go before the lookup");
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
        let blocked = RowSet::from([4]);
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
