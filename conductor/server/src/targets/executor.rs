//! The step executor: runs a train's steps on real cells. Deploys and
//! rollbacks go through the cell's deploy target, found in the [`Targets`]
//! registry by the cell's target kind; tests and commands run here.

use super::command::{cell_env, keep_log};
use super::{ChangeKind, Supervisor, Targets, VersionChange};
use crate::clock::Clock;
use crate::engine::{BoxFut, Executor, Outcome, RollbackRequest, StepRequest};
use crate::procs::run_shell;
use crate::procs::sandbox::Sandbox;
use crate::store::{CellChange, Store};
use cells_inventory::CellSpec;
use conductor_core::pipeline::Step;
use conductor_core::train::{step_key, TrainSpec};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs steps on real cells: local processes or commands.
pub struct CellExecutor {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    /// The deploy targets, by cell target kind.
    pub targets: Targets,
    /// The local cells' processes (the live endpoint tests and commands use).
    pub supervisor: Arc<Supervisor>,
    pub http: reqwest::Client,
    /// How command steps and command targets are confined.
    pub sandbox: Arc<Sandbox>,
}

impl CellExecutor {
    async fn log(&self, key: &str, train: &str, cell: &str, text: &str) {
        keep_log(&self.store, self.clock.now(), key, train, cell, text).await
    }

    /// Change a cell's version through its target, at most once per key.
    /// The executor writes nothing: the outcome carries the change, and the
    /// engine commits it with the event (a crash before that commit runs
    /// the change again under the same key, and targets treat a cell that
    /// already runs `to` as done).
    async fn change_version(
        &self,
        train: &TrainSpec,
        cell: &CellSpec,
        to: Option<&str>,
        key: &str,
        kind: ChangeKind,
        health_timeout: Duration,
    ) -> Outcome {
        match self.store.deploy_done(key).await {
            Ok(Some(prev)) => {
                return Outcome {
                    ok: true,
                    detail: format!("{} already done (key {key})", kind.as_str()),
                    previous_version: prev,
                    skipped: false,
                    change: None,
                }
            }
            Ok(None) => {}
            Err(e) => return Outcome::failed(format!("store unavailable: {e}")),
        }
        let art = &train.artifact;
        // What the cell runs before the target acts: the change's previous
        // version (nothing else changes the cell meanwhile: its lease).
        let previous = match self.store.cell_version(&cell.id, &art.name).await {
            Ok(v) => v,
            Err(e) => return Outcome::failed(format!("store unavailable: {e}")),
        };
        let result = match self.targets.for_cell(cell) {
            Ok(target) => {
                target
                    .change_version(VersionChange {
                        train,
                        cell,
                        to,
                        key,
                        kind,
                        timeout: health_timeout,
                    })
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            // Recorded by the engine, with the event that reports it.
            Ok(()) => Outcome {
                ok: true,
                detail: format!("{} now runs {}", cell.id, to.unwrap_or("nothing")),
                previous_version: previous.clone(),
                skipped: false,
                change: Some(CellChange {
                    cell: cell.id.clone(),
                    artifact: art.name.clone(),
                    version: to.map(Into::into),
                    previous,
                    key: key.to_string(),
                    kind: kind.as_str().to_string(),
                    at: self.clock.now(),
                }),
            },
            Err(e) => Outcome {
                ok: false,
                detail: e,
                previous_version: previous,
                skipped: false,
                change: None,
            },
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
                        ChangeKind::Deploy,
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
                ChangeKind::Rollback,
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
            change: None,
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
