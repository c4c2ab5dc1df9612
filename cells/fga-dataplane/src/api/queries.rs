//! Queries: Check, BatchCheck, ListObjects, ListUsers. Each takes
//! contextual tuples (refused when they carry a condition), a `context`
//! (accepted and ignored: models here have no conditions) and a
//! `consistency` preference; unknown fields are refused.

use super::common::{
    check_consistency, check_context, nullable, plain_tuples, with_model, ApiError, ApiResult,
    Body, Path, TupleIn, TupleKeysIn,
};
use super::models::resolve_model;
use super::AppState;
use crate::engine::{parse_user, Evaluator, TupleKey, TupleReader, WithContext};
use crate::model::AuthorizationModel;
use crate::validate;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

/// Most checks in one BatchCheck.
pub const MAX_BATCH_CHECK: usize = 50;
/// Most contextual tuples in one request.
pub const MAX_CONTEXTUAL: usize = 100;

/// A request's contextual tuples: at most [`MAX_CONTEXTUAL`], none with a
/// condition (`validation_error` naming it).
pub fn contextual(ctx: Vec<TupleIn>) -> ApiResult<Vec<TupleKey>> {
    if ctx.len() > MAX_CONTEXTUAL {
        return Err(ApiError::validation(format!(
            "at most {MAX_CONTEXTUAL} contextual tuples"
        )));
    }
    plain_tuples(ctx)
}

/// Contextual tuples over a reader, each valid for the model
/// (`invalid_tuple` otherwise, as in OpenFGA).
pub fn with_context<'r>(
    model: &AuthorizationModel,
    reader: &'r dyn TupleReader,
    ctx: Vec<TupleKey>,
) -> ApiResult<WithContext<'r>> {
    for t in &ctx {
        validate::tuple(model, t)?;
    }
    Ok(WithContext {
        inner: reader,
        extra: ctx,
    })
}

/// The tuple of a Check (no condition here: it is a question).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckKey {
    user: String,
    relation: String,
    object: String,
}

impl CheckKey {
    fn key(self) -> TupleKey {
        TupleKey {
            object: self.object,
            relation: self.relation,
            user: self.user,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckReq {
    tuple_key: CheckKey,
    #[serde(default)]
    contextual_tuples: Option<TupleKeysIn>,
    #[serde(default)]
    authorization_model_id: Option<String>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    consistency: Option<Value>,
    /// Asks for a resolution trace; accepted, and the trace is empty.
    #[serde(default)]
    #[allow(dead_code)]
    trace: Option<bool>,
}

async fn do_check(
    st: &AppState,
    store: &str,
    model: &AuthorizationModel,
    key: &TupleKey,
    ctx: Vec<TupleKey>,
) -> ApiResult<bool> {
    validate::check_request(model, key)?;
    let reader = st.db.reader(store);
    let r = with_context(model, &reader, ctx)?;
    Ok(Evaluator::new(model, &r)
        .check(&key.object, &key.relation, &key.user)
        .await?)
}

pub async fn check(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<CheckReq>,
) -> ApiResult<Response> {
    check_context(&r.context)?;
    check_consistency(&r.consistency)?;
    let ctx = contextual(r.contextual_tuples.unwrap_or_default().tuple_keys)?;
    let model = resolve_model(&st, &store, &r.authorization_model_id).await?;
    let allowed = do_check(&st, &store, &model, &r.tuple_key.key(), ctx).await?;
    Ok(with_model(
        &model,
        json!({ "allowed": allowed, "resolution": "" }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    tuple_key: CheckKey,
    #[serde(default)]
    contextual_tuples: Option<TupleKeysIn>,
    #[serde(default)]
    context: Option<Value>,
    correlation_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchReq {
    checks: Vec<BatchItem>,
    #[serde(default)]
    authorization_model_id: Option<String>,
    #[serde(default)]
    consistency: Option<Value>,
}

pub async fn batch_check(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<BatchReq>,
) -> ApiResult<Response> {
    check_consistency(&r.consistency)?;
    if r.checks.is_empty() || r.checks.len() > MAX_BATCH_CHECK {
        return Err(ApiError::validation(format!(
            "a batch check needs 1 to {MAX_BATCH_CHECK} checks"
        )));
    }
    let mut ids = std::collections::HashSet::new();
    let mut checks = Vec::with_capacity(r.checks.len());
    for c in r.checks {
        if c.correlation_id.is_empty() || !ids.insert(c.correlation_id.clone()) {
            return Err(ApiError::validation(format!(
                "correlation_id {:?} is empty or repeated",
                c.correlation_id
            )));
        }
        // A conditioned contextual tuple refuses the whole batch: no answer
        // may be given without its condition.
        let ctx = contextual(c.contextual_tuples.unwrap_or_default().tuple_keys)?;
        checks.push((c.correlation_id, c.tuple_key.key(), ctx, c.context));
    }
    let model = resolve_model(&st, &store, &r.authorization_model_id).await?;
    let futs = checks.into_iter().map(|(id, key, ctx, context)| {
        let (st, store, model) = (&st, &store, &model);
        async move {
            let res = match check_context(&context) {
                Ok(()) => do_check(st, store, model, &key, ctx).await,
                Err(e) => Err(e),
            };
            let v = match res {
                Ok(a) => json!({ "allowed": a }),
                Err(e) => {
                    json!({ "allowed": false, "error": { "input_error": e.code, "message": e.message } })
                }
            };
            (id, v)
        }
    });
    let results: serde_json::Map<String, Value> =
        futures::future::join_all(futs).await.into_iter().collect();
    Ok(with_model(&model, json!({ "result": results })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListObjectsReq {
    #[serde(rename = "type")]
    object_type: String,
    relation: String,
    user: String,
    #[serde(default)]
    contextual_tuples: Option<TupleKeysIn>,
    #[serde(default)]
    authorization_model_id: Option<String>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    consistency: Option<Value>,
}

pub async fn list_objects(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<ListObjectsReq>,
) -> ApiResult<Response> {
    check_context(&r.context)?;
    check_consistency(&r.consistency)?;
    let ctx = contextual(r.contextual_tuples.unwrap_or_default().tuple_keys)?;
    let model = resolve_model(&st, &store, &r.authorization_model_id).await?;
    validate::list_objects_request(&model, &r.object_type, &r.relation, &r.user)?;
    let reader = st.db.reader(&store);
    let ctx = with_context(&model, &reader, ctx)?;
    let objects = Evaluator::new(&model, &ctx)
        .list_objects(&r.object_type, &r.relation, &r.user, st.list_objects_max)
        .await?;
    Ok(with_model(&model, json!({ "objects": objects })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    #[serde(rename = "type")]
    type_name: String,
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFilter {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    relation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListUsersReq {
    object: ObjectRef,
    relation: String,
    user_filters: Vec<UserFilter>,
    #[serde(default, deserialize_with = "nullable")]
    contextual_tuples: Vec<TupleIn>,
    #[serde(default)]
    authorization_model_id: Option<String>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    consistency: Option<Value>,
}

fn user_json(u: &str) -> Value {
    match parse_user(u) {
        Some((t, "*", None)) => json!({ "wildcard": { "type": t } }),
        Some((t, id, Some(r))) => json!({ "userset": { "type": t, "id": id, "relation": r } }),
        Some((t, id, None)) => json!({ "object": { "type": t, "id": id } }),
        None => json!({}),
    }
}

pub async fn list_users(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<ListUsersReq>,
) -> ApiResult<Response> {
    check_context(&r.context)?;
    check_consistency(&r.consistency)?;
    let ctx = contextual(r.contextual_tuples)?;
    if r.user_filters.len() != 1 {
        return Err(ApiError::validation(
            "user_filters must have exactly one filter",
        ));
    }
    let model = resolve_model(&st, &store, &r.authorization_model_id).await?;
    let object = format!("{}:{}", r.object.type_name, r.object.id);
    let filters: Vec<(String, Option<String>)> = r
        .user_filters
        .iter()
        .map(|f| {
            (
                f.type_name.clone(),
                f.relation.clone().filter(|s| !s.is_empty()),
            )
        })
        .collect();
    validate::list_users_request(&model, &object, &r.relation, &filters)?;
    let reader = st.db.reader(&store);
    let ctx = with_context(&model, &reader, ctx)?;
    let ev = Evaluator::new(&model, &ctx);
    let mut users = Vec::new();
    for (t, rel) in &filters {
        users.extend(
            ev.list_users(&object, &r.relation, t, rel.as_deref())
                .await?,
        );
    }
    Ok(with_model(
        &model,
        json!({ "users": users.iter().map(|u| user_json(u)).collect::<Vec<_>>() }),
    ))
}
