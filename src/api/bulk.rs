//! The bulk endpoints: inputs of any length are cut into calls of at most `bulk_size` items, sent
//! `concurrency` at a time, and answered with one [`ItemOutcome`] per input, in input order.
//!
//! Rules (docs/contract.md §4 Push):
//! - a whole request answered 400/413/422 is split in halves until the bad items are isolated; a
//!   single item answered so is `Rejected`;
//! - a create whose request may have reached the server (timeout, broken connection, undecodable
//!   answer) is never re-sent: every item of that call is `Unknown`;
//! - patches and unqueues are idempotent: every retryable error is retried, then `Retryable`;
//! - answers are matched to items by content, not by position alone: each returned job must
//!   carry the `campaign` and `reference` of the create sent in its place, or the `id` of the
//!   patch or unqueue. An answer that fails that check anywhere — another item's job, a wrong
//!   number of items, `data: null` with a 2xx, an item that does not decode — is not trusted at
//!   all: the call's creates are `Unknown`, its patches and unqueues `Retryable`.

use super::client::{
    ApiClient, Endpoint, decode_json, describe_decode_error, retry_create, to_body,
};
use super::error::ApiError;
use super::models::{BulkItemResult, JobFields, JobId};
use crate::job::Job;
use futures_util::future::{BoxFuture, join, join_all};
use reqwest::Method;
use serde::Serialize;
use serde_json::value::RawValue;

/// What happened to one item of a bulk call.
// Most outcomes are `Ok`, so boxing the job would cost an allocation per item and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    /// Applied; `job` is the server's version (datetimes truncated to microseconds).
    Ok { status: u16, job: Job },
    /// The API refused this item (a 4xx for it); sending it again will not help. `message` names
    /// the endpoint, the status and the API's reason.
    Rejected { status: u16, message: String },
    /// Not applied, or harmless to send again: send it in a later cycle. `error.is_auth()` means
    /// the token was refused and the run should stop.
    Retryable { error: ApiError },
    /// A create that may or may not have been applied: look the job up by reference before
    /// sending it again.
    Unknown { error: ApiError },
    /// Never sent: the caller halted before a slot for it came free.
    NotSent,
}

/// Asked when a call's turn comes, just before its request would leave: `true` stops it there.
pub type Halt<'a> = dyn Fn() -> bool + Sync + 'a;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkOp {
    Create,
    Patch,
    Unqueue,
}

impl BulkOp {
    fn endpoint(self) -> Endpoint {
        let (label, path) = match self {
            BulkOp::Create => ("POST /j/jobs/bulk/create", "/j/jobs/bulk/create"),
            BulkOp::Patch => ("POST /j/jobs/bulk/patch", "/j/jobs/bulk/patch"),
            BulkOp::Unqueue => ("POST /j/jobs/bulk/unqueue", "/j/jobs/bulk/unqueue"),
        };
        Endpoint::new(label, Method::POST, path.into())
    }

    fn should_retry(self) -> fn(&ApiError) -> bool {
        match self {
            BulkOp::Create => retry_create,
            BulkOp::Patch | BulkOp::Unqueue => ApiError::is_retryable,
        }
    }

    /// The outcome of every item of a call that failed as a whole (after retries).
    fn whole_call_failed(self, error: ApiError) -> ItemOutcome {
        if self == BulkOp::Create && !error.surely_not_applied() {
            ItemOutcome::Unknown { error }
        } else {
            ItemOutcome::Retryable { error }
        }
    }
}

impl ApiClient {
    /// Each item carries `campaign` and `reference` (the answer is checked against them).
    pub async fn bulk_create(&self, items: Vec<JobFields>) -> Vec<ItemOutcome> {
        self.bulk_create_or_halt(items, &|| false).await
    }

    /// Each item carries the job's `id` and the fields to change.
    pub async fn bulk_patch(&self, items: Vec<JobFields>) -> Vec<ItemOutcome> {
        self.bulk_patch_or_halt(items, &|| false).await
    }

    pub async fn bulk_unqueue(&self, ids: Vec<i64>) -> Vec<ItemOutcome> {
        self.bulk_unqueue_or_halt(ids, &|| false).await
    }

    /// [`Self::bulk_create`], sending nothing (`NotSent`) once `halted` says so.
    pub async fn bulk_create_or_halt(
        &self,
        items: Vec<JobFields>,
        halted: &Halt<'_>,
    ) -> Vec<ItemOutcome> {
        self.run_bulk(BulkOp::Create, &items, halted).await
    }

    pub async fn bulk_patch_or_halt(
        &self,
        items: Vec<JobFields>,
        halted: &Halt<'_>,
    ) -> Vec<ItemOutcome> {
        self.run_bulk(BulkOp::Patch, &items, halted).await
    }

    pub async fn bulk_unqueue_or_halt(&self, ids: Vec<i64>, halted: &Halt<'_>) -> Vec<ItemOutcome> {
        let items: Vec<JobId> = ids.into_iter().map(|id| JobId { id }).collect();
        self.run_bulk(BulkOp::Unqueue, &items, halted).await
    }

    async fn run_bulk<T: BulkItem>(
        &self,
        op: BulkOp,
        items: &[T],
        halted: &Halt<'_>,
    ) -> Vec<ItemOutcome> {
        let calls = items
            .chunks(self.inner.bulk_size)
            .map(|chunk| self.run_chunk(op, chunk, halted));
        join_all(calls).await.into_iter().flatten().collect()
    }

    /// Sends one chunk, halving it on a whole-request 400/413/422.
    fn run_chunk<'a, T: BulkItem>(
        &'a self,
        op: BulkOp,
        items: &'a [T],
        halted: &'a Halt<'a>,
    ) -> BoxFuture<'a, Vec<ItemOutcome>> {
        Box::pin(async move {
            match self.bulk_call(op, items, halted).await {
                Ok(None) | Err(ApiError::Stopped { .. }) => vec![ItemOutcome::NotSent; items.len()],
                Ok(Some(answers)) => align(op, items, answers),
                Err(error) if is_splittable(&error) && items.len() > 1 => {
                    let (left, right) = items.split_at(items.len() / 2);
                    tracing::info!(
                        endpoint = op.endpoint().label,
                        items = items.len(),
                        status = error.status(),
                        "bulk request refused as a whole, splitting it to isolate the bad item"
                    );
                    let (mut left, right) = join(
                        self.run_chunk(op, left, halted),
                        self.run_chunk(op, right, halted),
                    )
                    .await;
                    left.extend(right);
                    left
                }
                Err(error) if is_splittable(&error) => vec![ItemOutcome::Rejected {
                    status: error.status().unwrap_or_default(),
                    message: error.to_string(),
                }],
                Err(error) => vec![op.whole_call_failed(error); items.len()],
            }
        })
    }

    /// One bulk request (with retries), holding one of the `concurrency` slots until its
    /// answer has arrived; the answer is decoded after the slot is free for the next call.
    /// `Ok(None)`: halted before the request left.
    async fn bulk_call<T: Serialize + Sync>(
        &self,
        op: BulkOp,
        items: &[T],
        halted: &Halt<'_>,
    ) -> Result<Option<(Endpoint, Vec<Box<RawValue>>)>, ApiError> {
        let ep = op.endpoint();
        let body = to_body(&ep, items)?;
        let slot = self
            .inner
            .bulk_slots
            .acquire()
            .await
            .map_err(|_| ApiError::Config("the client is shutting down".into()))?;
        if halted() {
            return Ok(None);
        }
        let answer = self.call_bytes(&ep, Some(body), op.should_retry()).await?;
        drop(slot);
        // The next call waiting for a slot was just woken, into this worker's next-task slot,
        // where no other worker may take it: without a yield it waited for the decoding below,
        // two milliseconds on every call of a large push.
        tokio::task::yield_now().await;
        let answers = decode_json(&ep.name, &answer, "the bulk answer array")?;
        Ok(Some((ep, answers)))
    }
}

fn is_splittable(error: &ApiError) -> bool {
    matches!(
        error,
        ApiError::Http {
            status: 400 | 413 | 422,
            ..
        }
    )
}

/// What a returned job must carry to be the answer to an item.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expected {
    /// A create's key.
    Ref {
        campaign: Option<i64>,
        reference: Option<String>,
    },
    /// A patch's or an unqueue's job.
    Id(Option<i64>),
}

impl Expected {
    fn matches(&self, job: &Job) -> bool {
        match self {
            Expected::Ref {
                campaign,
                reference,
            } => *campaign == Some(job.campaign) && *reference == job.reference,
            Expected::Id(id) => *id == Some(job.id),
        }
    }
}

/// A bulk item: serialised as sent, and what its answer must carry.
pub(super) trait BulkItem: Serialize + Sync {
    fn expected(&self, op: BulkOp) -> Expected;
}

impl BulkItem for JobFields {
    fn expected(&self, op: BulkOp) -> Expected {
        match op {
            BulkOp::Create => Expected::Ref {
                campaign: self.get("campaign").and_then(|v| v.as_i64()),
                reference: self
                    .get("reference")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
            },
            BulkOp::Patch | BulkOp::Unqueue => {
                Expected::Id(self.get("id").and_then(|v| v.as_i64()))
            }
        }
    }
}

impl BulkItem for JobId {
    fn expected(&self, _op: BulkOp) -> Expected {
        Expected::Id(Some(self.id))
    }
}

/// Pairs each input with its answer, in order, after checking that every answer is the one of
/// its item; an answer that fails any check is not used at all (see the module's rules).
/// The answer's items are kept as raw JSON text (one scan of the array) and each is decoded
/// straight into its typed result: going through a `Value` tree first cost a fifth of a large
/// push's CPU.
fn align<T: BulkItem>(
    op: BulkOp,
    sent: &[T],
    (ep, answers): (Endpoint, Vec<Box<RawValue>>),
) -> Vec<ItemOutcome> {
    let untrusted = |detail: String| {
        let error = ApiError::InvalidAnswer {
            endpoint: ep.name.clone(),
            detail,
        };
        vec![op.whole_call_failed(error); sent.len()]
    };
    if answers.len() != sent.len() {
        return untrusted(format!(
            "sent {} item(s) but the answer has {}; results cannot be matched to items",
            sent.len(),
            answers.len()
        ));
    }
    let mut outcomes = Vec::with_capacity(sent.len());
    for (index, (item, answer)) in sent.iter().zip(&answers).enumerate() {
        match item_outcome(op, &ep, index, answer, &item.expected(op)) {
            Ok(outcome) => outcomes.push(outcome),
            Err(detail) => return untrusted(detail),
        }
    }
    outcomes
}

/// One item's outcome, or why the whole answer cannot be trusted.
fn item_outcome(
    op: BulkOp,
    ep: &Endpoint,
    index: usize,
    answer: &RawValue,
    expected: &Expected,
) -> Result<ItemOutcome, String> {
    let text = answer.get();
    let plain = serde_json::from_str::<BulkItemResult>(text);
    let result: BulkItemResult = plain
        .or_else(|_| {
            // Decoded again only to name the field at fault.
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
        })
        .map_err(|e| describe_decode_error(&e, &answer_item(index, text)))?;
    let status = result.status_code;
    let message = result.message.unwrap_or_else(|| "no message".into());
    Ok(match (status, result.data) {
        (200..=299, Some(job)) if expected.matches(&job) => ItemOutcome::Ok {
            status,
            job: job.truncated_to_micros(),
        },
        (200..=299, Some(job)) => {
            return Err(format!(
                "item {index} of the answer is job {} (campaign {}, reference {:?}), not the one \
                 sent in its place ({expected:?})",
                job.id, job.campaign, job.reference
            ));
        }
        (200..=299, None) => {
            return Err(format!(
                "item {index} was answered {status} without the job"
            ));
        }
        (429 | 500..=599, _) => {
            let error = ApiError::Http {
                endpoint: ep.name.clone(),
                status,
                message: format!("item {index}: {message}"),
                retry_after: None,
            };
            // A 5xx item may have been applied all the same: a create is in doubt.
            op.whole_call_failed(error)
        }
        _ => ItemOutcome::Rejected {
            status,
            message: format!("{} refused the item with HTTP {status}: {message}", ep.name),
        },
    })
}

/// "item 3 of the answer (job 42)": the answer's job id, when it can be read, names the job
/// whose answer could not be decoded.
fn answer_item(index: usize, text: &str) -> String {
    #[derive(serde::Deserialize)]
    struct IdOf {
        id: i64,
    }
    #[derive(serde::Deserialize)]
    struct DataOf {
        data: IdOf,
    }
    match serde_json::from_str::<DataOf>(text) {
        Ok(DataOf { data: IdOf { id } }) => format!("item {index} of the answer (job {id})"),
        Err(_) => format!("item {index} of the answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn job(id: i64) -> Value {
        json!({"id": id, "campaign": 28, "reference": format!("r{id}"), "state": 0,
               "created_at": "2024-05-01T10:00:00.123456789Z"})
    }

    fn creates(ids: &[i64]) -> Vec<JobFields> {
        ids.iter()
            .map(|id| {
                json!({"campaign": 28, "reference": format!("r{id}")})
                    .as_object()
                    .unwrap()
                    .clone()
            })
            .collect()
    }

    fn answers(values: Vec<Value>) -> (Endpoint, Vec<Box<RawValue>>) {
        let raw = values
            .iter()
            .map(|v| RawValue::from_string(v.to_string()).unwrap())
            .collect();
        (BulkOp::Create.endpoint(), raw)
    }

    fn all_unknown(outcomes: &[ItemOutcome]) -> bool {
        outcomes
            .iter()
            .all(|o| matches!(o, ItemOutcome::Unknown { .. }))
    }

    #[test]
    fn pairs_each_item_with_its_answer() {
        let outcomes = align(
            BulkOp::Create,
            &creates(&[1, 2, 3, 4]),
            answers(vec![
                json!({"data": job(1), "status_code": 201}),
                json!({"data": null, "status_code": 400, "message": "duplicate reference"}),
                json!({"data": null, "status_code": 429}),
                json!({"data": job(4), "status_code": 201}),
            ]),
        );
        assert_eq!(outcomes.len(), 4);
        let ItemOutcome::Ok { status: 201, job } = &outcomes[0] else {
            panic!("{:?}", outcomes[0])
        };
        assert_eq!(job.id, 1);
        assert_eq!(
            job.created_at.unwrap().timestamp_subsec_nanos(),
            123_456_000,
            "truncated to microseconds"
        );
        let ItemOutcome::Rejected {
            status: 400,
            message,
        } = &outcomes[1]
        else {
            panic!("{:?}", outcomes[1])
        };
        assert!(message.contains("POST /j/jobs/bulk/create"), "{message}");
        assert!(
            message.contains("400") && message.contains("duplicate reference"),
            "{message}"
        );
        assert!(
            matches!(&outcomes[2], ItemOutcome::Retryable { error } if error.status() == Some(429))
        );
        assert!(matches!(&outcomes[3], ItemOutcome::Ok { job, .. } if job.id == 4));
    }

    #[test]
    fn a_5xx_item_of_a_create_is_in_doubt() {
        let outcomes = align(
            BulkOp::Create,
            &creates(&[1]),
            answers(vec![json!({"data": null, "status_code": 502})]),
        );
        assert!(all_unknown(&outcomes), "{outcomes:?}");
    }

    #[test]
    fn never_guesses_when_the_answer_has_the_wrong_length() {
        let short = vec![json!({"data": job(1), "status_code": 201})];
        let outcomes = align(BulkOp::Create, &creates(&[1, 2]), answers(short.clone()));
        assert_eq!(outcomes.len(), 2);
        assert!(all_unknown(&outcomes));
        let patches: Vec<JobFields> = (1..=2)
            .map(|id| json!({"id": id}).as_object().unwrap().clone())
            .collect();
        let outcomes = align(BulkOp::Patch, &patches, answers(short));
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, ItemOutcome::Retryable { .. }))
        );
        let long = vec![json!({"data": job(1), "status_code": 200}); 3];
        let ids = [JobId { id: 1 }, JobId { id: 2 }];
        let outcomes = align(BulkOp::Unqueue, &ids, answers(long));
        assert_eq!(outcomes.len(), 2);
        let ItemOutcome::Retryable { error } = &outcomes[0] else {
            panic!()
        };
        assert!(
            error
                .to_string()
                .contains("sent 2 item(s) but the answer has 3"),
            "{error}"
        );
    }

    #[test]
    fn answers_in_another_order_or_for_other_jobs_are_not_trusted() {
        let reversed = vec![
            json!({"data": job(2), "status_code": 201}),
            json!({"data": job(1), "status_code": 201}),
        ];
        let outcomes = align(BulkOp::Create, &creates(&[1, 2]), answers(reversed));
        assert!(all_unknown(&outcomes), "{outcomes:?}");
        let ItemOutcome::Unknown { error } = &outcomes[0] else {
            panic!()
        };
        assert!(error.to_string().contains("not the one sent"), "{error}");
        let phantom = vec![json!({"data": job(9), "status_code": 200})];
        let patch = [json!({"id": 1, "name": "x"}).as_object().unwrap().clone()];
        let outcomes = align(BulkOp::Patch, &patch, answers(phantom.clone()));
        assert!(matches!(&outcomes[0], ItemOutcome::Retryable { .. }));
        let outcomes = align(BulkOp::Unqueue, &[JobId { id: 1 }], answers(phantom));
        assert!(matches!(&outcomes[0], ItemOutcome::Retryable { .. }));
    }

    #[test]
    fn a_bad_answer_item_makes_every_create_of_the_call_unknown() {
        let outcomes = align(
            BulkOp::Create,
            &creates(&[1, 2, 3]),
            answers(vec![
                json!({"data": job(1), "status_code": 201}),
                json!({"data": {"id": "x"}, "status_code": 201}),
                json!({"data": job(3), "status_code": 201}),
            ]),
        );
        assert!(all_unknown(&outcomes), "{outcomes:?}");
        let ItemOutcome::Unknown { error } = &outcomes[0] else {
            panic!()
        };
        assert!(error.to_string().contains("data.id"), "{error}");
        let outcomes = align(
            BulkOp::Create,
            &creates(&[1, 2]),
            answers(vec![
                json!({"data": job(1), "status_code": 201}),
                json!({"data": null, "status_code": 201}),
            ]),
        );
        assert!(all_unknown(&outcomes), "{outcomes:?}");
    }

    #[test]
    fn whole_call_failures_follow_the_unknown_rule() {
        let timeout = ApiError::Timeout {
            endpoint: "e".into(),
            timeout: std::time::Duration::from_secs(1),
        };
        let server = ApiError::Http {
            endpoint: "e".into(),
            status: 502,
            message: "m".into(),
            retry_after: None,
        };
        let throttled = ApiError::Http {
            endpoint: "e".into(),
            status: 429,
            message: "m".into(),
            retry_after: None,
        };
        let connect = ApiError::Connect {
            endpoint: "e".into(),
            message: "refused".into(),
        };
        assert!(matches!(
            BulkOp::Create.whole_call_failed(timeout.clone()),
            ItemOutcome::Unknown { .. }
        ));
        assert!(matches!(
            BulkOp::Create.whole_call_failed(server.clone()),
            ItemOutcome::Unknown { .. }
        ));
        assert!(matches!(
            BulkOp::Create.whole_call_failed(throttled.clone()),
            ItemOutcome::Retryable { .. }
        ));
        assert!(matches!(
            BulkOp::Create.whole_call_failed(connect.clone()),
            ItemOutcome::Retryable { .. }
        ));
        assert!(matches!(
            BulkOp::Patch.whole_call_failed(timeout.clone()),
            ItemOutcome::Retryable { .. }
        ));
        assert!(!(BulkOp::Create.should_retry())(&timeout));
        assert!(
            !(BulkOp::Create.should_retry())(&server),
            "never re-sent blindly"
        );
        assert!((BulkOp::Create.should_retry())(&throttled));
        assert!((BulkOp::Create.should_retry())(&connect));
        assert!((BulkOp::Unqueue.should_retry())(&timeout));
    }
}
