//! The simulator against `jobs-api.md` and SPEC §6: each documented example as printed (typos
//! fixed), the rules the documentation states, and the control routes tests rely on.

mod common;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use jobsync::sim::{self, Faults, SimConfig, SimHandle};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const TOKEN: &str = "0a1b2c3d4e5f";

struct Api {
    sim: SimHandle,
    http: Client,
}

impl Api {
    async fn start(cfg: SimConfig) -> Api {
        let cfg = SimConfig {
            token: TOKEN.into(),
            ..cfg
        };
        let sim = sim::spawn("127.0.0.1:0".parse().unwrap(), cfg)
            .await
            .unwrap();
        Api {
            sim,
            http: Client::new(),
        }
    }

    async fn new() -> Api {
        Api::start(SimConfig::default()).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(TOKEN)
    }

    fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(TOKEN).json(body)
    }

    /// A request that must answer `status`; its JSON body.
    async fn expect(&self, request: reqwest::RequestBuilder, status: StatusCode) -> Value {
        let response = request.send().await.unwrap();
        let got = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(got, status, "body: {body}");
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    async fn control(&self, path: &str, body: Value) -> Value {
        common::sim_post(&self.sim, path, body).await
    }

    async fn state(&self) -> Vec<Value> {
        let response = self.http.get(self.url("/_sim/state")).send().await.unwrap();
        response.json().await.unwrap()
    }

    async fn sim_now(&self) -> DateTime<Utc> {
        let clock: Value = self
            .http
            .get(self.url("/_sim/clock"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        serde_json::from_value(clock["now"].clone()).unwrap()
    }

    /// Makes the next created job get id 14, as in the documentation's examples.
    async fn fill_ids_up_to_13(&self) {
        let fillers: Vec<Value> = (1..=13)
            .map(|id| json!({"id": id, "campaign": 29}))
            .collect();
        self.control("/_sim/jobs", json!(fillers)).await;
    }
}

fn ids(jobs: &Value) -> Vec<i64> {
    jobs.as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn documented_create() -> Value {
    json!({
       "campaign": 28,
       "data": {"some_property": "some value"},
       "email": "simon.dupont@example.com",
       "name": "Simon Dupont",
       "numbers": ["0123456789", "0612345678"],
       "reference": "1234567",
       "url": "https://crm.example.com/customers/1234567",
       "value": 123.45
    })
}

fn documented_bulk_create() -> Value {
    json!([
       documented_create(),
       {
          "campaign": 28,
          "data": {"some_property": "other value"},
          "email": "alice.schmitt@example.com",
          "name": "Mme. Schmitt",
          "numbers": ["0234567890"],
          "reference": "2345678",
          "url": "https://crm.example.com/customers/2345678",
          "value": 234.56
       }
    ])
}

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

#[tokio::test]
async fn modified_since_is_refused_outside_the_past_48_hours() {
    let api = Api::new().await;
    let now = api.sim_now().await;
    api.expect(api.get("/j/jobs"), StatusCode::BAD_REQUEST)
        .await;
    api.expect(api.get("/j/jobs?campaign=x"), StatusCode::BAD_REQUEST)
        .await;
    let since = |t: DateTime<Utc>| api.get("/j/jobs").query(&[("modified_since", rfc3339(t))]);
    api.expect(since(now - Duration::hours(49)), StatusCode::BAD_REQUEST)
        .await;
    api.expect(since(now + Duration::hours(1)), StatusCode::BAD_REQUEST)
        .await;
    api.expect(since(now - Duration::hours(47)), StatusCode::OK)
        .await;
    let offset = api
        .get("/j/jobs")
        .query(&[("modified_since", (now - Duration::hours(1)).to_rfc3339())]);
    api.expect(offset, StatusCode::OK).await;
    api.expect(
        api.get("/j/jobs?modified_since=yesterday"),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn campaign_and_modified_since_combine() {
    let api = Api::new().await;
    let now = api.sim_now().await;
    let old = rfc3339(now - Duration::hours(3));
    api.control(
        "/_sim/jobs",
        json!([
            {"id": 1, "campaign": 28, "modified_at": old},
            {"id": 2, "campaign": 29, "modified_at": old},
            {"id": 3, "campaign": 28},
            {"id": 4, "campaign": 29}
        ]),
    )
    .await;
    let t = rfc3339(now - Duration::hours(1));
    let both = api
        .expect(
            api.get("/j/jobs")
                .query(&[("campaign", "28"), ("modified_since", t.as_str())]),
            StatusCode::OK,
        )
        .await;
    assert_eq!(ids(&both), [3]);
    let since = api
        .expect(
            api.get("/j/jobs").query(&[("modified_since", t.as_str())]),
            StatusCode::OK,
        )
        .await;
    assert_eq!(ids(&since), [3, 4]);
    let campaign = api
        .expect(api.get("/j/jobs?campaign=28"), StatusCode::OK)
        .await;
    assert_eq!(ids(&campaign), [1, 3]);
}

#[tokio::test]
async fn the_clock_offset_moves_the_date_header_and_the_48_hour_window() {
    let api = Api::new().await;
    let real_now = Utc::now();
    let forty_hours_ago = rfc3339(real_now - Duration::hours(40));
    let request = || {
        api.get("/j/jobs")
            .query(&[("modified_since", forty_hours_ago.as_str())])
    };
    api.expect(request(), StatusCode::OK).await;
    api.control("/_sim/clock", json!({"offset_hours": 10.5}))
        .await;
    api.expect(request(), StatusCode::BAD_REQUEST).await;

    let response = api.get("/j/jobs?campaign=28").send().await.unwrap();
    let date = response.headers()["date"].to_str().unwrap();
    let date = DateTime::parse_from_rfc2822(date)
        .unwrap()
        .with_timezone(&Utc);
    let shift = date - Utc::now();
    assert!(
        (shift - Duration::minutes(630)).num_seconds().abs() <= 5,
        "Date header {date}"
    );

    api.control("/_sim/clock", json!({"offset_hours": -30.0}))
        .await;
    let seventy_hours_ago = rfc3339(real_now - Duration::hours(70));
    let request = api
        .get("/j/jobs")
        .query(&[("modified_since", seventy_hours_ago.as_str())]);
    api.expect(request, StatusCode::OK).await;
}

#[tokio::test]
async fn every_answer_carries_a_date_header() {
    let api = Api::new().await;
    let answers = [
        api.get("/j/jobs?campaign=28").send().await.unwrap(),
        api.get("/j/jobs").send().await.unwrap(),
        api.get("/j/jobs/404").send().await.unwrap(),
        api.get("/j/nothing-here").send().await.unwrap(),
        api.http.get(api.url("/_sim/state")).send().await.unwrap(),
    ];
    for response in answers {
        let date = response.headers().get("date").expect("a Date header");
        DateTime::parse_from_rfc2822(date.to_str().unwrap()).unwrap();
    }
}

#[tokio::test]
async fn fail_and_throttle_faults_answer_500_and_429() {
    let api = Api::new().await;
    api.control("/_sim/faults", json!({"fail_rate": 1.0})).await;
    api.expect(
        api.get("/j/jobs?campaign=28"),
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    api.http
        .get(api.url("/_sim/state"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    api.control(
        "/_sim/faults",
        json!({"fail_rate": 0.0, "throttle_rate": 1.0, "retry_after_secs": 3}),
    )
    .await;
    let throttled = api
        .post("/j/jobs/bulk/create", &documented_bulk_create())
        .send()
        .await
        .unwrap();
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()["retry-after"], "3");
    assert!(
        api.state().await.is_empty(),
        "a throttled request must not apply"
    );

    api.control("/_sim/faults", json!({"throttle_rate": 0.0}))
        .await;
    api.expect(api.get("/j/jobs?campaign=28"), StatusCode::OK)
        .await;
}

#[tokio::test]
async fn dropped_connections_give_no_answer() {
    let api = Api::new().await;
    api.control("/_sim/faults", json!({"drop_rate": 1.0})).await;
    let error = api.get("/j/jobs?campaign=28").send().await.unwrap_err();
    assert!(error.status().is_none(), "{error:?}");
    let error = api
        .post("/j/jobs", &documented_create())
        .send()
        .await
        .unwrap_err();
    assert!(error.status().is_none(), "{error:?}");
    assert!(
        api.state().await.is_empty(),
        "a request dropped before handling must not apply"
    );

    api.control(
        "/_sim/faults",
        json!({"drop_rate": 0.0, "applied_drop_rate": 1.0}),
    )
    .await;
    let error = api
        .post("/j/jobs/bulk/create", &documented_bulk_create())
        .send()
        .await
        .unwrap_err();
    assert!(error.status().is_none(), "{error:?}");
    let state = api.state().await;
    let references: Vec<&str> = state
        .iter()
        .map(|j| j["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        references,
        ["1234567", "2345678"],
        "an applied drop applies the request"
    );
    api.expect(api.get("/j/jobs?campaign=28"), StatusCode::OK)
        .await;

    api.control("/_sim/faults", json!({"applied_drop_rate": 0.0}))
        .await;
    api.expect(
        api.post("/j/jobs/bulk/unqueue", &json!([{"id": 1}])),
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn configured_faults_and_latency_apply_from_the_start() {
    let cfg = SimConfig {
        faults: Faults {
            throttle_rate: 1.0,
            retry_after_secs: 9,
            ..Faults::default()
        },
        latency_ms: 150,
        ..SimConfig::default()
    };
    let api = Api::start(cfg).await;
    let started = std::time::Instant::now();
    let response = api.get("/j/jobs?campaign=28").send().await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "9");
    let faults = api
        .http
        .get(api.url("/_sim/faults"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        (
            faults["latency_ms"].clone(),
            faults["throttle_rate"].clone()
        ),
        (json!(150), json!(1.0))
    );
    let refused = api
        .http
        .post(api.url("/_sim/faults"))
        .json(&json!({"fail_rate": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn dial_and_edit_change_jobs_and_show_in_modified_since() {
    let api = Api::new().await;
    let now = api.sim_now().await;
    let old = rfc3339(now - Duration::hours(2));
    let jobs: Vec<Value> = (1..=6)
        .map(|id| json!({"id": id, "campaign": 28, "name": "Simon Dupont", "modified_at": old}))
        .collect();
    api.control("/_sim/jobs", json!(jobs)).await;
    let t = rfc3339(now - Duration::hours(1));
    let changed_since = || api.get("/j/jobs").query(&[("modified_since", t.as_str())]);
    assert_eq!(api.expect(changed_since(), StatusCode::OK).await, json!([]));

    let dialed = api.control("/_sim/dial", json!({"n": 2})).await;
    let dialed_ids = ids(&dialed);
    assert_eq!(dialed_ids.len(), 2);
    assert!(dialed.as_array().unwrap().iter().all(|j| j["state"] == 1));
    assert_eq!(
        ids(&api.expect(changed_since(), StatusCode::OK).await),
        dialed_ids
    );

    let edited = api.control("/_sim/edit", json!({"n": 1})).await;
    let edited_id = ids(&edited)[0];
    let mut expected = dialed_ids.clone();
    if !expected.contains(&edited_id) {
        expected.push(edited_id);
        expected.sort();
    }
    assert_eq!(
        ids(&api.expect(changed_since(), StatusCode::OK).await),
        expected
    );

    // Two more steps finish every dialed job one way or the other.
    for _ in 0..12 {
        api.control("/_sim/dial", json!({"n": 6})).await;
    }
    let states: Vec<i64> = api
        .state()
        .await
        .iter()
        .map(|j| j["state"].as_i64().unwrap())
        .collect();
    assert!(states.iter().all(|s| *s == 2 || *s == 3), "{states:?}");
    assert_eq!(api.control("/_sim/dial", json!({"n": 3})).await, json!([]));
}

#[tokio::test]
async fn the_dialer_runs_on_its_own() {
    let api = Api::start(SimConfig {
        jobs_per_campaign: 20,
        dial_interval_ms: 5,
        ..SimConfig::default()
    })
    .await;
    let initial = api.state().await;
    assert_eq!(initial.len(), 40);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = api.state().await;
        if now
            .iter()
            .zip(&initial)
            .any(|(a, b)| a["state"] != b["state"])
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dialer never moved a job"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn seeded_jobs_are_deterministic() {
    let cfg = || SimConfig {
        jobs_per_campaign: 30,
        seed: 42,
        ..SimConfig::default()
    };
    let a = Api::start(cfg()).await;
    let b = Api::start(cfg()).await;
    let strip = |jobs: Vec<Value>| -> Vec<Value> {
        jobs.into_iter()
            .map(|mut j| {
                j.as_object_mut().unwrap().remove("created_at");
                j
            })
            .collect()
    };
    let (ja, jb) = (strip(a.state().await), strip(b.state().await));
    assert_eq!(ja.len(), 60);
    assert_eq!(ja, jb);
    assert_eq!(ja[0]["reference"], "seed-28-1");
    let listed = a.expect(a.get("/j/jobs?campaign=29"), StatusCode::OK).await;
    assert_eq!(listed.as_array().unwrap().len(), 30);
    let decoded: Vec<jobsync::api::models::Job> = serde_json::from_value(listed).unwrap();
    assert!(decoded.iter().all(|j| {
        j.numbers
            .as_ref()
            .unwrap()
            .iter()
            .all(|n| n.starts_with("+33"))
    }));
}

#[tokio::test]
async fn the_request_log_records_every_api_request() {
    let api = Api::new().await;
    api.expect(api.get("/j/jobs?campaign=28"), StatusCode::OK)
        .await;
    api.expect(api.http.get(api.url("/j/jobs/1")), StatusCode::FORBIDDEN)
        .await;
    api.control("/_sim/faults", json!({"drop_rate": 1.0})).await;
    api.post("/j/jobs/bulk/create", &json!([]))
        .send()
        .await
        .unwrap_err();
    let log: Vec<Value> = api
        .http
        .get(api.url("/_sim/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen: Vec<(&str, &str, Value, i64, bool)> = log
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap(),
                e["path"].as_str().unwrap(),
                e["query"].clone(),
                e["status"].as_i64().unwrap(),
                e["dropped"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("GET", "/j/jobs", json!("campaign=28"), 200, false),
            ("GET", "/j/jobs/1", json!(null), 403, false),
            ("POST", "/j/jobs/bulk/create", json!(null), 0, true),
        ]
    );
    assert_eq!(log[2]["fault"], "drop");
    assert_eq!(
        api.control("/_sim/reset-log", json!(null)).await,
        json!({"cleared": 3})
    );
    let log: Vec<Value> = api
        .http
        .get(api.url("/_sim/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(log.is_empty());
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let api = Api::new().await;
    api.expect(api.get("/j/jobs?campaign=28"), StatusCode::OK)
        .await;
    let url = api.url("/j/jobs?campaign=28");
    api.sim.shutdown().await;
    let error = Client::new()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect() || error.is_request(), "{error:?}");
}

/// `cargo test --test sim_contract -- --ignored --nocapture serves_`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a timing report, not a check"]
async fn serves_100k_jobs_listing() {
    let started = std::time::Instant::now();
    let api = Api::start(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 100_000,
        ..SimConfig::default()
    })
    .await;
    println!("100,000 jobs seeded in {:?}", started.elapsed());
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let response = api.get("/j/jobs?campaign=28").send().await.unwrap();
        let bytes = response.bytes().await.unwrap();
        let elapsed = started.elapsed();
        let jobs: Vec<jobsync::api::models::Job> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(jobs.len(), 100_000);
        println!(
            "100,000 jobs ({} MB) served in {elapsed:?}",
            bytes.len() / 1_000_000
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a timing and memory report, not a check"]
async fn serves_1m_jobs_listing() {
    use futures_util::StreamExt;
    let started = std::time::Instant::now();
    let api = Api::start(SimConfig {
        campaigns: vec![28],
        jobs_per_campaign: 1_000_000,
        ..SimConfig::default()
    })
    .await;
    println!("1,000,000 jobs seeded in {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let response = api.get("/j/jobs?campaign=28").send().await.unwrap();
    let mut body = response.bytes_stream();
    let (mut size, mut last) = (0, 0u8);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        size += chunk.len();
        last = *chunk.last().unwrap_or(&last);
    }
    assert_eq!(last, b']');
    println!(
        "1,000,000 jobs ({} MB) served in {:?}",
        size / 1_000_000,
        started.elapsed()
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    println!("peak memory of this process (simulator and reader): {rss}");
}
