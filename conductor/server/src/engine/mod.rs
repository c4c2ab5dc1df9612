//! The engine: the imperative shell around the pure train state machine.
//!
//! One task owns the in-memory state of every active train. It takes a batch
//! of messages (commands from the API, outcomes from executors, lease grants,
//! timers), validates and applies them to working copies, appends all the
//! accepted events and the changed snapshots to the store in **one**
//! transaction, and only then executes the resulting effects. A crash at any
//! point loses nothing: on start the engine replays the stored events and
//! re-issues the effects that were in flight, each with the idempotency key
//! it had, and the effect runner returns a recorded outcome instead of acting
//! twice.

use crate::leases::Leases;
use crate::metrics::Metrics;
use crate::store::{
    AuditEntry, CellChange, CellStatusChange, Commit, ResizeDone, Store, StoreError, TrainLog,
};
use cells_inventory::CellSpec;
use chrono::{DateTime, Utc};
use conductor_core::train::queue::{self, QueuedTrain};
use conductor_core::train::{Effect, Event, Refusal, Train, TrainSpec, TrainStatus};
use conductor_core::LeaseHolder;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

mod batch;
mod effects;
use batch::run;
use effects::execute;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use crate::clock::{Clock, SystemClock};

/// What running an effect on a cell came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub detail: String,
    /// For deploys: the version the cell ran before.
    pub previous_version: Option<String>,
    /// For rollbacks: the cell was left as it was (`ok` is true); see
    /// `CellPhase::RollbackSkipped`.
    pub skipped: bool,
    /// The change of the cell's version the target made (deploys and
    /// rollbacks that acted): the engine commits it with the event that
    /// reports the outcome, so that executors never write the store.
    pub change: Option<CellChange>,
}

impl Outcome {
    pub fn ok(detail: impl Into<String>) -> Outcome {
        Outcome {
            ok: true,
            detail: detail.into(),
            previous_version: None,
            skipped: false,
            change: None,
        }
    }
    pub fn failed(detail: impl Into<String>) -> Outcome {
        Outcome {
            ok: false,
            detail: detail.into(),
            previous_version: None,
            skipped: false,
            change: None,
        }
    }
}

/// One step to run on one cell.
#[derive(Clone)]
pub struct StepRequest {
    pub train: Arc<TrainSpec>,
    pub cell: CellSpec,
    pub step: usize,
    pub key: String,
}

/// Restore a cell to `to_version` (None: the artifact was not there before).
#[derive(Clone)]
pub struct RollbackRequest {
    pub train: Arc<TrainSpec>,
    pub cell: CellSpec,
    pub to_version: Option<String>,
    pub key: String,
}

/// Executes steps against cells (the deploy targets live behind this).
pub trait Executor: Send + Sync + 'static {
    fn run_step(&self, req: StepRequest) -> BoxFut<'_, Outcome>;
    fn rollback(&self, req: RollbackRequest) -> BoxFut<'_, Outcome>;
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no train {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the engine has stopped")]
    Stopped,
}

type Reply = oneshot::Sender<Result<Train, EngineError>>;

enum Msg {
    Internal {
        train: String,
        event: Event,
    },
    /// The outcome of a step or a rollback, with the cell version change
    /// the target made, if any (committed with the event, even if the
    /// event is stale: the cell runs that version).
    Outcome {
        train: String,
        event: Event,
        change: Option<CellChange>,
    },
    /// A caller's command; its audit row is committed with its event, and
    /// only if the event is accepted.
    Command {
        train: String,
        event: Event,
        audit: Option<AuditEntry>,
        reply: oneshot::Sender<Result<Train, EngineError>>,
    },
    Start {
        spec: TrainSpec,
        audit: Option<AuditEntry>,
        reply: oneshot::Sender<Result<Train, EngineError>>,
    },
    /// A change of a cell made outside trains (a finished resize, a new
    /// lifecycle status) and its audit row: committed by the engine in a
    /// transaction of its own, whose failure goes back to the caller.
    Cell {
        change: CellUpdate,
        audit: AuditEntry,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    /// The committed state of an active train (None: not active).
    Get {
        train: String,
        reply: oneshot::Sender<Option<Train>>,
    },
}

/// What [`Msg::Cell`] changes.
enum CellUpdate {
    /// A finished resize (its row, the cell's new spec if it changed shape).
    Resized(Box<ResizeDone>),
    /// A cell's new lifecycle status.
    Status(CellStatusChange),
}

struct Shared {
    store: Store,
    /// Where the engine's events go and come back from (the store, unless
    /// another log was given).
    log: Arc<dyn TrainLog>,
    clock: Arc<dyn Clock>,
    executor: Arc<dyn Executor>,
    leases: Arc<Leases>,
    metrics: Arc<Metrics>,
    tx: mpsc::UnboundedSender<Msg>,
    finished: tokio::sync::broadcast::Sender<(String, TrainStatus)>,
    /// The highest committed event seq, published after every commit so
    /// that event streams on this process wake at once.
    committed: tokio::sync::watch::Sender<i64>,
    /// The cell inventory, read once and refreshed when it changes, so that
    /// steps need not read the store to find their cell.
    cells: std::sync::RwLock<HashMap<String, CellSpec>>,
    /// Set when the engine loop has stopped (it could not commit).
    stopped: tokio::sync::watch::Sender<bool>,
}

/// A handle to the running engine.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// Most messages folded into one transaction.
const MAX_BATCH: usize = 2048;
/// Longest a running train's stored snapshot may lag its live state.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

impl Engine {
    /// Replay the store, re-issue in-flight effects, and start the loop.
    pub async fn start(
        store: Store,
        clock: Arc<dyn Clock>,
        executor: Arc<dyn Executor>,
        leases: Arc<Leases>,
        metrics: Arc<Metrics>,
    ) -> Result<Engine, EngineError> {
        let log: Arc<dyn TrainLog> = Arc::new(store.clone());
        Engine::start_with_log(store, log, clock, executor, leases, metrics).await
    }

    /// [`Engine::start`] with the train log given apart from the store
    /// (which keeps serving everything else).
    pub async fn start_with_log(
        store: Store,
        log: Arc<dyn TrainLog>,
        clock: Arc<dyn Clock>,
        executor: Arc<dyn Executor>,
        leases: Arc<Leases>,
        metrics: Arc<Metrics>,
    ) -> Result<Engine, EngineError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (finished, _) = tokio::sync::broadcast::channel(1024);
        let (committed, _) = tokio::sync::watch::channel(store.last_event_seq().await?);
        let cells = std::sync::RwLock::new(HashMap::new());
        let shared = Arc::new(Shared {
            store,
            log,
            clock,
            executor,
            leases,
            metrics,
            tx,
            finished,
            committed,
            cells,
            stopped: tokio::sync::watch::Sender::new(false),
        });
        refresh_cells(&shared).await?;
        let mut trains = HashMap::new();
        let mut seqs = HashMap::new();
        for events in shared.log.active_train_events().await? {
            if let Some(t) = Train::replay(events.iter().map(|(e, at)| (e, *at))) {
                seqs.insert(t.spec.id.clone(), events.len() as i64);
                trains.insert(t.spec.id.clone(), Arc::new(t));
            }
        }
        // Leases held by cells that were mid-step when we stopped.
        for t in trains.values() {
            for (cell, c) in &t.cells {
                use conductor_core::train::CellPhase as P;
                if matches!(
                    c.phase,
                    P::Running { .. } | P::Baking { .. } | P::RollingBack
                ) {
                    shared.leases.hold(cell, &holder(&t.spec.id));
                }
            }
        }
        let resumed: Vec<(String, Effect)> = trains
            .values()
            .flat_map(|t| t.resume().into_iter().map(|e| (t.spec.id.clone(), e)))
            .collect();
        if !trains.is_empty() {
            tracing::info!(
                trains = trains.len(),
                effects = resumed.len(),
                "resumed active trains"
            );
        }
        let specs: HashMap<String, Arc<TrainSpec>> = trains
            .values()
            .map(|t| (t.spec.id.clone(), Arc::new(t.spec.clone())))
            .collect();
        let engine = Engine {
            shared: shared.clone(),
        };
        for (id, e) in resumed {
            if let Some(spec) = specs.get(&id) {
                execute(&shared, spec.clone(), e);
            }
        }
        tokio::spawn(async move {
            let after = shared.clone();
            run(shared, rx, trains, specs, seqs).await;
            after.stopped.send_replace(true);
        });
        Ok(engine)
    }

    /// An engine that does not run: what a follower replica answers reads
    /// with (trains from their stored snapshots). Commands are refused as
    /// `Stopped`; a follower forwards them to the leader instead.
    pub fn follower(
        store: Store,
        clock: Arc<dyn Clock>,
        executor: Arc<dyn Executor>,
        leases: Arc<Leases>,
        metrics: Arc<Metrics>,
    ) -> Engine {
        let (tx, _) = mpsc::unbounded_channel();
        let (finished, _) = tokio::sync::broadcast::channel(1);
        let log: Arc<dyn TrainLog> = Arc::new(store.clone());
        Engine {
            shared: Arc::new(Shared {
                store,
                log,
                clock,
                executor,
                leases,
                metrics,
                tx,
                finished,
                committed: tokio::sync::watch::Sender::new(0),
                cells: std::sync::RwLock::new(HashMap::new()),
                stopped: tokio::sync::watch::Sender::new(true),
            }),
        }
    }

    /// Resolves when the engine loop has stopped (it could not commit
    /// events): a leader must then give up its leadership.
    pub async fn stopped(&self) {
        let mut rx = self.shared.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn leases(&self) -> &Arc<Leases> {
        &self.shared.leases
    }

    /// The current state of a train: from the engine while it runs (as of
    /// the last committed batch), else its stored snapshot.
    pub async fn train(&self, id: &str) -> Result<Option<Train>, EngineError> {
        let (reply, rx) = oneshot::channel();
        let sent = self.shared.tx.send(Msg::Get {
            train: id.to_string(),
            reply,
        });
        // No engine loop here (a follower): the stored snapshot.
        let live = match sent {
            Ok(()) => rx.await.map_err(|_| EngineError::Stopped)?,
            Err(_) => None,
        };
        match live {
            Some(t) => Ok(Some(t)),
            None => Ok(self.shared.log.get_train(id).await?),
        }
    }

    /// Re-read the cell inventory (after cells were added or changed).
    pub async fn refresh_cells(&self) -> Result<(), EngineError> {
        refresh_cells(&self.shared).await
    }

    /// Trains as they finish (id, final status), from now on.
    pub fn finished(&self) -> tokio::sync::broadcast::Receiver<(String, TrainStatus)> {
        self.shared.finished.subscribe()
    }

    /// The highest committed event seq, updated after every commit of this
    /// engine (events committed by another process are not seen here).
    pub fn committed(&self) -> tokio::sync::watch::Receiver<i64> {
        self.shared.committed.subscribe()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    /// The engine's clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.shared.clock.clone()
    }

    /// Create a train (queued behind a running train of the same pipeline).
    /// `audit` (the caller's audit row) is committed in the same transaction
    /// as the train's first events.
    pub async fn start_train(
        &self,
        spec: TrainSpec,
        audit: Option<AuditEntry>,
    ) -> Result<Train, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .tx
            .send(Msg::Start { spec, audit, reply })
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Apply a command (approve, reject, cancel, rollback) to a train.
    /// `audit` is committed with the command's event, if it is accepted.
    pub async fn command(
        &self,
        train: &str,
        event: Event,
        audit: Option<AuditEntry>,
    ) -> Result<Train, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .tx
            .send(Msg::Command {
                train: train.to_string(),
                event,
                audit,
                reply,
            })
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Record a finished resize and the cell's new shape, with its audit
    /// row, in a commit of the engine (only the engine changes cell
    /// state). Returns once committed.
    pub async fn finish_resize(
        &self,
        done: ResizeDone,
        audit: AuditEntry,
    ) -> Result<(), EngineError> {
        self.cell_update(CellUpdate::Resized(Box::new(done)), audit)
            .await
    }

    /// Change a cell's lifecycle status, with its audit row, in a commit of
    /// the engine. Returns once committed.
    pub async fn set_cell_status(
        &self,
        change: CellStatusChange,
        audit: AuditEntry,
    ) -> Result<(), EngineError> {
        self.cell_update(CellUpdate::Status(change), audit).await
    }

    async fn cell_update(&self, change: CellUpdate, audit: AuditEntry) -> Result<(), EngineError> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .tx
            .send(Msg::Cell {
                change,
                audit,
                reply,
            })
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }
}

async fn refresh_cells(shared: &Shared) -> Result<(), EngineError> {
    let all: HashMap<String, CellSpec> = shared
        .log
        .cell_specs()
        .await?
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    *shared.cells.write().unwrap_or_else(|p| p.into_inner()) = all;
    Ok(())
}

fn holder(train: &str) -> LeaseHolder {
    LeaseHolder::Train(train.to_string())
}
