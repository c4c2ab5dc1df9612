//! Pipelines and their revisions.
//!
//! `pipelines` holds the revision in effect (what trains start from);
//! `pipeline_revisions` every revision submitted, with its status. A
//! revision that weakens the pipeline waits as `pending` until it is
//! approved; a newer submission supersedes it.

use super::*;

/// A revision as submitted, and what review made of it.
#[derive(Debug, Clone)]
pub struct NewRevision {
    pub name: String,
    pub yaml: String,
    pub by: String,
    /// It waits for an approval instead of taking effect.
    pub pending: bool,
    /// What it weakens (sentences), against `base_revision`.
    pub findings: Vec<String>,
    /// Who may approve it: a member of every one of these groups.
    pub approver_groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RevisionRow {
    pub name: String,
    pub revision: i64,
    pub yaml: String,
    pub submitted_by: String,
    pub submitted_at: String,
    pub status: String,
    pub findings: Vec<String>,
    pub base_revision: Option<i64>,
    pub approver_groups: Vec<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub reason: Option<String>,
}

const REVISION_COLS: &str = "name, revision, yaml, submitted_by, submitted_at, status, findings, \
     base_revision, approver_groups, decided_by, decided_at, reason";

fn revision_row(r: &sqlx::any::AnyRow) -> Result<RevisionRow> {
    let list = |i: usize| -> Result<Vec<String>> {
        serde_json::from_str(&r.try_get::<String, _>(i)?).map_err(corrupt)
    };
    Ok(RevisionRow {
        name: r.try_get(0)?,
        revision: r.try_get(1)?,
        yaml: r.try_get(2)?,
        submitted_by: r.try_get(3)?,
        submitted_at: r.try_get(4)?,
        status: r.try_get(5)?,
        findings: list(6)?,
        base_revision: r.try_get(7)?,
        approver_groups: list(8)?,
        decided_by: r.try_get(9)?,
        decided_at: r.try_get(10)?,
        reason: r.try_get(11)?,
    })
}

/// The revision in effect of `name`, inside a transaction.
async fn current_revision(conn: &mut AnyConnection, name: &str) -> Result<Option<i64>> {
    Ok(
        sqlx::query_as::<_, (i64,)>("SELECT revision FROM pipelines WHERE name = $1")
            .bind(name)
            .fetch_optional(conn)
            .await?
            .map(|r| r.0),
    )
}

/// Make revision `rev` of `name` the one in effect.
async fn put_in_effect(conn: &mut AnyConnection, r: &RevisionRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO pipelines (name, yaml, revision, submitted_by, submitted_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET yaml = excluded.yaml, revision = excluded.revision,
             submitted_by = excluded.submitted_by, submitted_at = excluded.submitted_at",
    )
    .bind(&r.name)
    .bind(&r.yaml)
    .bind(r.revision)
    .bind(&r.submitted_by)
    .bind(&r.submitted_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// What became of an approval or a rejection.
#[derive(Debug, Clone)]
pub enum Decided {
    Done(Box<RevisionRow>),
    NotFound,
    /// It is not waiting for a decision (its status).
    NotPending(String),
}

impl Store {
    /// Record a submitted revision; if it is not pending it takes effect at
    /// once. `base` is the revision in effect the review compared it with:
    /// if another revision took effect meanwhile, nothing is written and
    /// `StoreError::Changed` says to review again. A pending revision of the
    /// same pipeline is superseded. The audit row (given the new revision
    /// number) is written in the same transaction.
    pub async fn submit_revision(
        &self,
        r: &NewRevision,
        base: Option<i64>,
        now: DateTime<Utc>,
        audit: impl FnOnce(i64) -> AuditEntry,
    ) -> Result<RevisionRow> {
        let mut tx = self.begin_write().await?;
        if current_revision(&mut tx, &r.name).await? != base {
            return Err(StoreError::Changed(format!(
                "pipeline {} changed while this revision was reviewed",
                r.name
            )));
        }
        let (last,): (Option<i64>,) = sqlx::query_as(
            "SELECT MAX(r) FROM (SELECT MAX(revision) AS r FROM pipeline_revisions WHERE name = $1
                                 UNION ALL SELECT revision FROM pipelines WHERE name = $1) AS last",
        )
        .bind(&r.name)
        .fetch_one(&mut *tx)
        .await?;
        let revision = last.unwrap_or(0) + 1;
        sqlx::query(
            "UPDATE pipeline_revisions SET status = 'superseded', decided_at = $1
             WHERE name = $2 AND status = 'pending'",
        )
        .bind(ts(now))
        .bind(&r.name)
        .execute(&mut *tx)
        .await?;
        let row = RevisionRow {
            name: r.name.clone(),
            revision,
            yaml: r.yaml.clone(),
            submitted_by: r.by.clone(),
            submitted_at: ts(now),
            status: if r.pending { "pending" } else { "accepted" }.into(),
            findings: r.findings.clone(),
            base_revision: base,
            approver_groups: r.approver_groups.clone(),
            decided_by: None,
            decided_at: None,
            reason: None,
        };
        sqlx::query(&format!(
            "INSERT INTO pipeline_revisions ({REVISION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, NULL)"
        ))
        .bind(&row.name)
        .bind(row.revision)
        .bind(&row.yaml)
        .bind(&row.submitted_by)
        .bind(&row.submitted_at)
        .bind(&row.status)
        .bind(serde_json::to_string(&row.findings).map_err(corrupt)?)
        .bind(row.base_revision)
        .bind(serde_json::to_string(&row.approver_groups).map_err(corrupt)?)
        .execute(&mut *tx)
        .await?;
        if !r.pending {
            put_in_effect(&mut tx, &row).await?;
        }
        append_audit(&mut tx, self.backend, &audit(revision), now).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Approve (it takes effect) or reject a pending revision, and audit
    /// it, in one transaction. The revision in effect must still be the one
    /// it was reviewed against.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide_revision(
        &self,
        name: &str,
        revision: i64,
        approve: bool,
        by: &str,
        reason: &str,
        now: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> Result<Decided> {
        let mut tx = self.begin_write().await?;
        let Some(mut row) = fetch_revision(&mut tx, name, revision).await? else {
            return Ok(Decided::NotFound);
        };
        if row.status != "pending" {
            return Ok(Decided::NotPending(row.status));
        }
        if current_revision(&mut tx, name).await? != row.base_revision {
            // Cannot happen while every submission supersedes pending ones;
            // refuse rather than apply a review made against another base.
            return Err(StoreError::Changed(format!(
                "pipeline {name} changed since revision {revision} was reviewed; submit it again"
            )));
        }
        row.status = if approve { "approved" } else { "rejected" }.into();
        row.decided_by = Some(by.to_string());
        row.decided_at = Some(ts(now));
        row.reason = Some(reason.to_string());
        sqlx::query(
            "UPDATE pipeline_revisions SET status = $1, decided_by = $2, decided_at = $3, reason = $4
             WHERE name = $5 AND revision = $6",
        )
        .bind(&row.status)
        .bind(by)
        .bind(ts(now))
        .bind(reason)
        .bind(name)
        .bind(revision)
        .execute(&mut *tx)
        .await?;
        if approve {
            put_in_effect(&mut tx, &row).await?;
        }
        append_audit(&mut tx, self.backend, audit, now).await?;
        tx.commit().await?;
        Ok(Decided::Done(Box::new(row)))
    }

    pub async fn get_revision(&self, name: &str, revision: i64) -> Result<Option<RevisionRow>> {
        let mut conn = self.pool.acquire().await?;
        fetch_revision(&mut conn, name, revision).await
    }

    /// Revisions of `name`, newest first.
    pub async fn list_revisions(&self, name: &str) -> Result<Vec<RevisionRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {REVISION_COLS} FROM pipeline_revisions WHERE name = $1 ORDER BY revision DESC"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(revision_row).collect()
    }

    /// Every revision waiting for an approval.
    pub async fn pending_revisions(&self) -> Result<Vec<RevisionRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {REVISION_COLS} FROM pipeline_revisions WHERE status = 'pending' ORDER BY name, revision"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(revision_row).collect()
    }

    pub async fn get_pipeline(&self, name: &str) -> Result<Option<PipelineRow>> {
        Ok(sqlx::query_as(
            "SELECT name, yaml, revision, submitted_by, submitted_at FROM pipelines WHERE name = $1",
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
}

async fn fetch_revision(
    conn: &mut AnyConnection,
    name: &str,
    revision: i64,
) -> Result<Option<RevisionRow>> {
    sqlx::query(&format!(
        "SELECT {REVISION_COLS} FROM pipeline_revisions WHERE name = $1 AND revision = $2"
    ))
    .bind(name)
    .bind(revision)
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(revision_row)
    .transpose()
}
