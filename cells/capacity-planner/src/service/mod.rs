//! `capacity-planner serve`: scrape the cells on an interval into the usage
//! history, and answer plans over HTTP (the Conductor asks on behalf of
//! `conductor plan|tenants`).
//!
//! Every `/v1` call needs `Authorization: Bearer <token>`, checked before
//! any of the request body is read (a caller without the token cannot make
//! the planner buffer anything). The caller sends the cells (the Conductor
//! owns the inventory); the planner adds the usage it has seen. Errors are
//! JSON `{code, message}`.

use crate::history::History;
use crate::{Cell, Policy};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cells_inventory::{valid_id, Shape};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod cells;
pub use cells::{is_store_id, scrape_loop};

/// Largest request body (a usage import).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Most cells one request may name.
pub const MAX_CELLS: usize = 100_000;

pub struct Config {
    pub shapes: Vec<Shape>,
    pub history: History,
    /// The Conductor's routing table, where the cells' workers are found.
    pub routes_file: Option<PathBuf>,
    /// The artifact whose `/metrics` are scraped.
    pub artifact: String,
    pub interval: Duration,
    /// How far back plans look.
    pub window_secs: f64,
    /// Samples older than this are deleted.
    pub retention_secs: f64,
    pub token: String,
    /// The data planes' admin key (to read and push rate limits).
    pub fga_admin_key: Option<String>,
}

#[derive(Clone)]
pub struct AppState {
    cfg: Arc<Config>,
    http: reqwest::Client,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<crate::history::HistoryError> for ApiError {
    fn from(e: crate::history::HistoryError) -> ApiError {
        tracing::error!(error = %e, "usage history error while serving a request");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error; see the planner's log".into(),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The bearer token, checked before the handler (and so before any of the
/// body is read).
async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match authorize(&st, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn authorize(st: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = given.is_some_and(|g| {
        let (a, b) = (g.as_bytes(), st.cfg.token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthenticated",
            message: "a valid bearer token is required".into(),
        })
    }
}

fn json_body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

/// What every planning request carries.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanBody {
    cells: Vec<Cell>,
    #[serde(default)]
    headroom: Option<f64>,
    #[serde(default)]
    horizon_days: Option<f64>,
    // place
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    expected_rps: Option<f64>,
    #[serde(default)]
    expected_tuples: Option<f64>,
    #[serde(default)]
    expected_connections: Option<f64>,
    // limits
    #[serde(default)]
    push: bool,
}

impl PlanBody {
    fn policy(&self) -> ApiResult<Policy> {
        let mut p = Policy::default();
        if let Some(h) = self.headroom {
            if !(h > 0.0 && h <= 1.0) {
                return Err(ApiError::bad(format!(
                    "headroom must be in (0, 1], got {h}"
                )));
            }
            p.headroom = h;
        }
        if let Some(d) = self.horizon_days {
            if !(d.is_finite() && (0.0..=365.0).contains(&d)) {
                return Err(ApiError::bad(format!(
                    "horizon_days must be in [0, 365], got {d}"
                )));
            }
            p.horizon_secs = d * 86_400.0;
        }
        Ok(p)
    }

    fn check_cells(&self, shapes: &[Shape]) -> ApiResult<()> {
        if self.cells.len() > MAX_CELLS {
            return Err(ApiError::bad(format!(
                "at most {MAX_CELLS} cells per request"
            )));
        }
        for c in &self.cells {
            if !valid_id(&c.id) || c.region.is_empty() || c.region.len() > 63 {
                return Err(ApiError::bad(format!("invalid cell {:?}", c.id)));
            }
            if !shapes.iter().any(|s| s.name == c.shape) {
                return Err(ApiError::bad(format!(
                    "cell {} has shape {:?}, which the planner does not know",
                    c.id, c.shape
                )));
            }
        }
        Ok(())
    }
}

async fn usage_for(st: &AppState) -> ApiResult<Vec<crate::TenantUsage>> {
    Ok(st
        .cfg
        .history
        .usage(now_secs() - st.cfg.window_secs)
        .await?)
}

fn prepare(st: &AppState, body: &Bytes) -> ApiResult<(PlanBody, Policy)> {
    let b: PlanBody = json_body(body)?;
    b.check_cells(&st.cfg.shapes)?;
    let p = b.policy()?;
    Ok((b, p))
}

async fn plan(State(st): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let (b, policy) = prepare(&st, &body)?;
    let usage = usage_for(&st).await?;
    let r = crate::plan_capacity(&st.cfg.shapes, &b.cells, &usage, &policy);
    Ok(Json(json!({ "plan": r })))
}

async fn place(State(st): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let (b, policy) = prepare(&st, &body)?;
    let region = b
        .region
        .clone()
        .ok_or_else(|| ApiError::bad("region is required"))?;
    let d = [
        b.expected_rps.unwrap_or(0.0),
        b.expected_tuples.unwrap_or(0.0),
        b.expected_connections.unwrap_or(0.0),
    ];
    if d.iter().any(|x| !x.is_finite() || *x < 0.0 || *x > 1e12) {
        return Err(ApiError::bad("expected usage must be numbers in [0, 1e12]"));
    }
    let usage = usage_for(&st).await?;
    let p = crate::place(&st.cfg.shapes, &b.cells, &usage, &region, d, &policy)
        .map_err(ApiError::bad)?;
    Ok(Json(json!({ "placement": p })))
}

async fn rebalance(State(st): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let (b, policy) = prepare(&st, &body)?;
    let usage = usage_for(&st).await?;
    let r = crate::rebalance(&st.cfg.shapes, &b.cells, &usage, &policy);
    Ok(Json(
        json!({ "moves": r.moves, "unresolved": r.unresolved }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// Move every sample by the same amount so that the newest one is now
    /// (recorded or example usage replayed as if it had just happened).
    #[serde(default)]
    shift_to_now: bool,
}

async fn import(
    State(st): State<AppState>,
    q: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let Query(q) = q.map_err(|e| ApiError::bad(format!("bad query string: {}", e.body_text())))?;
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad("the usage file is not UTF-8"))?;
    let mut tenants = crate::parse_usage("request body", text).map_err(ApiError::bad)?;
    if q.shift_to_now {
        crate::shift_to(&mut tenants, now_secs());
    }
    // Samples older than the retention would be deleted at the next scrape:
    // refuse them rather than lose them silently.
    let oldest = now_secs() - st.cfg.retention_secs;
    let stale = tenants
        .iter()
        .flat_map(|t| &t.samples)
        .filter(|s| s.at < oldest)
        .count();
    if stale > 0 {
        return Err(ApiError::bad(format!(
            "{stale} samples are older than the history's retention ({:.0} days); `at` is Unix seconds (plan an old file offline: capacity-planner plan --usage FILE)",
            st.cfg.retention_secs / 86_400.0
        )));
    }
    let n = st.cfg.history.import(&tenants).await?;
    Ok(Json(json!({ "imported": n, "tenants": tenants.len() })))
}

async fn summary(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    let usage = usage_for(&st).await?;
    Ok(Json(json!({
        "backend": st.cfg.history.backend(),
        "samples": st.cfg.history.count().await?,
        "tenants": usage.len(),
        "window_secs": st.cfg.window_secs,
    })))
}

pub fn router(cfg: Arc<Config>) -> Router {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap_or_default();
    let st = AppState { cfg, http };
    Router::new()
        .route("/v1/usage", get(summary).post(import))
        .route("/v1/plan", post(plan))
        .route("/v1/place", post(place))
        .route("/v1/rebalance", post(rebalance))
        .route("/v1/limits", post(cells::limits))
        .route("/v1/tenants", post(cells::tenants))
        // Every route above: the token before the body.
        .route_layer(axum::middleware::from_fn_with_state(
            st.clone(),
            require_token,
        ))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                code: "not_found",
                message: "no such endpoint".into(),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(st)
}
