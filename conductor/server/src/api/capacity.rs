//! The SRE's capacity API: the plan (and applying it as resize operations),
//! rate limits, rebalancing, tenant placement, and the cell lifecycle (add
//! from the template, drain, retire).
//!
//! Plans come from the capacity planner service; the Conductor sends it the
//! inventory, and turns its answers into audited operations.
//!
//! Every handler that changes something checks the caller's role before it
//! reads the request body (`read_json`, `import`): a caller who may not act
//! cannot make the Conductor buffer anything.

use super::{audit, entry, require, wire, ApiError, ApiResult, AppState, JsonBody, MAX_JSON_BODY};
use crate::auth::{Action, Identity, Role};
use crate::capacity::{accepts_tenants, fga_version, tenants_from_answer, FGA_ARTIFACT};
use crate::resizer::{ResizeError, ResizeRequest};
use crate::store::{CellRow, CellStatusChange};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use capacity_planner::FleetReport;
use cells_inventory::valid_id;
use conductor_core::{CellStatus, LeaseHolder};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/capacity/plan", get(plan))
        .route("/capacity/apply", post(apply))
        .route("/capacity/limits", get(limits))
        .route("/capacity/limits/push", post(push_limits))
        .route("/capacity/rebalance", get(rebalance))
        .route("/capacity/usage", post(import))
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

/// The cells the planner plans for: all but retired ones. Only active
/// cells where the Conductor runs the FGA data plane take tenants: a
/// draining cell takes no new ones, and a cell without the data plane (a
/// command-target cell, whatever its scripts deployed) cannot be scraped,
/// limited or placed on.
async fn planner_cells(st: &AppState) -> ApiResult<Vec<Value>> {
    Ok(st
        .store
        .list_cells()
        .await?
        .into_iter()
        .filter(|c| c.status != CellStatus::Retired)
        .map(|c| {
            let fga_workers = st
                .supervisor
                .worker_counts(&c.spec.id)
                .get(FGA_ARTIFACT)
                .copied()
                .unwrap_or(0);
            let accepts = accepts_tenants(c.status, fga_workers);
            json!({"id": c.spec.id, "region": c.spec.region, "shape": c.spec.shape, "accepts_tenants": accepts})
        })
        .collect())
}

async fn ask(st: &AppState, path: &str, mut body: Value) -> ApiResult<Value> {
    let planner = st.planner.as_ref().ok_or_else(no_planner)?;
    body["cells"] = Value::Array(planner_cells(st).await?);
    Ok(planner.call(path, &body).await?)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("request body over {limit} bytes"),
    )
}

/// Read a body of at most `limit` bytes: refused at once when its declared
/// length is larger. Call only once the caller is allowed to act.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body over {limit} bytes, or cut short"),
        )
    })
}

/// A JSON body (an empty one is `T::default()`), read after the role check.
async fn read_json<T: DeserializeOwned + Default>(headers: &HeaderMap, body: Body) -> ApiResult<T> {
    let bytes = read_body(headers, body, MAX_JSON_BODY).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
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
    Ok(Json(ask(&st, "/plan", policy_body(&q)).await?))
}

/// Turn the plan's recommendations into resize operations; shrinks wait
/// for an approval by someone else.
async fn apply(
    State(st): State<AppState>,
    id: Identity,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::ManageCells)?;
    let q: PolicyQuery = read_json(&headers, body).await?;
    let v = ask(&st, "/plan", policy_body(&q)).await?;
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
        Json(
            json!({"plan": report, "resizes": wire::views::<_, wire::ResizeView>(&created), "skipped": skipped}),
        ),
    ))
}

async fn limits(
    State(st): State<AppState>,
    _id: Identity,
    Query(q): Query<PolicyQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(ask(&st, "/limits", policy_body(&q)).await?))
}

/// Push the limits to the cells' data planes; audited with the real
/// outcome: succeeded, partly or failed, and what failed.
async fn push_limits(
    State(st): State<AppState>,
    id: Identity,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    require(&id, Action::ManageCells)?;
    let q: PolicyQuery = read_json(&headers, body).await?;
    let mut body = policy_body(&q);
    body["push"] = json!(true);
    let mut v = match ask(&st, "/limits", body).await {
        Ok(v) => v,
        Err(e) => {
            let detail = format!("failed: nothing pushed: {}", e.message);
            audit(&st, &id, "capacity.limits.push", "fleet", &detail).await?;
            return Err(e);
        }
    };
    let outcome = match v["pushed"].as_array() {
        Some(results) => capacity_planner::report::push_outcome(results),
        // Fail closed: a push the planner does not account for failed.
        None => capacity_planner::report::push_outcome(&[json!({
            "ok": false, "detail": "the planner did not report what it pushed"
        })]),
    };
    audit(
        &st,
        &id,
        "capacity.limits.push",
        "fleet",
        &outcome.summary(),
    )
    .await?;
    v["outcome"] = json!(outcome.outcome);
    Ok(Json(v))
}

/// Largest usage file accepted.
const MAX_USAGE: usize = 64 * 1024 * 1024;

/// Import a usage file. The role is checked before a byte of the body is
/// read; a body declared larger than the limit is refused at once.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    #[serde(default)]
    shift_to_now: bool,
}

async fn import(
    State(st): State<AppState>,
    id: Identity,
    Query(q): Query<ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    require(&id, Action::ManageCells)?;
    let planner = st.planner.clone().ok_or_else(no_planner)?;
    let body = read_body(&headers, body, MAX_USAGE).await?;
    let v = planner.import(body, q.shift_to_now).await?;
    let shifted = if q.shift_to_now {
        " (shifted to now)"
    } else {
        ""
    };
    audit(
        &st,
        &id,
        "capacity.import",
        "usage",
        &format!("{} samples{shifted}", v["imported"]),
    )
    .await?;
    Ok(Json(v))
}

async fn rebalance(
    State(st): State<AppState>,
    _id: Identity,
    Query(q): Query<PolicyQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(ask(&st, "/rebalance", policy_body(&q)).await?))
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
    let mut v = ask(&st, "/place", body).await?;
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
        .store
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
    st.store.add_cell(&cell, st.clock.now(), &audit).await?;
    st.workflow.refresh_cells().await?;
    Ok(json!(cell))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AddBody {
    region: String,
    shape: String,
}

async fn add_cell(
    State(st): State<AppState>,
    id: Identity,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::ManageCells)?;
    let b: AddBody = read_json(&headers, body).await?;
    if b.region.len() > 63 || !valid_id(&b.shape) {
        return Err(ApiError::bad_request("invalid region or shape"));
    }
    let cell = stamp(&st, &id, &b.region, &b.shape).await?;
    Ok((StatusCode::CREATED, Json(json!({ "cell": cell }))))
}

async fn cell_status(st: &AppState, cell: &str) -> ApiResult<CellStatus> {
    if !valid_id(cell) {
        return Err(ApiError::bad_request(format!("invalid cell id {cell:?}")));
    }
    st.store
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
    match cell_status(&st, &cell).await? {
        CellStatus::Active => {}
        CellStatus::Draining => return Ok(Json(json!({"cell": cell, "status": "draining"}))),
        other => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("cell {cell} is {other}"),
            ))
        }
    }
    st.workflow
        .set_cell_status(
            CellStatusChange {
                cell: cell.clone(),
                status: CellStatus::Draining,
                at: st.clock.now(),
            },
            entry(&id, "cell.drain", &cell, ""),
        )
        .await?;
    Ok(Json(json!({"cell": cell, "status": "draining"})))
}

/// Longest a retire waits for the cell's lease.
const RETIRE_WAIT: Duration = Duration::from_secs(120);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetireBody {
    /// Retire even though tenants remain (or cannot be ruled out); admin only.
    #[serde(default)]
    force: bool,
}

/// The tenants a cell still hosts, by name; `Err` says why they cannot be
/// known (then only a forced retire goes ahead). A cell that never ran the
/// FGA data plane hosts none; for any other, the planner answers (from its
/// usage history and a live scrape of the cell's workers).
async fn tenants_on(st: &AppState, cell: &CellRow) -> Result<Vec<String>, String> {
    if fga_version(cell).is_none() {
        return Ok(Vec::new());
    }
    let planner = st
        .planner
        .as_ref()
        .ok_or("no capacity planner runs beside the Conductor")?;
    let v = planner
        .call("/tenants", &json!({"cell": cell.spec.id}))
        .await
        .map_err(|e| e.to_string())?;
    tenants_from_answer(cell, &v)
}

/// Retire a drained cell: under its lease (so no train or resize is on it),
/// stop its processes and take it out of the inventory for good. Refused
/// while the cell still hosts tenants (named), or when that cannot be
/// ruled out, unless an admin forces it (audited as `cell.retire.force`
/// with the tenants lost).
async fn retire_cell(
    State(st): State<AppState>,
    id: Identity,
    Path(cell): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    require(&id, Action::ManageCells)?;
    let b: RetireBody = read_json(&headers, body).await?;
    if b.force && id.role != Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an admin may force a retire (the tenants left on the cell are lost)",
        ));
    }
    match cell_status(&st, &cell).await? {
        CellStatus::Draining => {}
        CellStatus::Retired => return Ok(Json(json!({"cell": cell, "status": "retired"}))),
        CellStatus::Active => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                "drain cell {cell} first (conductor cells drain {cell}) and move its tenants away"
            ),
            ))
        }
    }
    let row = st
        .store
        .list_cells()
        .await?
        .into_iter()
        .find(|c| c.spec.id == cell)
        .ok_or_else(|| ApiError::not_found(format!("no cell {cell:?} in the inventory")))?;
    let refuse = |message: String| ApiError::new(StatusCode::CONFLICT, "conflict", message);
    let (forced, lost) = match tenants_on(&st, &row).await {
        Ok(t) if t.is_empty() => (None, Vec::new()),
        Ok(t) if !b.force => {
            return Err(refuse(format!(
                "cell {cell} still hosts {} tenant(s): {}; move them away first (conductor plan rebalance says where), or, as an admin, conductor cells retire {cell} --force (they are lost)",
                t.len(),
                t.join(", ")
            )))
        }
        Ok(t) => (
            Some(format!(
                "forced with {} tenant(s) on the cell, lost: {}",
                t.len(),
                t.join(", ")
            )),
            t,
        ),
        Err(why) if !b.force => {
            return Err(refuse(format!(
                "cannot tell whether cell {cell} still hosts tenants ({why}); try again, or, as an admin, conductor cells retire {cell} --force"
            )))
        }
        Err(why) => (Some(format!("forced; its tenants are unknown: {why}")), Vec::new()),
    };
    let holder = LeaseHolder::Retire(cell.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    st.leases.acquire(&cell, &holder, move || {
        let _ = tx.send(());
    });
    if tokio::time::timeout(RETIRE_WAIT, rx).await.is_err() {
        st.leases.release(&cell, &holder);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("cell {cell} stayed busy (a train or resize holds it); try again"),
        ));
    }
    st.supervisor.stop_cell(&cell);
    let r = st
        .workflow
        .set_cell_status(
            CellStatusChange {
                cell: cell.clone(),
                status: CellStatus::Retired,
                at: st.clock.now(),
            },
            match &forced {
                Some(detail) => entry(&id, "cell.retire.force", &cell, detail),
                None => entry(&id, "cell.retire", &cell, "no tenants left"),
            },
        )
        .await;
    st.leases.release(&cell, &holder);
    r?;
    st.workflow.refresh_cells().await?;
    Ok(Json(
        json!({"cell": cell, "status": "retired", "forced": forced.is_some(), "tenants_lost": lost}),
    ))
}
