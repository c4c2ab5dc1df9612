//! Deploy targets and the step executor.
//!
//! - The **local** target runs each cell as child processes on loopback:
//!   deploying version V starts V on the cell's other port (blue/green),
//!   waits for its health endpoint, switches the cell's route, then retires
//!   the old process. A supervisor restarts a process that dies.
//! - The **command** target runs the cell's `deploy` / `rollback` commands
//!   (Ansible, Terraform, a script) with the cell's fields in the environment.
//! - [`SimExecutor`] is a simulated target with a fixed deploy time, for the
//!   benchmark.
//!
//! Every deploy and rollback carries an idempotency key: if the store shows
//! the key already changed the cell, the target reports that instead of
//! acting again.

use crate::engine::{BoxFut, Executor, Outcome, RollbackRequest, StepRequest};
use crate::procs::{die_with_parent, run_shell};
use crate::store::Store;
use cells_inventory::{CellSpec, TargetSpec};
use chrono::Utc;
use conductor_core::pipeline::{Artifact, Step};
use conductor_core::train::{step_key, TrainSpec};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Command;

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

/// Shared between a process's supervising task and the supervisor.
#[derive(Default)]
struct ProcState {
    /// Set before the process is stopped on purpose (it is then not restarted).
    retired: AtomicBool,
    /// The current OS process id (changes when it is restarted).
    pid: std::sync::atomic::AtomicU32,
}

/// One worker process of a cell's artifact. Every worker of a version serves
/// the cell's port (the artifact binds it with `SO_REUSEPORT`, so the kernel
/// spreads connections over them) and its own worker port, where it is
/// health-checked, scraped and configured one by one.
struct Worker {
    port: u16,
    state: Arc<ProcState>,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Worker {
    fn retire(mut self) {
        self.state.retired.store(true, Ordering::SeqCst);
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
    }
}

/// What a cell runs of one artifact: a version on a port, with its workers.
struct Proc {
    art: Artifact,
    version: String,
    port: u16,
    workers: Vec<Worker>,
}

/// Supervises the local cells' processes.
pub struct Supervisor {
    artifacts: ArtifactDir,
    data_dir: PathBuf,
    http: reqwest::Client,
    procs: Mutex<HashMap<(String, String), Proc>>,
    routes_file: PathBuf,
    /// Worker processes per shape name (a cell of an unknown shape runs one).
    workers_by_shape: HashMap<String, u32>,
    /// Extra environment for every cell process (the fleet's data plane admin key).
    cell_env: BTreeMap<String, String>,
}

/// Most workers one cell may run locally.
pub const MAX_LOCAL_WORKERS: u32 = 64;

/// A free loopback port for a worker (the kernel picks it; it is free again
/// the moment we close the probe socket, and the worker binds it next).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

impl Supervisor {
    pub fn new(
        artifacts: ArtifactDir,
        data_dir: PathBuf,
        workers_by_shape: HashMap<String, u32>,
        cell_env: BTreeMap<String, String>,
    ) -> Arc<Supervisor> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Arc::new(Supervisor {
            routes_file: data_dir.join("routes.json"),
            artifacts,
            data_dir,
            http,
            procs: Mutex::new(HashMap::new()),
            workers_by_shape,
            cell_env,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Proc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many workers a cell of `shape` runs.
    pub fn workers_for(&self, shape: &str) -> u32 {
        self.workers_by_shape
            .get(shape)
            .copied()
            .unwrap_or(1)
            .clamp(1, MAX_LOCAL_WORKERS)
    }

    /// The port a cell's artifact is served on now.
    pub fn live_port(&self, cell: &str, artifact: &str) -> Option<u16> {
        self.lock()
            .get(&(cell.to_string(), artifact.to_string()))
            .map(|p| p.port)
    }

    /// How many workers run each artifact on `cell`.
    pub fn worker_counts(&self, cell: &str) -> BTreeMap<String, usize> {
        self.lock()
            .iter()
            .filter(|((c, _), _)| c == cell)
            .map(|((_, a), p)| (a.clone(), p.workers.len()))
            .collect()
    }

    /// What runs where: `{cell: {artifact: {version, port, pid, workers}}}`
    /// (`workers`: each worker's pid and private port).
    pub fn routes(&self) -> BTreeMap<String, BTreeMap<String, serde_json::Value>> {
        let mut m: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
        for ((cell, art), p) in self.lock().iter() {
            let workers: Vec<serde_json::Value> = p
                .workers
                .iter()
                .map(|w| serde_json::json!({"pid": w.state.pid.load(Ordering::SeqCst), "port": w.port}))
                .collect();
            m.entry(cell.clone()).or_default().insert(
                art.clone(),
                serde_json::json!({
                    "version": p.version,
                    "port": p.port,
                    "pid": p.workers.first().map_or(0, |w| w.state.pid.load(Ordering::SeqCst)),
                    "workers": workers,
                }),
            );
        }
        m
    }

    fn write_routes(&self) {
        let body = serde_json::to_string_pretty(&self.routes()).unwrap_or_default();
        let tmp = self.routes_file.with_extension("json.tmp");
        if std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, &self.routes_file))
            .is_err()
        {
            tracing::warn!(file = %self.routes_file.display(), "could not write the routing table");
        }
    }

    fn cell_dir(&self, cell: &str) -> PathBuf {
        self.data_dir.join("cells").join(cell)
    }

    /// Start worker `index` of `n` of `version` of `artifact` on `port`, and
    /// keep it running until retired; returns once its worker port is healthy.
    #[allow(clippy::too_many_arguments)]
    async fn start_worker(
        self: &Arc<Self>,
        cell: &CellSpec,
        art: &Artifact,
        version: &str,
        port: u16,
        index: u32,
        n: u32,
        health_timeout: Duration,
    ) -> Result<Worker, String> {
        let bin = self.artifacts.path(&art.name, version);
        if !bin.is_file() {
            return Err(format!(
                "artifact {} {} has not been pushed",
                art.name, version
            ));
        }
        let dir = self.cell_dir(&cell.id);
        std::fs::create_dir_all(dir.join("data"))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let worker_port = free_port()?;
        let state = Arc::new(ProcState::default());
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let (exit_tx, mut exit_rx) = tokio::sync::oneshot::channel::<String>();
        let me = self.clone();
        let run = WorkerRun {
            cell: cell.clone(),
            art: art.clone(),
            version: version.to_string(),
            port,
            worker_port,
            index,
            workers: n,
        };
        let st = state.clone();
        tokio::spawn(async move {
            me.keep_running(run, st, kill_rx, exit_tx).await;
        });
        let worker = Worker {
            port: worker_port,
            state,
            kill: Some(kill_tx),
        };
        match self
            .wait_healthy(worker_port, &art.health, health_timeout, &mut exit_rx)
            .await
        {
            Ok(()) => Ok(worker),
            Err(e) => {
                worker.retire();
                Err(format!("worker {index}: {e}"))
            }
        }
    }

    /// Start workers `from..to` (of `to`), retiring them all if one fails.
    #[allow(clippy::too_many_arguments)]
    async fn start_workers(
        self: &Arc<Self>,
        cell: &CellSpec,
        art: &Artifact,
        version: &str,
        port: u16,
        from: u32,
        to: u32,
        health_timeout: Duration,
    ) -> Result<Vec<Worker>, String> {
        let mut started: Vec<Worker> = Vec::new();
        for i in from..to {
            match self
                .start_worker(cell, art, version, port, i, to, health_timeout)
                .await
            {
                Ok(w) => started.push(w),
                Err(e) => {
                    started.into_iter().for_each(Worker::retire);
                    return Err(e);
                }
            }
        }
        Ok(started)
    }

    async fn keep_running(
        self: Arc<Self>,
        w: WorkerRun,
        state: Arc<ProcState>,
        mut kill: tokio::sync::oneshot::Receiver<()>,
        exit_tx: tokio::sync::oneshot::Sender<String>,
    ) {
        let mut exit_tx = Some(exit_tx);
        let mut restarts = 0u32;
        let (cell, art, version, port) = (&w.cell, &w.art, &w.version, w.port);
        loop {
            let bin = self.artifacts.path(&art.name, version);
            let dir = self.cell_dir(&cell.id);
            let data = dir.join("data");
            let subst = |s: &str| {
                s.replace("{port}", &port.to_string())
                    .replace("{worker_port}", &w.worker_port.to_string())
                    .replace("{cell}", &cell.id)
                    .replace("{data_dir}", &data.display().to_string())
                    .replace("{version}", version)
            };
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{}.log", art.name)));
            let mut cmd = Command::new(&bin);
            cmd.args(art.args.iter().map(|a| subst(a)))
                .envs(&self.cell_env)
                .env("CELL_ID", &cell.id)
                .env("CELL_REGION", &cell.region)
                .env("CELL_SHAPE", &cell.shape)
                .env("CELL_PORT", port.to_string())
                .env("CELL_WORKER_PORT", w.worker_port.to_string())
                .env("CELL_WORKER", w.index.to_string())
                .env("CELL_WORKERS", w.workers.to_string())
                .env("CELL_DATA_DIR", &data)
                .env("ARTIFACT_VERSION", version)
                .stdin(Stdio::null())
                .kill_on_drop(true);
            if let Ok(f) = log {
                if let Ok(f2) = f.try_clone() {
                    cmd.stdout(f).stderr(f2);
                }
            }
            die_with_parent(&mut cmd);
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    if let Some(tx) = exit_tx.take() {
                        let _ = tx.send(format!("cannot start {}: {e}", bin.display()));
                    }
                    return;
                }
            };
            state.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
            tokio::select! {
                st = child.wait() => {
                    let why = match st { Ok(s) => s.to_string(), Err(e) => e.to_string() };
                    if state.retired.load(Ordering::SeqCst) {
                        return;
                    }
                    // A deploy still waiting for health hears of it and gives up;
                    // once nobody waits, the process is restarted.
                    if let Some(tx) = exit_tx.take() {
                        if tx.send(format!("process exited ({why}) before it was healthy")).is_ok() {
                            return;
                        }
                    }
                    restarts += 1;
                    tracing::warn!(cell = %cell.id, artifact = %art.name, %version, worker = w.index, %why, restarts, "cell process died; restarting");
                    tokio::time::sleep(Duration::from_millis((200 * u64::from(restarts.min(25))).min(5000))).await;
                }
                _ = &mut kill => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return;
                }
            }
        }
    }

    /// Wait for the health endpoint on `port`, or for the process to exit.
    async fn wait_healthy(
        &self,
        port: u16,
        path: &str,
        timeout: Duration,
        exited: &mut tokio::sync::oneshot::Receiver<String>,
    ) -> Result<(), String> {
        let url = format!("http://127.0.0.1:{port}{path}");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(why) = exited.try_recv() {
                return Err(why);
            }
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "health check {url} did not pass within {}s",
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Switch a local cell to `version` (None: stop the artifact), with as
    /// many workers as the cell's shape runs.
    pub async fn switch(
        self: &Arc<Self>,
        cell: &CellSpec,
        art: &Artifact,
        version: Option<&str>,
        health_timeout: Duration,
    ) -> Result<(), String> {
        let key = (cell.id.clone(), art.name.clone());
        let base = cell
            .port
            .ok_or_else(|| format!("cell {} has no port", cell.id))?;
        let Some(version) = version else {
            let old = self.lock().remove(&key);
            if let Some(p) = old {
                p.workers.into_iter().for_each(Worker::retire);
            }
            self.write_routes();
            return Ok(());
        };
        let port = match self.live_port(&cell.id, &art.name) {
            Some(p) if p == base => base.wrapping_add(1),
            _ => base,
        };
        let n = self.workers_for(&cell.shape);
        let workers = self
            .start_workers(cell, art, version, port, 0, n, health_timeout)
            .await?;
        // The cell port answers too (the first worker proves the bind).
        let url = format!("http://127.0.0.1:{port}{}", art.health);
        if !matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success()) {
            workers.into_iter().for_each(Worker::retire);
            return Err(format!(
                "{url} does not answer although the workers are healthy"
            ));
        }
        let old = self.lock().insert(
            key,
            Proc {
                art: art.clone(),
                version: version.to_string(),
                port,
                workers,
            },
        );
        self.write_routes();
        if let Some(p) = old {
            p.workers.into_iter().for_each(Worker::retire);
        }
        Ok(())
    }

    /// The local capacity actuator: run `n` workers of whatever each
    /// artifact on `cell` runs now (starting or retiring workers, newest
    /// first). Returns a summary of what changed.
    pub async fn set_workers(
        self: &Arc<Self>,
        cell: &CellSpec,
        n: u32,
        health_timeout: Duration,
    ) -> Result<String, String> {
        let n = n.clamp(1, MAX_LOCAL_WORKERS);
        let running: Vec<(String, Artifact, String, u16, u32)> = self
            .lock()
            .iter()
            .filter(|((c, _), _)| *c == cell.id)
            .map(|((_, a), p)| {
                let have = u32::try_from(p.workers.len()).unwrap_or(u32::MAX);
                (a.clone(), p.art.clone(), p.version.clone(), p.port, have)
            })
            .collect();
        let mut done = Vec::new();
        for (name, art, version, port, have) in running {
            let key = (cell.id.clone(), name.clone());
            if n > have {
                let more = self
                    .start_workers(cell, &art, &version, port, have, n, health_timeout)
                    .await?;
                let mut m = self.lock();
                match m.get_mut(&key) {
                    Some(p) if p.version == version && p.port == port => p.workers.extend(more),
                    // The artifact changed meanwhile (it cannot while the
                    // cell's lease is held): the new workers are not needed.
                    _ => more.into_iter().for_each(Worker::retire),
                }
            } else if n < have {
                let extra: Vec<Worker> = match self.lock().get_mut(&key) {
                    Some(p) => p.workers.split_off(n as usize),
                    None => Vec::new(),
                };
                extra.into_iter().rev().for_each(Worker::retire);
            }
            done.push(format!("{name} {version}: {have} -> {n} workers"));
        }
        self.write_routes();
        if done.is_empty() {
            Ok(format!(
                "{} runs nothing yet; it starts with {n} workers",
                cell.id
            ))
        } else {
            Ok(done.join(", "))
        }
    }

    /// Stop everything a cell runs (when it is retired).
    pub fn stop_cell(&self, cell: &str) {
        let gone: Vec<Proc> = {
            let mut m = self.lock();
            let keys: Vec<_> = m.keys().filter(|(c, _)| c == cell).cloned().collect();
            keys.iter().filter_map(|k| m.remove(k)).collect()
        };
        for p in gone {
            p.workers.into_iter().for_each(Worker::retire);
        }
        self.write_routes();
    }

    /// Stop every process (on shutdown).
    pub fn stop_all(&self) {
        for (_, p) in self.lock().drain() {
            p.workers.into_iter().for_each(Worker::retire);
        }
    }
}

/// What a worker's supervising task runs.
struct WorkerRun {
    cell: CellSpec,
    art: Artifact,
    version: String,
    port: u16,
    worker_port: u16,
    index: u32,
    workers: u32,
}

/// Runs steps on real cells: local processes or commands.
pub struct CellExecutor {
    pub store: Store,
    pub supervisor: Arc<Supervisor>,
    pub http: reqwest::Client,
}

fn cell_env(
    cell: &CellSpec,
    train: &TrainSpec,
    key: &str,
    port: Option<u16>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("CELL_ID".to_string(), cell.id.clone()),
        ("CELL_REGION".to_string(), cell.region.clone()),
        ("CELL_SHAPE".to_string(), cell.shape.clone()),
        ("ARTIFACT_NAME".to_string(), train.artifact.name.clone()),
        ("ARTIFACT_VERSION".to_string(), train.version.clone()),
        ("TRAIN_ID".to_string(), train.id.clone()),
        ("PIPELINE".to_string(), train.pipeline.clone()),
        ("IDEMPOTENCY_KEY".to_string(), key.to_string()),
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        ),
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
                let mut env = cell_env(cell, train, key, None);
                env.insert("TO_VERSION".into(), to.unwrap_or("").to_string());
                let script = if kind == "deploy" { deploy } else { rollback };
                let r = run_shell(script, &env, health_timeout).await;
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
                        self.command(train, &req.cell, &req.key, &script, t.timeout.0)
                            .await
                    }
                }
                Step::Command(c) => {
                    self.command(train, &req.cell, &req.key, &c.run, c.timeout.0)
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
    ) -> Outcome {
        let port = self.supervisor.live_port(&cell.id, &train.artifact.name);
        let env = cell_env(cell, train, key, port);
        let r = run_shell(script, &env, timeout).await;
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

/// Bring every local cell's recorded versions back up (after a restart).
pub async fn restore_local_cells(
    store: &Store,
    sup: &Arc<Supervisor>,
    pipelines: &HashMap<String, Artifact>,
) {
    let Ok(cells) = store.list_cells().await else {
        return;
    };
    for c in cells {
        if !matches!(c.spec.target, TargetSpec::Local) {
            continue;
        }
        for v in &c.versions {
            let (Some(version), Some(art)) = (&v.version, pipelines.get(&v.artifact)) else {
                continue;
            };
            if let Err(e) = sup
                .switch(&c.spec, art, Some(version), Duration::from_secs(30))
                .await
            {
                tracing::warn!(cell = %c.spec.id, artifact = %v.artifact, %version, error = %e, "could not restart a cell");
            }
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
