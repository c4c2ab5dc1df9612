//! The deploy log (every change of a cell's version, by effect key) and step output.

use super::*;

/// A change of the version a cell runs of an artifact, made by a deploy
/// target under the effect `key`: the engine commits it with the event
/// that reports it (the cell's version and the deploy log row, in the
/// event's transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellChange {
    pub cell: String,
    pub artifact: String,
    /// What the cell runs now (None: the artifact was removed).
    pub version: Option<String>,
    /// What it ran before, as read before the target acted.
    pub previous: Option<String>,
    pub key: String,
    /// `deploy` or `rollback`.
    pub kind: String,
    pub at: DateTime<Utc>,
}

/// PostgreSQL: every change's version and deploy log row in one statement
/// (one round trip), the changes given as one JSON array, in their order.
const PG_CHANGES: &str = "WITH r AS (
        SELECT * FROM ROWS FROM (json_to_recordset($1::JSON)
            AS (c TEXT, a TEXT, v TEXT, p TEXT, k TEXT, d TEXT, t TEXT)) WITH ORDINALITY AS r (c, a, v, p, k, d, t, i)
    ), versions AS (
        INSERT INTO cell_versions (cell_id, artifact, version, previous_version, updated_at)
        SELECT c, a, v, p, t FROM r
        ON CONFLICT (cell_id, artifact) DO UPDATE SET previous_version = cell_versions.version,
            version = excluded.version, updated_at = excluded.updated_at
    )
    INSERT INTO deploy_log (cell_id, artifact, version, previous, key, kind, at)
    SELECT c, a, v, p, k, d, t FROM r ORDER BY i";

#[derive(serde::Serialize)]
struct PgChange<'a> {
    c: &'a str,
    a: &'a str,
    v: Option<&'a str>,
    p: Option<&'a str>,
    k: &'a str,
    d: &'a str,
    t: String,
}

/// Inside the commit's transaction: each change's cell version (the
/// version it replaces becomes its previous one) and its deploy log row.
pub(super) async fn write_changes(
    conn: &mut AnyConnection,
    backend: Backend,
    changes: &[CellChange],
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    // One statement cannot change a row twice: a batch that changes a
    // cell's artifact twice (never, under the cell's lease) goes row by row.
    let distinct = changes
        .iter()
        .map(|c| (&c.cell, &c.artifact))
        .collect::<std::collections::HashSet<_>>()
        .len()
        == changes.len();
    if backend == Backend::Postgres && distinct {
        let rows: Vec<PgChange> = changes
            .iter()
            .map(|c| PgChange {
                c: &c.cell,
                a: &c.artifact,
                v: c.version.as_deref(),
                p: c.previous.as_deref(),
                k: &c.key,
                d: &c.kind,
                t: ts(c.at),
            })
            .collect();
        let json = serde_json::to_string(&rows).map_err(corrupt)?;
        sqlx::query(PG_CHANGES).bind(json).execute(conn).await?;
        return Ok(());
    }
    for c in changes {
        sqlx::query(
            "INSERT INTO cell_versions (cell_id, artifact, version, previous_version, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (cell_id, artifact) DO UPDATE SET previous_version = cell_versions.version,
                 version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(&c.cell)
        .bind(&c.artifact)
        .bind(&c.version)
        .bind(&c.previous)
        .bind(ts(c.at))
        .execute(&mut *conn)
        .await?;
        sqlx::query("INSERT INTO deploy_log (cell_id, artifact, version, previous, key, kind, at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&c.cell)
            .bind(&c.artifact)
            .bind(&c.version)
            .bind(&c.previous)
            .bind(&c.key)
            .bind(&c.kind)
            .bind(ts(c.at))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

impl Store {
    /// Has the effect `key` already changed a cell's version? Returns the
    /// version the cell ran before it, when it has.
    pub async fn deploy_done(&self, key: &str) -> Result<Option<Option<String>>> {
        let row =
            sqlx::query("SELECT previous FROM deploy_log WHERE key = $1 ORDER BY seq LIMIT 1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get::<Option<String>, _>(0)).transpose()?)
    }

    /// Record that a cell now runs `version` of `artifact` (None: nothing),
    /// made so by the effect `key`, as the engine's commit does (the same
    /// statements, fenced the same way). Returns the version it ran before.
    /// For tools and tests: the engine records the changes of its deploys
    /// and rollbacks with the events that report them.
    pub async fn set_cell_version(
        &self,
        cell: &str,
        artifact: &str,
        version: Option<&str>,
        key: &str,
        kind: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        let previous = self.cell_version(cell, artifact).await?;
        let change = CellChange {
            cell: cell.into(),
            artifact: artifact.into(),
            version: version.map(Into::into),
            previous: previous.clone(),
            key: key.into(),
            kind: kind.into(),
            at: now,
        };
        self.commit_all(&[], &[], &[], std::slice::from_ref(&change))
            .await?;
        Ok(previous)
    }

    pub async fn cell_version(&self, cell: &str, artifact: &str) -> Result<Option<String>> {
        let row =
            sqlx::query("SELECT version FROM cell_versions WHERE cell_id = $1 AND artifact = $2")
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
            "SELECT seq, cell_id, artifact, version, key, kind, at FROM deploy_log WHERE ($1 IS NULL OR cell_id = $1) ORDER BY seq",
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
        let q = sqlx::query(
            "INSERT INTO step_logs (key, train_id, cell_id, output, at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (key) DO UPDATE SET output = excluded.output, at = excluded.at",
        )
        .bind(key)
        .bind(train)
        .bind(cell)
        .bind(output)
        .bind(ts(now));
        self.write_one(q).await?;
        Ok(())
    }

    pub async fn step_logs(&self, train: &str) -> Result<Vec<serde_json::Value>> {
        let rows = sqlx::query(
            "SELECT key, cell_id, output, at FROM step_logs WHERE train_id = $1 ORDER BY at",
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
}
