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
use super::routing::{CellRouting, LocalRoutesFile};
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

/// Supervises the local cells' processes.
pub struct Supervisor {
    cfg: SupervisorConfig,
    http: reqwest::Client,
    procs: Mutex<HashMap<(String, String), Proc>>,
    /// Where the cells' routes are published (the local `routes.json`).
    routing: Arc<dyn CellRouting>,
    /// Held while routes are published: one publisher at a time, each
    /// publishing the routes as they are then.
    routes_write: Mutex<()>,
}

impl Supervisor {
    /// A supervisor publishing its routes to `routes.json` in the data
    /// directory.
    pub fn new(cfg: SupervisorConfig) -> Arc<Supervisor> {
        let routing = Arc::new(LocalRoutesFile::new(cfg.data_dir.join("routes.json")));
        Supervisor::with_routing(cfg, routing)
    }

    /// A supervisor publishing its routes through `routing`.
    pub fn with_routing(cfg: SupervisorConfig, routing: Arc<dyn CellRouting>) -> Arc<Supervisor> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Arc::new(Supervisor {
            routing,
            cfg,
            http,
            procs: Mutex::new(HashMap::new()),
            routes_write: Mutex::new(()),
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

    /// Publish every cell's routes as they are now, and remove the routes
    /// of cells that run nothing any more.
    fn write_routes(&self) {
        let _one_publisher = self.routes_write.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.routes();
        let published = self.routing.table();
        for (cell, routes) in &now {
            if published.get(cell) != Some(routes) {
                if let Err(e) = self.routing.publish(cell, routes.clone()) {
                    tracing::warn!(%cell, error = %e, "could not publish a cell's routes");
                }
            }
        }
        for cell in published.keys().filter(|c| !now.contains_key(*c)) {
            if let Err(e) = self.routing.remove(cell) {
                tracing::warn!(%cell, error = %e, "could not remove a cell's routes");
            }
        }
    }

    /// Switch a local cell to `version` (None: stop the artifact), with as
    /// many workers as the cell's shape runs. A cell that already runs
    /// `version` is left as it is.
    pub async fn switch(
        self: &Arc<Self>,
        cell: &CellSpec,
        art: &Artifact,
        version: Option<&str>,
        health_timeout: Duration,
    ) -> Result<(), String> {
        let key = (cell.id.clone(), art.name.clone());
        // Already so (a change run again after a crash before the engine
        // committed it): done, without restarting the processes.
        let runs = self.lock().get(&key).map(|p| p.version.clone());
        if runs.as_deref() == version {
            return Ok(());
        }
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

mod restore;
mod worker;

use worker::{retire_all, Running, Worker, WorkerRun};
