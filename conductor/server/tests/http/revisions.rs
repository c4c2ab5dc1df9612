//! Pipeline revisions that weaken safety wait for an approver.

use crate::common::TestApp;
use axum::http::StatusCode;
use serde_json::{json, Value};

const GATED: &str = "name: svc\nartifact: { kind: command, name: svc }\ncells: { labels: { service: fga } }\nsteps:\n  - command: { run: \"true\" }\nwaves:\n  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100, approval: { group: release-managers } }\n";

fn ungated(name: &str) -> String {
    GATED
        .replace("name: svc\n", &format!("name: {name}\n"))
        .replace(", approval: { group: release-managers }", "")
}

async fn submit(app: &TestApp, who: &str, yaml: &str) -> (StatusCode, Value) {
    app.as_role(who, "POST", "/pipelines", json!({ "yaml": yaml }))
        .await
}

/// The plan of a new train of `pipeline`: whether its `rest` wave is gated.
async fn next_train_gated(app: &TestApp, who: &str, pipeline: &str) -> bool {
    let (s, t) = app
        .as_role(
            who,
            "POST",
            "/trains",
            json!({"pipeline": pipeline, "version": "1.0"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let id = t["spec"]["id"].as_str().expect("id").to_string();
    let (_, _) = app
        .as_role("admin", "POST", &format!("/trains/{id}/cancel"), json!({}))
        .await;
    t["spec"]["plan"]["waves"][1]["approval"].is_object()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_gate_waits_for_an_approver_of_its_group() {
    let app = TestApp::new().await;
    let other_dev = app.add_token("dev-2", "developer", &[]).await;
    let outsider = app
        .add_token("qa-approver", "approver", &["qa".to_string()])
        .await;
    // First revision of a new pipeline (and a new artifact): in effect at once.
    let (s, v) = submit(&app, "developer", GATED).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["revision"].clone(), v["status"].clone()),
        (json!(1), json!("accepted"))
    );

    // Another developer drops the gate: recorded, not in effect.
    let (s, v) = app
        .call(
            "POST",
            "/pipelines",
            Some(&other_dev),
            json!({"yaml": ungated("svc")}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(
        (v["revision"].clone(), v["status"].clone()),
        (json!(2), json!("pending"))
    );
    assert_eq!(v["approver_groups"], json!(["release-managers"]));
    assert!(
        v["findings"][0]
            .as_str()
            .unwrap_or("")
            .contains("approval by release-managers is removed"),
        "{v}"
    );
    let (_, p) = app
        .as_role("ci", "GET", "/pipelines/svc", Value::Null)
        .await;
    assert_eq!(p["revision"], json!(1));
    // Trains started meanwhile use the revision in effect: still gated.
    assert!(next_train_gated(&app, "ci", "svc").await);

    // What the revision changes.
    let (s, d) = app
        .as_role("ci", "GET", "/pipelines/svc/revisions/2", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["base"]["revision"], json!(1));
    assert_eq!(d["in_effect"], json!(1));
    assert!(d["revision"]["yaml"]
        .as_str()
        .unwrap_or("")
        .contains("percent: 100 }"));

    // Its author cannot approve it, nor a developer, nor an approver of
    // another group.
    let (s, _) = app
        .call(
            "POST",
            "/pipelines/svc/revisions/2/approve",
            Some(&other_dev),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = app
        .call(
            "POST",
            "/pipelines/svc/revisions/2/approve",
            Some(&outsider),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("release-managers"),
        "{v}"
    );
    // An approver of the gate's group: it takes effect.
    let (s, v) = app
        .as_role(
            "approver",
            "POST",
            "/pipelines/svc/revisions/2/approve",
            json!({"reason": "canary is enough"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["revision"]["status"], json!("approved"));
    let (_, p) = app
        .as_role("ci", "GET", "/pipelines/svc", Value::Null)
        .await;
    assert_eq!(p["revision"], json!(2));
    assert!(!next_train_gated(&app, "ci", "svc").await);
    // Approved once: not again.
    let (s, _) = app
        .as_role(
            "approver",
            "POST",
            "/pipelines/svc/revisions/2/approve",
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Putting the gate back strengthens the pipeline: in effect at once.
    let (s, v) = submit(&app, "developer", GATED).await;
    assert_eq!(
        (s, v["status"].clone()),
        (StatusCode::CREATED, json!("accepted"))
    );

    // Audited: submissions (with what they weaken) and the approval.
    let log = app.store.audit_log(0, 1000).await.expect("log");
    let rows: Vec<String> = log
        .iter()
        .filter(|a| a.target == "svc")
        .map(|a| format!("{} {} {}", a.actor, a.action, a.detail))
        .collect();
    assert_eq!(rows.len(), 4, "{rows:#?}");
    assert!(
        rows[1].starts_with("dev-2 pipeline.submit revision 2 awaits approval"),
        "{rows:#?}"
    );
    assert!(
        rows[2].starts_with("approver-1 pipeline.approve revision 2 approved"),
        "{rows:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_revisions_are_superseded_rejected_and_not_bypassed() {
    let app = TestApp::new().await;
    let (s, _) = submit(&app, "admin", GATED).await;
    assert_eq!(s, StatusCode::CREATED);
    // Pending, then superseded by a newer (also weakening) submission.
    let (s, _) = submit(&app, "developer", &ungated("svc")).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, v) = submit(
        &app,
        "developer",
        &ungated("svc").replace("cells: 1", "cells: 2"),
    )
    .await;
    assert_eq!((s, v["revision"].clone()), (StatusCode::ACCEPTED, json!(3)));
    let (_, l) = app
        .as_role("ci", "GET", "/pipelines/svc/revisions", Value::Null)
        .await;
    let statuses: Vec<String> = l["revisions"]
        .as_array()
        .expect("revisions")
        .iter()
        .map(|r| format!("{} {}", r["revision"], r["status"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(statuses, vec!["3 pending", "2 superseded", "1 accepted"]);
    let (s, _) = app
        .as_role(
            "approver",
            "POST",
            "/pipelines/svc/revisions/2/approve",
            json!({}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a superseded revision is not approved"
    );
    // Rejected (with a reason): the revision in effect stays.
    let (s, _) = app
        .as_role(
            "approver",
            "POST",
            "/pipelines/svc/revisions/3/reject",
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a rejection needs a reason");
    let (s, v) = app
        .as_role(
            "approver",
            "POST",
            "/pipelines/svc/revisions/3/reject",
            json!({"reason": "keep the gate"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, p) = app
        .as_role("ci", "GET", "/pipelines/svc", Value::Null)
        .await;
    assert_eq!(p["revision"], json!(1));

    // A copy under a new name that ships the same artifact to the same
    // cells without the gate is no way around it.
    let (s, v) = submit(&app, "developer", &ungated("svc-copy")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert!(
        v["findings"][0]
            .as_str()
            .unwrap_or("")
            .contains("compared with pipeline svc"),
        "{v}"
    );
    let (s, _) = app
        .as_role(
            "ci",
            "POST",
            "/trains",
            json!({"pipeline": "svc-copy", "version": "1.0"}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a pending first revision starts no train"
    );
    // A new pipeline of another artifact is not compared with it.
    let other = ungated("other").replace("name: svc }", "name: other-artifact }");
    let (s, v) = submit(&app, "developer", &other).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // The list shows what waits.
    let (_, l) = app.as_role("ci", "GET", "/pipelines", Value::Null).await;
    assert_eq!(l["pending"][0]["name"], json!("svc-copy"), "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_without_a_gate_still_needs_an_approver_to_drop_its_windows() {
    let app = TestApp::new().await;
    let windowed = format!(
        "{}windows: [ {{ allow: \"daily 00:00-24:00\", tz: utc }} ]\n",
        ungated("svc")
    );
    let (s, _) = submit(&app, "developer", &windowed).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = submit(&app, "developer", &ungated("svc")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["approver_groups"], json!([]));
    // Any approver (no gate, so no group) other than the author.
    let (s, v) = app
        .as_role(
            "approver",
            "POST",
            "/pipelines/svc/revisions/2/approve",
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
