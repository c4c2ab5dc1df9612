//! Tokens have a life cycle: list, revoke, expiry; refused
//! authentications are logged without the token.

use crate::common::TestApp;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

async fn create(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.as_role("admin", "POST", "/tokens", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_listed_revoked_and_expire() {
    let app = TestApp::new().await;
    let (s, v) = create(&app, json!({"name": "dana", "role": "developer"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let dana = v["token"].as_str().expect("token").to_string();
    let (s, v) = create(
        &app,
        json!({"name": "build", "role": "ci", "expires": "30d"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(v["expires_at"].is_string(), "{v}");
    let build = v["token"].as_str().expect("token").to_string();

    // The list shows every token, never a token or its hash.
    let (s, v) = app.as_role("admin", "GET", "/tokens", Value::Null).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.to_string();
    assert!(!text.contains(&dana) && !text.contains(&conductor::auth::hash_token(&dana)));
    let names: Vec<&str> = v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"dana") && names.contains(&"build"), "{v}");

    // Revoked: refused at once.
    assert_eq!(
        app.call("GET", "/whoami", Some(&dana), Value::Null).await.0,
        StatusCode::OK
    );
    let (s, v) = app
        .as_role(
            "admin",
            "POST",
            "/tokens/dana/revoke",
            json!({"reason": "left"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app.call("GET", "/whoami", Some(&dana), Value::Null).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        v["message"].as_str().unwrap_or("").contains("revoked"),
        "{v}"
    );
    let (s, _) = app
        .as_role("admin", "POST", "/tokens/dana/revoke", json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "revoked twice");
    let (s, _) = app
        .as_role("admin", "POST", "/tokens/nobody/revoke", json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A revoked name is not reused.
    let (s, _) = create(&app, json!({"name": "dana", "role": "developer"})).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Expired: works until the clock passes its expiry.
    assert_eq!(
        app.call("GET", "/whoami", Some(&build), Value::Null)
            .await
            .0,
        StatusCode::OK
    );
    app.clock.advance(chrono::Duration::days(31));
    let (s, v) = app.call("GET", "/whoami", Some(&build), Value::Null).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        v["message"].as_str().unwrap_or("").contains("expired"),
        "{v}"
    );
    let (_, v) = app.as_role("admin", "GET", "/tokens", Value::Null).await;
    let status = |n: &str| {
        v["tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["name"] == n)
            .map(|t| t["status"].clone())
    };
    assert_eq!(status("dana"), Some(json!("revoked")));
    assert_eq!(status("build"), Some(json!("expired")));
    assert_eq!(status("admin-1"), Some(json!("active")));

    // Bad expiries are refused.
    for e in ["0s", "30", "forever", "4000d"] {
        let (s, v) = create(&app, json!({"name": "x", "role": "ci", "expires": e})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}: {v}");
    }

    // Creations and revocations are audited.
    let (_, v) = app.as_role("admin", "GET", "/audit", Value::Null).await;
    let actions: Vec<(String, String)> = v["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .map(|a| (s_(&a["action"]), s_(&a["target"])))
        .collect();
    assert!(actions.contains(&("token.create".into(), "build".into())));
    assert!(actions.contains(&("token.revoke".into(), "dana".into())));
}

fn s_(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_working_admin_token_is_not_revoked() {
    let app = TestApp::new().await;
    let (s, v) = app
        .as_role("admin", "POST", "/tokens/admin-1/revoke", json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        app.as_role("admin", "GET", "/whoami", Value::Null).await.0,
        StatusCode::OK
    );
    let (s, _) = create(&app, json!({"name": "root2", "role": "admin"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = app
        .as_role("admin", "POST", "/tokens/admin-1/revoke", json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn refused_authentications_are_logged_without_the_token() {
    let app = TestApp::new().await;
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let wrong = "cdt_0123456789abcdef-not-a-real-token";
    app.call("GET", "/trains", Some(wrong), Value::Null).await;
    app.call("GET", "/trains", None, Value::Null).await;
    let (s, v) = app
        .as_role("admin", "POST", "/tokens/developer-1/revoke", json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let revoked = app.token("developer").to_string();
    app.call("GET", "/pipelines", Some(&revoked), Value::Null)
        .await;
    let text =
        String::from_utf8_lossy(&log.0.lock().unwrap_or_else(|p| p.into_inner())).to_string();
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("refused authentication"))
        .collect();
    assert_eq!(refusals.len(), 3, "{text}");
    assert!(
        refusals[0].contains("unknown token") && refusals[0].contains("/api/v1/trains"),
        "{text}"
    );
    assert!(refusals[1].contains("no Authorization header"), "{text}");
    assert!(
        refusals[2].contains("revoked token") && refusals[2].contains("developer-1"),
        "{text}"
    );
    assert!(
        !text.contains(wrong) && !text.contains(&revoked),
        "a token was logged: {text}"
    );
}
