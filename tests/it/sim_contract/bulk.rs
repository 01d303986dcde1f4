//! `POST /j/jobs/bulk/{create,patch,unqueue}`: the documented bulk example, item-level
//! validation, and the checks on a bulk body as a whole.

use super::*;

#[tokio::test]
async fn documented_bulk_create_patch_and_unqueue() {
    let api = Api::new().await;
    api.fill_ids_up_to_13().await;
    let created = api
        .expect(
            api.post("/j/jobs/bulk/create", &documented_bulk_create()),
            StatusCode::OK,
        )
        .await;
    let created = created.as_array().unwrap();
    assert_eq!(created.len(), 2);
    for (item, (id, numbers)) in created.iter().zip([
        (14, json!(["+33123456789", "+33612345678"])),
        (15, json!(["+33234567890"])),
    ]) {
        assert_eq!(item["status_code"], 201, "{item}");
        assert_eq!(item["data"]["id"], id);
        assert_eq!(item["data"]["numbers"], numbers);
        assert_eq!(item["data"]["state"], 0);
    }
    assert_eq!(created[1]["data"]["name"], "Mme. Schmitt");
    assert_eq!(created[1]["data"]["reference"], "2345678");

    // The documented request, with its missing commas restored.
    let patch = json!([
       {"id": 14, "numbers": ["+33123456789", "+33623456789"]},
       {"city": "Fooville", "id": 15, "name": "Echo Foxtrot", "postal_code": "12345"},
       {"id": 16, "name": "Doesn't exist!"}
    ]);
    let patched = api
        .expect(api.post("/j/jobs/bulk/patch", &patch), StatusCode::OK)
        .await;
    assert_eq!(patched[0]["status_code"], 200);
    assert_eq!(
        patched[0]["data"]["numbers"],
        json!(["+33123456789", "+33623456789"])
    );
    assert_eq!(patched[0]["data"]["name"], "Simon Dupont");
    assert_eq!(patched[1]["status_code"], 200);
    assert_eq!(patched[1]["data"]["city"], "Fooville");
    assert_eq!(patched[1]["data"]["name"], "Echo Foxtrot");
    assert_eq!(patched[1]["data"]["postal_code"], "12345");
    assert_eq!(patched[1]["data"]["email"], "alice.schmitt@example.com");
    assert!(patched[2]["data"].is_null());
    assert_eq!(patched[2]["status_code"], 404);
    assert!(patched[2]["message"].is_string());
    let decoded: Vec<jobsync::api::models::BulkItemResult> =
        serde_json::from_value(patched).unwrap();
    assert_eq!(
        decoded[1].data.as_ref().unwrap().city.as_deref(),
        Some("Fooville")
    );

    // The documented answer has job 15 missing: make it so, then send the documented request.
    let deleted = api
        .http
        .delete(api.url("/_sim/jobs/15"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let unqueue = json!([{"id": 14}, {"id": 15}]);
    let unqueued = api
        .expect(api.post("/j/jobs/bulk/unqueue", &unqueue), StatusCode::OK)
        .await;
    assert_eq!(unqueued[0]["status_code"], 200);
    assert_eq!(unqueued[0]["data"]["state"], 3);
    assert_eq!(unqueued[0]["data"]["id"], 14);
    assert_eq!(
        unqueued[1],
        json!({"data": null, "status_code": 404, "message": "job 15 not found"})
    );
    let deleted_again = api
        .http
        .delete(api.url("/_sim/jobs/15"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted_again.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invalid_items_are_400_each_and_do_not_stop_the_others() {
    let api = Api::new().await;
    let items = json!([
        {"campaign": 28, "reference": "r1", "name": "first"},
        {"campaign": 28, "reference": "r1", "name": "duplicate reference"},
        {"campaign": 29, "reference": "r1", "name": "same reference, other campaign"},
        {"campaign": 30, "name": "no such campaign"},
        {"name": "no campaign"},
        {"campaign": 28, "id": 77},
        {"campaign": 28, "state": 2},
        {"campaign": 28, "numbers": ["not a number"]},
        {"campaign": 28, "value": "12"},
        {"campaign": 28, "favourite_colour": "blue"},
        "not an object",
        {"campaign": 28, "numbers": ["06 12 34 56 78"]}
    ]);
    let answer = api
        .expect(api.post("/j/jobs/bulk/create", &items), StatusCode::OK)
        .await;
    let codes: Vec<i64> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(
        codes,
        [201, 400, 201, 400, 400, 400, 400, 400, 400, 400, 400, 201]
    );
    for item in answer
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status_code"] == 400)
    {
        assert!(item["data"].is_null(), "{item}");
        assert!(
            item["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{item}"
        );
    }
    assert!(answer[1]["message"].as_str().unwrap().contains("r1"));
    assert!(
        answer[3]["message"]
            .as_str()
            .unwrap()
            .contains("campaign 30")
    );
    assert_eq!(answer[11]["data"]["numbers"], json!(["+33612345678"]));
    assert_eq!(api.state().await.len(), 3);

    let patches = json!([
        {"id": 1, "state": 4},
        {"id": 1, "campaign": 29},
        {"id": 1, "created_at": "2016-11-04T19:11:34.985Z"},
        {"id": 1, "name": ["x"]},
        {"id": 3, "reference": "r1"},
        {"name": "no id"},
        {"id": 1, "city": "Lyon"}
    ]);
    let answer = api
        .expect(api.post("/j/jobs/bulk/patch", &patches), StatusCode::OK)
        .await;
    let codes: Vec<i64> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [400, 400, 400, 400, 400, 400, 200]);

    let single = api
        .expect(
            api.post("/j/jobs", &json!({"campaign": 28, "reference": "r1"})),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(single["message"].as_str().unwrap().contains("already used"));
    api.expect(
        api.post("/j/jobs", &json!({"campaign": 99})),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn bulk_bodies_are_checked_whole() {
    let api = Api::new().await;
    let too_many: Vec<Value> = (0..1001).map(|n| json!({"id": n})).collect();
    let refused = api
        .expect(
            api.post("/j/jobs/bulk/unqueue", &json!(too_many)),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(refused["message"].as_str().unwrap().contains("1000"));
    let creates: Vec<Value> = (0..1001)
        .map(|n| json!({"campaign": 28, "reference": n.to_string()}))
        .collect();
    api.expect(
        api.post("/j/jobs/bulk/create", &json!(creates)),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        api.state().await.is_empty(),
        "a refused bulk call must apply nothing"
    );
    let at_limit = api
        .expect(
            api.post("/j/jobs/bulk/create", &json!(creates[..1000])),
            StatusCode::OK,
        )
        .await;
    assert_eq!(at_limit.as_array().unwrap().len(), 1000);
    assert!(
        at_limit
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status_code"] == 201)
    );

    api.expect(
        api.post("/j/jobs/bulk/patch", &json!({"id": 1})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let garbage = api
        .http
        .post(api.url("/j/jobs/bulk/create"))
        .bearer_auth(TOKEN)
        .body("[{")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        api.expect(api.post("/j/jobs/bulk/create", &json!([])), StatusCode::OK)
            .await,
        json!([])
    );
}
