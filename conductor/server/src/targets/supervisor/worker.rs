//! One worker process of a local cell: starting it (confined, with its
//! bound worker socket), recording it, supervising it (restarted when it
//! dies, unless retired), and waiting for its health.

use super::*;

/// Shared between a worker's supervising task and the supervisor.
#[derive(Default)]
pub(super) struct ProcState {
    /// Set before the process is stopped on purpose (it is then not restarted).
    pub(super) retired: AtomicBool,
    /// The current OS process id (changes when it is restarted).
    pub(super) pid: AtomicU32,
    /// Its own port (changes when it is restarted).
    pub(super) worker_port: AtomicU16,
}

/// One worker process of a cell's artifact. Every worker of a version serves
/// the artifact's port on the cell (bound with `SO_REUSEPORT`, so the kernel
/// spreads connections over them) and its own worker port, where it is
/// health-checked, scraped and configured one by one.
pub(super) struct Worker {
    pub(super) index: u32,
    pub(super) state: Arc<ProcState>,
    pub(super) kill: Option<oneshot::Sender<()>>,
    pub(super) task: Option<JoinHandle<()>>,
}

impl Worker {
    pub(super) fn retire(mut self) -> Option<JoinHandle<()>> {
        self.state.retired.store(true, Ordering::SeqCst);
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        self.task.take()
    }
}

pub(super) fn retire_all(ws: impl IntoIterator<Item = Worker>) -> Vec<JoinHandle<()>> {
    ws.into_iter().filter_map(Worker::retire).collect()
}

/// What a worker's supervising task runs.
#[derive(Clone)]
pub(super) struct WorkerRun {
    pub(super) cell: CellSpec,
    pub(super) art: Artifact,
    pub(super) version: String,
    pub(super) port: u16,
    pub(super) index: u32,
    pub(super) workers: u32,
    /// Hand the bound worker socket over (fd 3); false for artifacts built
    /// before that, which bind `CELL_WORKER_PORT` themselves.
    pub(super) handover: bool,
}

/// A worker process: our child, or adopted after a restart.
pub(super) enum Running {
    Child(tokio::process::Child),
    Adopted(Pidfd),
}

impl Running {
    pub(super) async fn wait(&mut self) -> String {
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

    pub(super) async fn kill(&mut self) {
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
pub(super) enum Unhealthy {
    Exited(String),
    Timeout(String),
}

impl Supervisor {
    /// Start one worker process (confined, in its own session, with its
    /// bound worker socket); returns it and the row that records it.
    pub(super) fn spawn(&self, w: &WorkerRun) -> Result<(Running, CellProcessRow), String> {
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
    pub(super) fn log_file(
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

    /// `: <the last line of the cell's log>` (what a worker that exits at
    /// start said), or nothing.
    pub(super) fn last_log_line(&self, cell: &str, artifact: &str) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let path = self
            .cfg
            .data_dir
            .join("cells")
            .join(cell)
            .join(format!("{artifact}.log"));
        let mut tail = Vec::new();
        if let Ok(mut f) = std::fs::File::open(path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(400)));
            let _ = f.read_to_end(&mut tail);
        }
        let text = String::from_utf8_lossy(&tail);
        match text.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(l) => format!(": {}", l.chars().take(200).collect::<String>()),
            None => String::new(),
        }
    }

    pub(super) async fn record(&self, row: &CellProcessRow) {
        if let Err(e) = self.cfg.store.put_cell_process(row, Utc::now()).await {
            tracing::warn!(pid = row.pid, error = %e, "could not record a cell process");
        }
    }

    pub(super) async fn forget(&self, row: &CellProcessRow) {
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
    pub(super) fn launch(
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

    pub(super) async fn keep_running(
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
                        let said = self.last_log_line(cell, art);
                        if tx.send(format!("process exited ({why}) before it was healthy{said}")).is_ok() {
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
    pub(super) async fn wait_healthy(
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
    pub(super) async fn start_worker(
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
    pub(super) async fn start_workers(
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
}

pub(super) fn backoff(restarts: u32) -> Duration {
    Duration::from_millis((200 * u64::from(restarts.min(25))).min(5000))
}
