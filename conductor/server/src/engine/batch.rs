//! One batch of the engine's loop: messages validated and applied to
//! working copies, one commit, then the effects.

use super::*;
use effects::publish_committed;

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
    /// Cell version changes reported by outcomes, committed with them.
    changes: Vec<CellChange>,
    /// A cell update's commit was refused as another Conductor's: stop.
    deposed: bool,
}

impl Batch {
    /// The engine stops without committing: everyone waiting hears it.
    fn stop(self) {
        for (reply, _) in self.replies {
            let _ = reply.send(Err(EngineError::Stopped));
        }
    }

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

pub(super) async fn run(
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
            changes: Vec::new(),
            deposed: false,
        };
        for m in msgs {
            match m {
                Msg::Internal { train, event } => {
                    // Stale internal events (a duplicate outcome, a late timer) are dropped.
                    let _ = b.apply(&mut trains, &train, event, now);
                }
                Msg::Outcome {
                    train,
                    event,
                    change,
                } => {
                    let _ = b.apply(&mut trains, &train, event, now);
                    b.changes.extend(change);
                }
                Msg::Cell {
                    change,
                    audit,
                    reply,
                } => {
                    // Its own commit: a refused change goes back to its
                    // caller and stops nothing else.
                    let r = commit_cell(&shared, &change, audit).await;
                    if matches!(
                        r,
                        Err(StoreError::Fenced { .. } | StoreError::SequenceTaken(_))
                    ) {
                        b.deposed = true;
                    }
                    let _ = reply.send(r.map_err(EngineError::from));
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
        if b.deposed {
            tracing::error!("this Conductor may no longer write; the engine stops");
            b.stop();
            return;
        }
        while !b.events.is_empty() || !b.changes.is_empty() {
            let commit = Commit {
                events: &b.events,
                trains: &changed,
                audit: &b.audit,
                changes: &b.changes,
                ..Default::default()
            };
            match shared.log.commit(commit).await {
                Ok(()) => break,
                // Another Conductor leads, or appended to these trains:
                // retrying cannot help, and nothing may be acted on.
                Err(e @ (StoreError::Fenced { .. } | StoreError::SequenceTaken(_))) => {
                    tracing::error!(error = %e, "this Conductor may no longer write; the engine stops");
                    b.stop();
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
                    b.stop();
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

/// Commit a cell update (a finished resize, a new status) and its audit
/// row in a transaction of its own.
async fn commit_cell(
    shared: &Shared,
    change: &CellUpdate,
    audit: AuditEntry,
) -> Result<(), StoreError> {
    let (resizes, statuses, at) = match change {
        CellUpdate::Resized(d) => (std::slice::from_ref(&**d), &[][..], d.resize.updated_at),
        CellUpdate::Status(c) => (&[][..], std::slice::from_ref(c), c.at),
    };
    let audit = [(audit, at)];
    shared
        .log
        .commit(Commit {
            audit: &audit,
            resizes,
            statuses,
            ..Default::default()
        })
        .await
}
