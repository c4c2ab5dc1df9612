//! The store on its own, on SQLite and on PostgreSQL.

use chrono::Utc;
use conductor::store::{AuditEntry, Store};
use sqlx::Connection;

#[path = "common/db.rs"]
mod db;

#[tokio::test]
async fn versions_keep_their_previous_and_their_key() {
    for db in db::both("versions").await {
        versions(&db.store).await;
    }
}

async fn versions(s: &Store) {
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
    for db in db::both("append_only").await {
        let s = &db.store;
        s.audit(
            &AuditEntry::new("alice", "train.approve", "t1", "gate rest"),
            Utc::now(),
        )
        .await
        .expect("append");
        let mut raw = db.raw().await;
        let err = sqlx::query("UPDATE audit SET actor = 'mallory'")
            .execute(&mut raw)
            .await
            .expect_err("update refused");
        assert!(err.to_string().contains("append-only"), "{err}");
        assert!(sqlx::query("DELETE FROM audit")
            .execute(&mut raw)
            .await
            .is_err());
        if db.is_postgres() {
            let err = sqlx::query("TRUNCATE audit")
                .execute(&mut raw)
                .await
                .expect_err("truncate refused");
            assert!(err.to_string().contains("append-only"), "{err}");
        }
        // A row that does not extend the chain is refused.
        let err = sqlx::query(
            "INSERT INTO audit (seq, at, actor, action, target, detail, prev_hash, hash)
             VALUES (2, 'x', 'mallory', 'a', 't', '', $1, $1)",
        )
        .bind(conductor::store::GENESIS)
        .execute(&mut raw)
        .await
        .expect_err("insert refused");
        assert!(err.to_string().contains("extend the hash chain"), "{err}");
        assert_eq!(s.audit_log(0, 10).await.expect("read")[0].actor, "alice");
        assert!(s.verify_audit(None).await.expect("verify").ok());
        raw.close().await.expect("close");
    }
}

#[tokio::test]
async fn tokens_are_found_by_hash_only() {
    for db in db::both("tokens").await {
        tokens(&db.store).await;
    }
}

async fn tokens(s: &Store) {
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

/// SQLite's settings are in effect on the store's connections.
#[tokio::test]
async fn sqlite_runs_in_wal_with_normal_sync_and_foreign_keys() {
    let db = db::sqlite().await;
    let s = &db.store;
    let get = |n: &'static str| async move { s.sqlite_setting(n).await.expect(n) };
    assert_eq!(get("journal_mode").await.as_deref(), Some("wal"));
    // 1: NORMAL.
    assert_eq!(get("synchronous").await.as_deref(), Some("1"));
    assert_eq!(get("foreign_keys").await.as_deref(), Some("1"));
    assert_eq!(get("busy_timeout").await.as_deref(), Some("10000"));
    use std::os::unix::fs::PermissionsExt;
    let path = db.url.trim_start_matches("sqlite://");
    let mode = std::fs::metadata(path).expect("file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the database file is private");
}
