//! `/routes` answers from the cell routing table (`CellRouting`), the one
//! the supervisor publishes to: what it holds, in the same shape.

use crate::common::TestApp;
use axum::http::StatusCode;
use conductor::targets::CellRouting;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_the_published_routing_table() {
    let app = TestApp::new().await;
    let (s, v) = app.as_role("admin", "GET", "/routes", Value::Null).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"routes": {}}));

    let route = json!({
        "version": "2", "port": 28001, "ports": [28000, 28001], "pid": 42,
        "workers": [{"pid": 42, "port": 28101}]
    });
    let routes = [("svc".to_string(), route.clone())].into();
    app.routing.publish("c0", routes).expect("publish");
    let (s, v) = app
        .as_role("developer", "GET", "/routes", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"routes": {"c0": {"svc": route}}}));

    app.routing.remove("c0").expect("remove");
    let (_, v) = app.as_role("admin", "GET", "/routes", Value::Null).await;
    assert_eq!(v, json!({"routes": {}}));
}
