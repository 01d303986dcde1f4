//! The simulator against `jobs-api.md` and SPEC §6: each documented example as printed (typos
//! fixed), the rules the documentation states, and the control routes tests rely on.
//!
//! One test crate, one module per endpoint group; the shared client (`Api`) and the documented
//! bodies are here.

use crate::common;
mod auth;
mod bulk;
mod control;
mod create;
mod faults;
mod listing;
mod scale;
mod unqueue;

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
