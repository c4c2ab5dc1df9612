//! What the engine needs from the store: its train log. [`Store`]
//! implements it on SQLite and PostgreSQL; another backend (a replicated
//! log) can take its place behind `Arc<dyn TrainLog>`.

use super::*;
use std::future::Future;
use std::pin::Pin;

/// A boxed future (the same shape as the engine's `BoxFut`, kept here so
/// that the store does not depend on the engine).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Events of the unfinished trains, grouped by train, in order.
pub type TrainEvents = Vec<Vec<(Event, DateTime<Utc>)>>;

pub trait TrainLog: Send + Sync + 'static {
    /// Write one engine commit ([`Commit`]: events numbered within their
    /// trains, the trains' snapshots, audit rows, the cell version changes
    /// the events report, finished resizes), atomically; fenced like
    /// [`Store::commit`].
    fn commit<'a>(&'a self, c: Commit<'a>) -> BoxFut<'a, Result<()>>;
    /// Events of every unfinished train, grouped by train, in order.
    fn active_train_events(&self) -> BoxFut<'_, Result<TrainEvents>>;
    /// A train's latest snapshot.
    fn get_train<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<Train>>>;
    /// How many events of a train are stored (the last one's number).
    fn train_event_count<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<i64>>;
    /// The cells trains may run on (active and draining).
    fn cell_specs(&self) -> BoxFut<'_, Result<Vec<CellSpec>>>;
    fn cell_spec<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<CellSpec>>>;
}

impl TrainLog for Store {
    fn commit<'a>(&'a self, c: Commit<'a>) -> BoxFut<'a, Result<()>> {
        Box::pin(async move { self.commit_batch(&c).await })
    }

    fn active_train_events(&self) -> BoxFut<'_, Result<TrainEvents>> {
        Box::pin(Store::active_train_events(self))
    }

    fn get_train<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<Train>>> {
        Box::pin(Store::get_train(self, id))
    }

    fn train_event_count<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<i64>> {
        Box::pin(Store::train_event_count(self, id))
    }

    fn cell_specs(&self) -> BoxFut<'_, Result<Vec<CellSpec>>> {
        Box::pin(Store::cell_specs(self))
    }

    fn cell_spec<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<CellSpec>>> {
        Box::pin(Store::cell_spec(self, id))
    }
}
