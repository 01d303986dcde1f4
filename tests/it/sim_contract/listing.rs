//! `GET /j/jobs`: `campaign` and `modified_since`, the 48-hour window and the simulator's
//! clock, and the `Date` header every answer carries.

use super::*;

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
