//! Rolling back an old train through the real cell executor and store: a
//! cell that a newer train changed is skipped; a rollback that already ran
//! is reported as done when it is re-issued after a crash; a cell whose
//! deploy failed in this train is still restored.

use cells_inventory::{CellSpec, TargetSpec};
use chrono::Utc;
use conductor::engine::{Executor, RollbackRequest};
use conductor::store::Store;
use conductor::targets::{ArtifactDir, CellExecutor, Supervisor, Targets};
use conductor_core::pipeline::{Artifact, ArtifactKind, DeployStep, OnFailure, Step};
use conductor_core::plan::Plan;
use conductor_core::train::{step_key, TrainSpec};
use std::path::Path;
use std::sync::Arc;

const ART: &str = "svc";

fn cell(marks: &Path) -> CellSpec {
    CellSpec {
        id: "x1".into(),
        region: "eu-west-1".into(),
        shape: "small".into(),
        labels: Default::default(),
        target: TargetSpec::Command {
            deploy: "true".into(),
            rollback: format!("echo \"$TRAIN_ID $TO_VERSION\" >> {}", marks.display()),
        },
        port: None,
        tz: None,
    }
}

fn spec(id: &str, version: &str) -> Arc<TrainSpec> {
    Arc::new(TrainSpec {
        id: id.into(),
        pipeline: "p".into(),
        artifact: Artifact {
            kind: ArtifactKind::Command,
            name: ART.into(),
            args: vec![],
            health: "/healthz".into(),
        },
        version: version.into(),
        started_by: "dev".into(),
        steps: vec![Step::Deploy(DeployStep::default())],
        on_failure: OnFailure::RollbackCellAndHalt,
        windows: vec![],
        plan: Plan {
            waves: vec![],
            order: vec![],
            cell_tz: Default::default(),
        },
    })
}

/// Record that train `id` deployed `version` on the cell (as its deploy step does).
async fn deployed(store: &Store, id: &str, version: &str) {
    store
        .set_cell_version(
            "x1",
            ART,
            Some(version),
            &step_key(id, "x1", 0, 1),
            "deploy",
            Utc::now(),
        )
        .await
        .expect("record deploy");
}

fn rollback(c: &CellSpec, train: &Arc<TrainSpec>, to: Option<&str>) -> RollbackRequest {
    RollbackRequest {
        train: train.clone(),
        cell: c.clone(),
        to_version: to.map(String::from),
        key: format!("{}/x1/rollback1", train.id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollbacks_skip_cells_changed_since_and_replay_as_done() {
    let dir = tempfile::tempdir().expect("tmp");
    let marks = dir.path().join("rollbacks");
    let store = Store::open(&dir.path().join("c.db")).await.expect("store");
    let c = cell(&marks);
    store
        .seed_cells(std::slice::from_ref(&c), Utc::now())
        .await
        .expect("seed");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let sandbox = std::sync::Arc::new(
        conductor::procs::sandbox::Sandbox::new(&dir.path().join("run"), &data, None, None)
            .expect("sandbox"),
    );
    let supervisor = Supervisor::new(conductor::targets::SupervisorConfig {
        artifacts: ArtifactDir {
            root: data.join("artifacts"),
        },
        data_dir: data.clone(),
        sandbox: sandbox.clone(),
        store: store.clone(),
        workers_by_shape: Default::default(),
        cell_env: Default::default(),
        ports: conductor::targets::ports::PortRange {
            first: 28000,
            last: 28999,
        },
    });
    let clock: std::sync::Arc<dyn conductor::clock::Clock> =
        std::sync::Arc::new(conductor::clock::SystemClock);
    let ex = CellExecutor {
        store: store.clone(),
        clock: clock.clone(),
        targets: Targets::local(supervisor.clone(), sandbox.clone(), store.clone(), clock),
        supervisor,
        http: reqwest::Client::new(),
        sandbox,
    };
    let ran = || std::fs::read_to_string(&marks).unwrap_or_default();

    // Train a deployed 1, then train b deployed 2 over it.
    let (a, b) = (spec("a", "1"), spec("b", "2"));
    deployed(&store, "a", "1").await;
    deployed(&store, "b", "2").await;

    // Rolling back a leaves the cell on b's version.
    let out = ex.rollback(rollback(&c, &a, None)).await;
    assert!(out.ok && out.skipped && out.change.is_none(), "{out:?}");
    assert!(
        out.detail.contains("x1 runs 2 now, not 1"),
        "{}",
        out.detail
    );
    assert_eq!(
        store.cell_version("x1", ART).await.expect("v").as_deref(),
        Some("2")
    );
    assert_eq!(ran(), "", "the rollback command ran");

    // Rolling back b restores 1; re-issued with the same key after a crash,
    // it is reported as done, not as skipped (the cell no longer runs 2).
    let out = ex.rollback(rollback(&c, &b, Some("1"))).await;
    assert!(out.ok && !out.skipped, "{out:?}");
    // The executor wrote nothing: the outcome carries the change, and the
    // engine commits it with the event (done here by hand).
    assert_eq!(
        store.cell_version("x1", ART).await.expect("v").as_deref(),
        Some("2")
    );
    let change = out.change.clone().expect("a change");
    assert_eq!(
        (change.version.as_deref(), change.previous.as_deref()),
        (Some("1"), Some("2"))
    );
    store
        .commit_all(&[], &[], &[], std::slice::from_ref(&change))
        .await
        .expect("commit the change");
    assert_eq!(
        store.cell_version("x1", ART).await.expect("v").as_deref(),
        Some("1")
    );
    let again = ex.rollback(rollback(&c, &b, Some("1"))).await;
    assert!(again.ok && !again.skipped, "{again:?}");
    assert!(
        again.detail.contains("already done") && again.change.is_none(),
        "{again:?}"
    );
    assert_eq!(ran(), "b 1\n", "the rollback ran twice");

    // A cell whose deploy failed in train d (never recorded) is restored as before.
    let d = spec("d", "4");
    let out = ex.rollback(rollback(&c, &d, Some("1"))).await;
    assert!(out.ok && !out.skipped, "{out:?}");
    assert_eq!(ran(), "b 1\nd 1\n");
}
