//! The Conductor's client of the capacity planner service
//! (`capacity-planner serve`). The Conductor owns the inventory and sends
//! the cells with every request; the planner adds the usage it has seen.

use axum::body as bytes;
use serde_json::Value;
use std::time::Duration;

pub struct Planner {
    pub url: String,
    token: String,
    http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    #[error("the capacity planner at {0} is unreachable: {1}")]
    Unreachable(String, String),
    /// The planner refused the request (bad input): pass its reason on.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("the capacity planner failed: {0}")]
    Failed(String),
}

impl Planner {
    pub fn new(url: &str, token: &str) -> Planner {
        Planner {
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .no_proxy()
                .build()
                .unwrap_or_default(),
        }
    }

    /// POST `body` to the planner's `path` (under `/v1`).
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, PlannerError> {
        self.send(self.http.post(format!("{}/v1{path}", self.url)).json(body))
            .await
    }

    /// POST a usage file (YAML or JSON text) into the planner's history.
    /// Import usage; `shift_to_now` moves every sample so the newest is now.
    pub async fn import(
        &self,
        text: bytes::Bytes,
        shift_to_now: bool,
    ) -> Result<Value, PlannerError> {
        let url = format!("{}/v1/usage?shift_to_now={shift_to_now}", self.url);
        self.send(self.http.post(url).body(text)).await
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Value, PlannerError> {
        let r = rb
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| PlannerError::Unreachable(self.url.clone(), e.to_string()))?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let message = v["message"]
            .as_str()
            .unwrap_or("no reason given")
            .to_string();
        if status.is_client_error() {
            Err(PlannerError::Refused {
                status: status.as_u16(),
                message,
            })
        } else {
            Err(PlannerError::Failed(message))
        }
    }
}
