//! Databases written by earlier releases open with this build: before
//! per-artifact ports (SQLite 0004), before per-train event numbers
//! (SQLite 0005), and a PostgreSQL one before the event append changes
//! (PostgreSQL 0006).

use cells_inventory::{CellSpec, TargetSpec};
use conductor::store::Store;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use std::borrow::Cow;
use std::str::FromStr;

#[path = "common/db.rs"]
mod db;

fn cell(id: &str, port: Option<u16>) -> CellSpec {
    CellSpec {
        id: id.into(),
        region: "us-east-1".into(),
        shape: "small".into(),
        labels: Default::default(),
        target: if port.is_some() {
            TargetSpec::Local
        } else {
            TargetSpec::Command {
                deploy: "true".into(),
                rollback: "true".into(),
            }
        },
        port,
        tz: None,
    }
}

/// A new SQLite database at `path` with the migrations before `version`
/// only: what an earlier release left.
async fn migrated_before(path: &std::path::Path, version: i64) -> SqlitePool {
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .expect("url")
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(opts).await.expect("open");
    let all = sqlx::migrate!("../../migrations/sqlite/conductor");
    let before = Migrator {
        migrations: Cow::Owned(
            all.migrations
                .iter()
                .filter(|m| m.version < version)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    };
    before.run(&pool).await.expect("earlier migrations");
    pool
}

#[tokio::test]
async fn cells_deployed_before_per_artifact_ports_keep_their_port() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("conductor.db");
    let pool = migrated_before(&path, 4).await;
    for c in [
        cell("c1", Some(18101)),
        cell("c2", Some(18103)),
        cell("x", None),
    ] {
        sqlx::query("INSERT INTO cells (id, spec, updated_at) VALUES (?, ?, 'then')")
            .bind(&c.id)
            .bind(serde_json::to_string(&c).expect("json"))
            .execute(&pool)
            .await
            .expect("cell");
    }
    // c1 ran fga first, then sample (both on its port, the bug); c2 sample; x fga.
    for (cell, art) in [
        ("c1", "fga"),
        ("c1", "sample"),
        ("c2", "sample"),
        ("x", "fga"),
    ] {
        sqlx::query("INSERT INTO deploy_log (cell_id, artifact, version, previous, key, kind, at) VALUES (?, ?, '1', NULL, ?, 'deploy', 'then')")
            .bind(cell)
            .bind(art)
            .bind(format!("{cell}-{art}"))
            .execute(&pool)
            .await
            .expect("log");
    }
    pool.close().await;

    let s = Store::open(&path).await.expect("this build opens it");
    assert_eq!(s.cell_port("c1", "fga").await.expect("read"), Some(18101));
    assert_eq!(s.cell_port("c1", "sample").await.expect("read"), None);
    assert_eq!(
        s.cell_port("c2", "sample").await.expect("read"),
        Some(18103)
    );
    assert_eq!(s.cell_port("x", "fga").await.expect("read"), None);
    assert!(s.cell_processes().await.expect("read").is_empty());
}

/// Events written before per-train numbers (migration 0005) are numbered
/// 1, 2, … within each train, in the order they were written; appends
/// carry on from there.
#[tokio::test]
async fn events_of_an_earlier_release_are_numbered_per_train() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("conductor.db");
    let pool = migrated_before(&path, 5).await;
    for t in ["a", "b"] {
        sqlx::query("INSERT INTO trains (id, pipeline, version, status, started_by, state, created_at, updated_at) VALUES (?, 'p', '1', 'succeeded', 'x', '{}', 'then', 'then')")
            .bind(t)
            .execute(&pool)
            .await
            .expect("train");
    }
    // Interleaved: a a b a b.
    for t in ["a", "a", "b", "a", "b"] {
        sqlx::query("INSERT INTO events (train_id, at, body) VALUES (?, 'then', '{}')")
            .bind(t)
            .execute(&pool)
            .await
            .expect("event");
    }
    pool.close().await;
    let store = Store::open(&path).await.expect("upgrade");
    let pool = SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("reopen");
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT train_id, train_seq FROM events ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("numbers");
    let want = [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2)];
    assert_eq!(
        rows,
        want.iter()
            .map(|(t, n)| (t.to_string(), *n))
            .collect::<Vec<_>>()
    );
    assert_eq!(store.train_event_count("a").await.expect("a"), 3);
    let wake = |n| {
        (
            "a".to_string(),
            n,
            conductor_core::train::Event::Wake { cell: None },
            chrono::Utc::now(),
        )
    };
    assert!(store.commit(&[wake(3)], &[], &[]).await.is_err());
    store.commit(&[wake(4)], &[], &[]).await.expect("next");
}

/// A PostgreSQL database of the release before migration 0006 (events with
/// a foreign key to their train, pglz snapshots) opens: its events read
/// back, the key is gone, and appends go on from its numbers.
#[tokio::test]
async fn a_postgres_database_before_the_append_changes_opens_and_carries_on() {
    let Some(url) = db::empty_postgres("upgrade_0006").await else {
        return;
    };
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let all = sqlx::migrate!("../../migrations/postgres/conductor");
    let before = Migrator {
        migrations: Cow::Owned(
            all.migrations
                .iter()
                .filter(|m| m.version < 6)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    };
    before.run(&pool).await.expect("earlier migrations");
    sqlx::query("INSERT INTO trains (id, pipeline, version, status, started_by, state, created_at, updated_at) VALUES ('a', 'p', '1', 'succeeded', 'x', '{}', 'then', 'then')")
        .execute(&pool)
        .await
        .expect("train");
    for n in 1..=3_i64 {
        sqlx::query("INSERT INTO events (train_id, train_seq, at, body) VALUES ('a', $1, 'then', '{\"type\":\"promoted\"}')")
            .bind(n)
            .execute(&pool)
            .await
            .expect("event");
    }
    let fks =
        "SELECT COUNT(*) FROM pg_constraint WHERE conrelid = 'events'::regclass AND contype = 'f'";
    let (n,): (i64,) = sqlx::query_as(fks).fetch_one(&pool).await.expect("fks");
    assert_eq!(n, 1, "the release before has the foreign key");
    pool.close().await;

    let store = Store::connect(&url).await.expect("upgrade");
    assert_eq!(store.train_event_count("a").await.expect("a"), 3);
    assert_eq!(
        store.train_events("a", 0, 10).await.expect("events").len(),
        3
    );
    let wake = |n| {
        (
            "a".to_string(),
            n,
            conductor_core::train::Event::Wake { cell: None },
            chrono::Utc::now(),
        )
    };
    assert!(store.commit(&[wake(3)], &[], &[]).await.is_err());
    store
        .commit(&[wake(4), wake(5)], &[], &[])
        .await
        .expect("next");
    assert_eq!(store.train_event_count("a").await.expect("a"), 5);
    let pool = sqlx::PgPool::connect(&url).await.expect("reconnect");
    let (n,): (i64,) = sqlx::query_as(fks).fetch_one(&pool).await.expect("fks");
    assert_eq!(n, 0, "0006 drops the per-row foreign key");
}
