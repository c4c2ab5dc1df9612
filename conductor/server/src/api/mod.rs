//! The Conductor's HTTP API (JSON), the dashboard and `/metrics`.
//!
//! Every `/api/v1` call needs a bearer token; roles decide what it may do;
//! every mutating call is written to the audit log. Errors are JSON
//! `{"code", "message"}` with a stable code.

use crate::auth::{hash_token, new_token, Action, Identity, Role};
use crate::engine::{Engine, EngineError};
use crate::metrics::Metrics;
use crate::planner::{Planner, PlannerError};
use crate::resizer::{ResizeError, ResizeRequest, Resizer};
use crate::store::{ArtifactRow, StoreError};
use crate::targets::{valid_version, ArtifactDir, Supervisor};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cells_inventory::{valid_id, CellTemplate, TargetSpec};
use conductor_core::pipeline::{self, ArtifactKind};
use conductor_core::plan::{self, Estimates};
use conductor_core::train::{Event, Refusal, TrainSpec};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use yamlspan::Diagnostics;

mod artifacts;
mod cells;
mod pipelines;
mod tokens;
mod trains;

/// Largest JSON body accepted.
pub const MAX_JSON_BODY: usize = 1024 * 1024;
/// Largest artifact accepted.
pub const MAX_ARTIFACT: usize = 512 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub artifacts: ArtifactDir,
    pub supervisor: Arc<Supervisor>,
    pub resizer: Resizer,
    pub planner: Option<Arc<Planner>>,
    pub template: Arc<CellTemplate>,
}

/// An API error: status, stable code, human message (never internals).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn invalid(diags: &Diagnostics) -> ApiError {
        let list: Vec<Value> = diags
            .0
            .iter()
            .map(|d| json!({"file": d.file, "line": d.pos.line, "column": d.pos.col, "message": d.message, "hint": d.hint}))
            .collect();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_pipeline",
            message: diags.to_string(),
            details: Some(Value::Array(list)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "code": self.code, "message": self.message });
        if let Some(d) = self.details {
            body["details"] = d;
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(what) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{what} already exists"),
            ),
            other => {
                // Logged once here; the caller gets no internals.
                tracing::error!(error = %other, "store error while serving a request");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log",
                )
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::NotFound(id) => ApiError::not_found(format!("no train {id:?}")),
            EngineError::Refused(r) => {
                let (status, code) = match r {
                    Refusal::SelfApproval(_) | Refusal::NotInGroup { .. } => {
                        (StatusCode::FORBIDDEN, "forbidden")
                    }
                    Refusal::UnknownWave(_) => (StatusCode::NOT_FOUND, "not_found"),
                    _ => (StatusCode::CONFLICT, "conflict"),
                };
                ApiError::new(status, code, r.to_string())
            }
            EngineError::Store(s) => s.into(),
            EngineError::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the engine has stopped",
            ),
        }
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// JSON body with our size limit and error shape.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body over {MAX_JSON_BODY} bytes"),
            )
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

impl FromRequestParts<AppState> for Identity {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let unauth = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "a valid bearer token is required",
            )
        };
        let h = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(unauth)?;
        let token = h.strip_prefix("Bearer ").ok_or_else(unauth)?.trim();
        if token.is_empty() || token.len() > 256 {
            return Err(unauth());
        }
        let row = app
            .engine
            .store()
            .token_by_hash(&hash_token(token))
            .await?
            .ok_or_else(unauth)?;
        let role: Role = row.role.parse().map_err(|_| unauth())?;
        Ok(Identity {
            name: row.name,
            role,
            groups: row.groups,
        })
    }
}

pub(crate) fn require(id: &Identity, a: Action) -> ApiResult<()> {
    if id.role.may(a) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role {} may not do this", id.role),
        ))
    }
}

pub(crate) async fn audit(
    st: &AppState,
    id: &Identity,
    action: &str,
    target: &str,
    detail: &str,
) -> ApiResult<()> {
    st.engine
        .store()
        .audit(&id.name, action, target, detail, st.engine.now())
        .await?;
    Ok(())
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/whoami", get(whoami))
        .merge(pipelines::routes())
        .merge(trains::routes())
        .merge(cells::routes())
        .merge(artifacts::routes())
        .merge(tokens::routes())
        .merge(crate::capacity::routes())
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY));
    Router::new()
        .nest("/api/v1", api)
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(
    State(st): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    st.metrics.http_request();
    next.run(req).await
}

async fn whoami(id: Identity) -> Json<Identity> {
    Json(id)
}

async fn metrics(State(st): State<AppState>) -> ApiResult<Response> {
    let by_state = st.engine.store().count_trains_by_status().await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(&by_state),
    )
        .into_response())
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("../dashboard.html"))
}

/// `?after=SEQ&limit=N` of the event and audit logs.
#[derive(Deserialize)]
struct EventsQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

pub(crate) fn check_reason(r: &Option<String>) -> ApiResult<()> {
    match r {
        Some(s) if s.len() > 2000 => Err(ApiError::bad_request(
            "reason is longer than 2000 characters",
        )),
        _ => Ok(()),
    }
}
