//! Cells and resize operations.

use super::*;

impl Store {
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

    /// Add one new cell (`cells add`) and audit it, in one transaction; a
    /// taken id is a conflict.
    pub async fn add_cell(
        &self,
        c: &CellSpec,
        now: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "INSERT INTO cells (id, spec, updated_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&c.id)
        .bind(serde_json::to_string(c).map_err(corrupt)?)
        .bind(ts(now))
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("cell {}", c.id)));
        }
        append_audit(&mut tx, audit, now).await?;
        tx.commit().await?;
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

    /// Change a cell's lifecycle status and audit it, in one transaction.
    pub async fn set_cell_status(
        &self,
        id: &str,
        status: &str,
        now: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE cells SET status = ?, updated_at = ? WHERE id = ?")
            .bind(status)
            .bind(ts(now))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        append_audit(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- resizes ----------------------------------------------------------

    /// Insert or update a resize operation (and audit it, if it was a
    /// caller's command), in one transaction.
    pub async fn put_resize(&self, r: &Resize, audit: Option<&AuditEntry>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        write_resize(&mut tx, r).await?;
        if let Some(a) = audit {
            append_audit(&mut tx, a, r.updated_at).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Record a resize's outcome, the cell's new shape if it succeeded,
    /// and its audit row, atomically.
    pub async fn finish_resize(
        &self,
        r: &Resize,
        cell: Option<&CellSpec>,
        audit: Option<&AuditEntry>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        write_resize(&mut tx, r).await?;
        if let Some(a) = audit {
            append_audit(&mut tx, a, r.updated_at).await?;
        }
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
