//! Carrying out effects once they are committed: leases, timers, steps
//! and rollbacks on cells.

use super::*;

/// Publish the highest committed seq, if anyone follows it: read off the
/// engine's path, and never moved backwards by a slower read.
pub(super) fn publish_committed(shared: &Arc<Shared>) {
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

pub(super) fn send(shared: &Shared, train: &str, event: Event) {
    let _ = shared.tx.send(Msg::Internal {
        train: train.to_string(),
        event,
    });
}

/// An effect's outcome, with the cell version change to commit with it.
fn send_outcome(shared: &Shared, train: &str, event: Event, change: Option<CellChange>) {
    let _ = shared.tx.send(Msg::Outcome {
        train: train.to_string(),
        event,
        change,
    });
}

/// Carry out one effect. Effects that act on cells run as their own tasks.
pub(super) fn execute(shared: &Arc<Shared>, spec: Arc<TrainSpec>, effect: Effect) {
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
                send_outcome(&shared, &train, ev, out.change);
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
                let ev = Event::RollbackFinished {
                    cell,
                    ok: out.ok,
                    detail: out.detail,
                    skipped: out.skipped,
                };
                send_outcome(&shared, &train, ev, out.change);
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
