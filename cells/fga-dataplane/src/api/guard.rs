//! What runs around every handler: pre-shared key authentication, the
//! admin key, and per store: the store id checked (a valid ULID, decoded
//! from the path exactly as the handlers see it, naming a live store) before
//! the request is rate limited or counted, so that neither an encoded id nor
//! a made-up one escapes the store's limit or adds a metric series.

use super::common::ApiError;
use super::stores::known_store;
use super::AppState;
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Pre-shared key authentication, like OpenFGA's `--authn-method preshared`.
pub async fn authenticate(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.keys.is_empty() {
        return next.run(req).await;
    }
    match bearer(&req) {
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

fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The admin API needs the admin key (and is off without one).
pub async fn admin_only(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = st.admin_key.clone() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "undefined_endpoint",
            "the admin API is off (start with FGA_ADMIN_KEY or --admin-key-file)",
        )
        .into_response();
    };
    match bearer(&req) {
        Some(k) if constant_time_eq(k.as_bytes(), key.as_bytes()) => next.run(req).await,
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the admin key is required",
        )
        .into_response(),
    }
}

/// Check the store a route names, rate-limit per store (with `X-RateLimit-*`
/// headers on every response and 429 + `Retry-After` when exceeded), and
/// record metrics per method (and per store, for live stores only).
pub async fn limit_and_observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| method_name(req.method().as_str(), p.as_str()))
        .unwrap_or("Unknown");
    let (mut parts, body) = req.into_parts();
    // The id as the handlers get it: percent-decoded.
    let store = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(p) => Ok(p
            .iter()
            .find(|(k, _)| *k == "store")
            .map(|(_, v)| v.to_string())),
        Err(_) => Err(ApiError::validation(
            "invalid store id: not valid UTF-8 once decoded",
        )),
    };
    let req = Request::from_parts(parts, body);
    let store = match store {
        Ok(Some(id)) => known_store(&st, &id).await.map(|()| Some(id)),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    let (resp, counted) = match store {
        Err(e) => (e.into_response(), None),
        Ok(store) => (limited(&st, store.as_deref(), req, next).await, store),
    };
    let status = resp.status().as_u16();
    st.metrics.observe(
        method,
        status,
        counted.as_deref(),
        started.elapsed().as_secs_f64(),
    );
    // A deleted store's series goes with it.
    if let (Some(store), "DeleteStore", 204) = (&counted, method, status) {
        st.metrics.forget_store(store);
    }
    resp
}

async fn limited(st: &AppState, store: Option<&str>, req: Request, next: Next) -> Response {
    let decision = store.and_then(|s| {
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
            h.insert("x-ratelimit-burst", HeaderValue::from_static("true"));
        }
    }
    resp
}

fn header_value(v: f64) -> HeaderValue {
    HeaderValue::from_str(&format!("{}", v.max(0.0) as u64))
        .unwrap_or(HeaderValue::from_static("0"))
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
