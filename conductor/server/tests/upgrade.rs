//! A database written by a release before per-artifact ports (migration
//! 0004) opens with this build, and its cells' first artifact keeps the
//! cell's ports.

use cells_inventory::{CellSpec, TargetSpec};
use conductor::store::Store;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use std::borrow::Cow;
use std::str::FromStr;

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

#[tokio::test]
async fn cells_deployed_before_per_artifact_ports_keep_their_port() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("conductor.db");
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .expect("url")
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(opts).await.expect("open");
    let all = sqlx::migrate!("../../migrations/sqlite/conductor");
    let before = Migrator {
        migrations: Cow::Owned(
            all.migrations
                .iter()
                .filter(|m| m.version < 4)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    };
    before.run(&pool).await.expect("earlier migrations");
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
