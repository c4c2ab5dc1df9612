//! Cells and resize operations.

use super::*;

impl Store {
    /// Add cells that are not in the inventory yet (the seed); existing cells
    /// keep their stored fields. Returns how many were added.
    pub async fn seed_cells(&self, cells: &[CellSpec], now: DateTime<Utc>) -> Result<usize> {
        // BEGIN IMMEDIATE: this transaction reads before it writes, and a
        // deferred one could not wait for the write lock (SQLITE_BUSY at once).
        let mut tx = self.begin_write().await?;
        let mut n = 0;
        for c in cells {
            if !cell_exists(&mut tx, &c.id).await? {
                refuse_taken_ports(&mut tx, c).await?;
            }
            let res = sqlx::query("INSERT INTO cells (id, spec, updated_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
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
        let row = sqlx::query("SELECT spec FROM cells WHERE id = $1")
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
                status: cell_status(&r.try_get::<String, _>(2)?)?,
                versions,
            });
        }
        Ok(out)
    }

    /// Add one new cell (`cells add`) and audit it, in one transaction; a
    /// taken id or a port another cell's artifact holds is a conflict.
    pub async fn add_cell(
        &self,
        c: &CellSpec,
        now: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if cell_exists(&mut tx, &c.id).await? {
            return Err(StoreError::Conflict(format!("cell {}", c.id)));
        }
        refuse_taken_ports(&mut tx, c).await?;
        sqlx::query("INSERT INTO cells (id, spec, updated_at) VALUES ($1, $2, $3)")
            .bind(&c.id)
            .bind(serde_json::to_string(c).map_err(corrupt)?)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
        append_audit(&mut tx, self.backend, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A cell's lifecycle status (`active`, `draining`, `retired`).
    pub async fn cell_status(&self, id: &str) -> Result<Option<CellStatus>> {
        sqlx::query("SELECT status FROM cells WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| cell_status(&r.try_get::<String, _>(0)?))
            .transpose()
    }

    /// Change a cell's lifecycle status and audit it, in one transaction
    /// (what the engine commits for the API; fenced like every write).
    pub async fn set_cell_status(
        &self,
        id: &str,
        status: CellStatus,
        now: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> Result<()> {
        let change = [CellStatusChange {
            cell: id.to_string(),
            status,
            at: now,
        }];
        self.commit_batch(&super::trains::Commit {
            audit: &[(audit.clone(), now)],
            statuses: &change,
            ..Default::default()
        })
        .await
    }

    // ---- resizes ----------------------------------------------------------

    /// Insert or update a resize operation (and audit it, if it was a
    /// caller's command), in one transaction.
    pub async fn put_resize(&self, r: &Resize, audit: Option<&AuditEntry>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        write_resize(&mut tx, r).await?;
        if let Some(a) = audit {
            append_audit(&mut tx, self.backend, a, r.updated_at).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Record a resize's outcome, the cell's new shape if it succeeded,
    /// and its audit row, atomically (what the engine commits for the
    /// resizer; fenced like every write).
    pub async fn finish_resize(
        &self,
        r: &Resize,
        cell: Option<&CellSpec>,
        audit: Option<&AuditEntry>,
    ) -> Result<()> {
        let done = [ResizeDone {
            resize: r.clone(),
            cell: cell.cloned(),
        }];
        let audit: Vec<_> = audit
            .map(|a| (a.clone(), r.updated_at))
            .into_iter()
            .collect();
        self.commit_batch(&super::trains::Commit {
            audit: &audit,
            resizes: &done,
            ..Default::default()
        })
        .await
    }

    pub async fn get_resize(&self, id: &str) -> Result<Option<Resize>> {
        sqlx::query("SELECT body FROM resizes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| serde_json::from_str(&r.try_get::<String, _>(0)?).map_err(corrupt))
            .transpose()
    }

    /// Resizes, newest first; `open` keeps only unfinished ones.
    pub async fn list_resizes(&self, open: bool, limit: i64) -> Result<Vec<Resize>> {
        let sql = if open {
            "SELECT body FROM resizes WHERE status NOT IN ('succeeded', 'failed', 'rejected') ORDER BY created_at DESC, id DESC LIMIT $1"
        } else {
            "SELECT body FROM resizes ORDER BY created_at DESC, id DESC LIMIT $1"
        };
        sqlx::query(sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| serde_json::from_str(&r.try_get::<String, _>(0)?).map_err(corrupt))
            .collect()
    }
}

async fn cell_exists(tx: &mut AnyConnection, id: &str) -> Result<bool> {
    Ok(sqlx::query("SELECT 1 FROM cells WHERE id = $1")
        .bind(id)
        .fetch_optional(tx)
        .await?
        .is_some())
}

/// A new cell's ports must not overlap the ports an artifact of another cell
/// was given (`--artifact-ports`).
async fn refuse_taken_ports(tx: &mut AnyConnection, c: &CellSpec) -> Result<()> {
    let Some(p) = c.port else { return Ok(()) };
    let p = i64::from(p);
    let row = sqlx::query(
        "SELECT cell_id, artifact, port FROM cell_ports WHERE cell_id <> $1 AND port BETWEEN $2 AND $3 LIMIT 1",
    )
    .bind(&c.id)
    .bind(p - 1)
    .bind(p + 1)
    .fetch_optional(tx)
    .await?;
    if let Some(r) = row {
        let (cell, art, q): (String, String, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        // Shown as "... already exists".
        return Err(StoreError::Conflict(format!(
            "a service on ports {q}-{} ({art} of cell {cell}), which cell {} would use,",
            q + 1,
            c.id
        )));
    }
    Ok(())
}

/// A cell's new lifecycle status (drained, retired), as the engine commits it.
#[derive(Debug, Clone)]
pub struct CellStatusChange {
    pub cell: String,
    pub status: CellStatus,
    pub at: DateTime<Utc>,
}

/// Write a cell's new status, in the caller's transaction.
pub(super) async fn write_status(tx: &mut AnyConnection, c: &CellStatusChange) -> Result<()> {
    sqlx::query("UPDATE cells SET status = $1, updated_at = $2 WHERE id = $3")
        .bind(c.status.as_str())
        .bind(ts(c.at))
        .bind(&c.cell)
        .execute(tx)
        .await?;
    Ok(())
}

/// A finished resize to record: its row, and the cell's new spec when the
/// cell changed shape.
#[derive(Debug, Clone)]
pub struct ResizeDone {
    pub resize: Resize,
    pub cell: Option<CellSpec>,
}

/// Write a finished resize and the cell's new spec, in the caller's
/// transaction.
pub(super) async fn write_resize_done(tx: &mut AnyConnection, d: &ResizeDone) -> Result<()> {
    write_resize(tx, &d.resize).await?;
    if let Some(c) = &d.cell {
        sqlx::query("UPDATE cells SET spec = $1, updated_at = $2 WHERE id = $3")
            .bind(serde_json::to_string(c).map_err(corrupt)?)
            .bind(ts(d.resize.updated_at))
            .bind(&c.id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

async fn write_resize(tx: &mut AnyConnection, r: &Resize) -> Result<()> {
    sqlx::query(
        "INSERT INTO resizes (id, cell_id, status, body, created_at) VALUES ($1, $2, $3, $4, $5)
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

/// A worker process of a local cell, as persisted for adoption after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CellProcessRow {
    pub pid: i64,
    /// Boot id and start time of the process (from /proc).
    pub started: String,
    pub cell_id: String,
    pub artifact: String,
    pub version: String,
    pub port: i64,
    pub worker: i64,
    pub worker_port: i64,
    /// Whether the worker was handed its bound worker socket.
    pub handover: bool,
}

impl Store {
    // ---- per-artifact ports of local cells ----------------------------------

    /// The first of the two ports `artifact` serves on `cell`, once assigned.
    pub async fn cell_port(&self, cell: &str, artifact: &str) -> Result<Option<u16>> {
        let row = sqlx::query("SELECT port FROM cell_ports WHERE cell_id = $1 AND artifact = $2")
            .bind(cell)
            .bind(artifact)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| port_of(r.try_get(0)?)).transpose()
    }

    /// Every assignment: `(cell, artifact, first port)`.
    pub async fn cell_ports(&self) -> Result<Vec<(String, String, u16)>> {
        let rows = sqlx::query("SELECT cell_id, artifact, port FROM cell_ports ORDER BY port")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, port_of(r.try_get(2)?)?)))
            .collect()
    }

    /// Assign `port` (and `port + 1`) to `artifact` on `cell`. Returns false,
    /// changing nothing, when the artifact has ports already or the port is
    /// taken by another assignment.
    pub async fn assign_cell_port(&self, cell: &str, artifact: &str, port: u16) -> Result<bool> {
        let q = sqlx::query(
            "INSERT INTO cell_ports (cell_id, artifact, port) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(cell)
        .bind(artifact)
        .bind(i64::from(port));
        let res = self.write_one(q).await?;
        Ok(res.rows_affected() == 1)
    }

    // ---- running worker processes of local cells ---------------------------

    pub async fn put_cell_process(&self, p: &CellProcessRow, now: DateTime<Utc>) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO cell_processes (pid, started, cell_id, artifact, version, port, worker, worker_port, handover, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (pid) DO UPDATE SET started = excluded.started, cell_id = excluded.cell_id,
                 artifact = excluded.artifact, version = excluded.version, port = excluded.port,
                 worker = excluded.worker, worker_port = excluded.worker_port,
                 handover = excluded.handover, at = excluded.at",
        )
        .bind(p.pid)
        .bind(&p.started)
        .bind(&p.cell_id)
        .bind(&p.artifact)
        .bind(&p.version)
        .bind(p.port)
        .bind(p.worker)
        .bind(p.worker_port)
        .bind(i64::from(p.handover))
        .bind(ts(now));
        self.write_one(q).await?;
        Ok(())
    }

    /// Forget a process (it was stopped, or it is gone), if the row is still
    /// this process's (a later process may have the same pid).
    pub async fn delete_cell_process(&self, pid: i64, started: &str) -> Result<()> {
        let q = sqlx::query("DELETE FROM cell_processes WHERE pid = $1 AND started = $2")
            .bind(pid)
            .bind(started);
        self.write_one(q).await?;
        Ok(())
    }

    pub async fn cell_processes(&self) -> Result<Vec<CellProcessRow>> {
        let rows = sqlx::query(
            "SELECT pid, started, cell_id, artifact, version, port, worker, worker_port, handover
             FROM cell_processes ORDER BY cell_id, artifact, worker, pid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CellProcessRow {
                    pid: r.try_get(0)?,
                    started: r.try_get(1)?,
                    cell_id: r.try_get(2)?,
                    artifact: r.try_get(3)?,
                    version: r.try_get(4)?,
                    port: r.try_get(5)?,
                    worker: r.try_get(6)?,
                    worker_port: r.try_get(7)?,
                    handover: r.try_get::<i64, _>(8)? != 0,
                })
            })
            .collect()
    }
}

fn port_of(p: i64) -> Result<u16> {
    u16::try_from(p).map_err(|_| StoreError::Corrupt(format!("port {p} out of range")))
}

/// A stored cell status (one this build does not know is corrupt data).
fn cell_status(s: &str) -> Result<CellStatus> {
    s.parse()
        .map_err(|e: conductor_core::cell::UnknownCellStatus| StoreError::Corrupt(e.to_string()))
}
