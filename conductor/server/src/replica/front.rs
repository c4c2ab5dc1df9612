//! The front door of a replica: what answers on its listener.
//!
//! The leader serves the whole API itself. A follower forwards every
//! request to the leader (the address in the `leadership` row), so that
//! any replica serves the API with the leader's live view; while no leader
//! can be reached (an election in progress) it answers reads itself, from
//! the shared database, and refuses writes with 503 `no_leader` (nothing
//! was done: safe to retry). Event streams are always served locally: they
//! follow the committed log, which every replica reads. `/healthz` says
//! which role this replica has.

use super::Me;
use crate::store::Store;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Set on a request a follower forwards: a replica that receives one and
/// does not lead answers it instead of forwarding it again.
pub const FORWARDED: HeaderName = HeaderName::from_static("x-conductor-forwarded-by");

/// How long a follower trusts the leader address it read.
const LEADER_TTL: Duration = Duration::from_secs(1);

#[derive(Clone)]
enum Mode {
    /// Answers reads while no leader is reachable.
    Follower {
        local: Router,
    },
    Leader {
        router: Router,
        epoch: i64,
    },
}

pub struct Front {
    mode: RwLock<Mode>,
    store: Store,
    me: Me,
    http: reqwest::Client,
    leader: Mutex<Option<(String, Instant)>>,
}

impl Front {
    /// A follower's front: `local` answers reads when no leader can be reached.
    pub fn follower(store: Store, me: Me, local: Router) -> anyhow::Result<Arc<Front>> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Arc::new(Front {
            mode: RwLock::new(Mode::Follower { local }),
            store,
            me,
            http,
            leader: Mutex::new(None),
        }))
    }

    /// This replica now leads: `router` answers everything from now on.
    pub fn lead(&self, router: Router, epoch: i64) {
        *self.mode.write().unwrap_or_else(|p| p.into_inner()) = Mode::Leader { router, epoch };
    }

    /// The service to hand to `axum::serve`.
    pub fn service(self: &Arc<Front>) -> Router {
        let front = self.clone();
        Router::new().fallback(move |req: Request| {
            let front = front.clone();
            async move { front.handle(req).await }
        })
    }

    async fn handle(&self, req: Request) -> Response {
        let mode = self.mode.read().unwrap_or_else(|p| p.into_inner()).clone();
        let path = req.uri().path();
        match mode {
            Mode::Leader { router, epoch } => {
                if path == "/healthz" {
                    return health("leader", Some(epoch), Some(&self.me.address));
                }
                call(router, req).await
            }
            Mode::Follower { local } => {
                let read = req.method() == Method::GET || req.method() == Method::HEAD;
                if path == "/healthz" {
                    let leader = self.leader_address().await;
                    return health("follower", None, leader.as_deref());
                }
                if path.ends_with("/stream") || req.headers().contains_key(&FORWARDED) {
                    return if read {
                        call(local, req).await
                    } else {
                        no_leader()
                    };
                }
                let Some(addr) = self.leader_address().await else {
                    return if read {
                        call(local, req).await
                    } else {
                        no_leader()
                    };
                };
                let (parts, body) = req.into_parts();
                let retry = read.then(|| {
                    let mut p = Request::new(Body::empty());
                    *p.method_mut() = parts.method.clone();
                    *p.uri_mut() = parts.uri.clone();
                    *p.headers_mut() = parts.headers.clone();
                    p
                });
                match self.forward(&addr, Request::from_parts(parts, body)).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        match retry {
                            Some(r) => call(local, r).await,
                            None if e.is_connect() => no_leader(),
                            None => {
                                tracing::warn!(error = %e, leader = %addr, "forwarding a request to the leader failed");
                                crate::api::ApiError::new(
                                    StatusCode::BAD_GATEWAY,
                                    "leader_unreachable",
                                    "the leader stopped answering while handling this request: it may or may not have been carried out; check before retrying",
                                )
                                .into_response()
                            }
                        }
                    }
                }
            }
        }
    }

    /// The leader's API address (None: no leader, or it is this replica).
    async fn leader_address(&self) -> Option<String> {
        if let Some((a, at)) = self
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if at.elapsed() < LEADER_TTL {
                return Some(a.clone());
            }
        }
        let row = match self.store.leader().await {
            Ok(r) => r?,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read who leads");
                return None;
            }
        };
        if row.holder == self.me.id || row.address.is_empty() {
            return None;
        }
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((row.address.clone(), Instant::now()));
        Some(row.address)
    }

    /// Send `req` to the leader and stream its answer back.
    async fn forward(&self, leader: &str, req: Request) -> Result<Response, reqwest::Error> {
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut out = self
            .http
            .request(parts.method.clone(), format!("{leader}{path}"));
        for (k, v) in parts.headers.iter() {
            if !hop_by_hop(k) && k != header::HOST {
                out = out.header(k, v);
            }
        }
        out = out.header(&FORWARDED, self.me.id.as_str());
        if parts.method != Method::GET && parts.method != Method::HEAD {
            out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
        }
        let resp = out.send().await?;
        let mut b = Response::builder().status(resp.status());
        for (k, v) in resp.headers() {
            if !hop_by_hop(k) {
                b = b.header(k, v);
            }
        }
        Ok(b.body(Body::from_stream(resp.bytes_stream()))
            .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()))
    }
}

async fn call(router: Router, req: Request) -> Response {
    use tower::ServiceExt;
    match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

fn hop_by_hop(h: &HeaderName) -> bool {
    matches!(
        h.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn no_leader() -> Response {
    crate::api::ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_leader",
        "no Conductor replica leads right now (an election is in progress); nothing was done: retry in a few seconds",
    )
    .into_response()
}

fn health(role: &str, epoch: Option<i64>, leader: Option<&str>) -> Response {
    Json(json!({ "status": "ok", "role": role, "epoch": epoch, "leader": leader })).into_response()
}
