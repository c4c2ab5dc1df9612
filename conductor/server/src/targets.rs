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
//! - [`SimExecutor`] is a simulated target with a fixed deploy time, for the
//!   benchmark.
//!
//! Every deploy and rollback carries an idempotency key: if the store shows
//! the key already changed the cell, the target reports that instead of
//! acting again.

use crate::engine::{BoxFut, Executor, Outcome, RollbackRequest, StepRequest};
use crate::procs::run_shell;
use crate::procs::sandbox::Sandbox;
use crate::store::Store;
use cells_inventory::{CellSpec, TargetSpec};
use chrono::Utc;
use conductor_core::pipeline::Step;
use conductor_core::train::{step_key, TrainSpec};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod pidfd;
pub mod ports;
pub mod supervisor;

pub use supervisor::{Supervisor, SupervisorConfig, MAX_LOCAL_WORKERS};

/// Where pushed artifacts live: `<root>/<name>/<version>/<name>`.
#[derive(Clone)]
pub struct ArtifactDir {
    pub root: PathBuf,
}

impl ArtifactDir {
    pub fn path(&self, name: &str, version: &str) -> PathBuf {
        self.root.join(name).join(version).join(name)
    }
}

/// Versions must be safe as path components and in environment variables.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
        && !v.starts_with('.')
}

/// Runs steps on real cells: local processes or commands.
pub struct CellExecutor {
    pub store: Store,
    pub supervisor: Arc<Supervisor>,
    pub http: reqwest::Client,
    /// How command steps and command targets are confined.
    pub sandbox: Arc<Sandbox>,
}

/// The environment of a command step or command target: what the pipeline
/// declares (plain variables; the pipeline language refuses the names below),
/// then the documented cell and train fields. Nothing of the Conductor's own.
fn cell_env(
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

impl CellExecutor {
    async fn log(&self, key: &str, train: &str, cell: &str, text: &str) {
        if let Err(e) = self
            .store
            .put_step_log(key, train, cell, text, Utc::now())
            .await
        {
            tracing::warn!(key, error = %e, "could not keep a step's output");
        }
    }

    /// Change a cell's version through its target, at most once per key.
    async fn change_version(
        &self,
        train: &TrainSpec,
        cell: &CellSpec,
        to: Option<&str>,
        key: &str,
        kind: &str,
        health_timeout: Duration,
    ) -> Outcome {
        match self.store.deploy_done(key).await {
            Ok(Some(prev)) => {
                return Outcome {
                    ok: true,
                    detail: format!("{kind} already done (key {key})"),
                    previous_version: prev,
                    skipped: false,
                }
            }
            Ok(None) => {}
            Err(e) => return Outcome::failed(format!("store unavailable: {e}")),
        }
        let art = &train.artifact;
        let result = match &cell.target {
            TargetSpec::Local => self.supervisor.switch(cell, art, to, health_timeout).await,
            TargetSpec::Command { deploy, rollback } => {
                let declared = train
                    .steps
                    .iter()
                    .find_map(|s| match s {
                        Step::Deploy(d) => Some(d.env.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let mut env = cell_env(cell, train, key, None, &declared);
                env.insert("TO_VERSION".into(), to.unwrap_or("").to_string());
                let script = if kind == "deploy" { deploy } else { rollback };
                let r = run_shell(script, &env, health_timeout, &self.sandbox).await;
                self.log(key, &train.id, &cell.id, &r.output).await;
                if r.ok {
                    Ok(())
                } else {
                    Err(format!("{kind} command failed: {}", r.status))
                }
            }
        };
        match result {
            Ok(()) => match self
                .store
                .set_cell_version(&cell.id, &art.name, to, key, kind, Utc::now())
                .await
            {
                Ok(prev) => Outcome {
                    ok: true,
                    detail: format!("{} now runs {}", cell.id, to.unwrap_or("nothing")),
                    previous_version: prev,
                    skipped: false,
                },
                Err(e) => Outcome::failed(format!("deployed but could not record it: {e}")),
            },
            Err(e) => {
                let prev = self
                    .store
                    .cell_version(&cell.id, &art.name)
                    .await
                    .ok()
                    .flatten();
                Outcome {
                    ok: false,
                    detail: e,
                    previous_version: prev,
                    skipped: false,
                }
            }
        }
    }

    async fn http_test(
        &self,
        cell: &CellSpec,
        train: &TrainSpec,
        path: &str,
        expect: u16,
        n: u32,
        timeout: Duration,
    ) -> Outcome {
        let Some(port) = self.supervisor.live_port(&cell.id, &train.artifact.name) else {
            return Outcome::failed(format!(
                "{} has no live {} endpoint to test",
                cell.id, train.artifact.name
            ));
        };
        let url = format!("http://127.0.0.1:{port}{path}");
        let deadline = Instant::now() + timeout;
        for i in 0..n {
            if Instant::now() > deadline {
                return Outcome::failed(format!(
                    "synthetic test timed out after {i} of {n} requests"
                ));
            }
            match self.http.get(&url).send().await {
                Ok(r) if r.status().as_u16() == expect => {}
                Ok(r) => {
                    return Outcome::failed(format!(
                        "GET {url}: status {} (expected {expect}) on request {}",
                        r.status().as_u16(),
                        i + 1
                    ))
                }
                Err(e) => return Outcome::failed(format!("GET {url}: {e}")),
            }
        }
        Outcome::ok(format!("{n} requests to {path} returned {expect}"))
    }
}

impl Executor for CellExecutor {
    fn run_step(&self, req: StepRequest) -> BoxFut<'_, Outcome> {
        Box::pin(async move {
            let train = &req.train;
            let Some(step) = train.steps.get(req.step) else {
                return Outcome::failed(format!("the pipeline has no step {}", req.step));
            };
            match step {
                Step::Deploy(d) => {
                    self.change_version(
                        train,
                        &req.cell,
                        Some(&train.version),
                        &req.key,
                        "deploy",
                        d.health_timeout.0,
                    )
                    .await
                }
                Step::Test(t) => {
                    if let Some(h) = &t.http {
                        self.http_test(
                            &req.cell,
                            train,
                            &h.path,
                            h.expect_status,
                            t.min_requests,
                            t.timeout.0,
                        )
                        .await
                    } else {
                        let script = t.command.clone().unwrap_or_default();
                        self.command(train, &req.cell, &req.key, &script, t.timeout.0, &t.env)
                            .await
                    }
                }
                Step::Command(c) => {
                    self.command(train, &req.cell, &req.key, &c.run, c.timeout.0, &c.env)
                        .await
                }
                Step::Bake(_) => Outcome::ok("bake"),
            }
        })
    }

    fn rollback(&self, req: RollbackRequest) -> BoxFut<'_, Outcome> {
        Box::pin(async move {
            let timeout = req
                .train
                .steps
                .iter()
                .find_map(|s| match s {
                    Step::Deploy(d) => Some(d.health_timeout.0),
                    _ => None,
                })
                .unwrap_or(Duration::from_secs(60));
            if let Some(skip) = self.rollback_skip(&req).await {
                return skip;
            }
            self.change_version(
                &req.train,
                &req.cell,
                req.to_version.as_deref(),
                &req.key,
                "rollback",
                timeout,
            )
            .await
        })
    }
}

impl CellExecutor {
    /// A rollback leaves a cell as it is when the cell no longer runs the
    /// version this train deployed there (a newer train changed it). Asked
    /// under the cell's lease, so nothing changes it meanwhile. A rollback
    /// that already ran under its key is done, not skipped (a replay after
    /// a crash); a cell this train never changed (its deploy failed) is
    /// rolled back as before.
    async fn rollback_skip(&self, req: &RollbackRequest) -> Option<Outcome> {
        let (train, cell) = (&req.train, &req.cell.id);
        let failed =
            |e: crate::store::StoreError| Some(Outcome::failed(format!("store unavailable: {e}")));
        match self.store.deploy_done(&req.key).await {
            Ok(Some(_)) => return None,
            Ok(None) => {}
            Err(e) => return failed(e),
        }
        let deploy = train
            .steps
            .iter()
            .position(|s| matches!(s, Step::Deploy(_)))?;
        match self
            .store
            .deploy_done(&step_key(&train.id, cell, deploy, 1))
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(e) => return failed(e),
        }
        let now = match self.store.cell_version(cell, &train.artifact.name).await {
            Ok(v) => v,
            Err(e) => return failed(e),
        };
        if now.as_deref() == Some(train.version.as_str()) {
            return None;
        }
        Some(Outcome {
            ok: true,
            detail: format!(
                "skipped: {cell} runs {} now, not {} (changed after this train deployed it); left as it is",
                now.as_deref().unwrap_or("nothing"),
                train.version
            ),
            previous_version: None,
            skipped: true,
        })
    }

    async fn command(
        &self,
        train: &TrainSpec,
        cell: &CellSpec,
        key: &str,
        script: &str,
        timeout: Duration,
        declared: &BTreeMap<String, String>,
    ) -> Outcome {
        let port = self.supervisor.live_port(&cell.id, &train.artifact.name);
        let env = cell_env(cell, train, key, port, declared);
        let r = run_shell(script, &env, timeout, &self.sandbox).await;
        self.log(key, &train.id, &cell.id, &r.output).await;
        if r.ok {
            Outcome::ok(format!("command passed ({})", r.status))
        } else {
            let last = r
                .output
                .lines()
                .last()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>();
            Outcome::failed(format!("command failed ({}): {last}", r.status))
        }
    }
}

/// A simulated target for the benchmark: every deploy takes a fixed time
/// and is counted in memory, nothing else.
pub struct SimExecutor {
    pub deploy_time: Duration,
    pub deploys: Mutex<HashMap<String, u32>>,
}

impl Executor for SimExecutor {
    fn run_step(&self, req: StepRequest) -> BoxFut<'_, Outcome> {
        Box::pin(async move {
            if matches!(req.train.steps.get(req.step), Some(Step::Deploy(_))) {
                // tokio's timer wheel rounds a sleep up to the next
                // millisecond; sleep to just short of the deadline, then
                // yield until it, so that a deploy takes `deploy_time`.
                let deadline = tokio::time::Instant::now() + self.deploy_time;
                tokio::time::sleep_until(deadline - Duration::from_millis(1)).await;
                while tokio::time::Instant::now() < deadline {
                    tokio::task::yield_now().await;
                }
                *self
                    .deploys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(req.key.clone())
                    .or_insert(0) += 1;
            }
            Outcome::ok("simulated")
        })
    }
    fn rollback(&self, _req: RollbackRequest) -> BoxFut<'_, Outcome> {
        Box::pin(async move { Outcome::ok("simulated rollback") })
    }
}

/// Does `path` look like a file the local target can run?
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
