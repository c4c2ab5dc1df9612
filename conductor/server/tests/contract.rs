//! Every query of the store, on SQLite and on PostgreSQL: what one database
//! answers, the other answers too (pipelines and revisions, cells, resizes,
//! ports, processes, artifacts, trains, the deploy and step logs, tokens,
//! the audit chain and its tampering checks).

use cells_inventory::{CellSpec, TargetSpec};
use chrono::Utc;
use conductor::store::{AuditEntry, CellProcessRow, Decided, NewRevision, Revoke, Store};
use conductor_core::cell::CellStatus;
use conductor_core::resize::Resize;
use sqlx::Connection;

#[path = "common/db.rs"]
mod db;

fn cell(id: &str, port: Option<u16>) -> CellSpec {
    CellSpec {
        id: id.into(),
        region: "us-east-1".into(),
        shape: "small".into(),
        labels: Default::default(),
        target: TargetSpec::Local,
        port,
        tz: None,
    }
}

fn a(action: &str) -> AuditEntry {
    AuditEntry::new("admin", action, "x", "")
}

fn rev(name: &str, pending: bool) -> NewRevision {
    NewRevision {
        name: name.into(),
        yaml: format!("name: {name}\n"),
        by: "dev".into(),
        pending,
        findings: vec!["drops a gate".into()],
        approver_groups: vec!["sre".into()],
    }
}

#[tokio::test]
async fn pipelines_and_revisions() {
    for db in db::both("revisions").await {
        let s = &db.store;
        let now = Utc::now();
        let r1 = s
            .submit_revision(&rev("p", false), None, now, |_| a("pipeline.submit"))
            .await
            .expect("r1");
        assert_eq!((r1.revision, r1.status.as_str()), (1, "accepted"));
        // Reviewed against no revision, but 1 is in effect: refused.
        assert!(s
            .submit_revision(&rev("p", false), None, now, |_| a("x"))
            .await
            .is_err());
        let r2 = s
            .submit_revision(&rev("p", true), Some(1), now, |_| a("pipeline.submit"))
            .await
            .expect("r2");
        assert_eq!((r2.revision, r2.status.as_str()), (2, "pending"));
        assert_eq!(s.pending_revisions().await.expect("pending").len(), 1);
        match s
            .decide_revision("p", 2, true, "sre", "ok", now, &a("pipeline.approve"))
            .await
            .expect("decide")
        {
            Decided::Done(r) => assert_eq!(r.status, "approved"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.decide_revision("p", 2, true, "sre", "ok", now, &a("x"))
                .await
                .expect("again"),
            Decided::NotPending(_)
        ));
        assert!(matches!(
            s.decide_revision("p", 9, true, "sre", "ok", now, &a("x"))
                .await
                .expect("missing"),
            Decided::NotFound
        ));
        let p = s.get_pipeline("p").await.expect("get").expect("p");
        assert_eq!(p.revision, 2);
        assert_eq!(s.list_pipelines().await.expect("list").len(), 1);
        let revs = s.list_revisions("p").await.expect("revisions");
        assert_eq!(
            revs.iter().map(|r| r.revision).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert_eq!(revs[0].findings, vec!["drops a gate".to_string()]);
        assert_eq!(
            s.get_revision("p", 1)
                .await
                .expect("r")
                .expect("1")
                .base_revision,
            None
        );
        assert!(s.verify_audit(None).await.expect("verify").ok());
        assert_eq!(s.audit_log(0, 10).await.expect("audit").len(), 3);
    }
}

#[tokio::test]
async fn cells_resizes_ports_and_processes() {
    for db in db::both("cells").await {
        let s = &db.store;
        let now = Utc::now();
        s.seed_cells(&[cell("c1", Some(7000))], now)
            .await
            .expect("seed");
        s.add_cell(&cell("c2", Some(7100)), now, &a("cell.add"))
            .await
            .expect("add");
        assert!(s.add_cell(&cell("c2", None), now, &a("x")).await.is_err());
        assert!(s.assign_cell_port("c1", "fga", 7000).await.expect("assign"));
        assert!(!s.assign_cell_port("c2", "fga", 7000).await.expect("taken"));
        assert_eq!(s.cell_port("c1", "fga").await.expect("port"), Some(7000));
        assert_eq!(s.cell_ports().await.expect("ports").len(), 1);
        // A new cell next to a taken port pair is refused.
        assert!(s
            .add_cell(&cell("c3", Some(7001)), now, &a("x"))
            .await
            .is_err());
        s.set_cell_status("c2", CellStatus::Draining, now, &a("cell.drain"))
            .await
            .expect("status");
        assert_eq!(
            s.cell_status("c2").await.expect("status"),
            Some(CellStatus::Draining)
        );
        assert_eq!(s.cell_specs().await.expect("specs").len(), 2);
        assert_eq!(
            s.cell_spec("c1").await.expect("spec").expect("c1").port,
            Some(7000)
        );
        let (mut r, _) = Resize::new(
            "r1".into(),
            "c1".into(),
            "small".into(),
            "large".into(),
            "sre".into(),
            "load".into(),
            true,
            now,
        );
        s.put_resize(&r, Some(&a("resize.request")))
            .await
            .expect("put");
        assert_eq!(s.list_resizes(true, 10).await.expect("open").len(), 1);
        r.status = conductor_core::resize::ResizeStatus::Succeeded;
        let mut big = cell("c1", Some(7000));
        big.shape = "large".into();
        s.finish_resize(&r, Some(&big), Some(&a("resize.done")))
            .await
            .expect("finish");
        assert!(s.list_resizes(true, 10).await.expect("open").is_empty());
        assert_eq!(s.get_resize("r1").await.expect("get").expect("r1").id, "r1");
        assert_eq!(
            s.cell_spec("c1").await.expect("spec").expect("c1").shape,
            "large"
        );
        let p = CellProcessRow {
            pid: 4242,
            started: "boot:1".into(),
            cell_id: "c1".into(),
            artifact: "fga".into(),
            version: "1".into(),
            port: 7000,
            worker: 0,
            worker_port: 7200,
            handover: true,
        };
        s.put_cell_process(&p, now).await.expect("process");
        assert_eq!(s.cell_processes().await.expect("list"), vec![p.clone()]);
        s.delete_cell_process(4242, "boot:other")
            .await
            .expect("not it");
        assert_eq!(s.cell_processes().await.expect("list").len(), 1);
        s.delete_cell_process(4242, "boot:1").await.expect("delete");
        assert!(s.cell_processes().await.expect("list").is_empty());
        // Versions, the deploy log and step output.
        s.set_cell_version("c1", "fga", Some("1"), "k1", "deploy", now)
            .await
            .expect("v");
        assert_eq!(s.deploy_log(None).await.expect("log").len(), 1);
        assert_eq!(s.deploy_log(Some("c1")).await.expect("log").len(), 1);
        assert!(s.deploy_log(Some("c2")).await.expect("log").is_empty());
        s.put_step_log("k1", "t1", "c1", "ok", now)
            .await
            .expect("step");
        s.put_step_log("k1", "t1", "c1", "ok again", now)
            .await
            .expect("step");
        let logs = s.step_logs("t1").await.expect("logs");
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0]["output"], "ok again");
        let cells = s.list_cells().await.expect("cells");
        assert_eq!(cells.len(), 2);
        assert_eq!(cells[0].versions.len(), 1);
        assert!(
            s.verify_audit(None).await.expect("verify").ok(),
            "{}",
            db.backend
        );
    }
}

#[tokio::test]
async fn artifacts_tokens_and_trains() {
    for db in db::both("artifacts").await {
        let s = &db.store;
        let now = Utc::now();
        let art = conductor::store::ArtifactRow {
            name: "fga".into(),
            version: "1".into(),
            sha256: "ab".repeat(32),
            size: 1 << 40,
            pushed_by: "ci".into(),
            pushed_at: now.to_rfc3339(),
        };
        s.put_artifact(&art, &a("artifact.push"), now)
            .await
            .expect("push");
        assert!(s.put_artifact(&art, &a("x"), now).await.is_err());
        let got = s.get_artifact("fga", "1").await.expect("get").expect("1");
        assert_eq!(got.size, 1 << 40);
        assert_eq!(s.list_artifacts().await.expect("list").len(), 1);
        for (name, role) in [("root", "admin"), ("other", "admin")] {
            s.create_token(name, role, &[], name, None, now, &a("token.create"))
                .await
                .expect("token");
        }
        assert_eq!(s.count_tokens().await.expect("count"), 2);
        assert_eq!(
            s.revoke_token("other", "root", now, &a("token.revoke"))
                .await
                .expect("revoke"),
            Revoke::Revoked
        );
        assert_eq!(
            s.revoke_token("root", "root", now, &a("x"))
                .await
                .expect("last"),
            Revoke::LastAdmin
        );
        let tokens = s.list_tokens().await.expect("tokens");
        assert!(tokens.iter().any(|t| t.name == "other" && t.revoked));
        assert!(
            s.token_by_hash("other")
                .await
                .expect("row")
                .expect("other")
                .revoked
        );
        // No trains yet: every listing answers empty on both databases.
        assert!(s.list_trains(None, 10).await.expect("trains").is_empty());
        assert!(s
            .list_trains(Some("p"), 10)
            .await
            .expect("trains")
            .is_empty());
        assert!(s.recent_trains("p", 5).await.expect("recent").is_empty());
        assert!(s.count_trains_by_status().await.expect("count").is_empty());
        assert!(s.active_train_events().await.expect("active").is_empty());
        assert!(s.train_events("t", 0, 10).await.expect("events").is_empty());
        assert_eq!(s.train_event_count("t").await.expect("n"), 0);
        let report = s.verify_audit(None).await.expect("verify");
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.rows, 4);
    }
}

/// PostgreSQL's triggers and checks: rows of an earlier release get chained
/// when the store opens (the one UPDATE allowed), a changed row and a
/// disabled trigger are found.
#[tokio::test]
async fn the_audit_chain_on_postgres() {
    let Some(db) = db::postgres("audit_chain").await else {
        return;
    };
    let s = &db.store;
    s.audit(&a("one"), Utc::now()).await.expect("one");
    let mut raw = db.raw().await;
    // Rows written without a hash (as by a release before the chain).
    sqlx::query("ALTER TABLE audit DISABLE TRIGGER audit_chained")
        .execute(&mut raw)
        .await
        .expect("disable");
    for seq in [2i64, 3] {
        sqlx::query("INSERT INTO audit (seq, at, actor, action, target, detail) VALUES ($1, 't', 'old', 'a', 'x', '')")
            .bind(seq)
            .execute(&mut raw)
            .await
            .expect("unchained row");
    }
    let report = s.verify_audit(None).await.expect("verify");
    assert!(!report.ok());
    assert!(
        format!("{report:?}").contains("row 2 is not chained"),
        "{report:?}"
    );
    sqlx::query("ALTER TABLE audit ENABLE TRIGGER audit_chained")
        .execute(&mut raw)
        .await
        .expect("enable");
    // An UPDATE that changes more than the hashes is refused, even of an
    // unchained row.
    let err =
        sqlx::query("UPDATE audit SET actor = 'x', prev_hash = 'a', hash = 'b' WHERE seq = 2")
            .execute(&mut raw)
            .await
            .expect_err("refused");
    assert!(err.to_string().contains("append-only"), "{err}");
    // Opening the store chains them.
    let again = db.reopen().await;
    let report = again.verify_audit(None).await.expect("verify");
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.rows, 3);
    let (head_seq, head_hash) = report.head.clone().expect("head");
    assert_eq!(head_seq, 3);
    again.audit(&a("four"), Utc::now()).await.expect("four");
    // A disabled trigger counts as a dropped one.
    sqlx::query("ALTER TABLE audit DISABLE TRIGGER audit_no_delete")
        .execute(&mut raw)
        .await
        .expect("disable");
    let report = again.verify_audit(None).await.expect("verify");
    assert!(
        format!("{report:?}").contains("audit_no_delete"),
        "{report:?}"
    );
    sqlx::query("ALTER TABLE audit ENABLE TRIGGER audit_no_delete")
        .execute(&mut raw)
        .await
        .expect("enable");
    assert!(again.verify_audit(None).await.expect("verify").ok());
    // A row changed behind the triggers' back is found.
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut raw)
        .await
        .expect("replica");
    sqlx::query("UPDATE audit SET detail = 'forged' WHERE seq = 2")
        .execute(&mut raw)
        .await
        .expect("forge");
    let report = again
        .verify_audit(Some((head_seq, head_hash)))
        .await
        .expect("verify");
    assert_eq!(report.first_broken.expect("broken").seq, 2);
    raw.close().await.expect("close");
}

/// Two stores on one PostgreSQL database append audit rows at the same
/// time: the write lock keeps the chain whole.
#[tokio::test]
async fn concurrent_audit_rows_keep_the_chain() {
    for db in db::both("audit_race").await {
        let other: Store = db.reopen().await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let s = if i % 2 == 0 {
                db.store.clone()
            } else {
                other.clone()
            };
            tasks.push(tokio::spawn(async move {
                s.audit(&a(&format!("a{i}")), Utc::now())
                    .await
                    .expect("audit")
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let report = db.store.verify_audit(None).await.expect("verify");
        assert!(report.ok(), "{}: {report:?}", db.backend);
        assert_eq!(report.rows, 20);
    }
}

/// PostgreSQL's schema is SQLite's: the same tables, columns and indexes.
#[tokio::test]
async fn both_databases_have_the_same_schema() {
    let Some(pg) = db::postgres("schema").await else {
        return;
    };
    let lite = db::sqlite().await;
    let mut raw = lite.raw().await;
    let mut sqlite_cols: Vec<(String, String)> = sqlx::query_as(
        "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
         WHERE m.type = 'table' AND m.name NOT IN ('sqlite_sequence', '_sqlx_migrations')",
    )
    .fetch_all(&mut raw)
    .await
    .expect("sqlite columns");
    let mut sqlite_idx: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'",
    )
    .fetch_all(&mut raw)
    .await
    .expect("sqlite indexes");
    let mut praw = pg.raw().await;
    let mut pg_cols: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut praw)
    .await
    .expect("pg columns");
    let mut pg_idx: Vec<(String,)> = sqlx::query_as(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public'
         AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'",
    )
    .fetch_all(&mut praw)
    .await
    .expect("pg indexes");
    for v in [&mut sqlite_cols, &mut pg_cols] {
        v.sort();
    }
    for v in [&mut sqlite_idx, &mut pg_idx] {
        v.sort();
    }
    assert_eq!(sqlite_cols, pg_cols);
    assert_eq!(sqlite_idx, pg_idx);
    // Every integer column is BIGINT (sqlx's Any driver reads i64 from INT8 only).
    let narrow: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'
         AND data_type IN ('integer', 'smallint', 'boolean')",
    )
    .fetch_all(&mut praw)
    .await
    .expect("types");
    assert!(narrow.is_empty(), "{narrow:?}");
}
