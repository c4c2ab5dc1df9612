//! Tokens and the audit log.

use super::*;

impl Store {
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
