//! The workflow backend port: what the API, the resizer and the server
//! side of the CLI ask of the train engine. The embedded [`Engine`] is the
//! one-machine implementation; another backend (a managed workflow
//! service) implements the same trait.

use crate::engine::{BoxFut, Engine, EngineError};
use crate::store::{AuditEntry, CellStatusChange, ResizeDone, StoreError};
use conductor_core::train::{Event, Refusal, Train, TrainSpec, TrainStatus};
use tokio::sync::broadcast;

/// Why a workflow backend did not do what it was asked: the cases callers
/// tell apart (the API maps each to a status and a code).
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// No such train.
    #[error("no train {0:?}")]
    NotFound(String),
    /// The train's rules refused the command (the reason says which).
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// Something changed or exists already (the message says what).
    #[error("{0}")]
    Conflict(String),
    /// The backend cannot take requests (stopped, or not reachable).
    #[error("{0}")]
    Unavailable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<EngineError> for WorkflowError {
    fn from(e: EngineError) -> WorkflowError {
        match e {
            EngineError::NotFound(id) => WorkflowError::NotFound(id),
            EngineError::Refused(r) => WorkflowError::Refused(r),
            EngineError::Store(StoreError::Conflict(what)) => {
                WorkflowError::Conflict(format!("{what} already exists"))
            }
            EngineError::Store(StoreError::Changed(what)) => WorkflowError::Conflict(what),
            EngineError::Store(s) => WorkflowError::Store(s),
            EngineError::Stopped => WorkflowError::Unavailable(EngineError::Stopped.to_string()),
        }
    }
}

pub trait Workflow: Send + Sync + 'static {
    /// Create a train (queued behind a running train of its pipeline);
    /// `audit` is committed with its first events.
    fn start_train(
        &self,
        spec: TrainSpec,
        audit: Option<AuditEntry>,
    ) -> BoxFut<'_, Result<Train, WorkflowError>>;

    /// Send a train a command (approve, reject, cancel, rollback); `audit`
    /// is committed with its event, if accepted.
    fn command<'a>(
        &'a self,
        train: &'a str,
        event: Event,
        audit: Option<AuditEntry>,
    ) -> BoxFut<'a, Result<Train, WorkflowError>>;

    /// A train's current state (live while it runs, else as stored).
    fn train<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<Train>, WorkflowError>>;

    /// Trains as they finish (id, final status), from now on.
    fn finished(&self) -> broadcast::Receiver<(String, TrainStatus)>;

    /// Record a finished resize (and the cell's new shape) with its audit
    /// row: only the workflow backend changes cell state.
    fn finish_resize(
        &self,
        done: ResizeDone,
        audit: AuditEntry,
    ) -> BoxFut<'_, Result<(), WorkflowError>>;

    /// Change a cell's lifecycle status (drain, retire) with its audit row.
    fn set_cell_status(
        &self,
        change: CellStatusChange,
        audit: AuditEntry,
    ) -> BoxFut<'_, Result<(), WorkflowError>>;

    /// The cell inventory changed (a cell was added, resized or retired).
    fn refresh_cells(&self) -> BoxFut<'_, Result<(), WorkflowError>>;

    /// The highest event seq this process has committed, as it moves
    /// (events committed by another replica are not seen here).
    fn committed(&self) -> tokio::sync::watch::Receiver<i64>;
}

impl Workflow for Engine {
    fn start_train(
        &self,
        spec: TrainSpec,
        audit: Option<AuditEntry>,
    ) -> BoxFut<'_, Result<Train, WorkflowError>> {
        Box::pin(async move { Ok(Engine::start_train(self, spec, audit).await?) })
    }

    fn command<'a>(
        &'a self,
        train: &'a str,
        event: Event,
        audit: Option<AuditEntry>,
    ) -> BoxFut<'a, Result<Train, WorkflowError>> {
        Box::pin(async move { Ok(Engine::command(self, train, event, audit).await?) })
    }

    fn train<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<Train>, WorkflowError>> {
        Box::pin(async move { Ok(Engine::train(self, id).await?) })
    }

    fn finished(&self) -> broadcast::Receiver<(String, TrainStatus)> {
        Engine::finished(self)
    }

    fn finish_resize(
        &self,
        done: ResizeDone,
        audit: AuditEntry,
    ) -> BoxFut<'_, Result<(), WorkflowError>> {
        Box::pin(async move { Ok(Engine::finish_resize(self, done, audit).await?) })
    }

    fn set_cell_status(
        &self,
        change: CellStatusChange,
        audit: AuditEntry,
    ) -> BoxFut<'_, Result<(), WorkflowError>> {
        Box::pin(async move { Ok(Engine::set_cell_status(self, change, audit).await?) })
    }

    fn refresh_cells(&self) -> BoxFut<'_, Result<(), WorkflowError>> {
        Box::pin(async move { Ok(Engine::refresh_cells(self).await?) })
    }

    fn committed(&self) -> tokio::sync::watch::Receiver<i64> {
        Engine::committed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_the_cases_callers_tell_apart() {
        let e = WorkflowError::from(EngineError::NotFound("t1".into()));
        assert!(
            matches!(&e, WorkflowError::NotFound(id) if id == "t1"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "no train \"t1\"");

        let r = Refusal::SelfApproval("alice".into());
        let e = WorkflowError::from(EngineError::Refused(r.clone()));
        assert!(matches!(&e, WorkflowError::Refused(x) if *x == r), "{e:?}");

        let e = WorkflowError::from(EngineError::Store(StoreError::Conflict("train t1".into())));
        assert!(
            matches!(&e, WorkflowError::Conflict(m) if m == "train t1 already exists"),
            "{e:?}"
        );
        let e = WorkflowError::from(EngineError::Store(StoreError::Changed("moved".into())));
        assert!(
            matches!(&e, WorkflowError::Conflict(m) if m == "moved"),
            "{e:?}"
        );

        let e = WorkflowError::from(EngineError::Stopped);
        assert!(
            matches!(&e, WorkflowError::Unavailable(m) if m == "the engine has stopped"),
            "{e:?}"
        );

        let e = WorkflowError::from(EngineError::Store(StoreError::Corrupt("x".into())));
        assert!(
            matches!(e, WorkflowError::Store(StoreError::Corrupt(_))),
            "{e:?}"
        );
    }
}
