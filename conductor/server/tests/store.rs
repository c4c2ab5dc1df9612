//! The SQLite store on its own.

use chrono::Utc;
use conductor::store::{AuditEntry, Store};

#[tokio::test]
async fn versions_keep_their_previous_and_their_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(&dir.path().join("s.db")).await.expect("open");
    let cell = cells_inventory::CellSpec {
        id: "c1".into(),
        region: "us-east-1".into(),
        shape: "small".into(),
        labels: Default::default(),
        target: Default::default(),
        port: Some(1000),
        tz: None,
    };
    assert_eq!(
        s.seed_cells(std::slice::from_ref(&cell), Utc::now())
            .await
            .expect("seed"),
        1
    );
    assert_eq!(
        s.seed_cells(&[cell], Utc::now()).await.expect("seed again"),
        0
    );
    let prev = s
        .set_cell_version("c1", "a", Some("1"), "k1", "deploy", Utc::now())
        .await
        .expect("v1");
    assert_eq!(prev, None);
    let prev = s
        .set_cell_version("c1", "a", Some("2"), "k2", "deploy", Utc::now())
        .await
        .expect("v2");
    assert_eq!(prev.as_deref(), Some("1"));
    assert_eq!(
        s.cell_version("c1", "a").await.expect("get").as_deref(),
        Some("2")
    );
    assert_eq!(
        s.deploy_done("k2").await.expect("done"),
        Some(Some("1".to_string()))
    );
    assert_eq!(s.deploy_done("k3").await.expect("not done"), None);
    let cells = s.list_cells().await.expect("list");
    assert_eq!(cells[0].versions[0].previous_version.as_deref(), Some("1"));
}

#[tokio::test]
async fn the_audit_log_is_append_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(&dir.path().join("s.db")).await.expect("open");
    s.audit(
        &AuditEntry::new("alice", "train.approve", "t1", "gate rest"),
        Utc::now(),
    )
    .await
    .expect("append");
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await
            .expect("pool");
    let err = sqlx::query("UPDATE audit SET actor = 'mallory'")
        .execute(&pool)
        .await
        .expect_err("update refused");
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(sqlx::query("DELETE FROM audit")
        .execute(&pool)
        .await
        .is_err());
    assert_eq!(s.audit_log(0, 10).await.expect("read")[0].actor, "alice");
}

#[tokio::test]
async fn tokens_are_found_by_hash_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(&dir.path().join("s.db")).await.expect("open");
    let t = conductor::auth::new_token();
    let audit = AuditEntry::new("admin", "token.create", "ci", "");
    s.create_token(
        "ci",
        "ci",
        &["builders".into()],
        &conductor::auth::hash_token(&t),
        None,
        Utc::now(),
        &audit,
    )
    .await
    .expect("create");
    assert!(
        s.create_token("ci", "ci", &[], "other", None, Utc::now(), &audit)
            .await
            .is_err(),
        "names are unique"
    );
    let row = s
        .token_by_hash(&conductor::auth::hash_token(&t))
        .await
        .expect("find")
        .expect("row");
    assert_eq!(
        (row.name.as_str(), row.role.as_str(), row.groups.as_slice()),
        ("ci", "ci", &["builders".to_string()][..])
    );
    assert!(
        s.token_by_hash(&t).await.expect("raw").is_none(),
        "the raw token is not stored"
    );
}
