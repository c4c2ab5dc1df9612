//! Authorization models: write, list (newest first), get; and the model a
//! request is evaluated against.

use super::common::{decode_token, hex_encode, page_size, ApiError, ApiResult, Body, Path, Query};
use super::AppState;
use crate::model::AuthorizationModel;
use crate::store::is_ulid;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub async fn write_model(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(m): Body<AuthorizationModel>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if m.type_definitions.len() > 1000 {
        return Err(ApiError::validation("too many type definitions"));
    }
    m.validate()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_authorization_model", e.0))?;
    let id = st.db.write_model(&store, &m).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "authorization_model_id": id })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    page_size: Option<i64>,
    continuation_token: Option<String>,
}

pub async fn list_models(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Query(p): Query<Page>,
) -> ApiResult<Json<Value>> {
    let n = page_size(p.page_size)?;
    let before = decode_token(&p.continuation_token)?;
    let models = st.db.list_models(&store, &before, n).await?;
    let token = if models.len() as i64 == n {
        models.last().map(|m| hex_encode(&m.id)).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Json(
        json!({ "authorization_models": models, "continuation_token": token }),
    ))
}

/// An unknown model is 400 `authorization_model_not_found`, as in OpenFGA
/// (whose SDKs raise a validation error for it, not "not found").
fn model_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "authorization_model_not_found",
        format!("Authorization Model '{id}' not found"),
    )
}

fn model_id(id: &str) -> ApiResult<()> {
    if is_ulid(id) {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "invalid authorization_model_id '{}': must be a ULID",
            id.escape_debug()
        )))
    }
}

pub async fn get_model(
    State(st): State<AppState>,
    Path((store, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    model_id(&id)?;
    let m = st
        .db
        .get_model(&store, &id)
        .await?
        .ok_or_else(|| model_not_found(&id))?;
    Ok(Json(json!({ "authorization_model": m })))
}

/// The model a request names, or the store's latest. (The guard has
/// checked the store.)
pub async fn resolve_model(
    st: &AppState,
    store: &str,
    id: &Option<String>,
) -> ApiResult<Arc<AuthorizationModel>> {
    match id.as_deref() {
        Some(id) if !id.is_empty() => {
            model_id(id)?;
            st.db
                .get_model(store, id)
                .await?
                .ok_or_else(|| model_not_found(id))
        }
        _ => st.db.latest_model(store).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "latest_authorization_model_not_found",
                format!("No authorization models found for store '{store}'"),
            )
        }),
    }
}
