//! The Conductor's HTTP API (JSON), the dashboard and `/metrics`.
//!
//! Every `/api/v1` call needs a bearer token, and every route needs an
//! action its caller's role may do ([`ROUTES`]); both are checked before a
//! handler runs, so no body is read for a caller who may not send it. Every
//! mutating call is written to the audit log in the same transaction as the
//! change. Errors are JSON `{"code", "message"}` with a stable code.

use crate::auth::{hash_token, new_token, Action, Identity, Role};
use crate::clock::Clock;
use crate::leases::Leases;
use crate::metrics::Metrics;
use crate::planner::{Planner, PlannerError};
use crate::resizer::{ResizeError, ResizeRequest, Resizer};
use crate::store::{ArtifactRow, AuditEntry, Store, StoreError};
use crate::targets::{valid_version, ArtifactStore, CellRouting, Supervisor, Targets};
use crate::workflow::{Workflow, WorkflowError};
use axum::body::Bytes;
use axum::extract::MatchedPath;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, request::Parts, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cells_inventory::{valid_id, CellTemplate};
use conductor_core::pipeline::{self, ArtifactKind};
use conductor_core::plan::{self, Estimates};
use conductor_core::train::{Event, Refusal, TrainSpec};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use yamlspan::Diagnostics;

mod artifacts;
mod capacity;
mod cells;
mod pipelines;
mod revisions;
mod stream;
mod tokens;
mod trains;
pub mod wire;

pub use stream::MAX_STREAMS;

/// Largest JSON body accepted.
pub const MAX_JSON_BODY: usize = 1024 * 1024;
/// Largest artifact accepted.
pub const MAX_ARTIFACT: usize = 512 * 1024 * 1024;

/// Every route of the API (under `/api/v1`) and the action it needs; the
/// role rules (`Role::may`) say who may do it. Checked, with the token,
/// before the handler runs. A route missing here is refused to everyone.
pub const ROUTES: &[(&str, &str, Action)] = {
    use Action::*;
    &[
        ("GET", "/whoami", Read),
        ("GET", "/pipelines", Read),
        ("POST", "/pipelines", SubmitPipeline),
        ("POST", "/pipelines/validate", Read),
        ("GET", "/pipelines/{name}", Read),
        ("GET", "/pipelines/{name}/plan", Read),
        ("GET", "/pipelines/{name}/revisions", Read),
        ("GET", "/pipelines/{name}/revisions/{rev}", Read),
        ("POST", "/pipelines/{name}/revisions/{rev}/approve", Approve),
        ("POST", "/pipelines/{name}/revisions/{rev}/reject", Approve),
        ("GET", "/trains", Read),
        ("POST", "/trains", StartTrain),
        ("GET", "/trains/{id}", Read),
        ("GET", "/trains/{id}/events", Read),
        ("GET", "/trains/{id}/logs", Read),
        ("POST", "/trains/{id}/approve", Approve),
        ("POST", "/trains/{id}/reject", Approve),
        ("POST", "/trains/{id}/cancel", CancelOrRollback),
        ("POST", "/trains/{id}/rollback", CancelOrRollback),
        ("GET", "/trains/{id}/stream", Read),
        ("GET", "/stream", Read),
        ("GET", "/cells", Read),
        ("POST", "/cells", ManageCells),
        ("GET", "/cells/deploys", Read),
        ("POST", "/cells/{id}/resize", ManageCells),
        ("POST", "/cells/{id}/drain", ManageCells),
        ("POST", "/cells/{id}/retire", ManageCells),
        ("GET", "/resizes", Read),
        ("GET", "/resizes/{id}", Read),
        ("POST", "/resizes/{id}/approve", DecideResize),
        ("POST", "/resizes/{id}/reject", DecideResize),
        ("GET", "/leases", Read),
        ("GET", "/routes", Read),
        ("GET", "/artifacts", Read),
        ("PUT", "/artifacts/{name}/{version}", PushArtifact),
        ("GET", "/tokens", ManageTokens),
        ("POST", "/tokens", ManageTokens),
        ("POST", "/tokens/{name}/revoke", ManageTokens),
        ("GET", "/audit", ReadAudit),
        ("GET", "/audit/verify", ReadAudit),
        ("GET", "/capacity/plan", Read),
        ("POST", "/capacity/apply", ManageCells),
        ("GET", "/capacity/limits", Read),
        ("POST", "/capacity/limits/push", ManageCells),
        ("GET", "/capacity/rebalance", Read),
        ("POST", "/capacity/usage", ManageCells),
        // Placing is a question; stamping a cell (`stamp: true`) needs
        // ManageCells, which the handler checks.
        ("POST", "/tenants/place", Read),
    ]
};

/// The action a route needs (None: the route has no rule). HEAD is
/// served by the GET route, and needs what GET needs.
pub fn route_action(method: &Method, route: &str) -> Option<Action> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTES
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, a)| *a)
}

#[derive(Clone)]
pub struct AppState {
    /// The train workflow backend (the embedded engine).
    pub workflow: Arc<dyn Workflow>,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub leases: Arc<Leases>,
    pub metrics: Arc<Metrics>,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub supervisor: Arc<Supervisor>,
    /// Where cells' routes are published (`/routes` answers from it).
    pub routing: Arc<dyn CellRouting>,
    /// The deploy targets, by cell target kind.
    pub targets: Targets,
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
            StoreError::Changed(what) => ApiError::new(StatusCode::CONFLICT, "conflict", what),
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

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> ApiError {
        match e {
            WorkflowError::NotFound(_) => ApiError::not_found(e.to_string()),
            WorkflowError::Refused(r) => {
                let (status, code) = match r {
                    Refusal::SelfApproval(_) | Refusal::NotInGroup { .. } => {
                        (StatusCode::FORBIDDEN, "forbidden")
                    }
                    Refusal::UnknownWave(_) => (StatusCode::NOT_FOUND, "not_found"),
                    _ => (StatusCode::CONFLICT, "conflict"),
                };
                ApiError::new(status, code, r.to_string())
            }
            WorkflowError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            WorkflowError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            WorkflowError::Store(s) => s.into(),
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

/// The caller: set by [`authorize`] before the handler runs (a handler
/// outside it authenticates here, the same way).
impl FromRequestParts<AppState> for Identity {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        if let Some(id) = parts.extensions.get::<Identity>() {
            return Ok(id.clone());
        }
        authenticate(parts, app).await
    }
}

/// Who presents this request's bearer token. A refusal is logged with its
/// reason and, when known, the token's name; never the token.
pub(crate) async fn authenticate(parts: &Parts, app: &AppState) -> ApiResult<Identity> {
    let refuse = |reason: &str, name: Option<&str>, message: &str| {
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or(parts.uri.path(), |m| m.as_str());
        tracing::warn!(
            method = %parts.method,
            route,
            reason,
            token_name = name.unwrap_or("-"),
            "refused authentication"
        );
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    };
    const NEED: &str = "a valid bearer token is required";
    let Some(h) = parts.headers.get(header::AUTHORIZATION) else {
        return Err(refuse("no Authorization header", None, NEED));
    };
    let Some(token) = h.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")) else {
        return Err(refuse("not a bearer token", None, NEED));
    };
    let token = token.trim();
    if token.is_empty() || token.len() > 256 {
        return Err(refuse("malformed token", None, NEED));
    }
    let Some(row) = app.store.token_by_hash(&hash_token(token)).await? else {
        return Err(refuse("unknown token", None, NEED));
    };
    if row.revoked {
        return Err(refuse(
            "revoked token",
            Some(&row.name),
            "this token was revoked",
        ));
    }
    if row.expires_at.is_some_and(|t| t <= app.clock.now()) {
        return Err(refuse(
            "expired token",
            Some(&row.name),
            "this token has expired",
        ));
    }
    // A role this build does not know grants nothing.
    let Ok(role) = row.role.parse::<Role>() else {
        return Err(refuse("unknown role", Some(&row.name), NEED));
    };
    Ok(Identity {
        name: row.name,
        role,
        groups: row.groups,
    })
}

/// Authenticate and authorize every API request before its handler (and
/// so before any body is read): the route's action from [`ROUTES`] must be
/// one the caller's role may do. The identity rides on to the handler.
async fn authorize(
    State(st): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| {
        m.as_str()
            .strip_prefix("/api/v1")
            .unwrap_or(m.as_str())
            .to_string()
    });
    let sends_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let (mut parts, body) = req.into_parts();
    let id = match authenticate(&parts, &st).await {
        Ok(id) => id,
        Err(e) => return refused_unread(e.into_response(), sends_body),
    };
    let Some(action) = route
        .as_deref()
        .and_then(|r| route_action(&parts.method, r))
    else {
        tracing::error!(method = %parts.method, route = ?route, "a route without an access rule was called; refused");
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route has no access rule",
        );
        return refused_unread(e.into_response(), sends_body);
    };
    if let Err(e) = require(&id, action) {
        return refused_unread(e.into_response(), sends_body);
    }
    parts.extensions.insert(id);
    let resp = next.run(Request::from_parts(parts, body)).await;
    refused_unread(resp, sends_body)
}

/// A refusal may leave the request's body unread on the connection: close
/// it after the answer, so that no client sends its next request into the
/// rest of that body.
fn refused_unread(mut resp: Response, sends_body: bool) -> Response {
    let s = resp.status();
    if sends_body && (s.is_client_error() || s.is_server_error()) {
        resp.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
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

/// The audit row of a call by `id`, to be written with its change.
pub(crate) fn entry(id: &Identity, action: &str, target: &str, detail: &str) -> AuditEntry {
    AuditEntry::new(&id.name, action, target, detail)
}

/// Write an audit row on its own: only for calls whose one write is the
/// row (a push to another service). Calls that change the Conductor's
/// database pass [`entry`] to the store, which writes both in one
/// transaction.
pub(crate) async fn audit(
    st: &AppState,
    id: &Identity,
    action: &str,
    target: &str,
    detail: &str,
) -> ApiResult<()> {
    st.store
        .audit(&entry(id, action, target, detail), st.clock.now())
        .await?;
    Ok(())
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/whoami", get(whoami))
        .merge(pipelines::routes())
        .merge(revisions::routes())
        .merge(trains::routes())
        .merge(stream::routes())
        .merge(cells::routes())
        .merge(artifacts::routes())
        .merge(tokens::routes())
        .merge(capacity::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY));
    Router::new()
        .nest("/api/v1", api)
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::map_response(errors_as_json))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Every error answers `{code, message}`: a rejection axum produces itself
/// (a query string or path it cannot read, an unsupported method or media
/// type) is plain text; it is turned into our shape here.
async fn errors_as_json(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // These bodies are axum's own short messages; cap what is read anyway.
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let text = text
        .strip_prefix("Failed to deserialize query string: ")
        .map(|rest| format!("invalid query string: {rest}"))
        .unwrap_or(text);
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_lowercase()
    } else if status.is_server_error() {
        // Never internals in a 5xx.
        "internal error; see the server log".to_string()
    } else {
        text
    };
    let mut out = ApiError::new(status, code, message).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
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
    let by_state = st.store.count_trains_by_status().await?;
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
#[serde(deny_unknown_fields)]
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
