//! Validation of tuples and requests against a model, with OpenFGA's error
//! codes (the numeric codes of its `ErrorCode` enum and their names).

use crate::engine::{parse_user, TupleKey};
use crate::model::AuthorizationModel;

/// An OpenFGA-style error: numeric code, name, message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FgaError {
    pub code: u32,
    pub name: &'static str,
    pub message: String,
}

impl FgaError {
    pub fn validation(m: impl Into<String>) -> FgaError {
        FgaError {
            code: 2000,
            name: "validation_error",
            message: m.into(),
        }
    }
    pub fn too_complex() -> FgaError {
        FgaError {
            code: 2002,
            name: "authorization_model_resolution_too_complex",
            message: "Authorization Model resolution required too many rewrite rules to be resolved. Check your authorization model for infinite recursion or too much nesting".into(),
        }
    }
    pub fn type_not_found(t: &str) -> FgaError {
        FgaError {
            code: 2021,
            name: "type_not_found",
            message: format!("type '{t}' not found"),
        }
    }
    pub fn relation_not_found(t: &str, r: &str) -> FgaError {
        FgaError {
            code: 2022,
            name: "relation_not_found",
            message: format!("relation '{t}#{r}' not found"),
        }
    }
    pub fn invalid_tuple(m: impl Into<String>) -> FgaError {
        FgaError {
            code: 2027,
            name: "invalid_tuple",
            message: m.into(),
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && !id
            .chars()
            .any(|c| c.is_whitespace() || c == '#' || c == ':')
}

/// `type:id` with a known type.
fn check_object(model: &AuthorizationModel, object: &str) -> Result<String, String> {
    let (t, id) = object
        .split_once(':')
        .ok_or_else(|| format!("invalid object '{object}'"))?;
    if t.is_empty() || !valid_id(id) || id == "*" {
        return Err(format!("invalid object '{object}'"));
    }
    if model.type_def(t).is_none() {
        return Err(format!("type '{t}' not found"));
    }
    Ok(t.to_string())
}

/// Is `user` an allowed direct value of `type#relation`? Returns why not.
fn check_user_allowed(
    model: &AuthorizationModel,
    t: &str,
    relation: &str,
    user: &str,
) -> Result<(), String> {
    let (ut, uid, urel) = parse_user(user).ok_or_else(|| format!("invalid user '{user}'"))?;
    if ut.is_empty() || !(valid_id(uid) || uid == "*") || user.matches(':').count() != 1 {
        return Err(format!("invalid user '{user}'"));
    }
    let Some(utd) = model.type_def(ut) else {
        return Err(format!("type '{ut}' not found"));
    };
    if let Some(r) = urel {
        if !utd.relations.contains_key(r) {
            return Err(format!("relation '{ut}#{r}' not found"));
        }
    }
    let td = model
        .type_def(t)
        .ok_or_else(|| format!("type '{t}' not found"))?;
    let ok = td.direct_types(relation).iter().any(|a| {
        a.type_name == ut && a.relation.as_deref() == urel && (a.is_wildcard() == (uid == "*"))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "type '{user}' is not an allowed type restriction for '{t}#{relation}'"
        ))
    }
}

/// Validate a tuple to be written (or used as a contextual tuple): 2027.
pub fn tuple(model: &AuthorizationModel, t: &TupleKey) -> Result<(), FgaError> {
    let invalid = |why: String| {
        FgaError::invalid_tuple(format!(
            "Invalid tuple '{}#{}@{}'. Reason: {why}",
            t.object, t.relation, t.user
        ))
    };
    let ty = check_object(model, &t.object).map_err(invalid)?;
    // `group:a#member` as a member of `group:a` is true by definition.
    if t.user == format!("{}#{}", t.object, t.relation) {
        return Err(FgaError::validation(format!(
            "Invalid tuple '{}#{}@{}'. Reason: cannot write a tuple that is implicit",
            t.object, t.relation, t.user
        )));
    }
    if !model
        .type_def(&ty)
        .is_some_and(|d| d.relations.contains_key(&t.relation))
    {
        return Err(invalid(format!("relation '{ty}#{}' not found", t.relation)));
    }
    check_user_allowed(model, &ty, &t.relation, &t.user).map_err(invalid)
}

/// Validate a Check request's tuple: an unknown object type or relation, or
/// a malformed or unknown user, is a validation error (2000), as in OpenFGA.
pub fn check_request(model: &AuthorizationModel, t: &TupleKey) -> Result<(), FgaError> {
    let (ty, _) = t
        .object
        .split_once(':')
        .ok_or_else(|| FgaError::validation(format!("invalid object '{}'", t.object)))?;
    let td = model
        .type_def(ty)
        .ok_or_else(|| FgaError::validation(format!("type '{ty}' not found")))?;
    check_object(model, &t.object).map_err(FgaError::validation)?;
    if !td.relations.contains_key(&t.relation) {
        return Err(FgaError::validation(format!(
            "relation '{ty}#{}' not found",
            t.relation
        )));
    }
    user_exists(model, &t.user)
}

/// The user of a request must be well formed and of a known type (and
/// relation); anything else is a validation error (2000).
pub fn user_exists(model: &AuthorizationModel, user: &str) -> Result<(), FgaError> {
    let (ut, uid, urel) =
        parse_user(user).ok_or_else(|| FgaError::validation(format!("invalid user '{user}'")))?;
    if ut.is_empty() || !(valid_id(uid) || uid == "*") || user.matches(':').count() != 1 {
        return Err(FgaError::validation(format!("invalid user '{user}'")));
    }
    let utd = model
        .type_def(ut)
        .ok_or_else(|| FgaError::validation(format!("type '{ut}' not found")))?;
    if let Some(r) = urel {
        if !utd.relations.contains_key(r) {
            return Err(FgaError::validation(format!(
                "relation '{ut}#{r}' not found"
            )));
        }
    }
    Ok(())
}

/// Validate a ListObjects request.
pub fn list_objects_request(
    model: &AuthorizationModel,
    object_type: &str,
    relation: &str,
    user: &str,
) -> Result<(), FgaError> {
    let td = model
        .type_def(object_type)
        .ok_or_else(|| FgaError::type_not_found(object_type))?;
    if !td.relations.contains_key(relation) {
        return Err(FgaError::relation_not_found(object_type, relation));
    }
    user_exists(model, user)
}

/// Validate a ListUsers request.
pub fn list_users_request(
    model: &AuthorizationModel,
    object: &str,
    relation: &str,
    filters: &[(String, Option<String>)],
) -> Result<(), FgaError> {
    let (ty, _) = object
        .split_once(':')
        .ok_or_else(|| FgaError::validation(format!("invalid object '{object}'")))?;
    let td = model
        .type_def(ty)
        .ok_or_else(|| FgaError::type_not_found(ty))?;
    if !td.relations.contains_key(relation) {
        return Err(FgaError::relation_not_found(ty, relation));
    }
    for (ft, fr) in filters {
        let ftd = model
            .type_def(ft)
            .ok_or_else(|| FgaError::type_not_found(ft))?;
        if let Some(r) = fr {
            if !ftd.relations.contains_key(r) {
                return Err(FgaError::relation_not_found(ft, r));
            }
        }
    }
    Ok(())
}
