//! The usage history on both databases: record, replace, read back per
//! tenant on its newest cell, prune.

use capacity_planner::history::{History, SampleRow};
use capacity_planner::Sample;

fn row(tenant: &str, cell: &str, at: f64, rps: f64) -> SampleRow {
    SampleRow {
        tenant: tenant.into(),
        cell: cell.into(),
        sample: Sample {
            at,
            check_rps: rps,
            tuples: 10.0,
            connections: 1.0,
        },
    }
}

async fn exercise(h: History, tag: &str) {
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    let rows = vec![
        row(&a, "c1", 100.0, 1.0),
        row(&a, "c1", 200.0, 2.0),
        row(&b, "c1", 150.0, 5.0),
        // b moved to c2: only its c2 samples count.
        row(&b, "c2", 250.0, 7.0),
    ];
    assert_eq!(h.record(&rows, "scrape").await.expect("record"), 4);
    // The same moment again replaces, never duplicates.
    h.record(&[row(&a, "c1", 200.0, 3.0)], "import")
        .await
        .expect("replace");
    let usage = h.usage(0.0).await.expect("usage");
    let ua = usage.iter().find(|u| u.tenant == a).expect("a");
    assert_eq!(ua.cell, "c1");
    assert_eq!(
        ua.samples.iter().map(|s| s.check_rps).collect::<Vec<_>>(),
        vec![1.0, 3.0]
    );
    let ub = usage.iter().find(|u| u.tenant == b).expect("b");
    assert_eq!((ub.cell.as_str(), ub.samples.len()), ("c2", 1));
    // The window and pruning.
    assert!(h
        .usage(300.0)
        .await
        .expect("later")
        .iter()
        .all(|u| u.tenant != a));
    assert_eq!(h.prune(160.0).await.expect("prune"), 2);
    let left = h.usage(0.0).await.expect("usage");
    let ua = left.iter().find(|u| u.tenant == a).expect("a");
    assert_eq!(ua.samples.len(), 1);
}

#[tokio::test]
async fn history_on_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = History::connect(&dir.path().join("capacity.db").display().to_string())
        .await
        .expect("open");
    assert_eq!(h.backend(), "sqlite");
    exercise(h, "s").await;
}

/// PostgreSQL: a database of its own on the test server (its migrations
/// must not meet another service's).
#[tokio::test]
async fn history_on_postgres() {
    let url = match std::env::var("FGA_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => u,
        _ if std::env::var_os("CI").is_some() => {
            panic!("FGA_TEST_DATABASE_URL is not set; CI runs the PostgreSQL tests (tests/run starts a server)")
        }
        _ => {
            eprintln!("FGA_TEST_DATABASE_URL is not set: skipping (run ./tests/run)");
            return;
        }
    };
    let name = format!("capacity_test_{}", std::process::id());
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut admin)
            .await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
    }
    let (base, _) = url.rsplit_once('/').expect("database in the URL");
    let h = History::connect(&format!("{base}/{name}"))
        .await
        .expect("open");
    assert_eq!(h.backend(), "postgres");
    exercise(h, "p").await;
}
