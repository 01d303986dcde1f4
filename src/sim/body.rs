//! Response bodies: JSON errors in the API's `{"message": ...}` shape, and jobs from their stored
//! JSON, listings streamed as an array in chunks so a million jobs never form one document.

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;

/// Jobs serialised per chunk of a streamed listing (about 100 KB).
const JOBS_PER_CHUNK: usize = 256;

pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (
        status,
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

pub fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

/// One job from its stored JSON.
pub fn job(status: StatusCode, json: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// Jobs (each its stored JSON) as a JSON array, joined chunk by chunk while the body is sent.
pub fn job_array(jobs: Vec<Bytes>) -> Response {
    let chunks = jobs.len().div_ceil(JOBS_PER_CHUNK).max(1);
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |chunk| Ok::<_, Infallible>(array_chunk(&jobs, chunk, chunks))),
    );
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn array_chunk(jobs: &[Bytes], chunk: usize, chunks: usize) -> Bytes {
    let start = chunk * JOBS_PER_CHUNK;
    let end = (start + JOBS_PER_CHUNK).min(jobs.len());
    let size: usize = jobs[start..end].iter().map(|j| j.len() + 1).sum();
    let mut buf = Vec::with_capacity(size + 2);
    if chunk == 0 {
        buf.push(b'[');
    }
    for (i, job) in jobs[start..end].iter().enumerate() {
        if start + i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(job);
    }
    if chunk + 1 == chunks {
        buf.push(b']');
    }
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Job;

    fn job(id: i64) -> Bytes {
        serde_json::to_vec(&serde_json::json!({"id": id, "campaign": 28, "state": 0}))
            .unwrap()
            .into()
    }

    fn whole(jobs: Vec<Bytes>) -> Vec<Job> {
        let chunks = jobs.len().div_ceil(JOBS_PER_CHUNK).max(1);
        let bytes: Vec<u8> = (0..chunks)
            .flat_map(|c| array_chunk(&jobs, c, chunks).to_vec())
            .collect();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn chunks_join_into_one_valid_array() {
        assert!(whole(vec![]).is_empty());
        assert_eq!(whole(vec![job(1)])[0].id, 1);
        for n in [JOBS_PER_CHUNK, JOBS_PER_CHUNK + 1, 3 * JOBS_PER_CHUNK - 1] {
            let jobs: Vec<_> = (1..=n as i64).map(job).collect();
            let decoded = whole(jobs);
            assert_eq!(decoded.len(), n);
            assert_eq!(decoded.last().unwrap().id, n as i64);
        }
    }
}
