//! The OpenFGA HTTP API (v1): stores, authorization models, tuples, Check,
//! BatchCheck, Expand, ListObjects, ListUsers, ReadChanges; plus the admin
//! API, `/healthz` and `/metrics`. Errors are `{"code", "message"}` with
//! OpenFGA's code names and HTTP statuses, for bad bodies, query strings and
//! paths alike.
//!
//! One module per resource; `common` holds the error type, the extractors
//! and the request fields every resource shares; `guard` what runs around
//! the handlers (authentication, the store-id check, rate limits, metrics).
//! *Invariant*: every `/stores/{store}/…` handler runs only after the guard
//! found `{store}` to be a valid id of a live store.

mod admin;
pub mod common;
mod expand;
mod guard;
mod models;
mod queries;
mod stores;
mod tuples;

pub use common::{ApiError, MAX_BODY, MODEL_ID_HEADER};
pub use queries::{MAX_BATCH_CHECK, MAX_CONTEXTUAL};
pub use tuples::MAX_WRITE;

use crate::store::Db;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Pre-shared keys; empty: no authentication.
    pub keys: Arc<Vec<String>>,
    pub list_objects_max: usize,
    /// Key for `/admin` (rate limits); None: the admin API is off.
    pub admin_key: Option<Arc<String>>,
    pub limiter: Arc<std::sync::Mutex<crate::ratelimit::Limiter>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub started: std::time::Instant,
}

pub fn router(state: AppState) -> Router {
    use axum::middleware::from_fn_with_state;
    let api = Router::new()
        .route(
            "/stores",
            post(stores::create_store).get(stores::list_stores),
        )
        .route(
            "/stores/{store}",
            get(stores::get_store).delete(stores::delete_store),
        )
        .route(
            "/stores/{store}/authorization-models",
            post(models::write_model).get(models::list_models),
        )
        .route(
            "/stores/{store}/authorization-models/{id}",
            get(models::get_model),
        )
        .route("/stores/{store}/write", post(tuples::write))
        .route("/stores/{store}/read", post(tuples::read))
        .route("/stores/{store}/changes", get(tuples::changes))
        .route("/stores/{store}/check", post(queries::check))
        .route("/stores/{store}/batch-check", post(queries::batch_check))
        .route("/stores/{store}/list-objects", post(queries::list_objects))
        .route("/stores/{store}/list-users", post(queries::list_users))
        .route("/stores/{store}/expand", post(expand::expand))
        .route_layer(from_fn_with_state(state.clone(), guard::limit_and_observe))
        .layer(from_fn_with_state(state.clone(), guard::authenticate));
    let admin = Router::new()
        .route("/admin/rate-limits", get(admin::get_limits))
        .route(
            "/admin/rate-limits/{store}",
            put(admin::put_limit).delete(admin::delete_limit),
        )
        .layer(from_fn_with_state(state.clone(), guard::admin_only));
    Router::new()
        .merge(api)
        .merge(admin)
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "SERVING" })) }),
        )
        .route("/metrics", get(admin::metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "undefined_endpoint", "Not Found")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
