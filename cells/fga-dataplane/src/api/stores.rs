//! Stores: create, list (optionally by exact name), get, delete; and the
//! store-id check every `/stores/{store}` route goes through first.

use super::common::{decode_token, hex_encode, page_size, ApiError, ApiResult, Body, Path, Query};
use super::AppState;
use crate::store::{is_ulid, StoreRow};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStore {
    #[serde(default)]
    name: String,
}

pub async fn create_store(
    State(st): State<AppState>,
    Body(b): Body<CreateStore>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if b.name.is_empty() || b.name.chars().count() > 64 {
        return Err(ApiError::validation("invalid CreateStoreRequest.Name: value length must be between 1 and 64 runes, inclusive"));
    }
    let s = st.db.create_store(&b.name).await?;
    Ok((StatusCode::CREATED, Json(json!(s))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListStoresQ {
    page_size: Option<i64>,
    continuation_token: Option<String>,
    /// Only the stores with exactly this name.
    name: Option<String>,
}

pub async fn list_stores(
    State(st): State<AppState>,
    Query(p): Query<ListStoresQ>,
) -> ApiResult<Json<Value>> {
    let n = page_size(p.page_size)?;
    let after = decode_token(&p.continuation_token)?;
    let name = p.name.as_deref().filter(|s| !s.is_empty());
    let rows = st.db.list_stores(&after, n, name).await?;
    let token = if rows.len() as i64 == n {
        rows.last().map(|r| hex_encode(&r.id)).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Json(json!({ "stores": rows, "continuation_token": token })))
}

/// The store's row (the guard has already checked that it exists; a store
/// deleted since is still not found).
async fn store_row(st: &AppState, id: &str) -> ApiResult<StoreRow> {
    st.db.get_store(id).await?.ok_or_else(store_not_found)
}

/// A store id as OpenFGA accepts it: a ULID in upper case.
pub fn store_id(id: &str) -> ApiResult<()> {
    if is_ulid(id) {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "invalid store id '{}': must be a ULID (26 characters of 0-9 and A-Z without I, L, O, U)",
            id.escape_debug()
        )))
    }
}

/// The check the guard runs for every `/stores/{store}` route, before rate
/// limiting and per-store metrics: a valid id of a live store.
pub async fn known_store(st: &AppState, id: &str) -> ApiResult<()> {
    store_id(id)?;
    if st.db.store_exists(id).await? {
        Ok(())
    } else {
        Err(store_not_found())
    }
}

pub fn store_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "store_id_not_found",
        "store not found",
    )
}

pub async fn get_store(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(store_row(&st, &id).await?)))
}

pub async fn delete_store(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    store_row(&st, &id).await?;
    st.db.delete_store(&id).await?;
    st.limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .forget(&id);
    Ok(StatusCode::NO_CONTENT)
}
