//! The Conductor's store: SQLite (the embedded default) or PostgreSQL,
//! through sqlx's `Any` driver. Every query is written once with `$N`
//! placeholders; the few statements that differ branch on [`Backend`]
//! (see `connect.rs`).
//!
//! Events are appended in batches, one transaction per batch, together with
//! the snapshot of every train they change. Nothing here interprets events;
//! the engine does.

use cells_inventory::CellSpec;
use chrono::{DateTime, Utc};
use conductor_core::resize::Resize;
use conductor_core::train::{Event, Train};
use conductor_core::CellStatus;
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, AnyPool, Row};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0} already exists")]
    Conflict(String),
    /// What a request was based on changed before it could be written.
    #[error("{0}")]
    Changed(String),
    /// Another Conductor claimed the leadership since this one was fenced
    /// with epoch `ours`: nothing was written.
    #[error("fenced: this Conductor leads epoch {ours}, but the leadership is at epoch {current}; nothing was written")]
    Fenced { ours: i64, current: i64 },
    /// An event's per-train sequence number is taken: another writer
    /// appended to the train. Nothing was written.
    #[error("{0}")]
    SequenceTaken(String),
    /// The database URL or file cannot be used.
    #[error("{0}")]
    Open(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) use audit::append_audit;
pub use audit::{row_hash, AuditEntry, AuditReport, AuditRow, BrokenLink, ChainCheck, GENESIS};
pub use pipelines::{Decided, NewRevision, RevisionRow};
pub use tokens::{Revoke, TokenInfo};

mod artifacts;
mod audit;
mod cells;
mod connect;
mod deploys;
mod leadership;
mod log;
mod pipelines;
mod stream;
mod tokens;
mod trains;

pub use connect::{is_postgres_url, sqlite_path, url_has_password, Backend};
pub use leadership::LeaderRow;
pub use log::TrainLog;
pub use trains::{Commit, NewEvent};

pub use cells::{CellProcessRow, CellStatusChange, ResizeDone};
pub use deploys::CellChange;
pub use stream::StreamEvent;

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("bad timestamp {s:?}: {e}")))
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// What it was opened with (to reconnect the writer).
    url: Arc<str>,
    /// The engine's own connection for appending events: no pool round
    /// trip on the hot path of every batch.
    writer: Arc<tokio::sync::Mutex<AnyConnection>>,
    /// The leadership epoch this Conductor appends under (0: unfenced).
    fence: Arc<AtomicI64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct PipelineRow {
    pub name: String,
    pub yaml: String,
    pub revision: i64,
    pub submitted_by: String,
    pub submitted_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub seq: i64,
    pub at: String,
    pub event: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellVersion {
    pub artifact: String,
    pub version: Option<String>,
    pub previous_version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellRow {
    #[serde(flatten)]
    pub spec: CellSpec,
    pub status: CellStatus,
    pub versions: Vec<CellVersion>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeployLogRow {
    pub seq: i64,
    pub cell_id: String,
    pub artifact: String,
    pub version: Option<String>,
    pub key: String,
    pub kind: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ArtifactRow {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: i64,
    pub pushed_by: String,
    pub pushed_at: String,
}

/// A token as authentication sees it (the caller decides about revoked
/// and expired tokens, with its clock, and logs why it refused one).
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub name: String,
    pub role: String,
    pub groups: Vec<String>,
    pub revoked: bool,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TrainRow {
    pub id: String,
    pub pipeline: String,
    pub version: String,
    pub status: String,
    pub started_by: String,
    pub created_at: String,
    pub updated_at: String,
}
