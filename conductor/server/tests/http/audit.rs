//! The audit log: each row in the transaction of its change, a hash chain
//! that `verify` checks, complete (resize reasons, train commands).

use crate::common::TestApp;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use sqlx::Connection;

const PIPELINE: &str = "name: svc\nartifact: { kind: command, name: svc }\ncells: { labels: { service: fga } }\nsteps:\n  - command: { run: \"true\" }\nwaves:\n  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100, approval: { group: release-managers } }\n";

/// A second connection to the app's database, as someone with the file.
async fn raw(app: &TestApp) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        app.dir.path().join("conductor.db").display()
    ))
    .await
    .expect("connect")
}

async fn exec(conn: &mut sqlx::SqliteConnection, sql: &str) {
    sqlx::raw_sql(sql).execute(&mut *conn).await.expect(sql);
}

async fn verify(app: &TestApp, anchor: Option<&str>) -> Value {
    let path = match anchor {
        Some(a) => format!("/audit/verify?anchor={a}"),
        None => "/audit/verify".into(),
    };
    let (s, v) = app.as_role("admin", "GET", &path, Value::Null).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

fn head(v: &Value) -> String {
    format!(
        "{}:{}",
        v["head"]["seq"],
        v["head"]["hash"].as_str().unwrap_or("")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_audit_row_fails_is_not_made() {
    let app = TestApp::new().await;
    let mut db = raw(&app).await;
    exec(
        &mut db,
        "CREATE TRIGGER test_audit_down BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit unavailable'); END",
    )
    .await;
    let (s, _) = app
        .as_role(
            "admin",
            "POST",
            "/tokens",
            json!({"name": "eve", "role": "admin"}),
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    let tokens = app.store.list_tokens().await.expect("tokens");
    assert!(
        tokens.iter().all(|t| t.name != "eve"),
        "a token without its audit row"
    );

    let (s, _) = app
        .as_role("developer", "POST", "/pipelines", json!({"yaml": PIPELINE}))
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(app.store.get_pipeline("svc").await.expect("get").is_none());

    let req = Request::builder()
        .method("PUT")
        .uri("/api/v1/artifacts/svc/1.0")
        .header("authorization", format!("Bearer {}", app.token("ci")))
        .body(Body::from("binary"))
        .expect("request");
    assert_eq!(app.send(req).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(app
        .store
        .get_artifact("svc", "1.0")
        .await
        .expect("get")
        .is_none());
    assert!(
        !app.artifacts.path("svc", "1.0").exists(),
        "an unindexed artifact file"
    );

    let (s, _) = app
        .as_role(
            "sre",
            "POST",
            "/cells/c00/resize",
            json!({"shape": "medium", "reason": "x"}),
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(app
        .store
        .list_resizes(false, 10)
        .await
        .expect("list")
        .is_empty());

    let (s, _) = app
        .as_role("sre", "POST", "/cells/c01/drain", json!({}))
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        app.store.cell_status("c01").await.expect("status"),
        Some(conductor_core::CellStatus::Active)
    );
    assert!(app
        .store
        .audit_log(0, 100)
        .await
        .expect("log")
        .iter()
        .all(|a| a.actor != "admin-1" && a.actor != "sre-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_commands_are_audited_with_their_events() {
    let app = TestApp::new().await;
    let (s, v) = app
        .as_role("developer", "POST", "/pipelines", json!({"yaml": PIPELINE}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, t) = app
        .as_role(
            "ci",
            "POST",
            "/trains",
            json!({"pipeline": "svc", "version": "1.0"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let id = t["spec"]["id"].as_str().expect("id").to_string();
    // Wait (bounded) until the canary is done and the gate waits.
    let mut waiting = false;
    for _ in 0..600 {
        let (_, t) = app
            .as_role("admin", "GET", &format!("/trains/{id}"), Value::Null)
            .await;
        if t["gates_waiting"].as_array().is_some_and(|g| !g.is_empty()) {
            waiting = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(waiting, "the train never reached its gate");
    // A refused command (self-approval is not the case here: the approver
    // is not the starter, but the gate name is wrong) leaves no audit row.
    let (s, _) = app
        .as_role(
            "approver",
            "POST",
            &format!("/trains/{id}/approve"),
            json!({"gate": "nope"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = app
        .as_role(
            "approver",
            "POST",
            &format!("/trains/{id}/approve"),
            json!({"gate": "rest", "reason": "ok"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let log = app.store.audit_log(0, 1000).await.expect("log");
    let rows: Vec<(String, String)> = log
        .iter()
        .filter(|a| a.target == id)
        .map(|a| (a.actor.clone(), a.action.clone()))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("ci-1".to_string(), "train.start".to_string()),
            ("approver-1".to_string(), "train.approve".to_string())
        ]
    );
    assert_eq!(verify(&app, None).await["ok"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_is_audited_with_its_reason_and_outcome() {
    let app = TestApp::new().await;
    let (s, v) = app
        .as_role(
            "sre",
            "POST",
            "/cells/c00/resize",
            json!({"shape": "medium", "reason": "launch week"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let mut done = None;
    for _ in 0..600 {
        let log = app.store.audit_log(0, 1000).await.expect("log");
        if let Some(r) = log.iter().find(|a| a.action == "resize.succeeded") {
            done = Some((log.clone(), r.clone()));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (log, finished) = done.expect("the resize finished");
    let asked = log
        .iter()
        .find(|a| a.action == "cell.resize")
        .expect("cell.resize row");
    assert_eq!(
        (asked.actor.as_str(), asked.target.as_str()),
        ("sre-1", "c00")
    );
    assert!(
        asked.detail.contains("launch week") && asked.detail.contains("small -> medium"),
        "{}",
        asked.detail
    );
    assert_eq!(finished.actor, "conductor");
}

/// An app with a few audited calls.
async fn with_rows() -> TestApp {
    let app = TestApp::new().await;
    for n in ["a", "b", "c", "d"] {
        let (s, _) = app
            .as_role("admin", "POST", "/tokens", json!({"name": n, "role": "ci"}))
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_the_first_broken_link() {
    // Intact.
    let app = with_rows().await;
    let v = verify(&app, None).await;
    assert_eq!(v["ok"], json!(true), "{v}");
    let rows = v["rows"].as_i64().expect("rows");
    assert!(rows >= 9, "{v}");
    assert_eq!(v["head"]["seq"], json!(rows));
    // The database itself refuses changes while its triggers are there.
    let mut db = raw(&app).await;
    assert!(sqlx::raw_sql("UPDATE audit SET detail = 'x' WHERE seq = 2")
        .execute(&mut db)
        .await
        .is_err());
    assert!(sqlx::raw_sql("INSERT INTO audit (at, actor, action, target, detail, prev_hash, hash) VALUES ('t', 'm', 'a', 't', 'd', 'x', 'y')").execute(&mut db).await.is_err());

    // A row changed (triggers dropped first).
    exec(
        &mut db,
        "DROP TRIGGER audit_no_update; UPDATE audit SET detail = 'role admin' WHERE seq = 7",
    )
    .await;
    let v = verify(&app, None).await;
    assert_eq!(v["ok"], json!(false));
    assert_eq!(v["first_broken"]["seq"], json!(7), "{v}");
    assert!(
        v["first_broken"]["problem"]
            .as_str()
            .unwrap_or("")
            .contains("changed"),
        "{v}"
    );

    // A row removed from the middle.
    let app = with_rows().await;
    let mut db = raw(&app).await;
    exec(
        &mut db,
        "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = 4",
    )
    .await;
    let v = verify(&app, None).await;
    assert_eq!(v["first_broken"]["seq"], json!(5), "{v}");

    // The newest rows removed: SQLite's sequence still knows.
    let app = with_rows().await;
    let before = verify(&app, None).await;
    let mut db = raw(&app).await;
    exec(
        &mut db,
        "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 6",
    )
    .await;
    let v = verify(&app, None).await;
    assert_eq!(v["ok"], json!(false));
    assert!(
        v["first_broken"]["problem"]
            .as_str()
            .unwrap_or("")
            .contains("rows after 6 were removed"),
        "{v}"
    );
    // ... and with the sequence reset too, only an anchor kept elsewhere shows it.
    exec(&mut db, "UPDATE sqlite_sequence SET seq = 6 WHERE name = 'audit'; CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END").await;
    assert_eq!(
        verify(&app, None).await["ok"],
        json!(true),
        "undetectable without an anchor"
    );
    let v = verify(&app, Some(&head(&before))).await;
    assert_eq!(
        (v["ok"].clone(), v["anchor_found"].clone()),
        (json!(false), json!(false)),
        "{v}"
    );
    // An anchor still in the chain passes.
    let early = app.store.audit_log(0, 3).await.expect("log");
    let anchor = format!(
        "{}:{}",
        early[2].seq,
        early[2].hash.clone().unwrap_or_default()
    );
    assert_eq!(verify(&app, Some(&anchor)).await["ok"], json!(true));

    // A whole chain rewritten from row 3 on (hashes recomputed): caught by
    // an anchor at or after row 3.
    let app = with_rows().await;
    let anchor = head(&verify(&app, None).await);
    let mut db = raw(&app).await;
    exec(&mut db, "DROP TRIGGER audit_no_update").await;
    let rows = app.store.audit_log(0, 1000).await.expect("log");
    let mut prev = rows[1].hash.clone().unwrap_or_default();
    for r in &rows[2..] {
        let detail = if r.seq == 3 {
            "forged".to_string()
        } else {
            r.detail.clone()
        };
        let h = conductor::store::row_hash(&prev, &r.at, &r.actor, &r.action, &r.target, &detail);
        sqlx::query("UPDATE audit SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?")
            .bind(&detail)
            .bind(&prev)
            .bind(&h)
            .bind(r.seq)
            .execute(&mut db)
            .await
            .expect("rewrite");
        prev = h;
    }
    let v = verify(&app, Some(&anchor)).await;
    assert_eq!(v["anchor_found"], json!(false), "{v}");
    // The dropped trigger is reported too.
    assert!(
        v["first_broken"]["problem"]
            .as_str()
            .unwrap_or("")
            .contains("audit_no_update"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_train_whose_audit_row_fails_is_not_started() {
    let app = TestApp::new().await;
    let (s, _) = app
        .as_role("developer", "POST", "/pipelines", json!({"yaml": PIPELINE}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let mut db = raw(&app).await;
    exec(
        &mut db,
        "CREATE TRIGGER test_audit_down BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit unavailable'); END",
    )
    .await;
    // The engine cannot commit the train's events with their audit row; it
    // stops rather than run a train nobody can account for.
    let (s, v) = app
        .as_role(
            "ci",
            "POST",
            "/trains",
            json!({"pipeline": "svc", "version": "1.0"}),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(app
        .store
        .list_trains(None, 10)
        .await
        .expect("list")
        .is_empty());
    assert_eq!(app.store.count_events().await.expect("events"), 0);
}
