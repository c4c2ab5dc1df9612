//! The artifact index.

use super::*;

impl Store {
    /// Index a pushed artifact (its file is in place) and audit the push,
    /// in one transaction. A version is pushed once.
    pub async fn put_artifact(
        &self,
        a: &ArtifactRow,
        audit: &AuditEntry,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "INSERT INTO artifacts (name, version, sha256, size, pushed_by, pushed_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name, version) DO NOTHING",
        )
        .bind(&a.name)
        .bind(&a.version)
        .bind(&a.sha256)
        .bind(a.size)
        .bind(&a.pushed_by)
        .bind(&a.pushed_at)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "artifact {} {}",
                a.name, a.version
            )));
        }
        append_audit(&mut tx, self.backend, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_artifact(&self, name: &str, version: &str) -> Result<Option<ArtifactRow>> {
        Ok(sqlx::query_as("SELECT name, version, sha256, size, pushed_by, pushed_at FROM artifacts WHERE name = $1 AND version = $2")
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
}
