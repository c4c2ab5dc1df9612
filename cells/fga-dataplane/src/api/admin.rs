//! The admin API (rate limits per store, behind the admin key) and
//! `/metrics`.

use super::common::{ApiError, ApiResult, Body, Path};
use super::stores::store_id;
use super::AppState;
use crate::ratelimit::Limit;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

pub async fn get_limits(State(st): State<AppState>) -> Json<Value> {
    let l = st.limiter.lock().unwrap_or_else(|p| p.into_inner());
    Json(json!({ "default": l.default, "stores": l.limits() }))
}

pub async fn put_limit(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(limit): Body<Limit>,
) -> ApiResult<Json<Value>> {
    store_id(&store)?;
    if !limit.valid() {
        return Err(ApiError::validation(
            "rate must be in (0, 1e7] and burst in [1, 1e8]",
        ));
    }
    st.limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .set(&store, Some(limit));
    tracing::info!(%store, rate = limit.rate, burst = limit.burst, "rate limit set");
    Ok(Json(json!({ "store": store, "limit": limit })))
}

pub async fn delete_limit(
    State(st): State<AppState>,
    Path(store): Path<String>,
) -> ApiResult<StatusCode> {
    store_id(&store)?;
    st.limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .set(&store, None);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn metrics(State(st): State<AppState>) -> ApiResult<Response> {
    let tuples = st.db.tuple_counts().await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(&tuples),
    )
        .into_response())
}
