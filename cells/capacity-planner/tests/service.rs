//! The planner's HTTP API in process: who may make it read a body.

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use capacity_planner::history::History;
use capacity_planner::service::{router, Config};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const TOKEN: &str = "planner-test-token-0123456789";

async fn app(dir: &tempfile::TempDir) -> axum::Router {
    let shapes = cells_inventory::parse_shapes(
        "shapes.yaml",
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../templates/shapes.yaml"
        ))
        .expect("shapes"),
    )
    .expect("valid shapes");
    let history = History::connect(&dir.path().join("h.db").display().to_string())
        .await
        .expect("history");
    router(Arc::new(Config {
        shapes,
        history,
        routes_file: None,
        artifact: "fga-dataplane".into(),
        interval: Duration::from_secs(15),
        window_secs: 14.0 * 86_400.0,
        retention_secs: 35.0 * 86_400.0,
        token: TOKEN.into(),
        fga_admin_key: None,
    }))
}

/// A request body that hands out one 1 MiB chunk when first polled, then
/// never ends (a client still sending); `read` counts the chunks taken.
fn endless(read: Arc<AtomicUsize>) -> Body {
    Body::from_stream(futures::stream::unfold(read, |read| async move {
        if read.fetch_add(1, Ordering::SeqCst) == 0 {
            Some((
                Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1 << 20])),
                read,
            ))
        } else {
            // Undo the count: this poll took nothing, and never will.
            read.fetch_sub(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
            None
        }
    }))
}

/// With the clock paused, time jumps ahead whenever every task waits, so
/// a server that waits for the rest of the body runs into the deadline at
/// once instead of answering; no wall-clock time is measured.
#[tokio::test]
async fn a_request_without_the_token_is_refused_before_its_body_is_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let app = app(&dir).await;
    // Paused only now: opening the database runs on a thread of its own.
    tokio::time::pause();
    for (path, auth) in [
        ("/v1/usage", None),
        ("/v1/usage", Some("Bearer not-the-token")),
        ("/v1/plan", Some("Bearer not-the-token")),
        ("/v1/tenants", None),
    ] {
        let read = Arc::new(AtomicUsize::new(0));
        let mut req = Request::post(path)
            .header("content-type", "application/yaml")
            .header("content-length", (60u64 << 20).to_string());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let req = req.body(endless(read.clone())).expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(3600), app.clone().oneshot(req))
            .await
            .unwrap_or_else(|_| {
                panic!("{path}: the planner waited for the body instead of refusing")
            })
            .expect("response");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(read.load(Ordering::SeqCst), 0, "{path}: body was read");
    }
    // With the token, the same endpoint reads the body (and refuses junk).
    let req = Request::post("/v1/usage")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from("tenants: [ { tenant: x } ]"))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Health needs no token.
    let resp = app
        .oneshot(Request::get("/healthz").body(Body::empty()).expect("req"))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
}
