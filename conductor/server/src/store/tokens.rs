//! Tokens: created, listed, revoked; each change audited in its transaction.

use super::*;

/// A token as `token list` shows it (never its hash).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: String,
    pub groups: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked: bool,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
}

/// What a revocation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    Revoked,
    NotFound,
    AlreadyRevoked,
    /// The last admin token that still works is not revoked: nobody could
    /// create tokens any more.
    LastAdmin,
}

fn split_groups(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl Store {
    /// Store a new token (its hash) and audit it, in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        groups: &[String],
        hash: &str,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "INSERT INTO tokens (name, role, groups, hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(role)
        .bind(groups.join(","))
        .bind(hash)
        .bind(ts(now))
        .bind(expires_at.map(ts))
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("token named {name:?}")));
        }
        append_audit(&mut tx, self.backend, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The token with this hash, revoked or not.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let row = sqlx::query(
            "SELECT name, role, groups, revoked, expires_at FROM tokens WHERE hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let groups: String = r.try_get(2)?;
            let expires: Option<String> = r.try_get(4)?;
            Ok(TokenRow {
                name: r.try_get(0)?,
                role: r.try_get(1)?,
                groups: split_groups(&groups),
                revoked: r.try_get::<i64, _>(3)? != 0,
                expires_at: expires.as_deref().map(parse_ts).transpose()?,
            })
        })
        .transpose()
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(
            "SELECT name, role, groups, created_at, expires_at, revoked, revoked_at, revoked_by
             FROM tokens ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    name: r.try_get(0)?,
                    role: r.try_get(1)?,
                    groups: split_groups(&r.try_get::<String, _>(2)?),
                    created_at: r.try_get(3)?,
                    expires_at: r.try_get(4)?,
                    revoked: r.try_get::<i64, _>(5)? != 0,
                    revoked_at: r.try_get(6)?,
                    revoked_by: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// Revoke the token named `name` (and audit it), unless it is the last
    /// admin token that still works.
    pub async fn revoke_token(
        &self,
        name: &str,
        by: &str,
        now: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> Result<Revoke> {
        let mut tx = self.begin_write().await?;
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT role, revoked FROM tokens WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((role, revoked)) = row else {
            return Ok(Revoke::NotFound);
        };
        if revoked != 0 {
            return Ok(Revoke::AlreadyRevoked);
        }
        if role == "admin" {
            let (others,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM tokens WHERE role = 'admin' AND revoked = 0 AND name != $1
                 AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(name)
            .bind(ts(now))
            .fetch_one(&mut *tx)
            .await?;
            if others == 0 {
                return Ok(Revoke::LastAdmin);
            }
        }
        sqlx::query(
            "UPDATE tokens SET revoked = 1, revoked_at = $1, revoked_by = $2 WHERE name = $3 AND revoked = 0",
        )
        .bind(ts(now))
        .bind(by)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        append_audit(&mut tx, self.backend, audit, now).await?;
        tx.commit().await?;
        Ok(Revoke::Revoked)
    }

    pub async fn count_tokens(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM tokens")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }
}
