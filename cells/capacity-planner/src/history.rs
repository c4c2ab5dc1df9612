//! The planner's usage history: sqlx on SQLite (the default) or PostgreSQL
//! (`migrations/{sqlite,postgres}/capacity`). Every query is written once
//! with `$N` placeholders and runs on either database through sqlx's `Any`
//! driver.

use crate::{Sample, TenantUsage};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the SQLite database {path}: {message}")]
    File { path: String, message: String },
}

/// One stored observation.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    pub tenant: String,
    pub cell: String,
    pub sample: Sample,
}

/// Rows per multi-row INSERT.
const CHUNK: usize = 400;

#[derive(Clone)]
pub struct History {
    pool: AnyPool,
    backend: &'static str,
}

pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The sqlx URL of a SQLite database given as `sqlite://PATH`,
/// `sqlite:PATH` or a plain path, with its file created (0600) if missing.
/// sqlx opens an existing file only unless told `mode=rwc`; the file is
/// created here instead, so that it is private from the start.
fn sqlite_url(given: &str) -> Result<String, HistoryError> {
    let fail = |path: &str, message: String| HistoryError::File {
        path: path.to_string(),
        message,
    };
    let (path, query) = match given
        .strip_prefix("sqlite://")
        .or_else(|| given.strip_prefix("sqlite:"))
    {
        Some(rest) => match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        },
        None if given.contains(['?', '#']) => {
            return Err(fail(
                given,
                "a plain path may not hold '?' or '#'; write it as a sqlite:// URL".into(),
            ))
        }
        None => (given, None),
    };
    if path.is_empty() || path == ":memory:" {
        return Ok(given.to_string());
    }
    let file = std::path::Path::new(path);
    let fail = |message: String| fail(path, message);
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(fail(format!(
                "its directory {} does not exist",
                dir.display()
            )));
        }
    }
    if !query.is_some_and(|q| q.split('&').any(|kv| kv == "mode=ro")) {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(file)
            .map_err(|e| fail(format!("cannot open or create it: {e}")))?;
    }
    crate::secrets::private_file(file).map_err(|e| fail(e.to_string()))?;
    Ok(match query {
        Some(q) => format!("sqlite://{path}?{q}"),
        None => format!("sqlite://{path}"),
    })
}

impl History {
    /// Open `url` (`sqlite://PATH`, `sqlite:PATH` or a file path, or
    /// `postgres://…`) and run the migrations. A SQLite file that does not
    /// exist is created (its directory must exist), private to its owner
    /// (0600, and so are its WAL files); an existing one is made 0600.
    pub async fn connect(url: &str) -> Result<History, HistoryError> {
        sqlx::any::install_default_drivers();
        let postgres = is_postgres_url(url);
        let url = if postgres {
            url.to_string()
        } else {
            sqlite_url(url)?
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 8 } else { 1 })
            .connect(&url)
            .await?;
        if postgres {
            sqlx::migrate!("../../migrations/postgres/capacity")
                .run(&pool)
                .await?;
        } else {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
            sqlx::query("PRAGMA busy_timeout = 10000")
                .execute(&pool)
                .await?;
            sqlx::migrate!("../../migrations/sqlite/capacity")
                .run(&pool)
                .await?;
        }
        Ok(History {
            pool,
            backend: if postgres { "postgres" } else { "sqlite" },
        })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Store observations (one transaction); an observation already stored
    /// for the same tenant, cell and moment is replaced.
    pub async fn record(&self, rows: &[SampleRow], source: &str) -> Result<usize, HistoryError> {
        // One row per key (the last wins): PostgreSQL refuses to update a
        // row twice in one statement.
        let mut keyed: BTreeMap<(&str, &str, u64), &SampleRow> = BTreeMap::new();
        for r in rows {
            keyed.insert((&r.tenant, &r.cell, r.sample.at.to_bits()), r);
        }
        let rows: Vec<&SampleRow> = keyed.into_values().collect();
        let mut tx = self.pool.begin().await?;
        for chunk in rows.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO samples (tenant, cell, at, check_rps, tuples, connections, source) VALUES {} \
                 ON CONFLICT (tenant, cell, at) DO UPDATE SET check_rps = excluded.check_rps, \
                 tuples = excluded.tuples, connections = excluded.connections, source = excluded.source",
                values_placeholders(self.backend == "postgres", chunk.len(), 7)
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(r.tenant.clone())
                    .bind(r.cell.clone())
                    .bind(r.sample.at)
                    .bind(r.sample.check_rps)
                    .bind(r.sample.tuples)
                    .bind(r.sample.connections)
                    .bind(source.to_string());
            }
            q.persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Import a usage file's tenants.
    pub async fn import(&self, tenants: &[TenantUsage]) -> Result<usize, HistoryError> {
        let rows: Vec<SampleRow> = tenants
            .iter()
            .flat_map(|t| {
                t.samples.iter().map(|s| SampleRow {
                    tenant: t.tenant.clone(),
                    cell: t.cell.clone(),
                    sample: *s,
                })
            })
            .collect();
        self.record(&rows, "import").await
    }

    /// Usage since `since` (Unix seconds), per tenant on the cell it was last
    /// seen on, samples oldest first.
    pub async fn usage(&self, since: f64) -> Result<Vec<TenantUsage>, HistoryError> {
        let rows: Vec<AnyRow> = sqlx::query(
            "SELECT tenant, cell, at, check_rps, tuples, connections FROM samples \
             WHERE at >= $1 ORDER BY tenant, at, cell",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut by: BTreeMap<String, Vec<(String, Sample)>> = BTreeMap::new();
        for r in rows {
            let s = Sample {
                at: r.try_get(2)?,
                check_rps: r.try_get(3)?,
                tuples: r.try_get(4)?,
                connections: r.try_get(5)?,
            };
            by.entry(r.try_get(0)?)
                .or_default()
                .push((r.try_get(1)?, s));
        }
        Ok(by
            .into_iter()
            .filter_map(|(tenant, v)| {
                // A tenant that moved counts on its newest cell only.
                let cell = v.last()?.0.clone();
                let samples = v
                    .into_iter()
                    .filter(|(c, _)| *c == cell)
                    .map(|(_, s)| s)
                    .collect();
                Some(TenantUsage {
                    tenant,
                    cell,
                    samples,
                })
            })
            .collect())
    }

    /// Forget observations older than `before` (Unix seconds).
    pub async fn prune(&self, before: f64) -> Result<u64, HistoryError> {
        Ok(sqlx::query("DELETE FROM samples WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    pub async fn count(&self) -> Result<i64, HistoryError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM samples")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }
}

/// The placeholders of a multi-row `VALUES` list: `rows` rows of `cols`.
/// PostgreSQL: numbered, `($1, $2), ($3, $4)`. SQLite: anonymous,
/// `(?, ?), (?, ?)`, bound in order: sqlx looks each numbered parameter's
/// name up in SQLite, a linear search there, so binding N numbered
/// parameters costs N^2.
fn values_placeholders(postgres: bool, rows: usize, cols: usize) -> String {
    let mut sql = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            if postgres {
                sql.push_str(&format!("${}", r * cols + c + 1));
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_placeholders_are_numbered_on_postgres_and_anonymous_on_sqlite() {
        assert_eq!(
            values_placeholders(true, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(values_placeholders(false, 2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(values_placeholders(false, 1, 1), "(?)");
        assert_eq!(values_placeholders(true, 0, 3), "");
    }
}
