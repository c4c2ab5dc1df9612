//! The Conductor's store: SQLite through sqlx (the embedded default).
//!
//! Events are appended in batches, one transaction per batch, together with
//! the snapshot of every train they change. Nothing here interprets events;
//! the engine does.

use cells_inventory::CellSpec;
use chrono::{DateTime, Utc};
use conductor_core::resize::Resize;
use conductor_core::train::{Event, Train};
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
}

pub type Result<T> = std::result::Result<T, StoreError>;

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
    pub status: String,
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

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub name: String,
    pub role: String,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
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
        Ok(Store {
            pool,
            writer: std::sync::Arc::new(tokio::sync::Mutex::new(writer)),
        })
    }

    // ---- pipelines -------------------------------------------------------

    /// Store a pipeline's YAML; returns its new revision.
    pub async fn put_pipeline(
        &self,
        name: &str,
        yaml: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO pipelines (name, yaml, revision, submitted_by, submitted_at) VALUES (?, ?, 1, ?, ?)
             ON CONFLICT (name) DO UPDATE SET yaml = excluded.yaml, revision = revision + 1,
                 submitted_by = excluded.submitted_by, submitted_at = excluded.submitted_at
             RETURNING revision",
        )
        .bind(name)
        .bind(yaml)
        .bind(by)
        .bind(ts(now))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn get_pipeline(&self, name: &str) -> Result<Option<PipelineRow>> {
        Ok(sqlx::query_as(
            "SELECT name, yaml, revision, submitted_by, submitted_at FROM pipelines WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn list_pipelines(&self) -> Result<Vec<PipelineRow>> {
        Ok(sqlx::query_as(
            "SELECT name, yaml, revision, submitted_by, submitted_at FROM pipelines ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    // ---- trains and events -----------------------------------------------

    /// Append events and write the snapshots of the trains they change, in
    /// one transaction. Returns when the transaction is committed.
    pub async fn commit(
        &self,
        events: &[(String, Event, DateTime<Utc>)],
        trains: &[&Train],
    ) -> Result<()> {
        let mut conn = self.writer.lock().await;
        let rows = event_rows(events)?;
        // One statement is atomic on its own: most batches (events only, no
        // snapshot) need no BEGIN/COMMIT round trips.
        if trains.is_empty() && rows.len() <= EVENT_CHUNK {
            insert_events(&mut conn, &rows).await?;
            return Ok(());
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for t in trains {
            let state = serde_json::to_string(t).map_err(corrupt)?;
            sqlx::query(
                "INSERT INTO trains (id, pipeline, version, status, started_by, state, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, state = excluded.state,
                     updated_at = excluded.updated_at",
            )
            .bind(&t.spec.id)
            .bind(&t.spec.pipeline)
            .bind(&t.spec.version)
            .bind(t.status.as_str())
            .bind(&t.spec.started_by)
            .bind(state)
            .bind(ts(t.created_at))
            .bind(ts(t.updated_at))
            .execute(&mut *tx)
            .await?;
        }
        for chunk in rows.chunks(EVENT_CHUNK) {
            insert_events(&mut tx, chunk).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Events of every train that has not finished, grouped by train, in order.
    pub async fn active_train_events(&self) -> Result<Vec<Vec<(Event, DateTime<Utc>)>>> {
        let rows = sqlx::query(
            "SELECT e.train_id, e.at, e.body FROM events e JOIN trains t ON t.id = e.train_id
             WHERE t.status IN ('queued', 'running', 'rolling_back') ORDER BY e.train_id, e.seq",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<Vec<(Event, DateTime<Utc>)>> = Vec::new();
        let mut last: Option<String> = None;
        for r in rows {
            let id: String = r.try_get(0)?;
            let at = parse_ts(&r.try_get::<String, _>(1)?)?;
            let ev: Event = serde_json::from_str(&r.try_get::<String, _>(2)?).map_err(corrupt)?;
            if last.as_deref() != Some(id.as_str()) {
                out.push(Vec::new());
                last = Some(id);
            }
            if let Some(v) = out.last_mut() {
                v.push((ev, at));
            }
        }
        Ok(out)
    }

    pub async fn get_train(&self, id: &str) -> Result<Option<Train>> {
        let row = sqlx::query("SELECT state FROM trains WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| serde_json::from_str(&r.try_get::<String, _>(0)?).map_err(corrupt))
            .transpose()
    }

    pub async fn list_trains(&self, pipeline: Option<&str>, limit: i64) -> Result<Vec<TrainRow>> {
        Ok(sqlx::query_as(
            "SELECT id, pipeline, version, status, started_by, created_at, updated_at FROM trains
             WHERE (?1 IS NULL OR pipeline = ?1) ORDER BY created_at DESC, id DESC LIMIT ?2",
        )
        .bind(pipeline)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn count_trains_by_status(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM trains GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn train_events(&self, id: &str, after: i64, limit: i64) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT seq, at, body FROM events WHERE train_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    seq: r.try_get(0)?,
                    at: r.try_get(1)?,
                    event: serde_json::from_str(&r.try_get::<String, _>(2)?).map_err(corrupt)?,
                })
            })
            .collect()
    }

    pub async fn count_events(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM events")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }

    /// Has the effect `key` already changed a cell's version? Returns the
    /// version the cell ran before it, when it has.
    pub async fn deploy_done(&self, key: &str) -> Result<Option<Option<String>>> {
        let row = sqlx::query("SELECT previous FROM deploy_log WHERE key = ? ORDER BY seq LIMIT 1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<Option<String>, _>(0)).transpose()?)
    }

    /// Record that a cell now runs `version` of `artifact` (None: nothing),
    /// made so by the effect `key`; the version it ran before becomes its
    /// previous version. Returns that previous version.
    pub async fn set_cell_version(
        &self,
        cell: &str,
        artifact: &str,
        version: Option<&str>,
        key: &str,
        kind: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        // Write first, so the transaction holds the write lock from its
        // first statement (a read-then-write transaction cannot wait for it).
        let mut tx = self.pool.begin().await?;
        let old: Option<String> = sqlx::query(
            "INSERT INTO cell_versions (cell_id, artifact, version, previous_version, updated_at) VALUES (?, ?, ?, NULL, ?)
             ON CONFLICT (cell_id, artifact) DO UPDATE SET previous_version = cell_versions.version,
                 version = excluded.version, updated_at = excluded.updated_at
             RETURNING previous_version",
        )
        .bind(cell)
        .bind(artifact)
        .bind(version)
        .bind(ts(now))
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        sqlx::query("INSERT INTO deploy_log (cell_id, artifact, version, previous, key, kind, at) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(cell)
            .bind(artifact)
            .bind(version)
            .bind(&old)
            .bind(key)
            .bind(kind)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(old)
    }

    pub async fn cell_version(&self, cell: &str, artifact: &str) -> Result<Option<String>> {
        let row =
            sqlx::query("SELECT version FROM cell_versions WHERE cell_id = ? AND artifact = ?")
                .bind(cell)
                .bind(artifact)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row
            .map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()?
            .flatten())
    }

    pub async fn deploy_log(&self, cell: Option<&str>) -> Result<Vec<DeployLogRow>> {
        Ok(sqlx::query_as(
            "SELECT seq, cell_id, artifact, version, key, kind, at FROM deploy_log WHERE (?1 IS NULL OR cell_id = ?1) ORDER BY seq",
        )
        .bind(cell)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn put_step_log(
        &self,
        key: &str,
        train: &str,
        cell: &str,
        output: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO step_logs (key, train_id, cell_id, output, at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (key) DO UPDATE SET output = excluded.output, at = excluded.at",
        )
        .bind(key)
        .bind(train)
        .bind(cell)
        .bind(output)
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn step_logs(&self, train: &str) -> Result<Vec<serde_json::Value>> {
        let rows = sqlx::query(
            "SELECT key, cell_id, output, at FROM step_logs WHERE train_id = ? ORDER BY at",
        )
        .bind(train)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(serde_json::json!({
                    "key": r.try_get::<String, _>(0)?,
                    "cell": r.try_get::<String, _>(1)?,
                    "output": r.try_get::<String, _>(2)?,
                    "at": r.try_get::<String, _>(3)?,
                }))
            })
            .collect()
    }

    // ---- cells ------------------------------------------------------------

    /// Add cells that are not in the inventory yet (the seed); existing cells
    /// keep their stored fields. Returns how many were added.
    pub async fn seed_cells(&self, cells: &[CellSpec], now: DateTime<Utc>) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let mut n = 0;
        for c in cells {
            let res = sqlx::query("INSERT INTO cells (id, spec, updated_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING")
                .bind(&c.id)
                .bind(serde_json::to_string(c).map_err(corrupt)?)
                .bind(ts(now))
                .execute(&mut *tx)
                .await?;
            n += res.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(n)
    }

    pub async fn cell_specs(&self) -> Result<Vec<CellSpec>> {
        let rows = sqlx::query(
            "SELECT spec FROM cells WHERE status IN ('active', 'draining') ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| serde_json::from_str(&r.try_get::<String, _>(0)?).map_err(corrupt))
            .collect()
    }

    pub async fn cell_spec(&self, id: &str) -> Result<Option<CellSpec>> {
        let row = sqlx::query("SELECT spec FROM cells WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| serde_json::from_str(&r.try_get::<String, _>(0)?).map_err(corrupt))
            .transpose()
    }

    pub async fn list_cells(&self) -> Result<Vec<CellRow>> {
        let rows = sqlx::query("SELECT id, spec, status FROM cells ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let vrows = sqlx::query("SELECT cell_id, artifact, version, previous_version FROM cell_versions ORDER BY artifact")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let id: String = r.try_get(0)?;
            let spec: CellSpec =
                serde_json::from_str(&r.try_get::<String, _>(1)?).map_err(corrupt)?;
            let mut versions = Vec::new();
            for v in &vrows {
                if v.try_get::<String, _>(0)? == id {
                    versions.push(CellVersion {
                        artifact: v.try_get(1)?,
                        version: v.try_get(2)?,
                        previous_version: v.try_get(3)?,
                    });
                }
            }
            out.push(CellRow {
                spec,
                status: r.try_get(2)?,
                versions,
            });
        }
        Ok(out)
    }

    /// Add one new cell (`cells add`); a taken id is a conflict.
    pub async fn add_cell(&self, c: &CellSpec, now: DateTime<Utc>) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO cells (id, spec, updated_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&c.id)
        .bind(serde_json::to_string(c).map_err(corrupt)?)
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("cell {}", c.id)));
        }
        Ok(())
    }

    /// A cell's lifecycle status (`active`, `draining`, `retired`).
    pub async fn cell_status(&self, id: &str) -> Result<Option<String>> {
        Ok(sqlx::query("SELECT status FROM cells WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    pub async fn set_cell_status(&self, id: &str, status: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE cells SET status = ?, updated_at = ? WHERE id = ?")
            .bind(status)
            .bind(ts(now))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- resizes ----------------------------------------------------------

    /// Insert or update a resize operation.
    pub async fn put_resize(&self, r: &Resize) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        write_resize(&mut tx, r).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Record a successful resize and the cell's new shape, atomically.
    pub async fn finish_resize(&self, r: &Resize, cell: Option<&CellSpec>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        write_resize(&mut tx, r).await?;
        if let Some(c) = cell {
            sqlx::query("UPDATE cells SET spec = ?, updated_at = ? WHERE id = ?")
                .bind(serde_json::to_string(c).map_err(corrupt)?)
                .bind(ts(r.updated_at))
                .bind(&c.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_resize(&self, id: &str) -> Result<Option<Resize>> {
        sqlx::query("SELECT body FROM resizes WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| serde_json::from_str(&r.try_get::<String, _>(0)?).map_err(corrupt))
            .transpose()
    }

    /// Resizes, newest first; `open` keeps only unfinished ones.
    pub async fn list_resizes(&self, open: bool, limit: i64) -> Result<Vec<Resize>> {
        let sql = if open {
            "SELECT body FROM resizes WHERE status NOT IN ('succeeded', 'failed', 'rejected') ORDER BY created_at DESC, id DESC LIMIT ?"
        } else {
            "SELECT body FROM resizes ORDER BY created_at DESC, id DESC LIMIT ?"
        };
        sqlx::query(sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| serde_json::from_str(&r.try_get::<String, _>(0)?).map_err(corrupt))
            .collect()
    }

    // ---- artifacts --------------------------------------------------------

    pub async fn put_artifact(&self, a: &ArtifactRow) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO artifacts (name, version, sha256, size, pushed_by, pushed_at) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (name, version) DO NOTHING",
        )
        .bind(&a.name)
        .bind(&a.version)
        .bind(&a.sha256)
        .bind(a.size)
        .bind(&a.pushed_by)
        .bind(&a.pushed_at)
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "artifact {} {}",
                a.name, a.version
            )));
        }
        Ok(())
    }

    pub async fn get_artifact(&self, name: &str, version: &str) -> Result<Option<ArtifactRow>> {
        Ok(sqlx::query_as("SELECT name, version, sha256, size, pushed_by, pushed_at FROM artifacts WHERE name = ? AND version = ?")
            .bind(name)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_artifacts(&self) -> Result<Vec<ArtifactRow>> {
        Ok(sqlx::query_as("SELECT name, version, sha256, size, pushed_by, pushed_at FROM artifacts ORDER BY name, pushed_at")
            .fetch_all(&self.pool)
            .await?)
    }

    // ---- tokens and audit ---------------------------------------------------

    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        groups: &[String],
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO tokens (name, role, groups, hash, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(role)
        .bind(groups.join(","))
        .bind(hash)
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("token named {name:?}")));
        }
        Ok(())
    }

    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let row =
            sqlx::query("SELECT name, role, groups FROM tokens WHERE hash = ? AND revoked = 0")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            let groups: String = r.try_get(2)?;
            Ok(TokenRow {
                name: r.try_get(0)?,
                role: r.try_get(1)?,
                groups: groups
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .transpose()
    }

    pub async fn count_tokens(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM tokens")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }

    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)")
            .bind(ts(now))
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn audit_log(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>> {
        Ok(sqlx::query_as("SELECT seq, at, actor, action, target, detail FROM audit WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }
}

async fn write_resize(tx: &mut sqlx::SqliteConnection, r: &Resize) -> Result<()> {
    sqlx::query(
        "INSERT INTO resizes (id, cell_id, status, body, created_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, body = excluded.body",
    )
    .bind(&r.id)
    .bind(&r.cell)
    .bind(r.status.as_str())
    .bind(serde_json::to_string(r).map_err(corrupt)?)
    .bind(ts(r.created_at))
    .execute(tx)
    .await?;
    Ok(())
}

type EventRowText<'a> = (&'a String, String, String);

fn event_rows(events: &[(String, Event, DateTime<Utc>)]) -> Result<Vec<EventRowText<'_>>> {
    events
        .iter()
        .map(|(train, ev, at)| Ok((train, ts(*at), serde_json::to_string(ev).map_err(corrupt)?)))
        .collect()
}

/// Append events with one multi-row INSERT (one round trip to SQLite).
async fn insert_events(conn: &mut sqlx::SqliteConnection, rows: &[EventRowText<'_>]) -> Result<()> {
    let mut q = sqlx::QueryBuilder::new("INSERT INTO events (train_id, at, body) ");
    q.push_values(rows, |mut b, (train, at, body)| {
        b.push_bind(*train).push_bind(at).push_bind(body);
    });
    // Each row count is a new SQL text: keep it out of the statement cache.
    q.build().persistent(false).execute(conn).await?;
    Ok(())
}
