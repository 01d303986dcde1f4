//! The simulator's jobs, in memory: what each endpoint reads and changes.
//!
//! Each job is kept as the JSON the API answers (`Bytes`, reference-counted) plus the few fields
//! the filters need, so that a listing takes a snapshot of a million jobs under the lock in a
//! few milliseconds and copies bytes after releasing it.

use super::json::job_to_json;
use super::validate::{CreateItem, PatchItem};
use crate::job::{Job, state};
use axum::body::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Why one item (or one single-job request) was not applied.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemFailure {
    /// 400: the item is not a valid request.
    Invalid(String),
    /// 404: no job has this id.
    NotFound(i64),
}

impl ItemFailure {
    pub fn status(&self) -> u16 {
        match self {
            ItemFailure::Invalid(_) => 400,
            ItemFailure::NotFound(_) => 404,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ItemFailure::Invalid(reason) => reason.clone(),
            ItemFailure::NotFound(id) => format!("job {id} not found"),
        }
    }
}

#[derive(Debug, Clone)]
struct StoredJob {
    campaign: i64,
    state: i32,
    /// Simulated time of the last change, at full precision; what `modified_since` compares.
    modified_at: DateTime<Utc>,
    /// The job as the API answers it, serialised once per change: a listing is then a copy of
    /// bytes, fast even in a debug build, and lighter in memory than a `Job` per row.
    json: Bytes,
}

/// A reference within its campaign.
type RefKey = (i64, String);

#[derive(Debug, Default)]
pub struct Store {
    jobs: BTreeMap<i64, StoredJob>,
    next_id: i64,
    /// `(campaign, reference)` → the first job holding it; what the uniqueness check reads.
    references: HashMap<RefKey, i64>,
    /// The other holders of a reference, only ever filled while duplicates are allowed: kept
    /// apart so that the usual case costs one id per reference, and so that deleting or
    /// renaming one of two duplicates leaves the other one found.
    duplicates: HashMap<RefKey, Vec<i64>>,
    /// Whether a reference may be used by one job only within a campaign (the documented API);
    /// off, a create or rename never clashes, as on an API that does not enforce it.
    allow_duplicate_references: bool,
    campaigns: BTreeSet<i64>,
}

impl Store {
    pub fn new(campaigns: &[i64]) -> Self {
        Store {
            next_id: 1,
            campaigns: campaigns.iter().copied().collect(),
            ..Store::default()
        }
    }

    /// Follows `FaultSettings::allow_duplicate_references`; jobs already stored are kept as
    /// they are (duplicates stay, and only new clashes are refused once it is off again).
    pub fn set_allow_duplicate_references(&mut self, allow: bool) {
        self.allow_duplicate_references = allow;
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn get(&self, id: i64) -> Option<Job> {
        let stored = self.jobs.get(&id)?;
        Some(serde_json::from_slice(&stored.json).expect("a stored job decodes"))
    }

    /// The job's JSON, as the API answers it.
    pub fn get_json(&self, id: i64) -> Option<Bytes> {
        self.jobs.get(&id).map(|stored| stored.json.clone())
    }

    #[cfg(test)]
    pub fn modified_at(&self, id: i64) -> Option<DateTime<Utc>> {
        self.jobs.get(&id).map(|stored| stored.modified_at)
    }

    /// Jobs (as JSON) of `campaign` (if given) modified at or after `since` (if given), in id
    /// order.
    pub fn list(&self, campaign: Option<i64>, since: Option<DateTime<Utc>>) -> Vec<Bytes> {
        self.jobs
            .values()
            .filter(|s| campaign.is_none_or(|c| s.campaign == c))
            .filter(|s| since.is_none_or(|t| s.modified_at >= t))
            .map(|s| s.json.clone())
            .collect()
    }

    /// Ids of the jobs the dialer may still move (queued or calling), in id order.
    pub fn active_ids(&self) -> Vec<i64> {
        self.jobs
            .iter()
            .filter(|(_, s)| !state::is_finished(s.state))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn ids(&self) -> Vec<i64> {
        self.jobs.keys().copied().collect()
    }

    pub fn create(&mut self, item: CreateItem, now: DateTime<Utc>) -> Result<Job, ItemFailure> {
        if !self.campaigns.contains(&item.campaign) {
            return Err(ItemFailure::Invalid(format!(
                "campaign {} does not exist",
                item.campaign
            )));
        }
        // The item's fields (all writable, `parse_create` saw to it) over the defaults of a new
        // job: decoded straight from the item, without a blank job serialised to merge them into.
        let mut fields = item.fields;
        fields.insert("id".into(), self.next_id.into());
        fields.insert("campaign".into(), item.campaign.into());
        fields.insert("state".into(), state::QUEUED.into());
        let mut job: Job = serde_json::from_value(Value::Object(fields))
            .map_err(|e| ItemFailure::Invalid(format!("invalid job fields: {e}")))?;
        job.created_at = Some(now.trunc_subsecs(3));
        job.numbers.get_or_insert_with(Vec::new);
        job.address_lines.get_or_insert_with(Vec::new);
        self.check_reference_free(&job)?;
        self.next_id += 1;
        self.put(&job, now);
        Ok(job)
    }

    pub fn patch(&mut self, item: PatchItem, now: DateTime<Utc>) -> Result<Job, ItemFailure> {
        let current = self.get(item.id).ok_or(ItemFailure::NotFound(item.id))?;
        let job = with_fields(&current, &item.fields).map_err(ItemFailure::Invalid)?;
        if job != current {
            // Only a new reference can clash: a job already sharing one (stored while
            // duplicates were allowed) may still have its other fields changed.
            if job.reference != current.reference {
                self.check_reference_free(&job)?;
            }
            self.put(&job, now);
        }
        Ok(job)
    }

    /// A queued or calling job becomes failed (3), as the documentation's examples answer; a
    /// finished job is returned unchanged.
    pub fn unqueue(&mut self, id: i64, now: DateTime<Utc>) -> Result<Job, ItemFailure> {
        let current = self.get(id).ok_or(ItemFailure::NotFound(id))?;
        if state::is_finished(current.state) {
            return Ok(current);
        }
        Ok(self.set_state(id, state::FAILED, now).expect("job exists"))
    }

    pub fn set_state(&mut self, id: i64, new_state: i32, now: DateTime<Utc>) -> Option<Job> {
        let mut job = self.get(id)?;
        if job.state != new_state {
            job.state = new_state;
            self.put(&job, now);
        }
        Some(job)
    }

    /// Stores `job` as it is (control routes and seeding): a given id replaces that job, the
    /// campaign becomes one that exists. Refused only when its reference is taken by another job
    /// (and duplicates are not allowed).
    pub fn insert_raw(&mut self, job: &Job, modified_at: DateTime<Utc>) -> Result<Bytes, String> {
        self.check_reference_free(job).map_err(|f| f.message())?;
        self.campaigns.insert(job.campaign);
        self.next_id = self.next_id.max(job.id + 1);
        Ok(self.put(job, modified_at))
    }

    /// Removes the job; answers it as it was.
    pub fn delete(&mut self, id: i64) -> Option<Bytes> {
        let job = self.get(id)?;
        if let Some(reference) = job.reference {
            self.forget_reference((job.campaign, reference), id);
        }
        self.jobs.remove(&id).map(|stored| stored.json)
    }

    pub fn next_id(&self) -> i64 {
        self.next_id
    }

    fn check_reference_free(&self, job: &Job) -> Result<(), ItemFailure> {
        if self.allow_duplicate_references {
            return Ok(());
        }
        let Some(reference) = &job.reference else {
            return Ok(());
        };
        match self.references.get(&(job.campaign, reference.clone())) {
            Some(owner) if *owner != job.id => Err(ItemFailure::Invalid(format!(
                "reference `{reference}` is already used by job {owner} in campaign {}",
                job.campaign
            ))),
            _ => Ok(()),
        }
    }

    fn put(&mut self, job: &Job, modified_at: DateTime<Utc>) -> Bytes {
        let old_key = self
            .get(job.id)
            .and_then(|old| Some((old.campaign, old.reference?)));
        let new_key = job.reference.clone().map(|r| (job.campaign, r));
        if old_key != new_key {
            if let Some(key) = old_key {
                self.forget_reference(key, job.id);
            }
            if let Some(key) = new_key {
                self.remember_reference(key, job.id);
            }
        }
        let mut json = job_to_json(job);
        // `Bytes` keeps the whole allocation: a million jobs would each carry the slack.
        json.shrink_to_fit();
        let json = Bytes::from(json);
        let stored = StoredJob {
            campaign: job.campaign,
            state: job.state,
            modified_at,
            json: json.clone(),
        };
        self.jobs.insert(job.id, stored);
        json
    }
}

impl Store {
    fn remember_reference(&mut self, key: RefKey, id: i64) {
        match self.references.get(&key) {
            Some(owner) if *owner != id => self.duplicates.entry(key).or_default().push(id),
            _ => {
                self.references.insert(key, id);
            }
        }
    }

    /// Removes `id` as a holder of `key`; another holder, if any, becomes the one found.
    fn forget_reference(&mut self, key: RefKey, id: i64) {
        let mut others = self.duplicates.remove(&key).unwrap_or_default();
        others.retain(|other| *other != id);
        if self.references.get(&key) == Some(&id) {
            if others.is_empty() {
                self.references.remove(&key);
            } else {
                self.references.insert(key.clone(), others.remove(0));
            }
        }
        if !others.is_empty() {
            self.duplicates.insert(key, others);
        }
    }
}

/// `job` with `fields` set (PATCH semantics: a field absent is kept, `null` clears it).
fn with_fields(job: &Job, fields: &Map<String, Value>) -> Result<Job, String> {
    let Value::Object(mut object) = serde_json::to_value(job).map_err(|e| e.to_string())? else {
        unreachable!("a job serialises as an object");
    };
    for (key, value) in fields {
        object.insert(key.clone(), value.clone());
    }
    serde_json::from_value(Value::Object(object)).map_err(|e| format!("invalid job fields: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::validate::{parse_create, parse_patch};
    use chrono::Duration;
    use serde_json::json;

    fn create(store: &mut Store, item: Value, now: DateTime<Utc>) -> Result<Job, ItemFailure> {
        store.create(parse_create(&item).unwrap(), now)
    }

    #[test]
    fn create_assigns_ids_defaults_and_millisecond_created_at() {
        let mut store = Store::new(&[28]);
        let now = Utc::now();
        let job = create(&mut store, json!({"campaign": 28, "name": "A"}), now).unwrap();
        assert_eq!((job.id, job.state), (1, 0));
        assert_eq!(job.address_lines, Some(vec![]));
        assert_eq!(job.created_at, Some(now.trunc_subsecs(3)));
        assert_eq!(store.modified_at(1), Some(now));
        let second = create(&mut store, json!({"campaign": 28}), now).unwrap();
        assert_eq!(second.id, 2);
    }

    #[test]
    fn references_are_unique_within_a_campaign_only() {
        let mut store = Store::new(&[28, 29]);
        let now = Utc::now();
        create(&mut store, json!({"campaign": 28, "reference": "r1"}), now).unwrap();
        let dup = create(&mut store, json!({"campaign": 28, "reference": "r1"}), now).unwrap_err();
        assert_eq!(dup.status(), 400);
        assert!(dup.message().contains("already used"), "{dup:?}");
        create(&mut store, json!({"campaign": 29, "reference": "r1"}), now).unwrap();
        let other = create(&mut store, json!({"campaign": 28, "reference": "r2"}), now).unwrap();
        let clash = store.patch(
            parse_patch(&json!({"id": other.id, "reference": "r1"})).unwrap(),
            now,
        );
        assert_eq!(clash.unwrap_err().status(), 400);
        store.delete(1).unwrap();
        create(&mut store, json!({"campaign": 28, "reference": "r1"}), now).unwrap();
    }

    #[test]
    fn duplicate_references_can_be_allowed_and_stay_consistent() {
        let mut store = Store::new(&[28]);
        let now = Utc::now();
        store.set_allow_duplicate_references(true);
        for _ in 0..3 {
            create(&mut store, json!({"campaign": 28, "reference": "r"}), now).unwrap();
        }
        assert_eq!(store.len(), 3);
        // A patch that renames one of them is not checked either.
        create(&mut store, json!({"campaign": 28, "reference": "s"}), now).unwrap();
        let renamed = parse_patch(&json!({"id": 4, "reference": "r"})).unwrap();
        store.patch(renamed, now).unwrap();
        store.set_allow_duplicate_references(false);
        // The holders of `r` are 1 to 4; removing any of them leaves `r` taken until the last.
        let dup = create(&mut store, json!({"campaign": 28, "reference": "r"}), now);
        assert_eq!(dup.unwrap_err().status(), 400);
        // A job sharing its reference may still change its other fields.
        let city = parse_patch(&json!({"id": 2, "city": "Lyon"})).unwrap();
        assert_eq!(
            store.patch(city, now).unwrap().city.as_deref(),
            Some("Lyon")
        );
        for id in [1, 3, 4] {
            store.delete(id).unwrap();
            let clash = create(&mut store, json!({"campaign": 28, "reference": "r"}), now);
            assert!(clash.is_err(), "job 2 still holds `r` after deleting {id}");
        }
        store.delete(2).unwrap();
        create(&mut store, json!({"campaign": 28, "reference": "r"}), now).unwrap();
        create(&mut store, json!({"campaign": 28, "reference": "s"}), now).unwrap();
        assert!(store.duplicates.is_empty());
    }

    #[test]
    fn unknown_campaign_is_refused() {
        let mut store = Store::new(&[28]);
        let err = create(&mut store, json!({"campaign": 30}), Utc::now()).unwrap_err();
        assert_eq!(
            err,
            ItemFailure::Invalid("campaign 30 does not exist".into())
        );
    }

    #[test]
    fn patch_bumps_modified_at_only_when_something_changes() {
        let mut store = Store::new(&[28]);
        let t0 = Utc::now();
        create(&mut store, json!({"campaign": 28, "city": "Paris"}), t0).unwrap();
        let t1 = t0 + Duration::seconds(5);
        store
            .patch(parse_patch(&json!({"id": 1, "city": "Paris"})).unwrap(), t1)
            .unwrap();
        assert_eq!(store.modified_at(1), Some(t0));
        let job = store
            .patch(parse_patch(&json!({"id": 1, "city": null})).unwrap(), t1)
            .unwrap();
        assert_eq!((job.city.clone(), store.modified_at(1)), (None, Some(t1)));
        let missing = store.patch(parse_patch(&json!({"id": 9, "city": "X"})).unwrap(), t1);
        assert_eq!(missing.unwrap_err(), ItemFailure::NotFound(9));
    }

    #[test]
    fn unqueue_fails_active_jobs_and_leaves_finished_ones() {
        let mut store = Store::new(&[28]);
        let t0 = Utc::now();
        create(&mut store, json!({"campaign": 28}), t0).unwrap();
        create(&mut store, json!({"campaign": 28}), t0).unwrap();
        store.set_state(2, state::SUCCEEDED, t0);
        let t1 = t0 + Duration::seconds(1);
        assert_eq!(store.unqueue(1, t1).unwrap().state, state::FAILED);
        assert_eq!(store.modified_at(1), Some(t1));
        assert_eq!(store.unqueue(2, t1).unwrap().state, state::SUCCEEDED);
        assert_eq!(store.modified_at(2), Some(t0));
        assert_eq!(store.unqueue(3, t1).unwrap_err().status(), 404);
    }

    #[test]
    fn list_filters_by_campaign_and_modified_at() {
        let mut store = Store::new(&[28, 29]);
        let t0 = Utc::now();
        let t1 = t0 + Duration::seconds(10);
        create(&mut store, json!({"campaign": 28}), t0).unwrap();
        create(&mut store, json!({"campaign": 29}), t0).unwrap();
        create(&mut store, json!({"campaign": 28}), t1).unwrap();
        let ids = |jobs: Vec<Bytes>| {
            jobs.iter()
                .map(|j| serde_json::from_slice::<Job>(j).unwrap().id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(store.list(Some(28), None)), [1, 3]);
        assert_eq!(ids(store.list(None, Some(t1))), [3]);
        assert_eq!(ids(store.list(Some(29), Some(t1))), Vec::<i64>::new());
        assert_eq!(ids(store.list(None, Some(t0))), [1, 2, 3]);
    }
}
