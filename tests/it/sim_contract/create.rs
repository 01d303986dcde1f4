//! `POST /j/jobs` and `GET /j/jobs/{id}`: the documented single-job example, read back, listed
//! and unqueued.

use super::*;

#[tokio::test]
async fn documented_create_get_list_and_unqueue() {
    let api = Api::new().await;
    api.fill_ids_up_to_13().await;
    let created = api
        .expect(
            api.post("/j/jobs", &documented_create()),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(created["id"], 14);
    assert_eq!(created["numbers"], json!(["+33123456789", "+33612345678"]));
    assert_eq!(created["address_lines"], json!([]));
    assert_eq!(
        (created["state"].clone(), created["campaign"].clone()),
        (json!(0), json!(28))
    );
    for null_field in ["appointment", "city", "country", "label", "postal_code"] {
        assert!(created[null_field].is_null(), "{null_field}: {created}");
    }
    assert_eq!(created["data"], json!({"some_property": "some value"}));
    assert_eq!(created["value"], 123.45);
    let created_at = created["created_at"].as_str().unwrap();
    assert_eq!(
        created_at.len(),
        "2016-11-04T19:11:34.985Z".len(),
        "{created_at}"
    );
    assert!(created_at.ends_with('Z'));

    let fetched = api.expect(api.get("/j/jobs/14"), StatusCode::OK).await;
    assert_eq!(fetched, created);
    let missing = api
        .expect(api.get("/j/jobs/15"), StatusCode::NOT_FOUND)
        .await;
    assert!(missing["message"].is_string());
    api.expect(api.get("/j/jobs/abc"), StatusCode::NOT_FOUND)
        .await;

    let listed = api
        .expect(api.get("/j/jobs?campaign=28"), StatusCode::OK)
        .await;
    assert_eq!(listed, json!([created]));
    let other = api
        .expect(api.get("/j/jobs?campaign=29"), StatusCode::OK)
        .await;
    assert_eq!(ids(&other), (1..=13).collect::<Vec<_>>());

    let unqueued = api
        .expect(api.post("/j/jobs/14/unqueue", &json!(null)), StatusCode::OK)
        .await;
    assert_eq!(unqueued["state"], 3);
    let again = api
        .expect(
            api.http
                .post(api.url("/j/jobs/14/unqueue"))
                .bearer_auth(TOKEN),
            StatusCode::OK,
        )
        .await;
    assert_eq!(again, unqueued);
    api.expect(
        api.http
            .post(api.url("/j/jobs/99/unqueue"))
            .bearer_auth(TOKEN),
        StatusCode::NOT_FOUND,
    )
    .await;
}
