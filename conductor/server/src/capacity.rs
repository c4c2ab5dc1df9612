//! The SRE's capacity API: the plan (and applying it as resize operations),
//! rate limits, rebalancing, tenant placement, and the cell lifecycle (add
//! from the template, drain, retire).
//!
//! Plans come from the capacity planner service; the Conductor sends it the
//! inventory, and turns its answers into audited operations.

use crate::api::{audit, entry, require, ApiError, ApiResult, AppState, JsonBody};
use crate::auth::{Action, Identity};
use crate::resizer::{ResizeError, ResizeRequest};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use capacity_planner::FleetReport;
use cells_inventory::valid_id;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/capacity/plan", get(plan))
        .route("/capacity/apply", post(apply))
        .route("/capacity/limits", get(limits))
        .route("/capacity/limits/push", post(push_limits))
        .route("/capacity/rebalance", get(rebalance))
        .route(
            "/capacity/usage",
            post(import).layer(axum::extract::DefaultBodyLimit::max(MAX_USAGE)),
        )
        .route("/tenants/place", post(place))
        .route("/cells", post(add_cell))
        .route("/cells/{id}/drain", post(drain_cell))
        .route("/cells/{id}/retire", post(retire_cell))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyQuery {
    headroom: Option<f64>,
    horizon_days: Option<f64>,
}

/// The cells the planner plans for: all but retired ones; `placeable`:
/// only active ones (a draining cell takes no new tenants).
async fn planner_cells(st: &AppState, placeable: bool) -> ApiResult<Vec<Value>> {
    Ok(st
        .engine
        .store()
        .list_cells()
        .await?
        .into_iter()
        .filter(|c| {
            if placeable {
                c.status == "active"
            } else {
                c.status != "retired"
            }
        })
        .map(|c| json!({"id": c.spec.id, "region": c.spec.region, "shape": c.spec.shape}))
        .collect())
}

async fn ask(st: &AppState, path: &str, mut body: Value, placeable: bool) -> ApiResult<Value> {
    let planner = st.planner.as_ref().ok_or_else(no_planner)?;
    body["cells"] = Value::Array(planner_cells(st, placeable).await?);
    Ok(planner.call(path, &body).await?)
}

fn no_planner() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "planner_unavailable",
        "no capacity planner: start the Conductor with capacity-planner beside it (or --planner URL)",
    )
}

fn policy_body(q: &PolicyQuery) -> Value {
    json!({"headroom": q.headroom, "horizon_days": q.horizon_days})
}

async fn plan(
    State(st): State<AppState>,
    _id: Identity,
    Query(q): Query<PolicyQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(ask(&st, "/plan", policy_body(&q), false).await?))
}

/// Turn the plan's recommendations into resize operations; shrinks wait
/// for an approval by someone else.
async fn apply(
    State(st): State<AppState>,
    id: Identity,
    JsonBody(q): JsonBody<PolicyQuery>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::ManageCells)?;
    let v = ask(&st, "/plan", policy_body(&q), false).await?;
    let report: FleetReport = serde_json::from_value(v["plan"].clone()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "planner_unavailable",
            format!("the planner's answer is not a plan: {e}"),
        )
    })?;
    let (mut created, mut skipped) = (Vec::new(), Vec::new());
    for c in &report.cells {
        let Some(to) = c.recommended.as_deref().filter(|s| *s != c.shape) else {
            if c.action == "split" {
                skipped.push(json!({"cell": c.cell, "reason": "no shape holds the forecast; split the cell (move tenants, see rebalance)"}));
            }
            continue;
        };
        let shrink = c.action == "shrink";
        let req = ResizeRequest {
            cell: c.cell.clone(),
            shape: to.to_string(),
            by: id.name.clone(),
            reason: format!("plan capacity --apply: {} ({} -> {to})", c.action, c.shape),
            needs_approval: shrink,
        };
        // The resizer audits each resize (cell.resize, with the plan's
        // reason) in the transaction that creates it.
        match st.resizer.create(req).await {
            Ok(rz) => created.push(rz),
            Err(
                e @ (ResizeError::Busy { .. }
                | ResizeError::NotActive(..)
                | ResizeError::SameShape(..)),
            ) => {
                skipped.push(json!({"cell": c.cell, "reason": e.to_string()}));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"plan": report, "resizes": created, "skipped": skipped})),
    ))
}

async fn limits(
    State(st): State<AppState>,
    _id: Identity,
    Query(q): Query<PolicyQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(ask(&st, "/limits", policy_body(&q), false).await?))
}

async fn push_limits(
    State(st): State<AppState>,
    id: Identity,
    JsonBody(q): JsonBody<PolicyQuery>,
) -> ApiResult<Json<Value>> {
    require(&id, Action::ManageCells)?;
    let mut body = policy_body(&q);
    body["push"] = json!(true);
    let v = ask(&st, "/limits", body, false).await?;
    let pushed = v["pushed"].as_array().map_or(0, Vec::len);
    let failed = v["pushed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["ok"] != json!(true))
        .count();
    audit(
        &st,
        &id,
        "capacity.limits.push",
        "fleet",
        &format!("{pushed} limits pushed, {failed} failed"),
    )
    .await?;
    Ok(Json(v))
}

/// Largest usage file accepted.
const MAX_USAGE: usize = 64 * 1024 * 1024;

async fn import(
    State(st): State<AppState>,
    id: Identity,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<Value>> {
    require(&id, Action::ManageCells)?;
    let body = body.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("usage file over {MAX_USAGE} bytes"),
        )
    })?;
    let planner = st.planner.as_ref().ok_or_else(no_planner)?;
    let v = planner.import(body).await?;
    audit(
        &st,
        &id,
        "capacity.import",
        "usage",
        &format!("{} samples", v["imported"]),
    )
    .await?;
    Ok(Json(v))
}

async fn rebalance(
    State(st): State<AppState>,
    _id: Identity,
    Query(q): Query<PolicyQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(ask(&st, "/rebalance", policy_body(&q), false).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceBody {
    region: String,
    expected_rps: f64,
    expected_tuples: f64,
    #[serde(default)]
    expected_connections: f64,
    /// Stamp the new cell when the region has no room (role sre).
    #[serde(default)]
    stamp: bool,
    headroom: Option<f64>,
    horizon_days: Option<f64>,
}

async fn place(
    State(st): State<AppState>,
    id: Identity,
    JsonBody(b): JsonBody<PlaceBody>,
) -> ApiResult<Json<Value>> {
    if b.stamp {
        require(&id, Action::ManageCells)?;
    }
    if b.region.is_empty() || b.region.len() > 63 {
        return Err(ApiError::bad_request("invalid region"));
    }
    let body = json!({
        "region": b.region, "expected_rps": b.expected_rps, "expected_tuples": b.expected_tuples,
        "expected_connections": b.expected_connections, "headroom": b.headroom, "horizon_days": b.horizon_days,
    });
    let mut v = ask(&st, "/place", body, true).await?;
    let new_shape = v["placement"]["new_shape"].as_str().map(String::from);
    if let (true, None, Some(shape)) = (b.stamp, v["placement"]["cell"].as_str(), new_shape) {
        let cell = stamp(&st, &id, &b.region, &shape).await?;
        v["stamped"] = json!(cell);
    }
    Ok(Json(v))
}

/// Stamp a new cell from the template and add it to the inventory.
async fn stamp(st: &AppState, id: &Identity, region: &str, shape: &str) -> ApiResult<Value> {
    let existing: Vec<_> = st
        .engine
        .store()
        .list_cells()
        .await?
        .into_iter()
        .map(|c| c.spec)
        .collect();
    let cell = st
        .template
        .stamp(region, shape, st.resizer.shapes(), &existing)
        .map_err(ApiError::bad_request)?;
    let audit = entry(
        id,
        "cell.add",
        &cell.id,
        &format!("{} {} from the template", cell.region, cell.shape),
    );
    st.engine
        .store()
        .add_cell(&cell, st.engine.now(), &audit)
        .await?;
    st.engine.refresh_cells().await?;
    Ok(json!(cell))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    region: String,
    shape: String,
}

async fn add_cell(
    State(st): State<AppState>,
    id: Identity,
    JsonBody(b): JsonBody<AddBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::ManageCells)?;
    if b.region.len() > 63 || !valid_id(&b.shape) {
        return Err(ApiError::bad_request("invalid region or shape"));
    }
    let cell = stamp(&st, &id, &b.region, &b.shape).await?;
    Ok((StatusCode::CREATED, Json(json!({ "cell": cell }))))
}

async fn cell_status(st: &AppState, cell: &str) -> ApiResult<String> {
    if !valid_id(cell) {
        return Err(ApiError::bad_request(format!("invalid cell id {cell:?}")));
    }
    st.engine
        .store()
        .cell_status(cell)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no cell {cell:?} in the inventory")))
}

/// Draining: the cell keeps serving (and receiving releases) but takes no
/// new tenants; move its tenants away, then retire it.
async fn drain_cell(
    State(st): State<AppState>,
    id: Identity,
    Path(cell): Path<String>,
) -> ApiResult<Json<Value>> {
    require(&id, Action::ManageCells)?;
    match cell_status(&st, &cell).await?.as_str() {
        "active" => {}
        "draining" => return Ok(Json(json!({"cell": cell, "status": "draining"}))),
        other => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("cell {cell} is {other}"),
            ))
        }
    }
    st.engine
        .store()
        .set_cell_status(
            &cell,
            "draining",
            st.engine.now(),
            &entry(&id, "cell.drain", &cell, ""),
        )
        .await?;
    Ok(Json(json!({"cell": cell, "status": "draining"})))
}

/// Longest a retire waits for the cell's lease.
const RETIRE_WAIT: Duration = Duration::from_secs(120);

/// Retire a drained cell: under its lease (so no train or resize is on it),
/// stop its processes and take it out of the inventory for good.
async fn retire_cell(
    State(st): State<AppState>,
    id: Identity,
    Path(cell): Path<String>,
) -> ApiResult<Json<Value>> {
    require(&id, Action::ManageCells)?;
    match cell_status(&st, &cell).await?.as_str() {
        "draining" => {}
        "retired" => return Ok(Json(json!({"cell": cell, "status": "retired"}))),
        _ => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                "drain cell {cell} first (conductor cells drain {cell}) and move its tenants away"
            ),
            ))
        }
    }
    let holder = format!("retire:{cell}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    st.engine.leases().acquire(&cell, &holder, move || {
        let _ = tx.send(());
    });
    if tokio::time::timeout(RETIRE_WAIT, rx).await.is_err() {
        st.engine.leases().release(&cell, &holder);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("cell {cell} stayed busy (a train or resize holds it); try again"),
        ));
    }
    st.supervisor.stop_cell(&cell);
    let r = st
        .engine
        .store()
        .set_cell_status(
            &cell,
            "retired",
            st.engine.now(),
            &entry(&id, "cell.retire", &cell, ""),
        )
        .await;
    st.engine.leases().release(&cell, &holder);
    r?;
    st.engine.refresh_cells().await?;
    Ok(Json(json!({"cell": cell, "status": "retired"})))
}
