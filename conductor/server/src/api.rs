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
        .route("/pipelines", get(list_pipelines).post(submit_pipeline))
        .route("/pipelines/validate", post(validate_pipeline))
        .route("/pipelines/{name}", get(get_pipeline))
        .route("/pipelines/{name}/plan", get(plan_pipeline))
        .route("/trains", get(list_trains).post(start_train))
        .route("/trains/{id}", get(get_train))
        .route("/trains/{id}/events", get(train_events))
        .route("/trains/{id}/logs", get(train_logs))
        .route("/trains/{id}/approve", post(approve))
        .route("/trains/{id}/reject", post(reject))
        .route("/trains/{id}/cancel", post(cancel))
        .route("/trains/{id}/rollback", post(rollback))
        .route("/cells", get(list_cells))
        .route("/cells/deploys", get(deploy_log))
        .route("/cells/{id}/resize", post(resize_cell))
        .route("/resizes", get(list_resizes))
        .route("/resizes/{id}", get(get_resize))
        .route("/resizes/{id}/approve", post(approve_resize))
        .route("/resizes/{id}/reject", post(reject_resize))
        .route("/leases", get(leases))
        .route("/routes", get(routes))
        .route("/artifacts", get(list_artifacts))
        .route(
            "/artifacts/{name}/{version}",
            put(push_artifact).layer(DefaultBodyLimit::max(MAX_ARTIFACT)),
        )
        .merge(crate::capacity::routes())
        .route("/tokens", post(create_token))
        .route("/audit", get(audit_log))
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
    Html(include_str!("dashboard.html"))
}

// ---- pipelines --------------------------------------------------------------

#[derive(Deserialize)]
struct PipelineBody {
    yaml: String,
    #[serde(default)]
    file: Option<String>,
}

fn file_name(b: &PipelineBody) -> String {
    b.file.clone().unwrap_or_else(|| "pipeline.yaml".into())
}

/// Parse and plan against the current inventory.
async fn check_pipeline(
    st: &AppState,
    file: &str,
    yaml: &str,
) -> ApiResult<(pipeline::Pipeline, plan::Plan)> {
    let (p, spans) = pipeline::parse(file, yaml).map_err(|d| ApiError::invalid(&d))?;
    let cells = st.engine.store().cell_specs().await?;
    let pl = plan::plan(&p, &spans, &cells).map_err(|d| ApiError::invalid(&d))?;
    Ok((p, pl))
}

fn plan_json(p: &pipeline::Pipeline, pl: &plan::Plan, now: chrono::DateTime<chrono::Utc>) -> Value {
    let proj = plan::project(p, pl, &p.parsed_windows(), now, Estimates::default());
    json!({
        "pipeline": p.name,
        "cells": pl.cell_count(),
        "waves": pl.order.iter().zip(proj.iter()).map(|(i, w)| {
            let pw = &pl.waves[*i];
            json!({
                "name": pw.name,
                "cells": pw.cells,
                "max_parallel": pw.max_parallel,
                "approval": pw.approval,
                "after": pw.after.iter().map(|a| pl.waves[*a].name.clone()).collect::<Vec<_>>(),
                "projected_start": w.start,
                "projected_end": w.end,
            })
        }).collect::<Vec<_>>(),
        "projected_end": proj.iter().map(|w| w.end).max(),
    })
}

async fn validate_pipeline(
    State(st): State<AppState>,
    _id: Identity,
    JsonBody(b): JsonBody<PipelineBody>,
) -> ApiResult<Json<Value>> {
    let (p, pl) = check_pipeline(&st, &file_name(&b), &b.yaml).await?;
    Ok(Json(
        json!({ "valid": true, "plan": plan_json(&p, &pl, st.engine.now()) }),
    ))
}

async fn submit_pipeline(
    State(st): State<AppState>,
    id: Identity,
    JsonBody(b): JsonBody<PipelineBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::SubmitPipeline)?;
    let (p, pl) = check_pipeline(&st, &file_name(&b), &b.yaml).await?;
    let rev = st
        .engine
        .store()
        .put_pipeline(&p.name, &b.yaml, &id.name, st.engine.now())
        .await?;
    audit(
        &st,
        &id,
        "pipeline.submit",
        &p.name,
        &format!("revision {rev}"),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "name": p.name, "revision": rev, "plan": plan_json(&p, &pl, st.engine.now()) }),
        ),
    ))
}

async fn list_pipelines(State(st): State<AppState>, _id: Identity) -> ApiResult<Json<Value>> {
    let rows = st.engine.store().list_pipelines().await?;
    Ok(Json(json!({ "pipelines": rows })))
}

async fn get_pipeline(
    State(st): State<AppState>,
    _id: Identity,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = st
        .engine
        .store()
        .get_pipeline(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no pipeline {name:?}")))?;
    Ok(Json(json!(row)))
}

async fn plan_pipeline(
    State(st): State<AppState>,
    _id: Identity,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = st
        .engine
        .store()
        .get_pipeline(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no pipeline {name:?}")))?;
    let (p, pl) = check_pipeline(&st, &format!("{name}.yaml"), &row.yaml).await?;
    Ok(Json(plan_json(&p, &pl, st.engine.now())))
}

// ---- trains -------------------------------------------------------------------

#[derive(Deserialize)]
struct StartBody {
    pipeline: String,
    version: String,
}

fn train_id(pipeline: &str) -> String {
    let mut b = [0u8; 3];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    format!(
        "{pipeline}-{}-{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        hex::encode(b)
    )
}

async fn start_train(
    State(st): State<AppState>,
    id: Identity,
    JsonBody(b): JsonBody<StartBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::StartTrain)?;
    if !valid_version(&b.version) {
        return Err(ApiError::bad_request(format!(
            "invalid version {:?}: use 1-128 letters, digits, '.', '-', '_' or '+'",
            b.version
        )));
    }
    let row = st
        .engine
        .store()
        .get_pipeline(&b.pipeline)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("no pipeline {:?}; submit it first", b.pipeline))
        })?;
    let (p, pl) = check_pipeline(&st, &format!("{}.yaml", b.pipeline), &row.yaml).await?;
    // Local cells run the artifact binary: it must have been pushed.
    if p.artifact.kind == ArtifactKind::Binary {
        let cells = st.engine.store().cell_specs().await?;
        let local = cells
            .iter()
            .any(|c| pl.cell_tz.contains_key(&c.id) && c.target == TargetSpec::Local);
        if local
            && st
                .engine
                .store()
                .get_artifact(&p.artifact.name, &b.version)
                .await?
                .is_none()
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "artifact_missing",
                format!(
                    "artifact {} version {} has not been pushed; run `conductor artifact push {} {} PATH` first",
                    p.artifact.name, b.version, p.artifact.name, b.version
                ),
            ));
        }
    }
    let spec = TrainSpec {
        id: train_id(&p.name),
        pipeline: p.name.clone(),
        artifact: p.artifact.clone(),
        version: b.version.clone(),
        started_by: id.name.clone(),
        steps: p.steps.clone(),
        on_failure: p.on_failure,
        windows: p.parsed_windows(),
        plan: pl,
    };
    let t = st.engine.start_train(spec).await?;
    audit(
        &st,
        &id,
        "train.start",
        &t.spec.id,
        &format!("pipeline {} version {}", p.name, b.version),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!(t))))
}

#[derive(Deserialize)]
struct ListQuery {
    pipeline: Option<String>,
    limit: Option<i64>,
}

async fn list_trains(
    State(st): State<AppState>,
    _id: Identity,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let rows = st
        .engine
        .store()
        .list_trains(q.pipeline.as_deref(), limit)
        .await?;
    Ok(Json(json!({ "trains": rows })))
}

async fn get_train(
    State(st): State<AppState>,
    _id: Identity,
    Path(tid): Path<String>,
) -> ApiResult<Json<Value>> {
    let t = st
        .engine
        .train(&tid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no train {tid:?}")))?;
    let mut v = json!(t);
    v["gates_waiting"] = json!(t.gates_waiting());
    v["summary"] = json!(t.cell_summary());
    Ok(Json(v))
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

async fn train_events(
    State(st): State<AppState>,
    _id: Identity,
    Path(tid): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Value>> {
    let rows = st
        .engine
        .store()
        .train_events(
            &tid,
            q.after.unwrap_or(0),
            q.limit.unwrap_or(500).clamp(1, 5000),
        )
        .await?;
    Ok(Json(json!({ "events": rows })))
}

async fn train_logs(
    State(st): State<AppState>,
    _id: Identity,
    Path(tid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "logs": st.engine.store().step_logs(&tid).await? }),
    ))
}

#[derive(Deserialize)]
struct GateBody {
    gate: String,
    #[serde(default)]
    reason: Option<String>,
}

fn check_reason(r: &Option<String>) -> ApiResult<()> {
    match r {
        Some(s) if s.len() > 2000 => Err(ApiError::bad_request(
            "reason is longer than 2000 characters",
        )),
        _ => Ok(()),
    }
}

async fn decide(
    st: &AppState,
    id: &Identity,
    tid: &str,
    b: GateBody,
    approve: bool,
) -> ApiResult<Json<Value>> {
    require(id, Action::Approve)?;
    check_reason(&b.reason)?;
    let (wave, by, groups, admin, reason) = (
        b.gate.clone(),
        id.name.clone(),
        id.groups.clone(),
        id.role == Role::Admin,
        b.reason.clone(),
    );
    let ev = if approve {
        Event::Approved {
            wave,
            by,
            groups,
            admin,
            reason,
        }
    } else {
        Event::Rejected {
            wave,
            by,
            groups,
            admin,
            reason,
        }
    };
    let t = st.engine.command(tid, ev).await?;
    let action = if approve {
        "train.approve"
    } else {
        "train.reject"
    };
    audit(
        st,
        id,
        action,
        tid,
        &format!("gate {} reason {:?}", b.gate, b.reason.unwrap_or_default()),
    )
    .await?;
    Ok(Json(json!(t)))
}

async fn approve(
    State(st): State<AppState>,
    id: Identity,
    Path(tid): Path<String>,
    JsonBody(b): JsonBody<GateBody>,
) -> ApiResult<Json<Value>> {
    decide(&st, &id, &tid, b, true).await
}

async fn reject(
    State(st): State<AppState>,
    id: Identity,
    Path(tid): Path<String>,
    JsonBody(b): JsonBody<GateBody>,
) -> ApiResult<Json<Value>> {
    decide(&st, &id, &tid, b, false).await
}

/// Cancel or roll back a train on behalf of `id`, and audit it.
async fn stop_train(
    st: &AppState,
    id: &Identity,
    tid: &str,
    event: Event,
    action: &str,
) -> ApiResult<Json<Value>> {
    require(id, Action::CancelOrRollback)?;
    let t = st.engine.command(tid, event).await?;
    audit(st, id, action, tid, "").await?;
    Ok(Json(json!(t)))
}

async fn cancel(
    State(st): State<AppState>,
    id: Identity,
    Path(tid): Path<String>,
) -> ApiResult<Json<Value>> {
    let ev = Event::CancelRequested {
        by: id.name.clone(),
    };
    stop_train(&st, &id, &tid, ev, "train.cancel").await
}

async fn rollback(
    State(st): State<AppState>,
    id: Identity,
    Path(tid): Path<String>,
) -> ApiResult<Json<Value>> {
    let ev = Event::RollbackRequested {
        by: id.name.clone(),
    };
    stop_train(&st, &id, &tid, ev, "train.rollback").await
}

// ---- cells, leases, artifacts ------------------------------------------------

async fn list_cells(State(st): State<AppState>, _id: Identity) -> ApiResult<Json<Value>> {
    let mut cells = Vec::new();
    for c in st.engine.store().list_cells().await? {
        // Desired (the shape's workers) next to observed (what runs).
        let want = st.supervisor.workers_for(&c.spec.shape);
        let running = st.supervisor.worker_counts(&c.spec.id);
        let mut v = serde_json::to_value(&c).unwrap_or(Value::Null);
        v["workers"] = json!({ "desired": want, "running": running });
        cells.push(v);
    }
    Ok(Json(json!({ "cells": cells })))
}

// ---- resizes ------------------------------------------------------------------

impl From<PlannerError> for ApiError {
    fn from(e: PlannerError) -> ApiError {
        match e {
            PlannerError::Refused { message, .. } => ApiError::bad_request(message),
            PlannerError::Unreachable(..) | PlannerError::Failed(_) => {
                tracing::warn!(error = %e, "capacity planner request failed");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "planner_unavailable",
                    e.to_string(),
                )
            }
        }
    }
}

impl From<ResizeError> for ApiError {
    fn from(e: ResizeError) -> ApiError {
        use ResizeError as E;
        match e {
            E::NoCell(_) | E::NotFound(_) => ApiError::not_found(e.to_string()),
            E::NoShape(..) | E::SameShape(..) => ApiError::bad_request(e.to_string()),
            E::NotActive(..) | E::Busy { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            E::Refused(r) => {
                let status = match r {
                    conductor_core::resize::ResizeRefusal::SelfApproval(_) => StatusCode::FORBIDDEN,
                    _ => StatusCode::CONFLICT,
                };
                let code = if status == StatusCode::FORBIDDEN {
                    "forbidden"
                } else {
                    "conflict"
                };
                ApiError::new(status, code, r.to_string())
            }
            E::Store(s) => s.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeBody {
    shape: String,
    #[serde(default)]
    reason: String,
}

async fn resize_cell(
    State(st): State<AppState>,
    id: Identity,
    Path(cell): Path<String>,
    JsonBody(b): JsonBody<ResizeBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::ManageCells)?;
    check_reason(&Some(b.reason.clone()))?;
    if !valid_id(&cell) || !valid_id(&b.shape) {
        return Err(ApiError::bad_request("invalid cell or shape name"));
    }
    let rz = st
        .resizer
        .create(ResizeRequest {
            cell: cell.clone(),
            shape: b.shape.clone(),
            by: id.name.clone(),
            reason: b.reason.clone(),
            needs_approval: false,
        })
        .await?;
    audit(
        &st,
        &id,
        "cell.resize",
        &cell,
        &format!("{}: {} -> {}", rz.id, rz.from_shape, rz.to_shape),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "resize": rz }))))
}

#[derive(Deserialize)]
struct ResizeQuery {
    #[serde(default)]
    open: bool,
    limit: Option<i64>,
}

async fn list_resizes(
    State(st): State<AppState>,
    _id: Identity,
    Query(q): Query<ResizeQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(
        json!({ "resizes": st.engine.store().list_resizes(q.open, limit).await? }),
    ))
}

async fn get_resize(
    State(st): State<AppState>,
    _id: Identity,
    Path(rid): Path<String>,
) -> ApiResult<Json<Value>> {
    let rz = st
        .engine
        .store()
        .get_resize(&rid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no resize {rid:?}")))?;
    Ok(Json(json!({ "resize": rz })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    reason: String,
}

/// Approvers, SREs and admins decide on gated resizes (never their own).
fn require_resize_decision(id: &Identity) -> ApiResult<()> {
    if id.role.may(Action::Approve) || id.role.may(Action::ManageCells) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role {} may not approve or reject resizes", id.role),
        ))
    }
}

async fn approve_resize(
    State(st): State<AppState>,
    id: Identity,
    Path(rid): Path<String>,
    JsonBody(b): JsonBody<DecisionBody>,
) -> ApiResult<Json<Value>> {
    require_resize_decision(&id)?;
    check_reason(&Some(b.reason.clone()))?;
    let rz = st
        .resizer
        .command(
            &rid,
            conductor_core::resize::ResizeEvent::Approved {
                by: id.name.clone(),
            },
        )
        .await?;
    audit(&st, &id, "resize.approve", &rid, &b.reason).await?;
    Ok(Json(json!({ "resize": rz })))
}

async fn reject_resize(
    State(st): State<AppState>,
    id: Identity,
    Path(rid): Path<String>,
    JsonBody(b): JsonBody<DecisionBody>,
) -> ApiResult<Json<Value>> {
    require_resize_decision(&id)?;
    check_reason(&Some(b.reason.clone()))?;
    if b.reason.trim().is_empty() {
        return Err(ApiError::bad_request("a rejection needs a reason"));
    }
    let rz = st
        .resizer
        .command(
            &rid,
            conductor_core::resize::ResizeEvent::Rejected {
                by: id.name.clone(),
                reason: b.reason.clone(),
            },
        )
        .await?;
    audit(&st, &id, "resize.reject", &rid, &b.reason).await?;
    Ok(Json(json!({ "resize": rz })))
}

#[derive(Deserialize)]
struct CellQuery {
    cell: Option<String>,
}

async fn deploy_log(
    State(st): State<AppState>,
    _id: Identity,
    Query(q): Query<CellQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "deploys": st.engine.store().deploy_log(q.cell.as_deref()).await? }),
    ))
}

async fn leases(State(st): State<AppState>, _id: Identity) -> Json<Value> {
    Json(json!({ "leases": st.engine.leases().view() }))
}

async fn routes(State(st): State<AppState>, _id: Identity) -> Json<Value> {
    Json(json!({ "routes": st.supervisor.routes() }))
}

async fn list_artifacts(State(st): State<AppState>, _id: Identity) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "artifacts": st.engine.store().list_artifacts().await? }),
    ))
}

async fn push_artifact(
    State(st): State<AppState>,
    id: Identity,
    Path((name, version)): Path<(String, String)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::PushArtifact)?;
    let body = body.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("artifact over {MAX_ARTIFACT} bytes"),
        )
    })?;
    if !valid_id(&name) {
        return Err(ApiError::bad_request(format!(
            "invalid artifact name {name:?}"
        )));
    }
    if !valid_version(&version) {
        return Err(ApiError::bad_request(format!(
            "invalid version {version:?}"
        )));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("empty artifact"));
    }
    if st
        .engine
        .store()
        .get_artifact(&name, &version)
        .await?
        .is_some()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("artifact {name} {version} already exists; versions are immutable"),
        ));
    }
    let sha = hex::encode(Sha256::digest(&body));
    let path = st.artifacts.path(&name, &version);
    let write = |path: std::path::PathBuf, body: Bytes| -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other("no parent"))?;
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, &body)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    let size = body.len() as i64;
    tokio::task::spawn_blocking(move || write(path, body))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "artifact write failed",
            )
        })?
        .map_err(|e| {
            tracing::error!(error = %e, "cannot write an artifact");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "could not store the artifact; see the server log",
            )
        })?;
    let row = ArtifactRow {
        name: name.clone(),
        version: version.clone(),
        sha256: sha.clone(),
        size,
        pushed_by: id.name.clone(),
        pushed_at: st.engine.now().to_rfc3339(),
    };
    st.engine.store().put_artifact(&row).await?;
    audit(
        &st,
        &id,
        "artifact.push",
        &format!("{name}:{version}"),
        &format!("sha256 {sha} size {size}"),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!(row))))
}

// ---- tokens and audit -------------------------------------------------------------

#[derive(Deserialize)]
struct TokenBody {
    name: String,
    role: String,
    #[serde(default)]
    groups: Vec<String>,
}

async fn create_token(
    State(st): State<AppState>,
    id: Identity,
    JsonBody(b): JsonBody<TokenBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::ManageTokens)?;
    let role: Role = b.role.parse().map_err(ApiError::bad_request)?;
    if b.name.is_empty()
        || b.name.len() > 64
        || !b
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        return Err(ApiError::bad_request(
            "token name must be 1-64 letters, digits, '-', '_', '.' or '@'",
        ));
    }
    if b.groups.len() > 32 || b.groups.iter().any(|g| !valid_id(g)) {
        return Err(ApiError::bad_request(
            "groups must be at most 32 ids of lowercase letters, digits, '-' or '_'",
        ));
    }
    let token = new_token();
    st.engine
        .store()
        .create_token(
            &b.name,
            &role.to_string(),
            &b.groups,
            &hash_token(&token),
            st.engine.now(),
        )
        .await?;
    audit(
        &st,
        &id,
        "token.create",
        &b.name,
        &format!("role {role} groups {}", b.groups.join(",")),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": b.name, "role": role, "groups": b.groups, "token": token })),
    ))
}

async fn audit_log(
    State(st): State<AppState>,
    id: Identity,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Value>> {
    require(&id, Action::ReadAudit)?;
    let rows = st
        .engine
        .store()
        .audit_log(q.after.unwrap_or(0), q.limit.unwrap_or(200).clamp(1, 5000))
        .await?;
    Ok(Json(json!({ "audit": rows })))
}
