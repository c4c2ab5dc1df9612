//! Every route x every role: who may call what (the README's table).

use crate::common::TestApp;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const ROLES: [&str; 5] = ["admin", "developer", "ci", "approver", "sre"];

/// (method, route, an example path, the roles that may call it). Written
/// out by hand: this is the specification, not a copy of the code's rules.
const TABLE: &[(&str, &str, &str, &str)] = &[
    ("GET", "/whoami", "/whoami", "all"),
    ("GET", "/pipelines", "/pipelines", "all"),
    ("POST", "/pipelines", "/pipelines", "developer admin"),
    ("POST", "/pipelines/validate", "/pipelines/validate", "all"),
    ("GET", "/pipelines/{name}", "/pipelines/nope", "all"),
    (
        "GET",
        "/pipelines/{name}/plan",
        "/pipelines/nope/plan",
        "all",
    ),
    (
        "GET",
        "/pipelines/{name}/revisions",
        "/pipelines/nope/revisions",
        "all",
    ),
    (
        "GET",
        "/pipelines/{name}/revisions/{rev}",
        "/pipelines/nope/revisions/1",
        "all",
    ),
    (
        "POST",
        "/pipelines/{name}/revisions/{rev}/approve",
        "/pipelines/nope/revisions/1/approve",
        "approver admin",
    ),
    (
        "POST",
        "/pipelines/{name}/revisions/{rev}/reject",
        "/pipelines/nope/revisions/1/reject",
        "approver admin",
    ),
    ("GET", "/trains", "/trains", "all"),
    ("POST", "/trains", "/trains", "developer ci admin"),
    ("GET", "/trains/{id}", "/trains/nope", "all"),
    ("GET", "/trains/{id}/events", "/trains/nope/events", "all"),
    ("GET", "/trains/{id}/logs", "/trains/nope/logs", "all"),
    (
        "POST",
        "/trains/{id}/approve",
        "/trains/nope/approve",
        "approver admin",
    ),
    (
        "POST",
        "/trains/{id}/reject",
        "/trains/nope/reject",
        "approver admin",
    ),
    (
        "POST",
        "/trains/{id}/cancel",
        "/trains/nope/cancel",
        "developer sre admin",
    ),
    (
        "POST",
        "/trains/{id}/rollback",
        "/trains/nope/rollback",
        "developer sre admin",
    ),
    // Streams asked with a bad position or of no train: answered at once.
    ("GET", "/trains/{id}/stream", "/trains/nope/stream", "all"),
    ("GET", "/stream", "/stream?after=none", "all"),
    ("GET", "/cells", "/cells", "all"),
    ("POST", "/cells", "/cells", "sre admin"),
    ("GET", "/cells/deploys", "/cells/deploys", "all"),
    (
        "POST",
        "/cells/{id}/resize",
        "/cells/nope/resize",
        "sre admin",
    ),
    (
        "POST",
        "/cells/{id}/drain",
        "/cells/nope/drain",
        "sre admin",
    ),
    (
        "POST",
        "/cells/{id}/retire",
        "/cells/nope/retire",
        "sre admin",
    ),
    ("GET", "/resizes", "/resizes", "all"),
    ("GET", "/resizes/{id}", "/resizes/nope", "all"),
    (
        "POST",
        "/resizes/{id}/approve",
        "/resizes/nope/approve",
        "approver sre admin",
    ),
    (
        "POST",
        "/resizes/{id}/reject",
        "/resizes/nope/reject",
        "approver sre admin",
    ),
    ("GET", "/leases", "/leases", "all"),
    ("GET", "/routes", "/routes", "all"),
    ("GET", "/artifacts", "/artifacts", "all"),
    (
        "PUT",
        "/artifacts/{name}/{version}",
        "/artifacts/nope/1.0",
        "developer ci admin",
    ),
    ("GET", "/tokens", "/tokens", "admin"),
    ("POST", "/tokens", "/tokens", "admin"),
    (
        "POST",
        "/tokens/{name}/revoke",
        "/tokens/nope/revoke",
        "admin",
    ),
    ("GET", "/audit", "/audit", "admin"),
    ("GET", "/audit/verify", "/audit/verify", "admin"),
    ("GET", "/capacity/plan", "/capacity/plan", "all"),
    ("POST", "/capacity/apply", "/capacity/apply", "sre admin"),
    ("GET", "/capacity/limits", "/capacity/limits", "all"),
    (
        "POST",
        "/capacity/limits/push",
        "/capacity/limits/push",
        "sre admin",
    ),
    ("GET", "/capacity/rebalance", "/capacity/rebalance", "all"),
    ("POST", "/capacity/usage", "/capacity/usage", "sre admin"),
    ("POST", "/tenants/place", "/tenants/place", "all"),
];

fn allowed(spec: &str, role: &str) -> bool {
    spec == "all" || spec.split_whitespace().any(|r| r == role)
}

fn body(method: &str) -> Value {
    if method == "POST" {
        json!({})
    } else {
        Value::Null
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_for_every_role() {
    let app = TestApp::new().await;
    let mut wrong = Vec::new();
    for (method, route, path, who) in TABLE {
        // No token, or a wrong one: 401 (this also shows the route exists:
        // an unknown path would be a 404).
        for token in [None, Some("cdt_not-a-token")] {
            let (status, _) = app.call(method, path, token, body(method)).await;
            if status != StatusCode::UNAUTHORIZED {
                wrong.push(format!(
                    "{method} {route} with token {token:?}: {status}, want 401"
                ));
            }
        }
        for role in ROLES {
            let (status, v) = app.as_role(role, method, path, body(method)).await;
            let want = allowed(who, role);
            let refused = status == StatusCode::FORBIDDEN && v["code"] == "forbidden";
            if want && (refused || status == StatusCode::UNAUTHORIZED) {
                wrong.push(format!(
                    "{method} {route} as {role}: {status} {v}, want it allowed"
                ));
            }
            if !want && !refused {
                wrong.push(format!(
                    "{method} {route} as {role}: {status} {v}, want 403"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_needs_what_get_needs() {
    let app = TestApp::new().await;
    assert_eq!(
        app.as_role("ci", "HEAD", "/trains", Value::Null).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.as_role("ci", "HEAD", "/audit", Value::Null).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call("HEAD", "/trains", None, Value::Null).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn the_table_covers_every_route_of_the_api() {
    let ours: BTreeSet<(String, String)> = TABLE
        .iter()
        .map(|(m, r, _, _)| (m.to_string(), r.to_string()))
        .collect();
    assert_eq!(ours.len(), TABLE.len(), "a route is listed twice");
    let api: BTreeSet<(String, String)> = conductor::api::ROUTES
        .iter()
        .map(|(m, r, _)| (m.to_string(), r.to_string()))
        .collect();
    assert_eq!(
        ours.symmetric_difference(&api).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes of the API missing here, or listed here but not served"
    );
}
