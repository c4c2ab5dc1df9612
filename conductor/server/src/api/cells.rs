//! Cells, resizes, the deploy log, leases and routes.

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/cells", get(list_cells))
        .route("/cells/deploys", get(deploy_log))
        .route("/cells/{id}/resize", post(resize_cell))
        .route("/resizes", get(list_resizes))
        .route("/resizes/{id}", get(get_resize))
        .route("/resizes/{id}/approve", post(approve_resize))
        .route("/resizes/{id}/reject", post(reject_resize))
        .route("/leases", get(leases))
        .route("/routes", get(route_table))
}
// ---- cells, leases, artifacts ------------------------------------------------

async fn list_cells(State(st): State<AppState>, _id: Identity) -> ApiResult<Json<Value>> {
    let mut cells = Vec::new();
    for c in st.store.list_cells().await? {
        // Desired (the shape's workers) next to observed (what runs).
        let workers = wire::Workers {
            desired: st.supervisor.workers_for(&c.spec.shape),
            running: st.supervisor.worker_counts(&c.spec.id),
        };
        cells.push(json!(wire::CellView::new(&c, workers)));
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
            E::Workflow(w) => w.into(),
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
    // Audited as cell.resize, with its reason, in the transaction that
    // creates it.
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
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "resize": wire::ResizeView::from(&rz) })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    let rows = st.store.list_resizes(q.open, limit).await?;
    let resizes: Vec<wire::ResizeView> = wire::views(&rows);
    Ok(Json(json!({ "resizes": resizes })))
}

async fn get_resize(
    State(st): State<AppState>,
    _id: Identity,
    Path(rid): Path<String>,
) -> ApiResult<Json<Value>> {
    let rz = st
        .store
        .get_resize(&rid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no resize {rid:?}")))?;
    Ok(Json(json!({ "resize": wire::ResizeView::from(&rz) })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    reason: String,
}

/// Approvers, SREs and admins decide on gated resizes (never their own).
fn require_resize_decision(id: &Identity) -> ApiResult<()> {
    require(id, Action::DecideResize)
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
            entry(&id, "resize.approve", &rid, &b.reason),
        )
        .await?;
    Ok(Json(json!({ "resize": wire::ResizeView::from(&rz) })))
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
            entry(&id, "resize.reject", &rid, &b.reason),
        )
        .await?;
    Ok(Json(json!({ "resize": wire::ResizeView::from(&rz) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CellQuery {
    cell: Option<String>,
}

async fn deploy_log(
    State(st): State<AppState>,
    _id: Identity,
    Query(q): Query<CellQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "deploys": st.store.deploy_log(q.cell.as_deref()).await? }),
    ))
}

async fn leases(State(st): State<AppState>, _id: Identity) -> Json<Value> {
    Json(json!({ "leases": st.leases.view() }))
}

async fn route_table(State(st): State<AppState>, _id: Identity) -> Json<Value> {
    Json(json!({ "routes": st.routing.table() }))
}
