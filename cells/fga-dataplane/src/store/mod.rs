//! Persistent storage: SQLite (the default) or PostgreSQL through sqlx's
//! `Any` driver (migrations in `migrations/{sqlite,postgres}/fga`). Every
//! query is written once, with `$N` placeholders both understand. Every read
//! the evaluator makes goes through an index; nothing scans a store.

use crate::cache::{ModelCache, TupleCache};
use crate::engine::{object_type, TupleKey};
use crate::model::AuthorizationModel;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sqlx::AnyPool;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the SQLite database {path}: {message}")]
    File { path: String, message: String },
}

type Result<T> = std::result::Result<T, StoreError>;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A new ULID (26 characters, Crockford base32, time-ordered), the id format
/// OpenFGA uses for stores and models. Monotonic within the process: an id
/// made in the same millisecond as the last one is the last one plus one, so
/// ids sort in creation order (list pagination and "newest model first"
/// rely on it).
pub fn ulid() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    static LAST: std::sync::Mutex<u128> = std::sync::Mutex::new(0);
    let ms = u128::try_from(Utc::now().timestamp_millis()).unwrap_or(0) & ((1 << 48) - 1);
    let mut r = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut r);
    let rand = r.iter().fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    let v = {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        let v = ((ms << 80) | rand).max(last.saturating_add(1));
        *last = v;
        v
    };
    (0..26)
        .rev()
        .map(|i| ALPHABET[((v >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// Is `s` a ULID as OpenFGA writes and accepts ids: 26 characters of
/// Crockford's base32 in upper case (so every id has one spelling only).
pub fn is_ulid(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b))
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StoreRow {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TupleRow {
    pub key: TupleKey,
    pub timestamp: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangeRow {
    pub seq: i64,
    pub tuple_key: TupleKey,
    pub operation: String,
    pub timestamp: String,
}

/// What a write does with tuples that already exist / deletes of tuples that do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    Error,
    Ignore,
}

/// Why a write was refused (nothing was written).
#[derive(Debug)]
pub enum WriteError {
    Exists(TupleKey),
    Missing(TupleKey),
    Store(StoreError),
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        WriteError::Store(e.into())
    }
}

mod connect;
pub use connect::is_postgres_url;
use connect::values_placeholders;
mod reader;
mod warm;
pub use reader::SqlReader;

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    /// `"sqlite"` or `"postgres"`.
    backend: &'static str,
    tuples: Option<Arc<TupleCache>>,
    models: Arc<ModelCache>,
}

fn split(object: &str) -> (&str, &str) {
    object.split_once(':').unwrap_or((object, ""))
}

/// How a [`Db`] is opened.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Keep a read-through cache of tuples by object (and of store
    /// metadata). Correct only while this process is the database's only
    /// writer (so on by default for SQLite, off for PostgreSQL, which several
    /// workers may share).
    pub cache: bool,
    /// About how many tuples the cache holds.
    pub cache_tuples: usize,
    /// Connections in the pool.
    pub max_connections: u32,
}

impl DbOptions {
    /// The defaults for a database URL (see [`Db::connect`]).
    pub fn for_url(url: &str) -> DbOptions {
        let postgres = is_postgres_url(url);
        DbOptions {
            cache: !postgres,
            cache_tuples: 2_000_000,
            max_connections: if postgres { 16 } else { 8 },
        }
    }
}

impl Db {
    /// Open (creating if needed) the SQLite database at `path`.
    pub async fn open(path: &Path) -> Result<Db> {
        Db::connect(&path.display().to_string()).await
    }

    /// Open a database by URL: `postgres://…` / `postgresql://…` for
    /// PostgreSQL, anything else (`sqlite://PATH` or a plain path) for SQLite.
    /// Migrations run on open.
    pub async fn connect(url: &str) -> Result<Db> {
        Db::connect_with(url, DbOptions::for_url(url)).await
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    fn invalidate<'a>(&self, store: &str, keys: impl Iterator<Item = &'a TupleKey>) {
        if let Some(c) = &self.tuples {
            c.invalidate(store, keys);
        }
    }

    pub async fn create_store(&self, name: &str) -> Result<StoreRow> {
        let now = ts(Utc::now());
        let row = StoreRow {
            id: ulid(),
            name: name.to_string(),
            created_at: now.clone(),
            updated_at: now,
        };
        sqlx::query(
            "INSERT INTO stores (id, name, created_at, updated_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(&row.created_at)
        .bind(&row.updated_at)
        .execute(&self.pool)
        .await
        .map(drop)?;
        self.models.put_store_live(&row.id);
        Ok(row)
    }

    /// Does the store exist (and is not deleted)? Cached for a single writer.
    pub async fn store_exists(&self, id: &str) -> Result<bool> {
        if self.models.store_live(id) {
            return Ok(true);
        }
        let live = self.get_store(id).await?.is_some();
        if live {
            self.models.put_store_live(id);
        }
        Ok(live)
    }

    pub async fn get_store(&self, id: &str) -> Result<Option<StoreRow>> {
        Ok(
            sqlx::query_as("SELECT id, name, created_at, updated_at FROM stores WHERE id = $1 AND deleted_at IS NULL")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?,
        )
    }

    /// Stores after `after` (an id), oldest first; only those named exactly
    /// `name` when given.
    pub async fn list_stores(
        &self,
        after: &str,
        limit: i64,
        name: Option<&str>,
    ) -> Result<Vec<StoreRow>> {
        Ok(
            sqlx::query_as("SELECT id, name, created_at, updated_at FROM stores WHERE deleted_at IS NULL AND id > $1 AND ($2 IS NULL OR name = $2) ORDER BY id LIMIT $3")
            .bind(after)
            .bind(name)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?,
        )
    }

    pub async fn delete_store(&self, id: &str) -> Result<bool> {
        self.models.forget_store(id);
        if let Some(c) = &self.tuples {
            c.drop_store(id);
        }
        let n =
            sqlx::query("UPDATE stores SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL")
                .bind(ts(Utc::now()))
                .bind(id)
                .execute(&self.pool)
                .await
                .map(|r| r.rows_affected())?;
        Ok(n > 0)
    }

    /// Store a model under a new id (which it returns); it becomes the store's latest.
    pub async fn write_model(&self, store: &str, m: &AuthorizationModel) -> Result<String> {
        let id = ulid();
        let mut m = m.clone();
        m.id = id.clone();
        let body = serde_json::to_string(&m).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query("INSERT INTO models (store, id, body, created_at) VALUES ($1, $2, $3, $4)")
            .bind(store)
            .bind(&id)
            .bind(&body)
            .bind(ts(Utc::now()))
            .execute(&self.pool)
            .await
            .map(drop)?;
        let m = Arc::new(m);
        self.models.put_model(store, m.clone());
        self.models.put_latest(store, m);
        Ok(id)
    }

    /// A model by id (parsed models are cached: they never change).
    pub async fn get_model(
        &self,
        store: &str,
        id: &str,
    ) -> Result<Option<Arc<AuthorizationModel>>> {
        if let Some(m) = self.models.model(store, id) {
            return Ok(Some(m));
        }
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM models WHERE store = $1 AND id = $2")
                .bind(store)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(body) = body else { return Ok(None) };
        let m = Arc::new(parse_model(&body)?);
        self.models.put_model(store, m.clone());
        Ok(Some(m))
    }

    /// The store's newest model.
    pub async fn latest_model(&self, store: &str) -> Result<Option<Arc<AuthorizationModel>>> {
        if let Some(m) = self.models.latest(store) {
            return Ok(Some(m));
        }
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM models WHERE store = $1 ORDER BY id DESC LIMIT 1")
                .bind(store)
                .fetch_optional(&self.pool)
                .await?;
        let Some(id) = id else { return Ok(None) };
        let m = self.get_model(store, &id).await?;
        if let Some(m) = &m {
            self.models.put_latest(store, m.clone());
        }
        Ok(m)
    }

    /// Models newest first, before `before` (an id; empty: from the newest).
    pub async fn list_models(
        &self,
        store: &str,
        before: &str,
        limit: i64,
    ) -> Result<Vec<AuthorizationModel>> {
        let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM models WHERE store = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3")
            .bind(store)
            .bind(before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        bodies.iter().map(|b| parse_model(b)).collect()
    }

    /// Apply deletes and writes in one transaction; all or nothing.
    pub async fn write(
        &self,
        store: &str,
        writes: &[TupleKey],
        deletes: &[TupleKey],
        on_duplicate: OnConflict,
        on_missing: OnConflict,
    ) -> std::result::Result<(), WriteError> {
        let now = ts(Utc::now());
        let mut tx = self.pool.begin().await?;
        for (t, write) in deletes
            .iter()
            .map(|t| (t, false))
            .chain(writes.iter().map(|t| (t, true)))
        {
            let (ot, oid) = split(&t.object);
            let q = if write {
                "INSERT INTO tuples (store, object_type, object_id, relation, \"user\", user_type, ulid, inserted_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM tuples WHERE store = $1 AND object_type = $2 AND object_id = $3 AND relation = $4 AND \"user\" = $5"
            };
            let mut q = sqlx::query(q)
                .bind(store)
                .bind(ot)
                .bind(oid)
                .bind(&t.relation)
                .bind(&t.user);
            if write {
                q = q.bind(object_type(&t.user)).bind(ulid()).bind(&now);
            }
            if q.execute(&mut *tx).await?.rows_affected() == 0 {
                match (write, on_duplicate, on_missing) {
                    (true, OnConflict::Error, _) => return Err(WriteError::Exists(t.clone())),
                    (false, _, OnConflict::Error) => return Err(WriteError::Missing(t.clone())),
                    _ => continue,
                }
            }
            let op = if write {
                "TUPLE_OPERATION_WRITE"
            } else {
                "TUPLE_OPERATION_DELETE"
            };
            sqlx::query("INSERT INTO changes (store, object_type, object, relation, \"user\", operation, at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(store)
                .bind(object_type(&t.object))
                .bind(&t.object)
                .bind(&t.relation)
                .bind(&t.user)
                .bind(op)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.invalidate(store, writes.iter().chain(deletes.iter()));
        Ok(())
    }

    /// Load many tuples at once (benchmarks, imports): one transaction, no
    /// changelog, existing tuples skipped.
    pub async fn bulk_insert(&self, store: &str, tuples: &[TupleKey]) -> Result<()> {
        const COLUMNS: usize = 8;
        let now = ts(Utc::now());
        let mut tx = self.pool.begin().await?;
        for chunk in tuples.chunks(500) {
            let mut sql = String::from(
                "INSERT INTO tuples (store, object_type, object_id, relation, \"user\", user_type, ulid, inserted_at) VALUES ",
            );
            sql.push_str(&values_placeholders(
                self.backend == "postgres",
                chunk.len(),
                COLUMNS,
            ));
            sql.push_str(" ON CONFLICT DO NOTHING");
            let mut q = sqlx::query(&sql);
            for t in chunk {
                let (ot, oid) = split(&t.object);
                q = q
                    .bind(store)
                    .bind(ot)
                    .bind(oid)
                    .bind(&t.relation)
                    .bind(&t.user)
                    .bind(object_type(&t.user))
                    .bind(ulid())
                    .bind(&now);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.invalidate(store, tuples.iter());
        Ok(())
    }

    /// Read tuples matching a filter, in key order after `after` (a
    /// continuation: the last key returned, encoded).
    pub async fn read(
        &self,
        store: &str,
        filter: &TupleFilter,
        after: &[String; 4],
        limit: i64,
    ) -> Result<Vec<TupleRow>> {
        let (ot, oid) = match &filter.object {
            Some(o) => {
                let (t, id) = split(o);
                (
                    Some(t.to_string()),
                    (!id.is_empty()).then(|| id.to_string()),
                )
            }
            None => (None, None),
        };
        let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(
            "SELECT object_type, object_id, relation, \"user\", inserted_at FROM tuples
             WHERE store = $1 AND ($2 IS NULL OR object_type = $2) AND ($3 IS NULL OR object_id = $3)
               AND ($4 IS NULL OR relation = $4) AND ($5 IS NULL OR \"user\" = $5)
               AND (object_type, object_id, relation, \"user\") > ($6, $7, $8, $9)
             ORDER BY object_type, object_id, relation, \"user\" LIMIT $10",
        )
        .bind(store)
        .bind(&ot)
        .bind(&oid)
        .bind(&filter.relation)
        .bind(&filter.user)
        .bind(&after[0])
        .bind(&after[1])
        .bind(&after[2])
        .bind(&after[3])
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(ot, oid, relation, user, timestamp)| TupleRow {
                key: TupleKey {
                    object: format!("{ot}:{oid}"),
                    relation,
                    user,
                },
                timestamp,
            })
            .collect())
    }

    /// Changes after sequence number `after`, oldest first; of one object
    /// type when given; made at or after `since` when given (a timestamp as
    /// stored: RFC 3339, UTC, microseconds).
    pub async fn changes(
        &self,
        store: &str,
        object_type: Option<&str>,
        after: i64,
        since: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ChangeRow>> {
        let rows: Vec<(i64, String, String, String, String, String)> = sqlx::query_as(
            "SELECT seq, object, relation, \"user\", operation, at FROM changes
             WHERE store = $1 AND ($2 IS NULL OR object_type = $2) AND seq > $3
               AND ($4 IS NULL OR at >= $4) ORDER BY seq LIMIT $5",
        )
        .bind(store)
        .bind(object_type)
        .bind(after)
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(seq, object, relation, user, operation, timestamp)| ChangeRow {
                    seq,
                    tuple_key: TupleKey {
                        object,
                        relation,
                        user,
                    },
                    operation,
                    timestamp,
                },
            )
            .collect())
    }

    pub async fn tuple_count(&self, store: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM tuples WHERE store = $1")
                .bind(store)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Tuple count of every store (for metrics).
    pub async fn tuple_counts(&self) -> Result<Vec<(String, i64)>> {
        Ok(
            sqlx::query_as("SELECT s.id, (SELECT COUNT(*) FROM tuples t WHERE t.store = s.id) FROM stores s WHERE s.deleted_at IS NULL ORDER BY s.id")
            .fetch_all(&self.pool)
            .await?,
        )
    }

    /// A reader for evaluation in one store.
    pub fn reader(&self, store: &str) -> SqlReader {
        SqlReader {
            pool: self.pool.clone(),
            store: store.to_string(),
            cache: self.tuples.clone(),
        }
    }
}

/// A Read filter: any of object (`type:` or `type:id`), relation, user.
#[derive(Debug, Default, Clone)]
pub struct TupleFilter {
    pub object: Option<String>,
    pub relation: Option<String>,
    pub user: Option<String>,
}

fn parse_model(body: &str) -> Result<AuthorizationModel> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(e.to_string()))
}
