//! The OpenFGA HTTP API (v1): stores, authorization models, tuples, Check,
//! BatchCheck, ListObjects, ListUsers, ReadChanges. Errors are
//! `{"code", "message"}` with OpenFGA's code names and HTTP statuses.

use crate::engine::{parse_user, EvalError, Evaluator, TupleKey, TupleReader, WithContext};
use crate::model::AuthorizationModel;
use crate::store::{is_ulid, Db, OnConflict, StoreError, TupleFilter, WriteError};
use crate::validate::{self, FgaError};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Largest request body.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most tuples in one Write (writes and deletes together).
pub const MAX_WRITE: usize = 100;
/// Most checks in one BatchCheck.
pub const MAX_BATCH_CHECK: usize = 50;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Pre-shared keys; empty: no authentication.
    pub keys: Arc<Vec<String>>,
    pub list_objects_max: usize,
    /// Key for `/admin` (rate limits); None: the admin API is off.
    pub admin_key: Option<Arc<String>>,
    pub limiter: Arc<std::sync::Mutex<crate::ratelimit::Limiter>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub started: std::time::Instant,
}

/// An API error as OpenFGA shapes it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "validation_error", message)
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
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "Internal Server Error",
                )
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "storage error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal Server Error",
        )
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

type ApiResult<T> = Result<T, ApiError>;

/// SDKs send `null` for empty lists and objects: read it as the default.
fn nullable<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A JSON body with OpenFGA-style errors for bad or oversized input.
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

pub fn router(state: AppState) -> Router {
    use axum::middleware::from_fn_with_state;
    let api = Router::new()
        .route("/stores", post(create_store).get(list_stores))
        .route("/stores/{store}", get(get_store).delete(delete_store))
        .route(
            "/stores/{store}/authorization-models",
            post(write_model).get(list_models),
        )
        .route("/stores/{store}/authorization-models/{id}", get(get_model))
        .route("/stores/{store}/write", post(write))
        .route("/stores/{store}/read", post(read))
        .route("/stores/{store}/changes", get(changes))
        .route("/stores/{store}/check", post(check))
        .route("/stores/{store}/batch-check", post(batch_check))
        .route("/stores/{store}/list-objects", post(list_objects))
        .route("/stores/{store}/list-users", post(list_users))
        .route("/stores/{store}/expand", post(expand))
        .route_layer(from_fn_with_state(state.clone(), limit_and_observe))
        .layer(from_fn_with_state(state.clone(), authenticate));
    let admin = Router::new()
        .route("/admin/rate-limits", get(get_limits))
        .route(
            "/admin/rate-limits/{store}",
            axum::routing::put(put_limit).delete(delete_limit),
        )
        .layer(from_fn_with_state(state.clone(), admin_only));
    Router::new()
        .merge(api)
        .merge(admin)
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "SERVING" })) }),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "undefined_endpoint", "Not Found")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Pre-shared key authentication, like OpenFGA's `--authn-method preshared`.
async fn authenticate(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.keys.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(k)
            if st
                .keys
                .iter()
                .any(|x| constant_time_eq(x.as_bytes(), k.as_bytes())) =>
        {
            next.run(req).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "unauthenticated",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bearer_token_missing",
            "missing bearer token",
        )
        .into_response(),
    }
}

/// Rate-limit per store (with `X-RateLimit-*` headers on every response and
/// 429 + `Retry-After` when exceeded), and record metrics per method.
async fn limit_and_observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| method_name(req.method().as_str(), p.as_str()))
        .unwrap_or("Unknown");
    let store = req
        .uri()
        .path()
        .strip_prefix("/stores/")
        .map(|r| r.split('/').next().unwrap_or("").to_string())
        .filter(|s| !s.is_empty());
    let decision = store.as_deref().and_then(|s| {
        let now = st.started.elapsed().as_secs_f64();
        st.limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(s, now)
    });
    let mut resp = match decision {
        Some(d) if !d.allowed => {
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "rate limit exceeded for this store",
            )
            .into_response();
            r.headers_mut().insert(
                header::RETRY_AFTER,
                header_value(d.retry_after.ceil().max(1.0)),
            );
            r
        }
        _ => next.run(req).await,
    };
    if let Some(d) = decision {
        let h = resp.headers_mut();
        h.insert("x-ratelimit-limit", header_value(d.limit));
        h.insert("x-ratelimit-remaining", header_value(d.remaining));
        h.insert("x-ratelimit-reset", header_value(d.reset.ceil()));
        if d.burst {
            h.insert(
                "x-ratelimit-burst",
                axum::http::HeaderValue::from_static("true"),
            );
        }
    }
    st.metrics.observe(
        method,
        resp.status().as_u16(),
        store.as_deref(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

fn header_value(v: f64) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(&format!("{}", v.max(0.0) as u64))
        .unwrap_or(axum::http::HeaderValue::from_static("0"))
}

/// OpenFGA's method names, for metrics.
fn method_name(verb: &str, path: &str) -> &'static str {
    match (verb, path) {
        ("POST", "/stores") => "CreateStore",
        ("GET", "/stores") => "ListStores",
        ("GET", "/stores/{store}") => "GetStore",
        ("DELETE", "/stores/{store}") => "DeleteStore",
        ("POST", "/stores/{store}/authorization-models") => "WriteAuthorizationModel",
        ("GET", "/stores/{store}/authorization-models") => "ReadAuthorizationModels",
        ("GET", "/stores/{store}/authorization-models/{id}") => "ReadAuthorizationModel",
        ("POST", "/stores/{store}/write") => "Write",
        ("POST", "/stores/{store}/read") => "Read",
        ("GET", "/stores/{store}/changes") => "ReadChanges",
        ("POST", "/stores/{store}/check") => "Check",
        ("POST", "/stores/{store}/batch-check") => "BatchCheck",
        ("POST", "/stores/{store}/list-objects") => "ListObjects",
        ("POST", "/stores/{store}/list-users") => "ListUsers",
        ("POST", "/stores/{store}/expand") => "Expand",
        _ => "Unknown",
    }
}

async fn admin_only(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = st.admin_key.clone() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "undefined_endpoint",
            "the admin API is off (start with --admin-key)",
        )
        .into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(k) if constant_time_eq(k.trim().as_bytes(), key.as_bytes()) => next.run(req).await,
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the admin key is required",
        )
        .into_response(),
    }
}

async fn get_limits(State(st): State<AppState>) -> Json<Value> {
    let l = st.limiter.lock().unwrap_or_else(|p| p.into_inner());
    Json(json!({ "default": l.default, "stores": l.limits() }))
}

async fn put_limit(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(limit): Body<crate::ratelimit::Limit>,
) -> ApiResult<Json<Value>> {
    if !is_ulid(&store) {
        return Err(ApiError::validation(format!("invalid store id '{store}'")));
    }
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

async fn delete_limit(State(st): State<AppState>, Path(store): Path<String>) -> StatusCode {
    st.limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .set(&store, None);
    StatusCode::NO_CONTENT
}

async fn metrics(State(st): State<AppState>) -> ApiResult<Response> {
    let tuples = st.db.tuple_counts().await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(&tuples),
    )
        .into_response())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---- stores --------------------------------------------------------------------

#[derive(Deserialize)]
struct CreateStore {
    #[serde(default)]
    name: String,
}

async fn create_store(
    State(st): State<AppState>,
    Body(b): Body<CreateStore>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if b.name.is_empty() || b.name.len() > 64 {
        return Err(ApiError::validation("invalid CreateStoreRequest.Name: value length must be between 3 and 64 runes, inclusive"));
    }
    let s = st.db.create_store(&b.name).await?;
    Ok((StatusCode::CREATED, Json(json!(s))))
}

#[derive(Deserialize)]
struct Page {
    page_size: Option<i64>,
    continuation_token: Option<String>,
}

fn page_size(p: Option<i64>) -> ApiResult<i64> {
    match p {
        None | Some(0) => Ok(50),
        Some(n) if (1..=100).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation(
            "invalid page_size: value must be inside range [1, 100]",
        )),
    }
}

fn decode_token(t: &Option<String>) -> ApiResult<String> {
    match t.as_deref() {
        None | Some("") => Ok(String::new()),
        Some(t) => {
            let bytes = hex_decode(t).ok_or_else(invalid_token)?;
            String::from_utf8(bytes).map_err(|_| invalid_token())
        }
    }
}

fn invalid_token() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_continuation_token",
        "Invalid continuation token",
    )
}

fn hex_encode(s: &str) -> String {
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

async fn list_stores(State(st): State<AppState>, Query(p): Query<Page>) -> ApiResult<Json<Value>> {
    let n = page_size(p.page_size)?;
    let after = decode_token(&p.continuation_token)?;
    let rows = st.db.list_stores(&after, n).await?;
    let token = if rows.len() as i64 == n {
        rows.last().map(|r| hex_encode(&r.id)).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Json(json!({ "stores": rows, "continuation_token": token })))
}

async fn store_exists(st: &AppState, id: &str) -> ApiResult<crate::store::StoreRow> {
    store_id(id)?;
    st.db.get_store(id).await?.ok_or_else(store_not_found)
}

/// Like [`store_exists`], for the hot path (cached; no row).
async fn live_store(st: &AppState, id: &str) -> ApiResult<()> {
    store_id(id)?;
    if st.db.store_exists(id).await? {
        Ok(())
    } else {
        Err(store_not_found())
    }
}

fn store_id(id: &str) -> ApiResult<()> {
    if is_ulid(id) {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "invalid store id '{id}': must be a ULID"
        )))
    }
}

fn store_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "store_id_not_found",
        "store not found",
    )
}

async fn get_store(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(store_exists(&st, &id).await?)))
}

async fn delete_store(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    store_exists(&st, &id).await?;
    st.db.delete_store(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- models ----------------------------------------------------------------------

async fn write_model(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(m): Body<AuthorizationModel>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    store_exists(&st, &store).await?;
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

async fn list_models(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Query(p): Query<Page>,
) -> ApiResult<Json<Value>> {
    store_exists(&st, &store).await?;
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

async fn get_model(
    State(st): State<AppState>,
    Path((store, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    store_exists(&st, &store).await?;
    let m = st.db.get_model(&store, &id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "authorization_model_not_found",
            format!("Authorization Model '{id}' not found"),
        )
    })?;
    Ok(Json(json!({ "authorization_model": m })))
}

/// The model a request names, or the store's latest.
async fn resolve_model(
    st: &AppState,
    store: &str,
    id: &Option<String>,
) -> ApiResult<Arc<AuthorizationModel>> {
    live_store(st, store).await?;
    match id.as_deref() {
        Some(id) if !id.is_empty() => {
            if !is_ulid(id) {
                return Err(ApiError::validation(format!(
                    "invalid authorization_model_id '{id}'"
                )));
            }
            st.db.get_model(store, id).await?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "authorization_model_not_found",
                    format!("Authorization Model '{id}' not found"),
                )
            })
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

// ---- tuples ----------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct TupleKeys {
    #[serde(default, deserialize_with = "nullable")]
    tuple_keys: Vec<TupleKey>,
    #[serde(default)]
    on_duplicate: Option<String>,
    #[serde(default)]
    on_missing: Option<String>,
}

#[derive(Deserialize)]
struct WriteReq {
    #[serde(default)]
    writes: Option<TupleKeys>,
    #[serde(default)]
    deletes: Option<TupleKeys>,
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

async fn write(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<WriteReq>,
) -> ApiResult<Json<Value>> {
    let model = resolve_model(&st, &store, &r.authorization_model_id).await?;
    let w = r.writes.unwrap_or_default();
    let d = r.deletes.unwrap_or_default();
    let total = w.tuple_keys.len() + d.tuple_keys.len();
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
    for t in w.tuple_keys.iter().chain(d.tuple_keys.iter()) {
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
    for t in &w.tuple_keys {
        validate::tuple(&model, t)?;
    }
    for t in &d.tuple_keys {
        if t.object.split_once(':').is_none() || t.relation.is_empty() || t.user.is_empty() {
            return Err(FgaError::invalid_tuple(format!(
                "Invalid tuple '{}#{}@{}'",
                t.object, t.relation, t.user
            ))
            .into());
        }
    }
    let on_dup = conflict_mode(&w.on_duplicate, "on_duplicate")?;
    let on_missing = conflict_mode(&d.on_missing, "on_missing")?;
    match st.db.write(&store, &w.tuple_keys, &d.tuple_keys, on_dup, on_missing).await {
        Ok(()) => Ok(Json(json!({}))),
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
struct PartialKey {
    #[serde(default)]
    user: String,
    #[serde(default)]
    relation: String,
    #[serde(default)]
    object: String,
}

#[derive(Deserialize)]
struct ReadReq {
    #[serde(default)]
    tuple_key: Option<PartialKey>,
    #[serde(default)]
    page_size: Option<i64>,
    #[serde(default)]
    continuation_token: Option<String>,
}

async fn read(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<ReadReq>,
) -> ApiResult<Json<Value>> {
    store_exists(&st, &store).await?;
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
struct ChangesQ {
    #[serde(rename = "type")]
    object_type: Option<String>,
    page_size: Option<i64>,
    continuation_token: Option<String>,
}

async fn changes(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Query(q): Query<ChangesQ>,
) -> ApiResult<Json<Value>> {
    store_exists(&st, &store).await?;
    let n = page_size(q.page_size)?;
    let tok = decode_token(&q.continuation_token)?;
    let after: i64 = if tok.is_empty() {
        0
    } else {
        tok.parse().map_err(|_| invalid_token())?
    };
    let rows = st
        .db
        .changes(
            &store,
            q.object_type.as_deref().filter(|s| !s.is_empty()),
            after,
            n,
        )
        .await?;
    let last = rows.last().map_or(after, |r| r.seq);
    Ok(Json(
        json!({ "changes": rows, "continuation_token": hex_encode(&last.to_string()) }),
    ))
}

// ---- queries ---------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct Contextual {
    #[serde(default, deserialize_with = "nullable")]
    tuple_keys: Vec<TupleKey>,
}

#[derive(Deserialize)]
struct CheckReq {
    tuple_key: TupleKey,
    #[serde(default)]
    contextual_tuples: Option<Contextual>,
    #[serde(default)]
    authorization_model_id: Option<String>,
    #[serde(default)]
    context: Option<Value>,
}

fn no_context(c: &Option<Value>) -> ApiResult<()> {
    match c {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(m)) if m.is_empty() => Ok(()),
        Some(_) => Err(ApiError::validation(
            "`context` needs conditions, which are not supported yet",
        )),
    }
}

fn with_context<'r>(
    model: &AuthorizationModel,
    reader: &'r dyn TupleReader,
    ctx: Vec<TupleKey>,
) -> ApiResult<WithContext<'r>> {
    if ctx.len() > MAX_WRITE {
        return Err(ApiError::validation(format!(
            "at most {MAX_WRITE} contextual tuples"
        )));
    }
    for t in &ctx {
        validate::tuple(model, t)?;
    }
    Ok(WithContext {
        inner: reader,
        extra: ctx,
    })
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

async fn check(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<CheckReq>,
) -> ApiResult<Json<Value>> {
    no_context(&r.context)?;
    let model = resolve_model(&st, &store, &r.authorization_model_id).await?;
    let allowed = do_check(
        &st,
        &store,
        &model,
        &r.tuple_key,
        r.contextual_tuples.unwrap_or_default().tuple_keys,
    )
    .await?;
    Ok(Json(json!({ "allowed": allowed, "resolution": "" })))
}

#[derive(Deserialize)]
struct BatchItem {
    tuple_key: TupleKey,
    #[serde(default)]
    contextual_tuples: Option<Contextual>,
    #[serde(default)]
    context: Option<Value>,
    correlation_id: String,
}

#[derive(Deserialize)]
struct BatchReq {
    checks: Vec<BatchItem>,
    #[serde(default)]
    authorization_model_id: Option<String>,
}

async fn batch_check(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<BatchReq>,
) -> ApiResult<Json<Value>> {
    if r.checks.is_empty() || r.checks.len() > MAX_BATCH_CHECK {
        return Err(ApiError::validation(format!(
            "a batch check needs 1 to {MAX_BATCH_CHECK} checks"
        )));
    }
    let mut ids = std::collections::HashSet::new();
    for c in &r.checks {
        if c.correlation_id.is_empty() || !ids.insert(c.correlation_id.clone()) {
            return Err(ApiError::validation(format!(
                "correlation_id {:?} is empty or repeated",
                c.correlation_id
            )));
        }
    }
    let model = resolve_model(&st, &store, &r.authorization_model_id).await?;
    let futs = r.checks.into_iter().map(|c| {
        let (st, store, model) = (&st, &store, &model);
        async move {
            let res = match no_context(&c.context) {
                Ok(()) => do_check(st, store, model, &c.tuple_key, c.contextual_tuples.unwrap_or_default().tuple_keys).await,
                Err(e) => Err(e),
            };
            let v = match res {
                Ok(a) => json!({ "allowed": a }),
                Err(e) => json!({ "allowed": false, "error": { "input_error": e.code, "message": e.message } }),
            };
            (c.correlation_id, v)
        }
    });
    let results: serde_json::Map<String, Value> =
        futures::future::join_all(futs).await.into_iter().collect();
    Ok(Json(json!({ "result": results })))
}

#[derive(Deserialize)]
struct ListObjectsReq {
    #[serde(rename = "type")]
    object_type: String,
    relation: String,
    user: String,
    #[serde(default)]
    contextual_tuples: Option<Contextual>,
    #[serde(default)]
    authorization_model_id: Option<String>,
    #[serde(default)]
    context: Option<Value>,
}

async fn list_objects(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<ListObjectsReq>,
) -> ApiResult<Json<Value>> {
    no_context(&r.context)?;
    let model = resolve_model(&st, &store, &r.authorization_model_id).await?;
    validate::list_objects_request(&model, &r.object_type, &r.relation, &r.user)?;
    let reader = st.db.reader(&store);
    let ctx = with_context(
        &model,
        &reader,
        r.contextual_tuples.unwrap_or_default().tuple_keys,
    )?;
    let objects = Evaluator::new(&model, &ctx)
        .list_objects(&r.object_type, &r.relation, &r.user, st.list_objects_max)
        .await?;
    Ok(Json(json!({ "objects": objects })))
}

#[derive(Deserialize)]
struct ObjectRef {
    #[serde(rename = "type")]
    type_name: String,
    id: String,
}

#[derive(Deserialize)]
struct UserFilter {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    relation: Option<String>,
}

#[derive(Deserialize)]
struct ListUsersReq {
    object: ObjectRef,
    relation: String,
    user_filters: Vec<UserFilter>,
    #[serde(default, deserialize_with = "nullable")]
    contextual_tuples: Vec<TupleKey>,
    #[serde(default)]
    authorization_model_id: Option<String>,
    #[serde(default)]
    context: Option<Value>,
}

fn user_json(u: &str) -> Value {
    match parse_user(u) {
        Some((t, "*", None)) => json!({ "wildcard": { "type": t } }),
        Some((t, id, Some(r))) => json!({ "userset": { "type": t, "id": id, "relation": r } }),
        Some((t, id, None)) => json!({ "object": { "type": t, "id": id } }),
        None => json!({}),
    }
}

async fn list_users(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<ListUsersReq>,
) -> ApiResult<Json<Value>> {
    no_context(&r.context)?;
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
    let ctx = with_context(&model, &reader, r.contextual_tuples)?;
    let ev = Evaluator::new(&model, &ctx);
    let mut users = Vec::new();
    for (t, rel) in &filters {
        users.extend(
            ev.list_users(&object, &r.relation, t, rel.as_deref())
                .await?,
        );
    }
    Ok(Json(
        json!({ "users": users.iter().map(|u| user_json(u)).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
struct ExpandKey {
    relation: String,
    object: String,
}

#[derive(Deserialize)]
struct ExpandReq {
    tuple_key: ExpandKey,
    #[serde(default)]
    authorization_model_id: Option<String>,
}

/// One level of a relation's userset tree, as OpenFGA's Expand returns it.
async fn expand(
    State(st): State<AppState>,
    Path(store): Path<String>,
    Body(r): Body<ExpandReq>,
) -> ApiResult<Json<Value>> {
    let model = resolve_model(&st, &store, &r.authorization_model_id).await?;
    let (object, relation) = (r.tuple_key.object, r.tuple_key.relation);
    let (ty, id) = object
        .split_once(':')
        .ok_or_else(|| ApiError::validation(format!("invalid object '{object}'")))?;
    if id.is_empty() {
        return Err(ApiError::validation(format!("invalid object '{object}'")));
    }
    let td = model
        .type_def(ty)
        .ok_or_else(|| FgaError::type_not_found(ty))?;
    let rw = td
        .relations
        .get(&relation)
        .ok_or_else(|| FgaError::relation_not_found(ty, &relation))?;
    let reader = st.db.reader(&store);
    let root = expand_node(&reader, &object, &relation, rw).await?;
    Ok(Json(json!({ "tree": { "root": root } })))
}

fn expand_node<'a>(
    reader: &'a crate::store::SqlReader,
    object: &'a str,
    relation: &'a str,
    rw: &'a crate::model::Userset,
) -> futures::future::BoxFuture<'a, ApiResult<Value>> {
    use crate::model::Userset;
    Box::pin(async move {
        let name = format!("{object}#{relation}");
        Ok(match rw {
            Userset::This(_) => {
                let users = reader.users_of(object, relation).await?;
                json!({ "name": name, "leaf": { "users": { "users": users.as_slice() } } })
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
