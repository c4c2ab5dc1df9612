//! A database written by the release before these changes (schema up to
//! migration 0002) opens: its tokens still work, its audit rows are kept and
//! chained, its pipeline is revision 2 in effect, and its train in flight
//! (waiting at an approval gate) carries on.
//!
//! `tests/fixtures/conductor-b2c1557.db` was written by `conductor up` built
//! at commit b2c1557: tokens dana (developer), alice (approver,
//! release-managers), ci (ci) and the admin; sample-service 1.0.0 pushed;
//! pipeline `svc` submitted twice (canary, then `rest` gated by
//! release-managers); a train started by ci whose canary succeeded and
//! which waits at the gate; then the server was stopped (WAL checkpointed).

use crate::common::{root, TestApp};
use axum::http::StatusCode;
use serde_json::{json, Value};

const DANA: &str = "cdt_38dc7d2ace7c5052ca759bceba35767e6d52da74127e69e24a1722506964b82d";
const ALICE: &str = "cdt_efc192b63022a0cdc50be811a6ba4cfd8835c5837ea5968db37fabe67333d201";
const CI: &str = "cdt_87c546c20c2e0ac917eb81d34d6236f62ac67043e5d994b92f9b8b55b780e6d7";
const ADMIN: &str = "cdt_9c8379c9f2545366d3c25672ff859f9ee0b4a3bc2c9f7db76f806c5bce4c0059";
const TRAIN: &str = "svc-20261129160414-2a569a";

/// Alice approves the train's gate `rest`; the train then succeeds.
async fn approve_and_wait(app: &TestApp, alice: &str, ci: &str, train: &str) {
    let (s, v) = app
        .call(
            "POST",
            &format!("/trains/{train}/approve"),
            Some(alice),
            json!({"gate": "rest", "reason": "after the upgrade"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut status = Value::Null;
    for _ in 0..1500 {
        let (_, t) = app
            .call("GET", &format!("/trains/{train}"), Some(ci), Value::Null)
            .await;
        status = t["status"].clone();
        if status == json!("succeeded") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, json!("succeeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_previous_release_opens_and_carries_on() {
    let fixture = root().join("tests/fixtures/conductor-b2c1557.db");
    let app = TestApp::with_db(Some(&fixture)).await;

    // Old tokens work, with their roles.
    for (token, name, role) in [
        (DANA, "dana", "developer"),
        (ALICE, "alice", "approver"),
        (CI, "ci", "ci"),
        (ADMIN, "admin", "admin"),
    ] {
        let (s, v) = app.call("GET", "/whoami", Some(token), Value::Null).await;
        assert_eq!(s, StatusCode::OK, "{name}: {v}");
        assert_eq!(
            (v["name"].as_str(), v["role"].as_str()),
            (Some(name), Some(role))
        );
    }

    // The seven audit rows of that release are kept as they were, and chained.
    let log = app.store.audit_log(0, 1000).await.expect("log");
    let old: Vec<String> = log[..7]
        .iter()
        .map(|a| format!("{} {} {}", a.actor, a.action, a.target))
        .collect();
    assert_eq!(
        old,
        vec![
            "admin token.create dana",
            "admin token.create alice",
            "admin token.create ci",
            "admin artifact.push sample-service:1.0.0",
            "dana pipeline.submit svc",
            "dana pipeline.submit svc",
            "ci train.start svc-20261129160414-2a569a",
        ]
    );
    assert_eq!(log[0].prev_hash.as_deref(), Some(conductor::store::GENESIS));
    let (s, v) = app
        .call("GET", "/audit/verify", Some(ADMIN), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ok"], json!(true), "{v}");

    // The pipeline: revision 2 in effect, and listed as a revision.
    let (_, l) = app
        .call("GET", "/pipelines/svc/revisions", Some(DANA), Value::Null)
        .await;
    assert_eq!(l["in_effect"], json!(2), "{l}");
    assert_eq!(l["revisions"][0]["status"], json!("accepted"));

    // The train in flight waits at its gate; alice approves; it finishes.
    let (s, t) = app
        .call("GET", &format!("/trains/{TRAIN}"), Some(CI), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["status"], json!("running"), "{t}");
    approve_and_wait(&app, ALICE, CI, TRAIN).await;
    let (_, v) = app
        .call("GET", "/audit/verify", Some(ADMIN), Value::Null)
        .await;
    assert_eq!(v["ok"], json!(true), "{v}");
    let log = app.store.audit_log(0, 1000).await.expect("log");
    assert!(log
        .iter()
        .any(|a| a.actor == "alice" && a.action == "train.approve"));
}

/// `tests/fixtures/conductor-2f9af91.db`: written by `conductor up` at
/// commit 2f9af91 (schema up to migration 0005: the leadership row and the
/// events' per-train numbers): tokens dana (developer), alice (approver,
/// release-managers), ci (ci) and the admin; sample-service 1.0.0 pushed;
/// pipeline `svc` (canary, then `rest` gated by release-managers); a train
/// started by ci whose canary succeeded and which waits at the gate; the
/// server stopped and the WAL checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_release_with_replicas_opens_and_carries_on() {
    const ALICE: &str = "cdt_768b1e18c55e18a598b55d15a32662e6a8d433a4f226f56ba6e34abe5c1183c7";
    const CI: &str = "cdt_c4e225d314259f4f28556d10e24ccb2ac5a7c5e07642bd7adde7b05bfa9f1a23";
    const ADMIN: &str = "cdt_4bfe5f811e5122af7faaeadd6547d474c0f9d0172c83de26bb6251f0a975e6c5";
    const TRAIN: &str = "svc-20261129205221-45b1d1";
    let fixture = root().join("tests/fixtures/conductor-2f9af91.db");
    let app = TestApp::with_db(Some(&fixture)).await;
    let (s, v) = app.call("GET", "/whoami", Some(CI), Value::Null).await;
    assert_eq!((s, v["role"].as_str()), (StatusCode::OK, Some("ci")), "{v}");
    let (_, v) = app
        .call("GET", "/audit/verify", Some(ADMIN), Value::Null)
        .await;
    assert_eq!(v["ok"], json!(true), "{v}");
    let (s, t) = app
        .call("GET", &format!("/trains/{TRAIN}"), Some(CI), Value::Null)
        .await;
    assert_eq!(
        (s, &t["status"]),
        (StatusCode::OK, &json!("running")),
        "{t}"
    );
    assert_eq!(t["gates_waiting"], json!(["rest"]), "{t}");
    approve_and_wait(&app, ALICE, CI, TRAIN).await;
    // Its events kept their per-train numbers: the new ones follow on.
    let n = app.store.train_event_count(TRAIN).await.expect("count");
    let (_, ev) = app
        .call(
            "GET",
            &format!("/trains/{TRAIN}/events"),
            Some(CI),
            Value::Null,
        )
        .await;
    assert_eq!(ev["events"].as_array().map(Vec::len), Some(n as usize));
    let (_, v) = app
        .call("GET", "/audit/verify", Some(ADMIN), Value::Null)
        .await;
    assert_eq!(v["ok"], json!(true), "{v}");
}
