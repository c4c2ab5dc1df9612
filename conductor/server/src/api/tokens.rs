//! Tokens and the audit log.

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/tokens", post(create_token))
        .route("/audit", get(audit_log))
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
