//! The artifact index.

use super::*;

impl Store {
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
}
