//! The HTTP client of the API.

use super::*;

/// HTTP client for the API.
pub(super) struct Client {
    pub(super) base: String,
    pub(super) token: String,
    pub(super) http: reqwest::Client,
}

impl Client {
    pub(super) fn new(c: &Conn) -> Result<Client, CliError> {
        // No fallback to a token file: the admin token is not kept in the
        // data directory (`conductor up --write-admin-token FILE` writes it).
        let token = c
            .token
            .clone()
            .ok_or_else(|| CliError::usage("no token: set CONDUCTOR_TOKEN (or pass --token)"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| CliError::from(anyhow::anyhow!("building HTTP client: {e}")))?;
        Ok(Client {
            base: c.url.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub(super) async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let resp = rb
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| CliError {
                code: exit::FAILED,
                message: format!("cannot reach the Conductor at {}: {e}", self.base),
            })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let msg = body["message"]
            .as_str()
            .unwrap_or("request failed")
            .to_string();
        let code = body["code"].as_str().unwrap_or("error");
        Err(CliError {
            code: if status.is_client_error() {
                exit::USAGE
            } else {
                exit::FAILED
            },
            message: format!("{msg} ({code}, HTTP {})", status.as_u16()),
        })
    }

    pub(super) async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.send(self.http.get(format!("{}/api/v1{path}", self.base)))
            .await
    }

    pub(super) async fn post(&self, path: &str, body: Value) -> Result<Value, CliError> {
        self.send(
            self.http
                .post(format!("{}/api/v1{path}", self.base))
                .json(&body),
        )
        .await
    }
}
