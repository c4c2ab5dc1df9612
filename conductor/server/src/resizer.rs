//! Resize operations: the shell around `conductor_core::resize`.
//!
//! A resize is persisted before anything acts on it. It takes its cell's
//! lease as `resize:<id>` (the same per-cell leases trains take) only once it
//! may run, holds it while the capacity actuator changes the cell (found
//! by the cell's target kind in [`Actuators`]), records
//! the cell's new shape in the same transaction as the outcome, and releases
//! it. Trains on other cells never see it; a train that reaches this cell
//! waits for the lease like it would for another train.

use crate::clock::Clock;
use crate::leases::Leases;
use crate::store::{AuditEntry, ResizeDone, Store, StoreError};
use crate::workflow::{Workflow, WorkflowError};
use cells_inventory::{CellSpec, Shape};
use conductor_core::resize::{Resize, ResizeEffect, ResizeEvent, ResizeRefusal};
use conductor_core::CellStatus;
use std::sync::Arc;

pub use crate::actuators::{Actuators, CapacityActuator, LocalActuator};

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("no cell {0:?} in the inventory")]
    NoCell(String),
    #[error("no shape {0:?} (shapes: {1})")]
    NoShape(String, String),
    #[error("cell {0} is {1}; only active or draining cells can be resized")]
    NotActive(String, CellStatus),
    #[error("cell {0} is already {1}")]
    SameShape(String, String),
    #[error("cell {cell} already has an unfinished resize ({id}); wait for it or reject it")]
    Busy { cell: String, id: String },
    #[error("no resize {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Refused(#[from] ResizeRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the outcome could not be recorded: {0}")]
    Workflow(#[from] WorkflowError),
}

/// What a caller asks for. The resize is audited as `cell.resize` by `by`,
/// with its reason, in the transaction that creates it.
pub struct ResizeRequest {
    pub cell: String,
    pub shape: String,
    pub by: String,
    pub reason: String,
    pub needs_approval: bool,
}

struct Inner {
    store: Store,
    leases: Arc<Leases>,
    workflow: Arc<dyn Workflow>,
    clock: Arc<dyn Clock>,
    actuator: Arc<dyn CapacityActuator>,
    shapes: Vec<Shape>,
    /// One state change at a time (they are rare; this keeps each
    /// read-apply-write of a resize atomic against the others).
    lock: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
pub struct Resizer {
    inner: Arc<Inner>,
}

fn resize_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let mut b = [0u8; 3];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    format!("rz-{}-{}", now.format("%Y%m%d%H%M%S"), hex::encode(b))
}

impl Resizer {
    /// Start the resizer and re-issue what unfinished resizes were doing.
    pub async fn start(
        store: Store,
        leases: Arc<Leases>,
        workflow: Arc<dyn Workflow>,
        clock: Arc<dyn Clock>,
        actuator: Arc<dyn CapacityActuator>,
        shapes: Vec<Shape>,
    ) -> Result<Resizer, StoreError> {
        let r = Resizer::idle(store, leases, workflow, clock, actuator, shapes);
        r.resume().await?;
        Ok(r)
    }

    /// A resizer that has not resumed anything (a follower replica's: it
    /// never acts; the leader's does).
    pub fn idle(
        store: Store,
        leases: Arc<Leases>,
        workflow: Arc<dyn Workflow>,
        clock: Arc<dyn Clock>,
        actuator: Arc<dyn CapacityActuator>,
        shapes: Vec<Shape>,
    ) -> Resizer {
        Resizer {
            inner: Arc::new(Inner {
                store,
                leases,
                workflow,
                clock,
                actuator,
                shapes,
                lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Re-issue what unfinished resizes were doing.
    async fn resume(&self) -> Result<(), StoreError> {
        let r = self;
        let open = r.inner.store.list_resizes(true, i64::MAX).await?;
        // Oldest first, so that lease requests queue in the order they were made.
        for rz in open.into_iter().rev() {
            if matches!(rz.status, conductor_core::resize::ResizeStatus::Running) {
                // It held the lease when we stopped: hold it again before
                // anything else can take it, then act again.
                r.inner.leases.hold(&rz.cell, &rz.holder());
            }
            let fx = rz.resume();
            if !fx.is_empty() {
                tracing::info!(resize = %rz.id, cell = %rz.cell, status = rz.status.as_str(), "resuming a resize");
            }
            r.execute(&rz, fx);
        }
        Ok(())
    }

    pub fn shapes(&self) -> &[Shape] {
        &self.inner.shapes
    }

    pub fn shape(&self, name: &str) -> Option<&Shape> {
        self.inner.shapes.iter().find(|s| s.name == name)
    }

    /// Create a resize (persisted first), and let it run.
    pub async fn create(&self, req: ResizeRequest) -> Result<Resize, ResizeError> {
        let _g = self.inner.lock.lock().await;
        let store = &self.inner.store;
        let spec = store
            .cell_spec(&req.cell)
            .await?
            .ok_or_else(|| ResizeError::NoCell(req.cell.clone()))?;
        let status = store.cell_status(&req.cell).await?.unwrap_or_default();
        if !status.in_service() {
            return Err(ResizeError::NotActive(req.cell, status));
        }
        if self.shape(&req.shape).is_none() {
            let names: Vec<&str> = self.inner.shapes.iter().map(|s| s.name.as_str()).collect();
            return Err(ResizeError::NoShape(req.shape, names.join(", ")));
        }
        if spec.shape == req.shape {
            return Err(ResizeError::SameShape(req.cell, req.shape));
        }
        if let Some(open) = store
            .list_resizes(true, i64::MAX)
            .await?
            .into_iter()
            .find(|r| r.cell == req.cell)
        {
            return Err(ResizeError::Busy {
                cell: req.cell,
                id: open.id,
            });
        }
        let now = self.inner.clock.now();
        let (rz, fx) = Resize::new(
            resize_id(now),
            req.cell,
            spec.shape,
            req.shape,
            req.by,
            req.reason,
            req.needs_approval,
            now,
        );
        let audit = AuditEntry::new(
            &rz.requested_by,
            "cell.resize",
            &rz.cell,
            format!(
                "{}: {} -> {}{}; reason: {}",
                rz.id,
                rz.from_shape,
                rz.to_shape,
                if req.needs_approval {
                    " (awaits approval)"
                } else {
                    ""
                },
                if rz.reason.is_empty() {
                    "-"
                } else {
                    &rz.reason
                }
            ),
        );
        store.put_resize(&rz, Some(&audit)).await?;
        self.execute(&rz, fx);
        Ok(rz)
    }

    /// Approve or reject a resize that waits for an approval; `audit` is
    /// written with the new state, if the command is accepted.
    pub async fn command(
        &self,
        id: &str,
        event: ResizeEvent,
        audit: AuditEntry,
    ) -> Result<Resize, ResizeError> {
        self.transition(id, event, None, Some(&audit)).await
    }

    /// Apply `event` to resize `id`, persist it (with its audit row), then
    /// run its effects.
    async fn transition(
        &self,
        id: &str,
        event: ResizeEvent,
        new_shape_of: Option<&CellSpec>,
        audit: Option<&AuditEntry>,
    ) -> Result<Resize, ResizeError> {
        let _g = self.inner.lock.lock().await;
        let mut rz = self
            .inner
            .store
            .get_resize(id)
            .await?
            .ok_or_else(|| ResizeError::NotFound(id.to_string()))?;
        let fx = rz.apply(&event, self.inner.clock.now())?;
        match (&event, audit) {
            // The outcome, the cell's new shape and the audit row go into
            // the workflow's commit: only it changes cell state.
            (ResizeEvent::Finished { .. }, Some(audit)) => {
                let done = ResizeDone {
                    resize: rz.clone(),
                    cell: new_shape_of.cloned(),
                };
                self.inner
                    .workflow
                    .finish_resize(done, audit.clone())
                    .await?
            }
            _ => self.inner.store.put_resize(&rz, audit).await?,
        }
        self.execute(&rz, fx);
        Ok(rz)
    }

    fn execute(&self, rz: &Resize, effects: Vec<ResizeEffect>) {
        for e in effects {
            match e {
                ResizeEffect::AcquireLease => {
                    let me = self.clone();
                    let id = rz.id.clone();
                    let rt = tokio::runtime::Handle::current();
                    self.inner.leases.acquire(&rz.cell, &rz.holder(), move || {
                        rt.spawn(async move {
                            if let Err(e) = me.transition(&id, ResizeEvent::LeaseGranted, None, None).await {
                                tracing::warn!(resize = %id, error = %e, "a lease grant did not apply");
                            }
                        });
                    });
                }
                ResizeEffect::Actuate => {
                    let me = self.clone();
                    let rz = rz.clone();
                    tokio::spawn(async move { me.actuate(rz).await });
                }
                ResizeEffect::ReleaseLease => self.inner.leases.release(&rz.cell, &rz.holder()),
            }
        }
    }

    /// Run the actuator, then record the outcome (and the new shape) and
    /// release the lease.
    async fn actuate(&self, rz: Resize) {
        let spec = self.inner.store.cell_spec(&rz.cell).await;
        let (outcome, new_spec) = match (spec, self.shape(&rz.to_shape)) {
            (Ok(Some(cell)), Some(shape)) => {
                tracing::info!(resize = %rz.id, cell = %rz.cell, from = %rz.from_shape, to = %rz.to_shape, "resizing");
                match self.inner.actuator.resize(&cell, shape).await {
                    Ok(detail) => {
                        let mut c = cell.clone();
                        c.shape = shape.name.clone();
                        (Ok(detail), Some(c))
                    }
                    Err(e) => (Err(e), None),
                }
            }
            (Ok(None), _) => (Err(format!("cell {} left the inventory", rz.cell)), None),
            (Ok(Some(_)), None) => (
                Err(format!("shape {} is no longer defined", rz.to_shape)),
                None,
            ),
            (Err(e), _) => (Err(format!("store unavailable: {e}")), None),
        };
        let (ok, detail) = match outcome {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        let ev = ResizeEvent::Finished {
            ok,
            detail: detail.clone(),
        };
        let audit = AuditEntry::new(
            "conductor",
            if ok {
                "resize.succeeded"
            } else {
                "resize.failed"
            },
            &rz.cell,
            format!("{}: {} -> {}: {detail}", rz.id, rz.from_shape, rz.to_shape),
        );
        // The outcome and its audit row are one transaction, whether or not
        // the shape changed.
        match self
            .transition(&rz.id, ev, new_spec.as_ref(), Some(&audit))
            .await
        {
            Ok(done) => {
                if let Err(e) = self.inner.workflow.refresh_cells().await {
                    tracing::warn!(error = %e, "could not refresh the cell inventory");
                }
                tracing::info!(resize = %done.id, cell = %done.cell, ok, %detail, "resize finished");
            }
            // The outcome could not be recorded; the lease stays held and the
            // resize resumes (acting again, harmlessly) on the next start.
            Err(e) => {
                tracing::error!(resize = %rz.id, error = %e, "could not record a resize outcome")
            }
        }
    }
}
