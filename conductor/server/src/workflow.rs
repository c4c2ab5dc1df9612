//! The workflow backend port: what the API, the resizer and the server
//! side of the CLI ask of the train engine. The embedded [`Engine`] is the
//! one-machine implementation; another backend (a managed workflow
//! service) implements the same trait.

use crate::engine::{BoxFut, Engine, EngineError};
use crate::store::AuditEntry;
use conductor_core::train::{Event, Train, TrainSpec, TrainStatus};
use tokio::sync::broadcast;

pub trait Workflow: Send + Sync + 'static {
    /// Create a train (queued behind a running train of its pipeline);
    /// `audit` is committed with its first events.
    fn start_train(
        &self,
        spec: TrainSpec,
        audit: Option<AuditEntry>,
    ) -> BoxFut<'_, Result<Train, EngineError>>;

    /// Send a train a command (approve, reject, cancel, rollback); `audit`
    /// is committed with its event, if accepted.
    fn command<'a>(
        &'a self,
        train: &'a str,
        event: Event,
        audit: Option<AuditEntry>,
    ) -> BoxFut<'a, Result<Train, EngineError>>;

    /// A train's current state (live while it runs, else as stored).
    fn train<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<Train>, EngineError>>;

    /// Trains as they finish (id, final status), from now on.
    fn finished(&self) -> broadcast::Receiver<(String, TrainStatus)>;

    /// The cell inventory changed (a cell was added, resized or retired).
    fn refresh_cells(&self) -> BoxFut<'_, Result<(), EngineError>>;

    /// The highest event seq this process has committed, as it moves
    /// (events committed by another replica are not seen here).
    fn committed(&self) -> tokio::sync::watch::Receiver<i64>;
}

impl Workflow for Engine {
    fn start_train(
        &self,
        spec: TrainSpec,
        audit: Option<AuditEntry>,
    ) -> BoxFut<'_, Result<Train, EngineError>> {
        Box::pin(Engine::start_train(self, spec, audit))
    }

    fn command<'a>(
        &'a self,
        train: &'a str,
        event: Event,
        audit: Option<AuditEntry>,
    ) -> BoxFut<'a, Result<Train, EngineError>> {
        Box::pin(Engine::command(self, train, event, audit))
    }

    fn train<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<Train>, EngineError>> {
        Box::pin(Engine::train(self, id))
    }

    fn finished(&self) -> broadcast::Receiver<(String, TrainStatus)> {
        Engine::finished(self)
    }

    fn refresh_cells(&self) -> BoxFut<'_, Result<(), EngineError>> {
        Box::pin(Engine::refresh_cells(self))
    }

    fn committed(&self) -> tokio::sync::watch::Receiver<i64> {
        Engine::committed(self)
    }
}
