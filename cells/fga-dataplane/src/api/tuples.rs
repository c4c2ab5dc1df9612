//! Tuples: Write (writes and deletes in one transaction), Read, and
//! ReadChanges (the change log, from a time or a continuation token).

use super::common::{
    check_consistency, decode_token, hex_encode, invalid_token, nullable, page_size, plain_tuples,
    with_model, ApiError, ApiResult, Body, Path, Query, TupleIn,
};
use super::models::resolve_model;
use super::AppState;
use crate::engine::parse_user;
use crate::store::{OnConflict, TupleFilter, WriteError};
use crate::validate::{self, FgaError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// Most tuples in one Write (writes and deletes together).
pub const MAX_WRITE: usize = 100;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Writes {
    #[serde(default, deserialize_with = "nullable")]
    tuple_keys: Vec<TupleIn>,
    #[serde(default)]
    on_duplicate: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Deletes {
    #[serde(default, deserialize_with = "nullable")]
    tuple_keys: Vec<TupleIn>,
    #[serde(default)]
    on_missing: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteReq {
    #[serde(default)]
    writes: Option<Writes>,
    #[serde(default)]
    deletes: Option<Deletes>,
    #[serde(default)]
    authorization_model_id: Option<String>,
}

fn conflict_mode(v: &Option<String>, name: &str) -> ApiResult<OnConflict> {
    match v.as_deref() {
        None | Some("") | Some("error") => Ok(OnConflict::Error),
        Some("ignore") => Ok(OnConflict::Ignore),
        Some(x) => Err(ApiError::validation(format!(
            "invalid {name} {x:?}: use \"error\" or \"ignore\""
        ))),
    }
}

/// Tuple errors of a Write are `validation_error`, as in OpenFGA (contextual
/// tuples of a query keep `invalid_tuple`).
fn as_validation(e: FgaError) -> ApiError {
    ApiError::validation(e.message)
}

pub async fn write(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<WriteReq>,
) -> ApiResult<Response> {
    let model = resolve_model(&st, &store, &r.authorization_model_id).await?;
    let w = r.writes.unwrap_or_default();
    let d = r.deletes.unwrap_or_default();
    let on_dup = conflict_mode(&w.on_duplicate, "on_duplicate")?;
    let on_missing = conflict_mode(&d.on_missing, "on_missing")?;
    let writes = plain_tuples(w.tuple_keys)?;
    let deletes = plain_tuples(d.tuple_keys)?;
    let total = writes.len() + deletes.len();
    if total == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_write_input",
            "Invalid input. Make sure you provide at least one write or delete",
        ));
    }
    if total > MAX_WRITE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "exceeded_entity_limit",
            format!("The number of write operations exceeds the allowed limit of {MAX_WRITE}"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for t in writes.iter().chain(deletes.iter()) {
        if !seen.insert(t.clone()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "cannot_allow_duplicate_tuples_in_one_request",
                format!(
                    "duplicate tuple in write: user: '{}', relation: '{}', object: '{}'",
                    t.user, t.relation, t.object
                ),
            ));
        }
    }
    for t in &writes {
        validate::tuple(&model, t).map_err(as_validation)?;
    }
    for t in &deletes {
        let user_ok =
            parse_user(&t.user).is_some_and(|(ut, uid, _)| !ut.is_empty() && !uid.is_empty());
        if t.object.split_once(':').is_none() || t.relation.is_empty() || !user_ok {
            return Err(ApiError::validation(format!(
                "Invalid tuple '{}#{}@{}'. Reason: the tuple to delete is malformed",
                t.object, t.relation, t.user
            )));
        }
    }
    match st.db.write(&store, &writes, &deletes, on_dup, on_missing).await {
        Ok(()) => Ok(with_model(&model, json!({}))),
        Err(WriteError::Exists(t)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "write_failed_due_to_invalid_input",
            format!("cannot write a tuple which already exists: user: '{}', relation: '{}', object: '{}': invalid write input", t.user, t.relation, t.object),
        )),
        Err(WriteError::Missing(t)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "write_failed_due_to_invalid_input",
            format!("cannot delete a tuple which does not exist: user: '{}', relation: '{}', object: '{}': invalid write input", t.user, t.relation, t.object),
        )),
        Err(WriteError::Store(e)) => Err(e.into()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PartialKey {
    #[serde(default)]
    user: String,
    #[serde(default)]
    relation: String,
    #[serde(default)]
    object: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadReq {
    #[serde(default)]
    tuple_key: Option<PartialKey>,
    #[serde(default)]
    page_size: Option<i64>,
    #[serde(default)]
    continuation_token: Option<String>,
    #[serde(default)]
    consistency: Option<Value>,
}

pub async fn read(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<ReadReq>,
) -> ApiResult<Json<Value>> {
    check_consistency(&r.consistency)?;
    let n = page_size(r.page_size)?;
    let k = r.tuple_key.unwrap_or_default();
    if k.object.is_empty() && (!k.relation.is_empty() || !k.user.is_empty()) {
        return Err(ApiError::validation("the 'object' field is required when reading by relation or user; use 'type:' to read all objects of a type"));
    }
    if !k.object.is_empty() && !k.object.contains(':') {
        return Err(ApiError::validation(format!(
            "invalid object '{}': expected 'type:id' or 'type:'",
            k.object
        )));
    }
    let filter = TupleFilter {
        object: (!k.object.is_empty()).then_some(k.object),
        relation: (!k.relation.is_empty()).then_some(k.relation),
        user: (!k.user.is_empty()).then_some(k.user),
    };
    let tok = decode_token(&r.continuation_token)?;
    let after: [String; 4] = if tok.is_empty() {
        Default::default()
    } else {
        serde_json::from_str(&tok).map_err(|_| invalid_token())?
    };
    let rows = st.db.read(&store, &filter, &after, n).await?;
    let token = if rows.len() as i64 == n {
        rows.last()
            .map(|r| {
                let (ot, oid) = r.key.object.split_once(':').unwrap_or(("", ""));
                hex_encode(&json!([ot, oid, r.key.relation, r.key.user]).to_string())
            })
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Json(json!({ "tuples": rows, "continuation_token": token })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQ {
    #[serde(rename = "type")]
    object_type: Option<String>,
    page_size: Option<i64>,
    continuation_token: Option<String>,
    /// RFC 3339: changes at or after this time (ignored with a token).
    start_time: Option<String>,
}

/// `start_time` as the stored timestamps write it (UTC, microseconds), so
/// that text order is time order.
fn start_time(s: &str) -> ApiResult<String> {
    let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_start_time",
            format!("Invalid start time {s:?}: {e} (use RFC 3339, e.g. 2024-05-01T12:00:00Z)"),
        )
    })?;
    Ok(t.with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

pub async fn changes(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Query(q): Query<ChangesQ>,
) -> ApiResult<Json<Value>> {
    let n = page_size(q.page_size)?;
    let tok = decode_token(&q.continuation_token)?;
    let since = match q.start_time.as_deref() {
        Some(s) if !s.is_empty() => Some(start_time(s)?),
        _ => None,
    };
    // A token continues where the last page ended; only without one does
    // the start time apply (as in OpenFGA).
    let (after, since) = if tok.is_empty() {
        (0, since)
    } else {
        (tok.parse().map_err(|_| invalid_token())?, None)
    };
    let rows = st
        .db
        .changes(
            &store,
            q.object_type.as_deref().filter(|s| !s.is_empty()),
            after,
            since.as_deref(),
            n,
        )
        .await?;
    // An empty page hands back the token it was given, so that polling
    // goes on from the same place (or the same start time).
    let token = match rows.last() {
        Some(r) => hex_encode(&r.seq.to_string()),
        None => q.continuation_token.unwrap_or_default(),
    };
    Ok(Json(
        json!({ "changes": rows, "continuation_token": token }),
    ))
}
