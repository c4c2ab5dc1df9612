//! Expand: one level of a relation's userset tree, as OpenFGA returns it,
//! with the request's contextual tuples taking part.

use super::common::{check_consistency, with_model, ApiError, ApiResult, Body, Path, TupleKeysIn};
use super::models::resolve_model;
use super::queries::{contextual, with_context};
use super::AppState;
use crate::engine::TupleReader;
use crate::model::Userset;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpandKey {
    relation: String,
    object: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpandReq {
    tuple_key: ExpandKey,
    #[serde(default)]
    authorization_model_id: Option<String>,
    #[serde(default)]
    contextual_tuples: Option<TupleKeysIn>,
    #[serde(default)]
    consistency: Option<Value>,
}

pub async fn expand(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<ExpandReq>,
) -> ApiResult<Response> {
    check_consistency(&r.consistency)?;
    let ctx = contextual(r.contextual_tuples.unwrap_or_default().tuple_keys)?;
    let model = resolve_model(&st, &store, &r.authorization_model_id).await?;
    let (object, relation) = (r.tuple_key.object, r.tuple_key.relation);
    if object.is_empty() || relation.is_empty() {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_expand_input",
            "Invalid input. Make sure you provide an object and a relation",
        ));
    }
    let reader = st.db.reader(&store);
    let reader = with_context(&model, &reader, ctx)?;
    // As OpenFGA: an unknown type or relation here is a validation error.
    let (ty, id) = object
        .split_once(':')
        .filter(|(t, id)| !t.is_empty() && !id.is_empty())
        .ok_or_else(|| ApiError::validation(format!("invalid object '{object}'")))?;
    let _ = id;
    let td = model
        .type_def(ty)
        .ok_or_else(|| ApiError::validation(format!("type '{ty}' not found")))?;
    let rw = td
        .relations
        .get(&relation)
        .ok_or_else(|| ApiError::validation(format!("relation '{ty}#{relation}' not found")))?;
    let root = expand_node(&reader, &object, &relation, rw).await?;
    Ok(with_model(&model, json!({ "tree": { "root": root } })))
}

fn expand_node<'a>(
    reader: &'a dyn TupleReader,
    object: &'a str,
    relation: &'a str,
    rw: &'a Userset,
) -> futures::future::BoxFuture<'a, ApiResult<Value>> {
    Box::pin(async move {
        let name = format!("{object}#{relation}");
        Ok(match rw {
            Userset::This(_) => {
                let mut users = reader.users_of(object, relation).await?.to_vec();
                users.sort();
                users.dedup();
                json!({ "name": name, "leaf": { "users": { "users": users } } })
            }
            Userset::Computed(or) => {
                json!({ "name": name, "leaf": { "computed": { "userset": format!("{object}#{}", or.relation) } } })
            }
            Userset::TupleToUserset(t) => {
                let parents = reader.users_of(object, &t.tupleset.relation).await?;
                let computed: Vec<Value> = parents
                    .iter()
                    .filter(|p| !p.contains('#'))
                    .map(|p| json!({ "userset": format!("{p}#{}", t.computed_userset.relation) }))
                    .collect();
                json!({ "name": name, "leaf": { "tupleToUserset": { "tupleset": format!("{object}#{}", t.tupleset.relation), "computed": computed } } })
            }
            Userset::Union(u) | Userset::Intersection(u) => {
                let mut nodes = Vec::new();
                for c in &u.child {
                    nodes.push(expand_node(reader, object, relation, c).await?);
                }
                let op = if matches!(rw, Userset::Union(_)) {
                    "union"
                } else {
                    "intersection"
                };
                json!({ "name": name, op: { "nodes": nodes } })
            }
            Userset::Difference(d) => {
                let base = expand_node(reader, object, relation, &d.base).await?;
                let sub = expand_node(reader, object, relation, &d.subtract).await?;
                json!({ "name": name, "difference": { "base": base, "subtract": sub } })
            }
        })
    })
}
