//! `POST /j/jobs/bulk/unqueue` of jobs that are already finished.

use super::*;

#[tokio::test]
async fn a_finished_job_is_unqueued_unchanged() {
    let api = Api::new().await;
    api.control(
        "/_sim/jobs",
        json!([{"id": 5, "campaign": 28, "state": 2}, {"id": 6, "campaign": 28, "state": 1}]),
    )
    .await;
    let answer = api
        .expect(
            api.post("/j/jobs/bulk/unqueue", &json!([{"id": 5}, {"id": 6}])),
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        (
            answer[0]["status_code"].clone(),
            answer[0]["data"]["state"].clone()
        ),
        (json!(200), json!(2))
    );
    assert_eq!(
        (
            answer[1]["status_code"].clone(),
            answer[1]["data"]["state"].clone()
        ),
        (json!(200), json!(3))
    );
}
