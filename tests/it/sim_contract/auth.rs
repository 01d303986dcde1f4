//! The bearer token: a missing or wrong one is refused before anything applies.

use super::*;

#[tokio::test]
async fn a_missing_or_wrong_token_is_403_with_a_message() {
    let api = Api::new().await;
    for request in [
        api.http.get(api.url("/j/jobs?campaign=28")),
        api.http
            .get(api.url("/j/jobs?campaign=28"))
            .bearer_auth("wrong"),
        api.http
            .post(api.url("/j/jobs/bulk/create"))
            .json(&documented_bulk_create()),
        api.http
            .get(api.url("/j/jobs/1"))
            .header("Authorization", TOKEN),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.headers().contains_key("date"));
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].is_string(), "{body}");
    }
    assert!(
        api.state().await.is_empty(),
        "a refused create must not apply"
    );
    api.expect(api.get("/j/jobs?campaign=28"), StatusCode::OK)
        .await;
}
