//! Every write of a deposed leader is refused, on SQLite and PostgreSQL:
//! once another Conductor claimed the leadership, the old one's cell
//! versions, resizes, step logs, process rows, ports, tokens and audit rows
//! are refused with `Fenced`, and nothing changed.

use chrono::Utc;
use conductor::store::{AuditEntry, CellProcessRow, Store, StoreError};
use conductor_core::resize::{Resize, ResizeStatus};

#[path = "common/db.rs"]
mod db;
#[path = "common/fixtures.rs"]
mod fixtures;
use fixtures::cell;

fn process(pid: i64) -> CellProcessRow {
    CellProcessRow {
        pid,
        started: format!("boot:{pid}"),
        cell_id: "c1".into(),
        artifact: "a".into(),
        version: "1".into(),
        port: 20000,
        worker: 0,
        worker_port: 20001,
        handover: false,
    }
}

fn audit(action: &str) -> AuditEntry {
    AuditEntry::new("alice", action, "c1", "")
}

/// What the writes below change, read back.
async fn state(s: &Store) -> String {
    let resize = s.get_resize("r1").await.expect("resize");
    format!(
        "version={:?} log={} resize={:?} shape={:?} steps={} procs={:?} ports={:?} tokens={} audit={}",
        s.cell_version("c1", "a").await.expect("version"),
        s.deploy_log(None).await.expect("log").len(),
        resize.map(|r| r.status),
        s.cell_spec("c1").await.expect("cell").map(|c| c.shape),
        s.step_logs("t1").await.expect("steps").len(),
        s.cell_processes().await.expect("procs"),
        s.cell_ports().await.expect("ports"),
        s.count_tokens().await.expect("tokens"),
        s.audit_log(0, 1000).await.expect("audit").len(),
    )
}

fn fenced<T: std::fmt::Debug>(what: &str, backend: &str, r: Result<T, StoreError>) {
    match r {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("{backend}: {what} was not fenced: {other:?}"),
    }
}

#[tokio::test]
async fn a_deposed_leader_writes_nothing_anywhere() {
    for db in db::both("fencedwrites").await {
        let (a, be) = (&db.store, db.backend);
        let b = db.reopen().await;
        let now = Utc::now();
        a.seed_cells(&[cell("c1")], now).await.expect("seed");
        let ea = a.claim_leadership("a", "http://a", now).await.expect("a");
        a.set_fence(ea);
        // While it leads, its writes go through.
        a.set_cell_version("c1", "a", Some("1"), "k1", "deploy", now)
            .await
            .expect("version");
        a.put_step_log("k1", "t1", "c1", "out", now)
            .await
            .expect("step log");
        a.put_cell_process(&process(10), now).await.expect("proc");
        assert!(a.assign_cell_port("c1", "a", 20000).await.expect("port"));
        a.create_token("t", "admin", &[], "h1", None, now, &audit("token"))
            .await
            .expect("token");
        let (mut r, _) = Resize::new(
            "r1".into(),
            "c1".into(),
            "small".into(),
            "large".into(),
            "alice".into(),
            "more".into(),
            false,
            now,
        );
        a.put_resize(&r, Some(&audit("resize.request")))
            .await
            .expect("resize");
        let before = state(a).await;

        b.claim_leadership("b", "http://b", now).await.expect("b");
        fenced(
            "set_cell_version",
            be,
            a.set_cell_version("c1", "a", Some("2"), "k2", "deploy", now)
                .await,
        );
        r.status = ResizeStatus::Succeeded;
        let mut large = cell("c1");
        large.shape = "large".into();
        fenced(
            "finish_resize",
            be,
            a.finish_resize(&r, Some(&large), Some(&audit("resize.done")))
                .await,
        );
        fenced(
            "put_step_log",
            be,
            a.put_step_log("k2", "t1", "c1", "more", now).await,
        );
        fenced(
            "put_cell_process",
            be,
            a.put_cell_process(&process(11), now).await,
        );
        fenced(
            "delete_cell_process",
            be,
            a.delete_cell_process(10, "boot:10").await,
        );
        fenced(
            "assign_cell_port",
            be,
            a.assign_cell_port("c1", "b", 20010).await,
        );
        fenced(
            "create_token",
            be,
            a.create_token("u", "admin", &[], "h2", None, now, &audit("token"))
                .await,
        );
        fenced("audit", be, a.audit(&audit("x"), now).await);
        fenced(
            "set_cell_status",
            be,
            a.set_cell_status(
                "c1",
                conductor_core::CellStatus::Draining,
                now,
                &audit("drain"),
            )
            .await,
        );
        assert_eq!(state(a).await, before, "{be}");
        // The new leader writes.
        b.put_step_log("k2", "t1", "c1", "more", now)
            .await
            .expect("new leader");
        // Unfenced (one Conductor, tests): no check.
        a.set_fence(0);
        a.put_cell_process(&process(12), now)
            .await
            .expect("unfenced");
    }
}
