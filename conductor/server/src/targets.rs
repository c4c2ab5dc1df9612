//! Deploy targets and the step executor.
//!
//! - The **local** target runs each cell as processes on loopback
//!   ([`supervisor`]): deploying version V starts V on the artifact's other
//!   port (blue/green), waits for its health endpoint, switches the cell's
//!   route, then retires the old processes. They outlive the Conductor and
//!   are adopted by the next one; one that dies is restarted.
//! - The **command** target runs the cell's `deploy` / `rollback` commands
//!   (Ansible, Terraform, a script) with the cell's fields in the environment,
//!   confined like command steps ([`crate::procs::sandbox`]).
//! - Both are [`DeployTarget`]s, found in the [`Targets`] registry by the
//!   cell's target kind; the [`CellExecutor`] never matches on the kind.
//! - [`SimExecutor`] is a simulated target with a fixed deploy time, for the
//!   benchmark.
//!
//! Every deploy and rollback carries an idempotency key: if the store shows
//! the key already changed the cell, the target reports that instead of
//! acting again.

use crate::clock::Clock;
use crate::engine::BoxFut;
use crate::procs::sandbox::Sandbox;
use crate::store::Store;
use cells_inventory::CellSpec;
use conductor_core::train::TrainSpec;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub mod artifacts;
mod command;
mod executor;
mod local;
mod pidfd;
pub mod ports;
pub mod routing;
mod sim;
pub mod supervisor;

pub use artifacts::{ArtifactStore, LocalArtifactDir, Upload};
pub use command::CommandTarget;
pub use executor::CellExecutor;
pub use local::LocalTarget;
pub use routing::{CellRouting, LocalRoutesFile};
pub use sim::SimExecutor;
pub use supervisor::{Supervisor, SupervisorConfig, MAX_LOCAL_WORKERS};

/// Whether a version change is a train's deploy or a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Deploy,
    Rollback,
}

impl ChangeKind {
    /// As recorded in the deploy log (`deploy`, `rollback`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Deploy => "deploy",
            ChangeKind::Rollback => "rollback",
        }
    }
}

/// One change of the version a cell runs of a train's artifact.
pub struct VersionChange<'a> {
    pub train: &'a TrainSpec,
    pub cell: &'a CellSpec,
    /// The version to run; `None`: the artifact is removed (a rollback to
    /// before its first deploy).
    pub to: Option<&'a str>,
    /// The step's idempotency key (the executor has already checked the
    /// deploy log for it; a target may pass it on to its tooling).
    pub key: &'a str,
    pub kind: ChangeKind,
    /// Longest the change (and the health check after it) may take.
    pub timeout: Duration,
}

/// A way of deploying to cells: local processes, commands, and later
/// ECS, AMIs or Lambda. The executor records what a target did in the
/// deploy log, so a target only acts.
pub trait DeployTarget: Send + Sync + 'static {
    /// Make the cell run `change.to`; `Err` says why it could not.
    fn change_version<'a>(&'a self, change: VersionChange<'a>) -> BoxFut<'a, Result<(), String>>;

    /// Does this target run the pushed artifact binaries itself (so that a
    /// train to one of its cells needs the version pushed first)?
    fn runs_pushed_artifacts(&self) -> bool {
        false
    }
}

/// The deploy targets by the cell target kind they serve (`local`,
/// `command`), built at start-up.
#[derive(Clone, Default)]
pub struct Targets {
    by_kind: HashMap<&'static str, Arc<dyn DeployTarget>>,
}

impl Targets {
    /// The one-machine targets: local processes and commands.
    pub fn local(
        supervisor: Arc<Supervisor>,
        sandbox: Arc<Sandbox>,
        store: Store,
        clock: Arc<dyn Clock>,
    ) -> Targets {
        let command = CommandTarget {
            sandbox,
            store,
            clock,
        };
        Targets::default()
            .with("local", Arc::new(LocalTarget { supervisor }))
            .with("command", Arc::new(command))
    }

    /// Serve cells of target kind `kind` with `target`.
    pub fn with(mut self, kind: &'static str, target: Arc<dyn DeployTarget>) -> Targets {
        self.by_kind.insert(kind, target);
        self
    }

    /// The target of a cell, or why there is none.
    pub fn for_cell(&self, cell: &CellSpec) -> Result<&Arc<dyn DeployTarget>, String> {
        let kind = cell.target.kind();
        self.by_kind.get(kind).ok_or_else(|| {
            format!(
                "cell {} uses target kind {kind:?}, which this Conductor has no deploy target for",
                cell.id
            )
        })
    }
}

/// The local artifact store (its earlier name).
pub type ArtifactDir = LocalArtifactDir;

/// Versions must be safe as path components and in environment variables.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
        && !v.starts_with('.')
}

/// Does `path` look like a file the local target can run?
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cells_inventory::TargetSpec;
    use std::sync::Mutex;

    /// A target that records the versions it was asked for.
    #[derive(Default)]
    struct Recording(Mutex<Vec<(String, Option<String>, ChangeKind)>>);

    impl DeployTarget for Recording {
        fn change_version<'a>(&'a self, c: VersionChange<'a>) -> BoxFut<'a, Result<(), String>> {
            Box::pin(async move {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).push((
                    c.cell.id.clone(),
                    c.to.map(String::from),
                    c.kind,
                ));
                Ok(())
            })
        }
    }

    fn cell(id: &str, target: TargetSpec) -> CellSpec {
        CellSpec {
            id: id.into(),
            region: "eu-west-1".into(),
            shape: "small".into(),
            labels: Default::default(),
            target,
            port: None,
            tz: None,
        }
    }

    #[tokio::test]
    async fn a_cell_is_served_by_the_target_of_its_kind_and_an_unknown_kind_is_refused() {
        let rec = Arc::new(Recording::default());
        let targets = Targets::default().with("command", rec.clone());
        let cmd = cell(
            "c1",
            TargetSpec::Command {
                deploy: "true".into(),
                rollback: "true".into(),
            },
        );
        let train: TrainSpec = serde_json::from_value(serde_json::json!({
            "id": "t1", "pipeline": "p", "version": "2", "started_by": "alice",
            "artifact": {"name": "svc", "kind": "binary"},
            "steps": [], "on_failure": "rollback_cell_and_halt", "windows": [],
            "plan": {"waves": [], "order": [], "cell_tz": {}}
        }))
        .expect("a train spec");
        let target = targets.for_cell(&cmd).expect("the command target");
        let change = VersionChange {
            train: &train,
            cell: &cmd,
            to: Some("2"),
            key: "k1",
            kind: ChangeKind::Deploy,
            timeout: Duration::from_secs(1),
        };
        target.change_version(change).await.expect("deployed");
        assert_eq!(
            *rec.0.lock().unwrap_or_else(|p| p.into_inner()),
            vec![("c1".to_string(), Some("2".to_string()), ChangeKind::Deploy)]
        );
        assert!(!target.runs_pushed_artifacts());

        let local = cell("l1", TargetSpec::Local);
        let err = match targets.for_cell(&local) {
            Ok(_) => panic!("a local cell has no target here"),
            Err(e) => e,
        };
        assert!(
            err.contains("cell l1") && err.contains("\"local\""),
            "{err}"
        );
    }
}
