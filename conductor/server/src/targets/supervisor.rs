//! The local target's supervisor: each local cell is a set of worker
//! processes on loopback, per artifact.
//!
//! - Deploying version V starts V's workers on the artifact's other port
//!   (blue/green over the artifact's pair, see [`super::ports`]), waits for
//!   each worker's health endpoint on its own port, switches the route, then
//!   retires the old workers.
//! - Workers run confined (see [`crate::procs::sandbox`]) in their own
//!   session: they outlive the Conductor (a crash or a stop of the Conductor
//!   does not take a cell down). What runs is stored (pid, start time, ports,
//!   version); a restarted Conductor adopts the processes that still run and
//!   answer their health check ([`Supervisor::restore`]).
//! - A worker that dies is restarted, whether this Conductor started it or
//!   adopted it (adopted ones are watched through a pidfd).

use super::pidfd::{proc_id, Pidfd};
use super::ports::{artifact_port, bind_worker_listener, PortRange};
use super::ArtifactDir;
use crate::procs::sandbox::{self, Sandbox, WORKER_FD};
use crate::store::{CellProcessRow, Store};
use cells_inventory::CellSpec;
use chrono::Utc;
use conductor_core::pipeline::Artifact;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Most workers one cell may run locally.
pub const MAX_LOCAL_WORKERS: u32 = 64;

/// What the supervisor needs.
pub struct SupervisorConfig {
    pub artifacts: ArtifactDir,
    /// The data directory: the routing table and the cells' logs.
    pub data_dir: PathBuf,
    pub sandbox: Arc<Sandbox>,
    pub store: Store,
    /// Worker processes per shape name (a cell of an unknown shape runs one).
    pub workers_by_shape: HashMap<String, u32>,
    /// Extra environment for every cell process (the fleet's data plane admin key).
    pub cell_env: BTreeMap<String, String>,
    /// Where artifacts after a cell's first get their ports.
    pub ports: PortRange,
}

/// Shared between a worker's supervising task and the supervisor.
#[derive(Default)]
struct ProcState {
    /// Set before the process is stopped on purpose (it is then not restarted).
    retired: AtomicBool,
    /// The current OS process id (changes when it is restarted).
    pid: AtomicU32,
    /// Its own port (changes when it is restarted).
    worker_port: AtomicU16,
}

/// One worker process of a cell's artifact. Every worker of a version serves
/// the artifact's port on the cell (bound with `SO_REUSEPORT`, so the kernel
/// spreads connections over them) and its own worker port, where it is
/// health-checked, scraped and configured one by one.
struct Worker {
    index: u32,
    state: Arc<ProcState>,
    kill: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Worker {
    fn retire(mut self) -> Option<JoinHandle<()>> {
        self.state.retired.store(true, Ordering::SeqCst);
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        self.task.take()
    }
}

fn retire_all(ws: impl IntoIterator<Item = Worker>) -> Vec<JoinHandle<()>> {
    ws.into_iter().filter_map(Worker::retire).collect()
}

/// What a cell runs of one artifact: a version on a port, with its workers.
struct Proc {
    art: Artifact,
    version: String,
    /// The first of the artifact's two ports on the cell.
    base: u16,
    /// The one of the two it is served on now.
    port: u16,
    workers: Vec<Worker>,
}

/// What a worker's supervising task runs.
#[derive(Clone)]
struct WorkerRun {
    cell: CellSpec,
    art: Artifact,
    version: String,
    port: u16,
    index: u32,
    workers: u32,
    /// Hand the bound worker socket over (fd 3); false for artifacts built
    /// before that, which bind `CELL_WORKER_PORT` themselves.
    handover: bool,
}

/// A worker process: our child, or adopted after a restart.
enum Running {
    Child(tokio::process::Child),
    Adopted(Pidfd),
}

impl Running {
    async fn wait(&mut self) -> String {
        match self {
            Running::Child(c) => match c.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            },
            Running::Adopted(p) => {
                p.exited().await;
                "exited".into()
            }
        }
    }

    async fn kill(&mut self) {
        match self {
            Running::Child(c) => {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
            Running::Adopted(p) => {
                p.kill(Duration::from_secs(10)).await;
            }
        }
    }
}

/// Why a worker did not become healthy.
enum Unhealthy {
    Exited(String),
    Timeout(String),
}

/// Supervises the local cells' processes.
pub struct Supervisor {
    cfg: SupervisorConfig,
    http: reqwest::Client,
    procs: Mutex<HashMap<(String, String), Proc>>,
    routes_file: PathBuf,
}

impl Supervisor {
    pub fn new(cfg: SupervisorConfig) -> Arc<Supervisor> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Arc::new(Supervisor {
            routes_file: cfg.data_dir.join("routes.json"),
            cfg,
            http,
            procs: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Proc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many workers a cell of `shape` runs.
    pub fn workers_for(&self, shape: &str) -> u32 {
        self.cfg
            .workers_by_shape
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

    /// What runs where: `{cell: {artifact: {version, port, ports, pid,
    /// workers}}}` (`ports`: the artifact's pair on the cell; `port`: the one
    /// it is served on; `workers`: each worker's pid and own port).
    pub fn routes(&self) -> BTreeMap<String, BTreeMap<String, serde_json::Value>> {
        let mut m: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
        for ((cell, art), p) in self.lock().iter() {
            let workers: Vec<serde_json::Value> = p
                .workers
                .iter()
                .map(|w| {
                    serde_json::json!({
                        "pid": w.state.pid.load(Ordering::SeqCst),
                        "port": w.state.worker_port.load(Ordering::SeqCst),
                    })
                })
                .collect();
            m.entry(cell.clone()).or_default().insert(
                art.clone(),
                serde_json::json!({
                    "version": p.version,
                    "port": p.port,
                    "ports": [p.base, p.base.saturating_add(1)],
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

    /// Start one worker process (confined, in its own session, with its
    /// bound worker socket); returns it and the row that records it.
    fn spawn(&self, w: &WorkerRun) -> Result<(Running, CellProcessRow), String> {
        let (cell, art, version) = (&w.cell, &w.art, w.version.as_str());
        let src = self.cfg.artifacts.path(&art.name, version);
        if !src.is_file() {
            return Err(format!(
                "artifact {} {version} has not been pushed",
                art.name
            ));
        }
        let bin = self
            .cfg
            .sandbox
            .install(&src, &art.name, version)
            .map_err(|e| format!("cannot install {} {version}: {e}", art.name))?;
        let dir = self
            .cfg
            .sandbox
            .cell_dir(&cell.id)
            .map_err(|e| format!("cannot prepare cell {}'s directory: {e}", cell.id))?;
        let data = dir.join("data");
        let (listener, worker_port) = if w.handover {
            let l = bind_worker_listener()?;
            let p = l.local_addr().map_err(|e| e.to_string())?.port();
            (Some(l), p)
        } else {
            // Older artifacts bind the port themselves: it may be taken in between.
            let p = bind_worker_listener()?
                .local_addr()
                .map_err(|e| e.to_string())?
                .port();
            (None, p)
        };
        let subst = |s: &str| {
            s.replace("{port}", &w.port.to_string())
                .replace("{worker_port}", &worker_port.to_string())
                .replace("{cell}", &cell.id)
                .replace("{data_dir}", &data.display().to_string())
                .replace("{version}", version)
        };
        let mut env = self.cfg.cell_env.clone();
        for (k, v) in [
            ("CELL_ID", cell.id.clone()),
            ("CELL_REGION", cell.region.clone()),
            ("CELL_SHAPE", cell.shape.clone()),
            ("CELL_PORT", w.port.to_string()),
            ("CELL_WORKER_PORT", worker_port.to_string()),
            ("CELL_WORKER", w.index.to_string()),
            ("CELL_WORKERS", w.workers.to_string()),
            ("CELL_DATA_DIR", data.display().to_string()),
            ("ARTIFACT_NAME", art.name.clone()),
            ("ARTIFACT_VERSION", version.to_string()),
        ] {
            env.insert(k.to_string(), v);
        }
        if w.handover {
            env.insert("CELL_WORKER_FD".into(), WORKER_FD.to_string());
        }
        if let Ok(l) = std::env::var("RUST_LOG") {
            env.insert("RUST_LOG".into(), l);
        }
        let mut cmd = Command::new(&bin);
        cmd.args(art.args.iter().map(|a| subst(a)))
            .stdin(Stdio::null())
            // The cell keeps serving when the Conductor goes.
            .kill_on_drop(false);
        match self.log_file(&cell.id, &art.name) {
            Ok((out, err)) => {
                cmd.stdout(out).stderr(err);
            }
            Err(e) => {
                tracing::warn!(cell = %cell.id, error = %e, "cannot open the cell's log; its output is dropped");
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        self.cfg.sandbox.confine_cell(
            &mut cmd,
            &dir,
            &env,
            listener.as_ref().map(|l| l.as_raw_fd()),
        );
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        // The worker has its copy of the socket; ours goes.
        drop(listener);
        let pid = child.id().ok_or("the process exited at once")?;
        let started = proc_id(pid).map(|p| p.started).unwrap_or_default();
        let row = CellProcessRow {
            pid: i64::from(pid),
            started,
            cell_id: cell.id.clone(),
            artifact: art.name.clone(),
            version: version.to_string(),
            port: i64::from(w.port),
            worker: i64::from(w.index),
            worker_port: i64::from(worker_port),
            handover: w.handover,
        };
        Ok((Running::Child(child), row))
    }

    /// A cell's log of `artifact` (stdout and stderr), in the private data dir.
    fn log_file(
        &self,
        cell: &str,
        artifact: &str,
    ) -> std::io::Result<(std::fs::File, std::fs::File)> {
        let dir = self.cfg.data_dir.join("cells").join(cell);
        sandbox::mkdir(&dir, 0o700, None)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{artifact}.log")))?;
        Ok((f.try_clone()?, f))
    }

    async fn record(&self, row: &CellProcessRow) {
        if let Err(e) = self.cfg.store.put_cell_process(row, Utc::now()).await {
            tracing::warn!(pid = row.pid, error = %e, "could not record a cell process");
        }
    }

    async fn forget(&self, row: &CellProcessRow) {
        if let Err(e) = self
            .cfg
            .store
            .delete_cell_process(row.pid, &row.started)
            .await
        {
            tracing::warn!(pid = row.pid, error = %e, "could not forget a cell process");
        }
    }

    /// Supervise a started (or adopted) worker until it is retired.
    fn launch(
        self: &Arc<Self>,
        run: WorkerRun,
        running: Running,
        row: CellProcessRow,
    ) -> (Worker, oneshot::Receiver<String>) {
        let state = Arc::new(ProcState::default());
        state
            .pid
            .store(u32::try_from(row.pid).unwrap_or(0), Ordering::SeqCst);
        state.worker_port.store(
            u16::try_from(row.worker_port).unwrap_or(0),
            Ordering::SeqCst,
        );
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let (exit_tx, exit_rx) = oneshot::channel::<String>();
        let me = self.clone();
        let st = state.clone();
        let index = run.index;
        let task = tokio::spawn(async move {
            me.keep_running(run, st, (running, row), kill_rx, exit_tx)
                .await;
        });
        let worker = Worker {
            index,
            state,
            kill: Some(kill_tx),
            task: Some(task),
        };
        (worker, exit_rx)
    }

    async fn keep_running(
        self: Arc<Self>,
        w: WorkerRun,
        state: Arc<ProcState>,
        first: (Running, CellProcessRow),
        mut kill: oneshot::Receiver<()>,
        exit_tx: oneshot::Sender<String>,
    ) {
        let mut exit_tx = Some(exit_tx);
        let mut first = Some(first);
        let mut restarts = 0u32;
        let (cell, art, version) = (&w.cell.id, &w.art.name, &w.version);
        loop {
            let (mut running, row) = match first.take() {
                Some(f) => f,
                None => match self.spawn(&w) {
                    Ok((r, row)) => {
                        self.record(&row).await;
                        state
                            .pid
                            .store(u32::try_from(row.pid).unwrap_or(0), Ordering::SeqCst);
                        state.worker_port.store(
                            u16::try_from(row.worker_port).unwrap_or(0),
                            Ordering::SeqCst,
                        );
                        self.write_routes();
                        (r, row)
                    }
                    Err(e) => {
                        restarts += 1;
                        tracing::warn!(%cell, artifact = %art, %version, worker = w.index, error = %e, restarts, "cannot restart a cell process; trying again");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff(restarts)) => continue,
                            _ = &mut kill => return,
                        }
                    }
                },
            };
            tokio::select! {
                why = running.wait() => {
                    self.forget(&row).await;
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
                    tracing::warn!(%cell, artifact = %art, %version, worker = w.index, %why, restarts, "cell process died; restarting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(restarts)) => {}
                        _ = &mut kill => return,
                    }
                }
                _ = &mut kill => {
                    running.kill().await;
                    self.forget(&row).await;
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
        exited: &mut oneshot::Receiver<String>,
    ) -> Result<(), Unhealthy> {
        let url = format!("http://127.0.0.1:{port}{path}");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(why) = exited.try_recv() {
                return Err(Unhealthy::Exited(why));
            }
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(Unhealthy::Timeout(format!(
                    "health check {url} did not pass within {}s",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Start worker `index` (of `n`) of `version` on `port`; returns once its
    /// worker port is healthy.
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
        let mut first_error = None;
        for handover in [true, false] {
            let run = WorkerRun {
                cell: cell.clone(),
                art: art.clone(),
                version: version.to_string(),
                port,
                index,
                workers: n,
                handover,
            };
            let (running, row) = self.spawn(&run)?;
            self.record(&row).await;
            let wport = u16::try_from(row.worker_port).unwrap_or(0);
            let (worker, mut exited) = self.launch(run, running, row);
            match self
                .wait_healthy(wport, &art.health, health_timeout, &mut exited)
                .await
            {
                Ok(()) => return Ok(worker),
                Err(Unhealthy::Exited(why)) if handover => {
                    // Perhaps an artifact built before the socket handover,
                    // which binds CELL_WORKER_PORT itself: one more try so.
                    worker.retire();
                    tracing::warn!(cell = %cell.id, artifact = %art.name, %version, %why, "worker exited before it was healthy; trying once more without the handed-over socket (CELL_WORKER_FD)");
                    first_error = Some(why);
                }
                Err(Unhealthy::Exited(why) | Unhealthy::Timeout(why)) => {
                    worker.retire();
                    return Err(format!("worker {index}: {}", first_error.unwrap_or(why)));
                }
            }
        }
        Err(format!(
            "worker {index}: {}",
            first_error.unwrap_or_default()
        ))
    }

    /// Start workers `indices` (of `n`), retiring them all if one fails.
    #[allow(clippy::too_many_arguments)]
    async fn start_workers(
        self: &Arc<Self>,
        cell: &CellSpec,
        art: &Artifact,
        version: &str,
        port: u16,
        indices: Vec<u32>,
        n: u32,
        health_timeout: Duration,
    ) -> Result<Vec<Worker>, String> {
        let mut started: Vec<Worker> = Vec::new();
        for i in indices {
            match self
                .start_worker(cell, art, version, port, i, n, health_timeout)
                .await
            {
                Ok(w) => started.push(w),
                Err(e) => {
                    retire_all(started);
                    return Err(e);
                }
            }
        }
        Ok(started)
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
        let Some(version) = version else {
            let old = self.lock().remove(&key);
            if let Some(p) = old {
                retire_all(p.workers);
            }
            self.write_routes();
            return Ok(());
        };
        let base = artifact_port(&self.cfg.store, cell, &art.name, self.cfg.ports).await?;
        let other = base
            .checked_add(1)
            .ok_or_else(|| format!("cell {}: port {base} has no next port", cell.id))?;
        let port = match self.live_port(&cell.id, &art.name) {
            Some(p) if p == base => other,
            _ => base,
        };
        let n = self.workers_for(&cell.shape);
        let workers = self
            .start_workers(
                cell,
                art,
                version,
                port,
                (0..n).collect(),
                n,
                health_timeout,
            )
            .await?;
        // The artifact's port answers too (the first worker proves the bind).
        let url = format!("http://127.0.0.1:{port}{}", art.health);
        if !matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success()) {
            retire_all(workers);
            return Err(format!(
                "{url} does not answer although the workers are healthy"
            ));
        }
        let old = self.lock().insert(
            key,
            Proc {
                art: art.clone(),
                version: version.to_string(),
                base,
                port,
                workers,
            },
        );
        self.write_routes();
        if let Some(p) = old {
            retire_all(p.workers);
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
        type Current = (String, Artifact, String, u16, BTreeSet<u32>);
        let running: Vec<Current> = self
            .lock()
            .iter()
            .filter(|((c, _), _)| *c == cell.id)
            .map(|((_, a), p)| {
                let have = p.workers.iter().map(|w| w.index).collect();
                (a.clone(), p.art.clone(), p.version.clone(), p.port, have)
            })
            .collect();
        let mut done = Vec::new();
        for (name, art, version, port, have) in running {
            let key = (cell.id.clone(), name.clone());
            let count = u32::try_from(have.len()).unwrap_or(u32::MAX);
            if n > count {
                let missing: Vec<u32> = (0..)
                    .filter(|i| !have.contains(i))
                    .take((n - count) as usize)
                    .collect();
                let more = self
                    .start_workers(cell, &art, &version, port, missing, n, health_timeout)
                    .await?;
                let mut m = self.lock();
                match m.get_mut(&key) {
                    Some(p) if p.version == version && p.port == port => {
                        p.workers.extend(more);
                        p.workers.sort_by_key(|w| w.index);
                    }
                    // The artifact changed meanwhile (it cannot while the
                    // cell's lease is held): the new workers are not needed.
                    _ => {
                        retire_all(more);
                    }
                }
            } else if n < count {
                let extra: Vec<Worker> = match self.lock().get_mut(&key) {
                    Some(p) => p.workers.split_off(n as usize),
                    None => Vec::new(),
                };
                retire_all(extra.into_iter().rev());
            }
            done.push(format!("{name} {version}: {count} -> {n} workers"));
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
            retire_all(p.workers);
        }
        self.write_routes();
    }

    /// Stop every cell process and wait for them (`conductor up
    /// --stop-cells-on-exit`; by default cells keep serving).
    pub async fn stop_all(&self) {
        let tasks: Vec<JoinHandle<()>> = self
            .lock()
            .drain()
            .flat_map(|(_, p)| retire_all(p.workers))
            .collect();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
        self.write_routes();
    }
}

fn backoff(restarts: u32) -> Duration {
    Duration::from_millis((200 * u64::from(restarts.min(25))).min(5000))
}

mod restore;
