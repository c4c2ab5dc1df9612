//! After a (re)start: adopt the cell processes that kept serving while the
//! Conductor was down, stop the ones that should not run, start what is
//! missing.

use super::*;

impl Supervisor {
    /// Bring every local cell's recorded versions back. A stored worker
    /// process is adopted when it is the same process (pid, boot id and
    /// start time), runs as the cells user, runs the recorded version on the
    /// artifact's ports, and answers its health check; it is then watched
    /// like a child (restarted if it dies). Stored processes that do not
    /// qualify are stopped; missing workers are started.
    pub async fn restore(self: &Arc<Self>, pipelines: &HashMap<String, Artifact>) {
        let rows = match self.cfg.store.cell_processes().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the recorded cell processes; starting cells afresh");
                Vec::new()
            }
        };
        let mut by_key: BTreeMap<(String, String), Vec<CellProcessRow>> = BTreeMap::new();
        for r in rows {
            by_key
                .entry((r.cell_id.clone(), r.artifact.clone()))
                .or_default()
                .push(r);
        }
        let cells = match self.cfg.store.list_cells().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cells; none restored");
                return;
            }
        };
        for c in &cells {
            if !matches!(c.spec.target, cells_inventory::TargetSpec::Local) {
                continue;
            }
            for v in &c.versions {
                let rows = by_key
                    .remove(&(c.spec.id.clone(), v.artifact.clone()))
                    .unwrap_or_default();
                let Some(version) = &v.version else {
                    self.stop_rows(rows).await;
                    continue;
                };
                if c.status == conductor_core::CellStatus::Retired {
                    self.stop_rows(rows).await;
                    continue;
                }
                let Some(art) = pipelines.get(&v.artifact) else {
                    // Without its pipeline we cannot restart it: leave it be.
                    tracing::warn!(cell = %c.spec.id, artifact = %v.artifact, "no pipeline describes this artifact; its processes are left as they are");
                    continue;
                };
                if let Err(e) = self.adopt_or_start(&c.spec, art, version, rows).await {
                    tracing::warn!(cell = %c.spec.id, artifact = %v.artifact, %version, error = %e, "could not restore a cell");
                }
            }
        }
        // Processes of no recorded version (a deploy cut short by a crash).
        for (_, rows) in by_key {
            self.stop_rows(rows).await;
        }
        self.write_routes();
    }

    async fn adopt_or_start(
        self: &Arc<Self>,
        cell: &CellSpec,
        art: &Artifact,
        version: &str,
        rows: Vec<CellProcessRow>,
    ) -> Result<(), String> {
        let base = artifact_port(&self.cfg.store, cell, &art.name, self.cfg.ports).await?;
        let pair = [i64::from(base), i64::from(base) + 1];
        let mut keep: Vec<(CellProcessRow, Pidfd)> = Vec::new();
        let mut stale = Vec::new();
        for r in rows {
            let fits = r.version == version
                && pair.contains(&r.port)
                && keep.first().is_none_or(|(k, _)| k.port == r.port)
                && !keep.iter().any(|(k, _)| k.worker == r.worker);
            if fits {
                if let Some(fd) = self.alive_and_healthy(&r, &art.health).await {
                    keep.push((r, fd));
                    continue;
                }
            }
            stale.push(r);
        }
        self.stop_rows(stale).await;
        if keep.is_empty() {
            return self
                .switch(cell, art, Some(version), Duration::from_secs(30))
                .await;
        }
        let n = self.workers_for(&cell.shape);
        let port = u16::try_from(keep[0].0.port).map_err(|e| e.to_string())?;
        let mut workers = Vec::new();
        for (r, fd) in keep {
            let run = WorkerRun {
                cell: cell.clone(),
                art: art.clone(),
                version: version.to_string(),
                port,
                index: u32::try_from(r.worker).unwrap_or(0),
                workers: n,
                handover: r.handover,
            };
            // Nobody waits for its health: if it exits, it is restarted.
            let (w, _) = self.launch(run, Running::Adopted(fd), r);
            workers.push(w);
        }
        tracing::info!(cell = %cell.id, artifact = %art.name, %version, workers = workers.len(), "adopted running cell processes");
        workers.sort_by_key(|w| w.index);
        if workers.len() > n as usize {
            retire_all(workers.split_off(n as usize));
        }
        let have: BTreeSet<u32> = workers.iter().map(|w| w.index).collect();
        let missing: Vec<u32> = (0..)
            .filter(|i| !have.contains(i))
            .take(n as usize - workers.len())
            .collect();
        if !missing.is_empty() {
            match self
                .start_workers(
                    cell,
                    art,
                    version,
                    port,
                    missing,
                    n,
                    Duration::from_secs(30),
                )
                .await
            {
                Ok(more) => workers.extend(more),
                Err(e) => {
                    tracing::warn!(cell = %cell.id, artifact = %art.name, error = %e, "could not start the missing workers; the adopted ones serve")
                }
            }
            workers.sort_by_key(|w| w.index);
        }
        self.lock().insert(
            (cell.id.clone(), art.name.clone()),
            Proc {
                art: art.clone(),
                version: version.to_string(),
                base,
                port,
                workers,
            },
        );
        Ok(())
    }

    /// The recorded process, pinned by a pidfd, if it is still that process,
    /// runs as the cells user and answers its health check.
    async fn alive_and_healthy(&self, r: &CellProcessRow, health: &str) -> Option<Pidfd> {
        let pid = u32::try_from(r.pid).ok()?;
        let fd = Pidfd::open(pid).ok()?;
        let id = proc_id(pid)?;
        if id.started != r.started || id.zombie || id.euid != self.cfg.sandbox.cells_uid() {
            return None;
        }
        let url = format!("http://127.0.0.1:{}{health}", r.worker_port);
        for _ in 0..3 {
            if matches!(self.http.get(&url).send().await, Ok(resp) if resp.status().is_success()) {
                return Some(fd);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::warn!(pid, %url, "a recorded cell process does not answer its health check; replacing it");
        None
    }

    /// Stop recorded processes that should not run (only if each is still
    /// the process recorded) and forget them.
    async fn stop_rows(&self, rows: Vec<CellProcessRow>) {
        for r in rows {
            if let Ok(pid) = u32::try_from(r.pid) {
                if let Ok(fd) = Pidfd::open(pid) {
                    if proc_id(pid).is_some_and(|p| p.started == r.started && !p.zombie) {
                        tracing::info!(pid, cell = %r.cell_id, artifact = %r.artifact, version = %r.version, "stopping a cell process that should not run");
                        fd.kill(Duration::from_secs(10)).await;
                    }
                }
            }
            self.forget(&r).await;
        }
    }
}
