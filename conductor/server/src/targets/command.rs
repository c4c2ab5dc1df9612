//! The command target: a cell deployed by external tooling (Ansible,
//! Terraform, a script): its `deploy` / `rollback` commands run with the
//! cell's fields in the environment, confined like command steps
//! ([`crate::procs::sandbox`]); exit status 0 means success.

use super::{ChangeKind, DeployTarget, VersionChange};
use crate::clock::Clock;
use crate::engine::BoxFut;
use crate::procs::run_shell;
use crate::procs::sandbox::Sandbox;
use crate::store::Store;
use cells_inventory::{CellSpec, TargetSpec};
use chrono::{DateTime, Utc};
use conductor_core::pipeline::Step;
use conductor_core::train::TrainSpec;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct CommandTarget {
    pub sandbox: Arc<Sandbox>,
    /// Where the commands' output is kept (the train's step logs).
    pub store: Store,
    pub clock: Arc<dyn Clock>,
}

impl DeployTarget for CommandTarget {
    fn change_version<'a>(&'a self, c: VersionChange<'a>) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            let TargetSpec::Command { deploy, rollback } = &c.cell.target else {
                return Err(format!("cell {} has no deploy commands", c.cell.id));
            };
            let declared = c
                .train
                .steps
                .iter()
                .find_map(|s| match s {
                    Step::Deploy(d) => Some(d.env.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let mut env = cell_env(c.cell, c.train, c.key, None, &declared);
            env.insert("TO_VERSION".into(), c.to.unwrap_or("").to_string());
            let script = match c.kind {
                ChangeKind::Deploy => deploy,
                ChangeKind::Rollback => rollback,
            };
            let r = run_shell(script, &env, c.timeout, &self.sandbox).await;
            keep_log(
                &self.store,
                self.clock.now(),
                c.key,
                &c.train.id,
                &c.cell.id,
                &r.output,
            )
            .await;
            if r.ok {
                Ok(())
            } else {
                Err(format!("{} command failed: {}", c.kind.as_str(), r.status))
            }
        })
    }
}

/// Keep a command's output as the step's log (a failure to is logged).
pub(super) async fn keep_log(
    store: &Store,
    now: DateTime<Utc>,
    key: &str,
    train: &str,
    cell: &str,
    text: &str,
) {
    if let Err(e) = store.put_step_log(key, train, cell, text, now).await {
        tracing::warn!(key, error = %e, "could not keep a step's output");
    }
}

/// The environment of a command step or command target: what the pipeline
/// declares (plain variables; the pipeline language refuses the names below),
/// then the documented cell and train fields. Nothing of the Conductor's own.
pub(super) fn cell_env(
    cell: &CellSpec,
    train: &TrainSpec,
    key: &str,
    port: Option<u16>,
    declared: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = declared.clone();
    env.extend([
        ("CELL_ID".to_string(), cell.id.clone()),
        ("CELL_REGION".to_string(), cell.region.clone()),
        ("CELL_SHAPE".to_string(), cell.shape.clone()),
        ("ARTIFACT_NAME".to_string(), train.artifact.name.clone()),
        ("ARTIFACT_VERSION".to_string(), train.version.clone()),
        ("TRAIN_ID".to_string(), train.id.clone()),
        ("PIPELINE".to_string(), train.pipeline.clone()),
        ("IDEMPOTENCY_KEY".to_string(), key.to_string()),
    ]);
    if let Some(p) = port {
        env.insert("CELL_PORT".into(), p.to_string());
        env.insert("CELL_URL".into(), format!("http://127.0.0.1:{p}"));
    }
    for (k, v) in &cell.labels {
        env.insert(
            format!("CELL_LABEL_{}", k.to_ascii_uppercase().replace('-', "_")),
            v.clone(),
        );
    }
    env
}
