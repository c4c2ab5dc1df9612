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
use crate::store::{AuditEntry, Store, StoreError, TrainLog};
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
}

impl Outcome {
    pub fn ok(detail: impl Into<String>) -> Outcome {
        Outcome {
            ok: true,
            detail: detail.into(),
            previous_version: None,
            skipped: false,
        }
    }
    pub fn failed(detail: impl Into<String>) -> Outcome {
        Outcome {
            ok: false,
            detail: detail.into(),
            previous_version: None,
            skipped: false,
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
    /// The committed state of an active train (None: not active).
    Get {
        train: String,
        reply: oneshot::Sender<Option<Train>>,
    },
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

struct Batch {
    shared: Arc<Shared>,
    /// Trains that got a command or were created in this batch.
    touched: std::collections::HashSet<String>,
    staged: HashMap<String, Train>,
    events: Vec<crate::store::NewEvent>,
    /// How many events each train in memory has (stored or in this
    /// batch): the next event's number within its train.
    seqs: HashMap<String, i64>,
    effects: Vec<(String, Effect)>,
    replies: Vec<(Reply, Result<String, EngineError>)>,
    /// Audit rows of the accepted commands, committed with their events.
    audit: Vec<(AuditEntry, DateTime<Utc>)>,
}

impl Batch {
    /// The working copy of a train: moved out of the committed map (cloned
    /// only if the live view still shares it). If the commit fails the engine
    /// stops, so the committed map never needs the old state back.
    fn train<'a>(
        &'a mut self,
        trains: &mut HashMap<String, Arc<Train>>,
        id: &str,
    ) -> Option<&'a mut Train> {
        if !self.staged.contains_key(id) {
            let t = Arc::unwrap_or_clone(trains.remove(id)?);
            self.staged.insert(id.to_string(), t);
        }
        self.staged.get_mut(id)
    }

    /// Validate and apply one event; returns the refusal if any.
    fn apply(
        &mut self,
        trains: &mut HashMap<String, Arc<Train>>,
        id: &str,
        ev: Event,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let t = self
            .train(trains, id)
            .ok_or_else(|| EngineError::NotFound(id.to_string()))?;
        t.validate(&ev)?;
        let fx = t.apply(&ev, now);
        let pipeline = t.spec.pipeline.clone();
        let n = match self.seqs.get_mut(id) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => {
                self.seqs.insert(id.to_string(), 1);
                1
            }
        };
        self.events.push((id.to_string(), n, ev, now));
        let mut granted = Vec::new();
        for e in fx {
            match e {
                // A free lease is granted within this batch: one commit covers
                // the grant and the step it lets start.
                Effect::AcquireLease { cell } => {
                    let tx = self.shared.tx.clone();
                    let (t, c) = (id.to_string(), cell.clone());
                    let later = move || {
                        let _ = tx.send(Msg::Internal {
                            train: t,
                            event: Event::LeaseGranted { cell: c },
                        });
                    };
                    if self.shared.leases.try_acquire(&cell, &holder(id), later) {
                        granted.push(cell);
                    }
                }
                Effect::Finished { .. } => {
                    self.effects.push((id.to_string(), e));
                    self.promote_next(trains, &pipeline, now);
                }
                e => self.effects.push((id.to_string(), e)),
            }
        }
        for cell in granted {
            let _ = self.apply(trains, id, Event::LeaseGranted { cell }, now);
        }
        Ok(())
    }

    /// All known trains of a pipeline (staged copies win over committed ones).
    fn of_pipeline(
        &self,
        trains: &HashMap<String, Arc<Train>>,
        pipeline: &str,
    ) -> Vec<QueuedTrain> {
        let mut v: HashMap<String, (TrainStatus, DateTime<Utc>)> = trains
            .values()
            .filter(|t| t.spec.pipeline == pipeline)
            .map(|t| (t.spec.id.clone(), (t.status, t.created_at)))
            .collect();
        for t in self.staged.values().filter(|t| t.spec.pipeline == pipeline) {
            v.insert(t.spec.id.clone(), (t.status, t.created_at));
        }
        v.into_iter()
            .map(|(id, (status, created_at))| QueuedTrain {
                id,
                status,
                created_at,
            })
            .collect()
    }

    fn promote_next(
        &mut self,
        trains: &mut HashMap<String, Arc<Train>>,
        pipeline: &str,
        now: DateTime<Utc>,
    ) {
        let all = self.of_pipeline(trains, pipeline);
        if let Some(id) = queue::next_to_promote(&all) {
            let id = id.to_string();
            let _ = self.apply(trains, &id, Event::Promoted, now);
        }
    }

    fn start(
        &mut self,
        trains: &mut HashMap<String, Arc<Train>>,
        spec: TrainSpec,
        now: DateTime<Utc>,
    ) -> Result<String, EngineError> {
        let id = spec.id.clone();
        let all = self.of_pipeline(trains, &spec.pipeline);
        let decision = queue::on_start(&all);
        let busy = decision.queued;
        let created = Event::Created {
            spec: Box::new(spec.clone()),
            queued: busy,
        };
        let t = Train::new(spec, busy, now);
        self.staged.insert(id.clone(), t);
        self.seqs.insert(id.clone(), 1);
        self.events.push((id.clone(), 1, created, now));
        // A newer train takes the place of any train still queued.
        for q in decision.supersedes {
            let _ = self.apply(trains, &q, Event::Superseded { by: id.clone() }, now);
        }
        if !busy {
            self.apply(trains, &id, Event::Wake { cell: None }, now)?;
        }
        Ok(id)
    }
}

async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    mut trains: HashMap<String, Arc<Train>>,
    mut specs: HashMap<String, Arc<TrainSpec>>,
    mut seqs: HashMap<String, i64>,
) {
    let mut written: HashMap<String, (TrainStatus, std::time::Instant)> = HashMap::new();
    while let Some(first) = rx.recv().await {
        // Group commit: let concurrent senders (steps finishing together)
        // run for a moment, so that one transaction carries them all.
        let mut msgs = vec![first];
        let mut quiet = 0;
        for _ in 0..32 {
            let before = msgs.len();
            while msgs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            if msgs.len() >= MAX_BATCH {
                break;
            }
            quiet = if msgs.len() == before { quiet + 1 } else { 0 };
            if quiet >= 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        // Stored timestamps keep microseconds: the state must be built from
        // exactly the instants a replay will see.
        let now = chrono::SubsecRound::trunc_subsecs(shared.clock.now(), 6);
        let t_apply = std::time::Instant::now();
        let n_msgs = msgs.len();
        let mut b = Batch {
            shared: shared.clone(),
            touched: Default::default(),
            staged: HashMap::new(),
            events: Vec::new(),
            seqs: std::mem::take(&mut seqs),
            effects: Vec::new(),
            replies: Vec::new(),
            audit: Vec::new(),
        };
        for m in msgs {
            match m {
                Msg::Internal { train, event } => {
                    // Stale internal events (a duplicate outcome, a late timer) are dropped.
                    let _ = b.apply(&mut trains, &train, event, now);
                }
                Msg::Command {
                    train,
                    event,
                    audit,
                    reply,
                } => {
                    // Finished trains are not kept in memory; a command such as
                    // a rollback brings one back from its snapshot.
                    if !trains.contains_key(&train) && !b.staged.contains_key(&train) {
                        if let (Ok(Some(t)), Ok(n)) = (
                            shared.log.get_train(&train).await,
                            shared.log.train_event_count(&train).await,
                        ) {
                            trains.insert(train.clone(), Arc::new(t));
                            b.seqs.insert(train.clone(), n);
                        }
                    }
                    b.touched.insert(train.clone());
                    let r = b.apply(&mut trains, &train, event, now).map(|_| train);
                    if let (Ok(_), Some(a)) = (&r, audit) {
                        b.audit.push((a, now));
                    }
                    b.replies.push((reply, r));
                }
                Msg::Get { train, reply } => {
                    // Committed state only: what this batch stages is not durable yet.
                    let _ = reply.send(trains.get(&train).map(|t| Train::clone(t)));
                }
                Msg::Start { spec, audit, reply } => {
                    b.touched.insert(spec.id.clone());
                    let r = b.start(&mut trains, spec, now);
                    if let (Ok(_), Some(a)) = (&r, audit) {
                        b.audit.push((a, now));
                    }
                    b.replies.push((reply, r));
                }
            }
        }
        // Snapshots (what the API lists) are written when a train's status
        // changes, after a command, or at most every SNAPSHOT_EVERY; the live
        // state is served from memory, and the events are the source of truth.
        let changed: Vec<&Train> = b
            .staged
            .values()
            .filter(|t| {
                let id = &t.spec.id;
                match written.get(id) {
                    Some((status, at)) => {
                        *status != t.status
                            || b.touched.contains(id)
                            || at.elapsed() >= SNAPSHOT_EVERY
                    }
                    None => true,
                }
            })
            .collect();
        let stamp = std::time::Instant::now();
        let apply_ms = t_apply.elapsed().as_secs_f64() * 1e3;
        let snap: Vec<(String, TrainStatus)> = changed
            .iter()
            .map(|t| (t.spec.id.clone(), t.status))
            .collect();
        let mut attempt = 0u32;
        while !b.events.is_empty() {
            match shared.log.commit(&b.events, &changed, &b.audit).await {
                Ok(()) => break,
                // Another Conductor leads, or appended to these trains:
                // retrying cannot help, and nothing may be acted on.
                Err(e @ (StoreError::Fenced { .. } | StoreError::SequenceTaken(_))) => {
                    tracing::error!(error = %e, "this Conductor may no longer write; the engine stops");
                    for (reply, _) in b.replies {
                        let _ = reply.send(Err(EngineError::Stopped));
                    }
                    return;
                }
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "persisting events failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(e) => {
                    // Nothing was applied in memory; stop rather than act on unpersisted events.
                    tracing::error!(error = %e, "cannot persist events; the engine stops");
                    for (reply, _) in b.replies {
                        let _ = reply.send(Err(EngineError::Stopped));
                    }
                    return;
                }
            }
        }
        shared.metrics.events_persisted(b.events.len());
        seqs = std::mem::take(&mut b.seqs);
        if !b.events.is_empty() {
            publish_committed(&shared);
        }
        tracing::debug!(
            messages = n_msgs,
            events = b.events.len(),
            apply_ms = apply_ms,
            commit_ms = stamp.elapsed().as_secs_f64() * 1e3,
            "batch committed"
        );
        for (id, status) in snap {
            written.insert(id, (status, stamp));
        }
        for (id, t) in b.staged {
            specs
                .entry(id.clone())
                .or_insert_with(|| Arc::new(t.spec.clone()));
            let t = Arc::new(t);
            if t.status.is_terminal() {
                written.remove(&id);
                seqs.remove(&id);
                shared.metrics.train_finished(t.status);
                trains.remove(&id);
                // Keep the spec until its effects below are dispatched.
            } else {
                trains.insert(id, t);
            }
        }
        for (reply, r) in b.replies {
            let r = match r {
                Ok(id) => match trains.get(&id) {
                    Some(t) => Ok(Train::clone(t)),
                    None => match shared.log.get_train(&id).await {
                        Ok(Some(t)) => Ok(t),
                        Ok(None) => Err(EngineError::NotFound(id)),
                        Err(e) => Err(e.into()),
                    },
                },
                Err(e) => Err(e),
            };
            let _ = reply.send(r);
        }
        for (id, e) in b.effects {
            if let Some(spec) = specs.get(&id) {
                execute(&shared, spec.clone(), e);
            }
        }
        specs.retain(|id, _| trains.contains_key(id));
    }
}

/// Publish the highest committed seq, if anyone follows it: read off the
/// engine's path, and never moved backwards by a slower read.
fn publish_committed(shared: &Arc<Shared>) {
    if shared.committed.receiver_count() == 0 {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        match shared.store.last_event_seq().await {
            Ok(seq) => {
                shared.committed.send_if_modified(|v| {
                    let newer = seq > *v;
                    *v = (*v).max(seq);
                    newer
                });
            }
            Err(e) => tracing::debug!(error = %e, "reading the last committed seq failed"),
        }
    });
}

fn send(shared: &Shared, train: &str, event: Event) {
    let _ = shared.tx.send(Msg::Internal {
        train: train.to_string(),
        event,
    });
}

/// Carry out one effect. Effects that act on cells run as their own tasks.
fn execute(shared: &Arc<Shared>, spec: Arc<TrainSpec>, effect: Effect) {
    let train = spec.id.clone();
    match effect {
        Effect::AcquireLease { cell } => {
            let tx = shared.tx.clone();
            let (t, c) = (train.clone(), cell.clone());
            shared.leases.acquire(&cell, &holder(&train), move || {
                let _ = tx.send(Msg::Internal {
                    train: t,
                    event: Event::LeaseGranted { cell: c },
                });
            });
        }
        Effect::ReleaseLease { cell } => shared.leases.release(&cell, &holder(&train)),
        Effect::WakeAt { at, cell } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let wait = (at - shared.clock.now()).to_std().unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
                send(&shared, &train, Event::Wake { cell });
            });
        }
        Effect::RunStep {
            cell,
            step,
            attempt,
            key,
        } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let kind = spec.steps.get(step).map_or("step", |s| s.kind());
                let started = std::time::Instant::now();
                let out = run_effect(&shared, &cell, |c| {
                    shared.executor.run_step(StepRequest {
                        train: spec.clone(),
                        cell: c,
                        step,
                        key: key.clone(),
                    })
                })
                .await;
                shared.metrics.step_duration(kind, started.elapsed());
                let ev = Event::StepFinished {
                    cell,
                    step,
                    attempt,
                    ok: out.ok,
                    detail: out.detail,
                    previous_version: out.previous_version,
                };
                send(&shared, &train, ev);
            });
        }
        Effect::Rollback {
            cell,
            to_version,
            key,
        } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let out = run_effect(&shared, &cell, |c| {
                    shared.executor.rollback(RollbackRequest {
                        train: spec.clone(),
                        cell: c,
                        to_version: to_version.clone(),
                        key: key.clone(),
                    })
                })
                .await;
                send(
                    &shared,
                    &train,
                    Event::RollbackFinished {
                        cell,
                        ok: out.ok,
                        detail: out.detail,
                        skipped: out.skipped,
                    },
                );
            });
        }
        Effect::Finished { status } => {
            tracing::info!(train = %train, status = status.as_str(), "train finished");
            let _ = shared.finished.send((train, status));
        }
    }
}

/// Look up the cell and run the effect. The outcome is persisted as the
/// event the caller sends; a restart before that re-runs the effect with the
/// same idempotency key, and targets use the key to avoid acting twice.
async fn run_effect<'a, F>(shared: &'a Shared, cell: &str, f: F) -> Outcome
where
    F: FnOnce(CellSpec) -> BoxFut<'a, Outcome>,
{
    let cached = shared
        .cells
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(cell)
        .cloned();
    let spec = match cached {
        Some(c) => Ok(Some(c)),
        None => shared.log.cell_spec(cell).await,
    };
    match spec {
        Ok(Some(c)) => f(c).await,
        Ok(None) => Outcome::failed(format!("cell {cell} is not in the inventory")),
        Err(e) => Outcome::failed(format!("store unavailable: {e}")),
    }
}
