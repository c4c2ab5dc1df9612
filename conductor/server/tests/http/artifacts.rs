//! Artifact uploads: authorized before the body is read, streamed to disk,
//! nothing left behind by a failed upload.

use crate::common::TestApp;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// A body of `chunks` chunks of `size` bytes that records whether it was
/// read at all; with `fail_after`, it breaks off after that many chunks.
fn body(chunks: usize, size: usize, fail_after: Option<usize>, read: Arc<AtomicBool>) -> Body {
    let sent = Arc::new(AtomicUsize::new(0));
    let chunk = Bytes::from(vec![7u8; size]);
    let stream = futures::stream::poll_fn(move |_| {
        read.store(true, Ordering::SeqCst);
        let n = sent.fetch_add(1, Ordering::SeqCst);
        if fail_after == Some(n) {
            return std::task::Poll::Ready(Some(Err(std::io::Error::other("connection reset"))));
        }
        std::task::Poll::Ready((n < chunks).then(|| Ok(chunk.clone())))
    });
    Body::from_stream(stream)
}

fn put(path: &str, token: Option<&str>, len: Option<u64>, body: Body) -> Request<Body> {
    let mut b = Request::builder()
        .method("PUT")
        .uri(format!("/api/v1/artifacts/{path}"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(n) = len {
        b = b.header("content-length", n.to_string());
    }
    b.body(body).expect("request")
}

/// Files in the artifact store (uploads in progress included).
fn files(app: &TestApp) -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&app.artifacts.root, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_is_answered_without_reading_the_body() {
    let app = TestApp::new().await;
    // 300 MiB announced; the body must not be touched.
    let big = 300 * 1024 * 1024;
    for (token, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("cdt_wrong"), StatusCode::UNAUTHORIZED),
        (Some(app.token("approver")), StatusCode::FORBIDDEN),
        (Some(app.token("sre")), StatusCode::FORBIDDEN),
    ] {
        let read = Arc::new(AtomicBool::new(false));
        let req = put(
            "svc/1.0",
            token,
            Some(big),
            body(300, 1024 * 1024, None, read.clone()),
        );
        let (status, headers, v) = app.send_full(req).await;
        assert_eq!(status, want, "{v}");
        assert!(
            !read.load(Ordering::SeqCst),
            "the body was read before refusing ({token:?})"
        );
        // The unread rest must not stay on a connection that is reused.
        assert_eq!(
            headers.get("connection").map(|h| h.as_bytes()),
            Some(&b"close"[..])
        );
    }
    // Over the limit by its declared length: refused unread too.
    let read = Arc::new(AtomicBool::new(false));
    let req = put(
        "svc/1.0",
        Some(app.token("ci")),
        Some(600 * 1024 * 1024),
        body(1, 1, None, read.clone()),
    );
    let (status, _) = app.send(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!read.load(Ordering::SeqCst));
    assert!(files(&app).is_empty(), "{:?}", files(&app));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_to_disk_and_leave_nothing_when_they_fail() {
    let app = TestApp::new().await;
    let ci = app.token("ci").to_string();
    // 8 MiB in 64 KiB chunks: hashed on the way.
    let read = Arc::new(AtomicBool::new(false));
    let (status, v) = app
        .send(put(
            "svc/1.0",
            Some(&ci),
            None,
            body(128, 64 * 1024, None, read),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let want = hex::encode(Sha256::digest(vec![7u8; 128 * 64 * 1024]));
    assert_eq!(v["sha256"], Value::String(want));
    assert_eq!(v["size"], 128 * 64 * 1024);
    let path = app.artifacts.path("svc", "1.0");
    assert_eq!(
        std::fs::metadata(&path).expect("file").len(),
        128 * 64 * 1024
    );
    assert_eq!(
        files(&app),
        vec![path.display().to_string()],
        "no temporary file left"
    );

    // The same version again: refused before reading, the file untouched.
    let read = Arc::new(AtomicBool::new(false));
    let (status, _) = app
        .send(put(
            "svc/1.0",
            Some(&ci),
            None,
            body(1, 10, None, read.clone()),
        ))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(!read.load(Ordering::SeqCst));

    // An upload that breaks off: nothing indexed, no file, no audit row.
    let read = Arc::new(AtomicBool::new(false));
    let (status, v) = app
        .send(put(
            "svc/2.0",
            Some(&ci),
            None,
            body(100, 64 * 1024, Some(40), read),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(files(&app), vec![path.display().to_string()]);
    assert!(app
        .store
        .get_artifact("svc", "2.0")
        .await
        .expect("get")
        .is_none());
    // An empty one is refused and leaves nothing either.
    let (status, _) = app
        .send(put("svc/3.0", Some(&ci), None, Body::empty()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(files(&app), vec![path.display().to_string()]);
    let audit = app.store.audit_log(0, 1000).await.expect("audit");
    let pushes: Vec<&str> = audit
        .iter()
        .filter(|a| a.action == "artifact.push")
        .map(|a| a.target.as_str())
        .collect();
    assert_eq!(pushes, vec!["svc:1.0"]);
}
