//! Tokens (create, list, revoke) and the audit log (read, verify).

use super::*;
use crate::store::Revoke;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{name}/revoke", post(revoke_token))
        .route("/audit", get(audit_log))
        .route("/audit/verify", get(verify_audit))
}
// ---- tokens -------------------------------------------------------------------

/// Longest lifetime a token may be given.
const MAX_EXPIRY_DAYS: i64 = 3650;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    name: String,
    role: String,
    #[serde(default)]
    groups: Vec<String>,
    /// How long the token works: `30d`, `12h`, ... (none: until revoked).
    #[serde(default)]
    expires: Option<String>,
}

/// A token's lifetime: a number and a unit, `90m`, `12h`, `30d`, between
/// one minute and [`MAX_EXPIRY_DAYS`].
fn parse_lifetime(s: &str) -> Result<chrono::Duration, String> {
    let bad = || format!("expires {s:?}: write a number and m, h or d, for example 30d");
    let t = s.trim();
    let unit = t.chars().last().ok_or_else(bad)?;
    let n: i64 = t[..t.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let d = match unit {
        'm' => chrono::Duration::try_minutes(n),
        'h' => chrono::Duration::try_hours(n),
        'd' => chrono::Duration::try_days(n),
        _ => None,
    }
    .ok_or_else(bad)?;
    if d < chrono::Duration::minutes(1) || d > chrono::Duration::days(MAX_EXPIRY_DAYS) {
        return Err(format!(
            "expires {s:?}: must be between 1m and {MAX_EXPIRY_DAYS}d"
        ));
    }
    Ok(d)
}

fn valid_token_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

async fn create_token(
    State(st): State<AppState>,
    id: Identity,
    JsonBody(b): JsonBody<TokenBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&id, Action::ManageTokens)?;
    let role: Role = b.role.parse().map_err(ApiError::bad_request)?;
    if !valid_token_name(&b.name) {
        return Err(ApiError::bad_request(
            "token name must be 1-64 letters, digits, '-', '_', '.' or '@'",
        ));
    }
    if b.groups.len() > 32 || b.groups.iter().any(|g| !valid_id(g)) {
        return Err(ApiError::bad_request(
            "groups must be at most 32 ids of lowercase letters, digits, '-' or '_'",
        ));
    }
    let now = st.clock.now();
    let expires_at = match &b.expires {
        None => None,
        Some(s) => Some(now + parse_lifetime(s).map_err(ApiError::bad_request)?),
    };
    let token = new_token();
    let detail = format!(
        "role {role} groups {} expires {}",
        if b.groups.is_empty() {
            "-".to_string()
        } else {
            b.groups.join(",")
        },
        expires_at.map_or("never".to_string(), |t| t.to_rfc3339())
    );
    st.store
        .create_token(
            &b.name,
            &role.to_string(),
            &b.groups,
            &hash_token(&token),
            expires_at,
            now,
            &entry(&id, "token.create", &b.name, &detail),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": b.name, "role": role, "groups": b.groups,
            "expires_at": expires_at, "token": token,
        })),
    ))
}

async fn list_tokens(State(st): State<AppState>, id: Identity) -> ApiResult<Json<Value>> {
    require(&id, Action::ManageTokens)?;
    let now = st.clock.now();
    let tokens: Vec<Value> = st
        .store
        .list_tokens()
        .await?
        .into_iter()
        .map(|t| {
            let expired = t
                .expires_at
                .as_deref()
                .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
                .is_some_and(|e| e <= now);
            let status = if t.revoked {
                "revoked"
            } else if expired {
                "expired"
            } else {
                "active"
            };
            let mut v = json!(t);
            v["status"] = json!(status);
            v
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn revoke_token(
    State(st): State<AppState>,
    id: Identity,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<RevokeBody>,
) -> ApiResult<Json<Value>> {
    require(&id, Action::ManageTokens)?;
    let reason = b.reason;
    check_reason(&reason)?;
    if !valid_token_name(&name) {
        return Err(ApiError::bad_request(format!(
            "invalid token name {name:?}"
        )));
    }
    let audit = entry(
        &id,
        "token.revoke",
        &name,
        &format!("reason {:?}", reason.unwrap_or_default()),
    );
    match st
        .store
        .revoke_token(&name, &id.name, st.clock.now(), &audit)
        .await?
    {
        Revoke::Revoked => Ok(Json(json!({ "name": name, "status": "revoked" }))),
        Revoke::NotFound => Err(ApiError::not_found(format!("no token named {name:?}"))),
        Revoke::AlreadyRevoked => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("token {name:?} is already revoked"),
        )),
        Revoke::LastAdmin => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "token {name:?} is the last working admin token; create another admin token first"
            ),
        )),
    }
}

// ---- audit ----------------------------------------------------------------------

async fn audit_log(
    State(st): State<AppState>,
    id: Identity,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Value>> {
    require(&id, Action::ReadAudit)?;
    let rows = st
        .store
        .audit_log(q.after.unwrap_or(0), q.limit.unwrap_or(200).clamp(1, 5000))
        .await?;
    Ok(Json(json!({ "audit": rows })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyQuery {
    /// `SEQ:HASH` of a row recorded earlier (e.g. a former head).
    anchor: Option<String>,
}

async fn verify_audit(
    State(st): State<AppState>,
    id: Identity,
    Query(q): Query<VerifyQuery>,
) -> ApiResult<Json<Value>> {
    require(&id, Action::ReadAudit)?;
    let anchor = match q.anchor.as_deref() {
        None => None,
        Some(a) => {
            let bad = || ApiError::bad_request(format!("anchor {a:?}: expected SEQ:HASH"));
            let (seq, hash) = a.split_once(':').ok_or_else(bad)?;
            let seq: i64 = seq.parse().map_err(|_| bad())?;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            Some((seq, hash.to_ascii_lowercase()))
        }
    };
    let r = st.store.verify_audit(anchor).await?;
    Ok(Json(json!({
        "ok": r.ok(),
        "rows": r.rows,
        "head": r.head.as_ref().map(|(seq, hash)| json!({"seq": seq, "hash": hash})),
        "first_broken": r.first_broken,
        "anchor_found": r.anchor_found,
    })))
}

#[cfg(test)]
mod tests {
    use super::parse_lifetime;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("30d"), Ok(chrono::Duration::days(30)));
        assert_eq!(parse_lifetime("90m"), Ok(chrono::Duration::minutes(90)));
        assert_eq!(parse_lifetime("365d"), Ok(chrono::Duration::days(365)));
        for bad in [
            "",
            "d",
            "30",
            "30s",
            "0m",
            "-5d",
            "3651d",
            "1.5d",
            "99999999999999999d",
            "5ü",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }
}
