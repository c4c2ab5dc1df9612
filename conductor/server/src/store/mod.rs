//! The Conductor's store: SQLite through sqlx (the embedded default).
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
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

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
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) use audit::append_audit;
pub use audit::{row_hash, AuditEntry, AuditReport, AuditRow, BrokenLink, ChainCheck, GENESIS};
pub use pipelines::{Decided, NewRevision, RevisionRow};
pub use tokens::{Revoke, TokenInfo};

mod artifacts;
mod audit;
mod cells;
mod deploys;
mod pipelines;
mod tokens;
mod trains;

pub use cells::CellProcessRow;

/// Rows per multi-row INSERT of events.
const EVENT_CHUNK: usize = 500;

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
    pool: SqlitePool,
    /// The engine's own connection for appending events: no pool round
    /// trip on the hot path of every batch.
    writer: std::sync::Arc<tokio::sync::Mutex<sqlx::SqliteConnection>>,
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

impl Store {
    /// Open (creating if needed) the database at `path` and run migrations.
    pub async fn open(path: &Path) -> Result<Store> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a committed transaction survives a crash of the
            // process (kill -9); only a power loss can drop the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("../../migrations/sqlite/conductor")
            .run(&pool)
            .await?;
        let writer = sqlx::ConnectOptions::connect(&opts).await?;
        let store = Store {
            pool,
            writer: std::sync::Arc::new(tokio::sync::Mutex::new(writer)),
        };
        // Audit rows written by an earlier release join the hash chain.
        let chained = store.chain_unchained_audit().await?;
        if chained > 0 {
            tracing::info!(
                rows = chained,
                "chained the audit rows of an earlier release"
            );
        }
        Ok(store)
    }

    /// A write transaction that takes SQLite's write lock at once, so that
    /// what it reads (the audit chain's head, a pipeline's current revision)
    /// cannot change before it commits.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}
