//! Pipelines and their revisions.

use super::*;

impl Store {
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
}
