//! What every resource of the API shares: the error type (OpenFGA's
//! `{"code", "message"}` with its statuses), extractors that answer bad
//! input in that shape, request fields with meaning (tuples that may carry
//! a condition, `context`, `consistency`), pagination and tokens.

use crate::engine::EvalError;
use crate::engine::TupleKey;
use crate::model::AuthorizationModel;
use crate::store::StoreError;
use crate::validate::FgaError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest request body.
pub const MAX_BODY: usize = 1024 * 1024;

/// The response header naming the model a request was evaluated against.
pub const MODEL_ID_HEADER: &str = "openfga-authorization-model-id";

/// An API error as OpenFGA shapes it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "validation_error", message)
    }
    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal Server Error",
        )
    }
}

impl From<FgaError> for ApiError {
    fn from(e: FgaError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, e.name, e.message)
    }
}

impl From<EvalError> for ApiError {
    fn from(e: EvalError) -> ApiError {
        match e {
            EvalError::TooComplex => FgaError::too_complex().into(),
            EvalError::Storage(m) => {
                tracing::error!(error = %m, "storage error during evaluation");
                ApiError::internal()
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "storage error");
        ApiError::internal()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "code": self.code, "message": self.message })),
        )
            .into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// SDKs send `null` for empty lists and objects: read it as the default.
pub fn nullable<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A JSON body with OpenFGA-style errors for bad or oversized input. The
/// request types refuse fields they do not know (a field we ignored could
/// change the answer the client expects).
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!("request body over {MAX_BODY} bytes"),
            )
        })?;
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"{}")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ApiError::validation(format!("invalid request body: {e}")))
    }
}

/// A query string, with errors as `{code, message}` (axum's own are plain text).
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| {
                ApiError::validation(format!("invalid query string {q:?}: {}", e.body_text()))
            })
    }
}

/// Path parameters, with errors as `{code, message}`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| ApiError::validation(format!("invalid path: {}", e.body_text())))
    }
}

/// A relationship condition on a tuple (`{"name", "context"}`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionIn {
    #[serde(default)]
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    context: Option<Value>,
}

/// A tuple as a request carries it (a write, a delete, a contextual tuple):
/// it may name a condition, which this data plane does not evaluate yet, so
/// such a tuple is refused rather than used without its condition.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TupleIn {
    pub object: String,
    pub relation: String,
    pub user: String,
    #[serde(default)]
    condition: Option<ConditionIn>,
}

impl TupleIn {
    /// The tuple, if it carries no condition.
    pub fn plain(self) -> ApiResult<TupleKey> {
        if let Some(c) = self.condition {
            let name = if c.name.is_empty() {
                "a condition without a name".to_string()
            } else {
                format!("the condition '{}'", c.name)
            };
            return Err(ApiError::validation(format!(
                "Invalid tuple '{}#{}@{}'. Reason: it carries {name}, but conditions are not supported yet and the model defines none",
                self.object, self.relation, self.user
            )));
        }
        Ok(TupleKey {
            object: self.object,
            relation: self.relation,
            user: self.user,
        })
    }
}

/// Tuples without conditions (see [`TupleIn::plain`]).
pub fn plain_tuples(v: Vec<TupleIn>) -> ApiResult<Vec<TupleKey>> {
    v.into_iter().map(TupleIn::plain).collect()
}

/// `{"tuple_keys": [...]}`, as contextual tuples come in Check, BatchCheck,
/// ListObjects and Expand.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TupleKeysIn {
    #[serde(default, deserialize_with = "nullable")]
    pub tuple_keys: Vec<TupleIn>,
}

/// A request's `context` (for conditions): an object, accepted and ignored
/// since models here have no conditions (as OpenFGA does then); anything but
/// an object (or null) is malformed.
pub fn check_context(c: &Option<Value>) -> ApiResult<()> {
    match c {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(other) => Err(ApiError::validation(format!(
            "invalid context {other}: it must be a JSON object"
        ))),
    }
}

/// A request's `consistency` preference. Every read here is already as
/// fresh as the database (the caches are exact), so both preferences give
/// the same answers; anything else is refused.
pub fn check_consistency(c: &Option<Value>) -> ApiResult<()> {
    match c {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s))
            if matches!(
                s.as_str(),
                "UNSPECIFIED" | "MINIMIZE_LATENCY" | "HIGHER_CONSISTENCY"
            ) =>
        {
            Ok(())
        }
        Some(Value::Number(n)) if matches!(n.as_u64(), Some(0 | 100 | 200)) => Ok(()),
        Some(other) => Err(ApiError::validation(format!(
            "invalid consistency {other}: use \"MINIMIZE_LATENCY\", \"HIGHER_CONSISTENCY\" or \"UNSPECIFIED\""
        ))),
    }
}

/// A JSON answer with the `Openfga-Authorization-Model-Id` header.
pub fn with_model(model: &AuthorizationModel, body: Value) -> Response {
    let mut r = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&model.id) {
        r.headers_mut().insert(MODEL_ID_HEADER, v);
    }
    r
}

/// `page_size`: 1..=100, 50 when absent or 0.
pub fn page_size(p: Option<i64>) -> ApiResult<i64> {
    match p {
        None | Some(0) => Ok(50),
        Some(n) if (1..=100).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation(
            "invalid page_size: value must be inside range [1, 100]",
        )),
    }
}

/// A continuation token's content (hex-encoded text; empty: from the start).
pub fn decode_token(t: &Option<String>) -> ApiResult<String> {
    match t.as_deref() {
        None | Some("") => Ok(String::new()),
        Some(t) => {
            let bytes = hex_decode(t).ok_or_else(invalid_token)?;
            String::from_utf8(bytes).map_err(|_| invalid_token())
        }
    }
}

pub fn invalid_token() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_continuation_token",
        "Invalid continuation token",
    )
}

pub fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 4096 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tuple_with_a_condition_is_refused_and_named() {
        let t: TupleIn = serde_json::from_value(json!({"object": "doc:1", "relation": "viewer", "user": "user:a", "condition": {"name": "in_office"}})).expect("parses");
        let e = t.plain().expect_err("refused");
        assert_eq!(e.code, "validation_error");
        assert!(e.message.contains("'in_office'"), "{}", e.message);
        let t: TupleIn = serde_json::from_value(
            json!({"object": "doc:1", "relation": "viewer", "user": "user:a", "condition": null}),
        )
        .expect("parses");
        assert!(t.plain().is_ok(), "a null condition is no condition");
        assert!(serde_json::from_value::<TupleIn>(
            json!({"object": "doc:1", "relation": "viewer", "user": "user:a", "expires": 1})
        )
        .is_err());
    }

    #[test]
    fn context_and_consistency() {
        assert!(check_context(&Some(json!({"ip": "10.0.0.1"}))).is_ok());
        assert!(check_context(&Some(json!("x"))).is_err());
        assert!(check_consistency(&Some(json!("HIGHER_CONSISTENCY"))).is_ok());
        assert!(check_consistency(&Some(json!(100))).is_ok());
        assert!(check_consistency(&Some(json!("STRONG"))).is_err());
        assert!(check_consistency(&Some(json!(7))).is_err());
    }
}
