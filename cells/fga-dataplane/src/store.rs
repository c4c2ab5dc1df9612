//! Persistent storage: SQLite through sqlx (migrations in
//! `migrations/sqlite/fga`). Every read the evaluator makes goes through an
//! index; nothing scans a store.

use crate::engine::{object_type, EvalError, TupleKey, TupleReader};
use crate::model::AuthorizationModel;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rand::RngCore;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, StoreError>;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A new ULID (26 characters, Crockford base32, time-ordered), the id format
/// OpenFGA uses for stores and models.
pub fn ulid() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = u128::try_from(Utc::now().timestamp_millis()).unwrap_or(0) & ((1 << 48) - 1);
    let mut r = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut r);
    let rand = r.iter().fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    let v = (ms << 80) | rand;
    (0..26)
        .rev()
        .map(|i| ALPHABET[((v >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// Is `s` shaped like a ULID?
pub fn is_ulid(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b.to_ascii_uppercase()))
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Clone)]
pub struct Db {
    pool: SqlitePool,
    cache: Arc<UsersCache>,
}

type CacheKey = (String, String, String);

/// Read-through cache of `object#relation -> users`, shared by the readers
/// of a process (the only writer of its database). A write bumps the
/// generation and drops the keys it touched; a read fills the cache only if
/// no write happened while it queried, so a stale list is never cached.
pub struct UsersCache {
    map: Mutex<HashMap<CacheKey, Arc<Vec<String>>>>,
    generation: AtomicU64,
    cap: usize,
}

impl UsersCache {
    fn new(cap: usize) -> UsersCache {
        UsersCache {
            map: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            cap,
        }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<Vec<String>>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn get(&self, store: &str, object: &str, relation: &str) -> Option<Arc<Vec<String>>> {
        self.lock()
            .get(&(store.to_string(), object.to_string(), relation.to_string()))
            .cloned()
    }
    fn put(&self, generation: u64, key: CacheKey, users: Arc<Vec<String>>) {
        let mut m = self.lock();
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if m.len() >= self.cap {
            m.clear();
        }
        m.insert(key, users);
    }
    fn invalidate<'a>(&self, store: &str, keys: impl Iterator<Item = &'a TupleKey>) {
        let mut m = self.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        for t in keys {
            m.remove(&(store.to_string(), t.object.clone(), t.relation.clone()));
        }
    }
    fn clear(&self) {
        let mut m = self.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        m.clear();
    }
}

fn split(object: &str) -> (&str, &str) {
    object.split_once(':').unwrap_or((object, ""))
}

impl Db {
    pub async fn open(path: &Path) -> Result<Db> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("../../migrations/sqlite/fga")
            .run(&pool)
            .await?;
        Ok(Db {
            pool,
            cache: Arc::new(UsersCache::new(500_000)),
        })
    }

    pub async fn create_store(&self, name: &str) -> Result<StoreRow> {
        let now = ts(Utc::now());
        let row = StoreRow {
            id: ulid(),
            name: name.to_string(),
            created_at: now.clone(),
            updated_at: now,
        };
        sqlx::query("INSERT INTO stores (id, name, created_at, updated_at) VALUES (?, ?, ?, ?)")
            .bind(&row.id)
            .bind(&row.name)
            .bind(&row.created_at)
            .bind(&row.updated_at)
            .execute(&self.pool)
            .await?;
        Ok(row)
    }

    pub async fn get_store(&self, id: &str) -> Result<Option<StoreRow>> {
        let r = sqlx::query("SELECT id, name, created_at, updated_at FROM stores WHERE id = ? AND deleted_at IS NULL")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| store_row(&r)).transpose()
    }

    /// Stores after `after` (an id), oldest first.
    pub async fn list_stores(&self, after: &str, limit: i64) -> Result<Vec<StoreRow>> {
        let rows = sqlx::query("SELECT id, name, created_at, updated_at FROM stores WHERE deleted_at IS NULL AND id > ? ORDER BY id LIMIT ?")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(store_row).collect()
    }

    pub async fn delete_store(&self, id: &str) -> Result<bool> {
        self.cache.clear();
        let r = sqlx::query("UPDATE stores SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL")
            .bind(ts(Utc::now()))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn write_model(&self, store: &str, m: &AuthorizationModel) -> Result<String> {
        let id = ulid();
        let mut m = m.clone();
        m.id = id.clone();
        let body = serde_json::to_string(&m).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query("INSERT INTO models (store, id, body, created_at) VALUES (?, ?, ?, ?)")
            .bind(store)
            .bind(&id)
            .bind(body)
            .bind(ts(Utc::now()))
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    pub async fn get_model(&self, store: &str, id: &str) -> Result<Option<AuthorizationModel>> {
        let r = sqlx::query("SELECT body FROM models WHERE store = ? AND id = ?")
            .bind(store)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| model_row(&r)).transpose()
    }

    pub async fn latest_model(&self, store: &str) -> Result<Option<AuthorizationModel>> {
        let r = sqlx::query("SELECT body FROM models WHERE store = ? ORDER BY id DESC LIMIT 1")
            .bind(store)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| model_row(&r)).transpose()
    }

    /// Models newest first, before `before` (an id; empty: from the newest).
    pub async fn list_models(
        &self,
        store: &str,
        before: &str,
        limit: i64,
    ) -> Result<Vec<AuthorizationModel>> {
        let rows = sqlx::query("SELECT body FROM models WHERE store = ? AND (? = '' OR id < ?) ORDER BY id DESC LIMIT ?")
            .bind(store)
            .bind(before)
            .bind(before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(model_row).collect()
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
        let mut tx = self.pool.begin().await?;
        let now = ts(Utc::now());
        for t in deletes {
            let (ot, oid) = split(&t.object);
            let r = sqlx::query("DELETE FROM tuples WHERE store = ? AND object_type = ? AND object_id = ? AND relation = ? AND user = ?")
                .bind(store)
                .bind(ot)
                .bind(oid)
                .bind(&t.relation)
                .bind(&t.user)
                .execute(&mut *tx)
                .await?;
            if r.rows_affected() == 0 {
                if on_missing == OnConflict::Error {
                    return Err(WriteError::Missing(t.clone()));
                }
                continue;
            }
            change(&mut tx, store, t, "TUPLE_OPERATION_DELETE", &now).await?;
        }
        for t in writes {
            let (ot, oid) = split(&t.object);
            let r = sqlx::query(
                "INSERT INTO tuples (store, object_type, object_id, relation, user, user_type, ulid, inserted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT DO NOTHING",
            )
            .bind(store)
            .bind(ot)
            .bind(oid)
            .bind(&t.relation)
            .bind(&t.user)
            .bind(object_type(&t.user))
            .bind(ulid())
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 0 {
                if on_duplicate == OnConflict::Error {
                    return Err(WriteError::Exists(t.clone()));
                }
                continue;
            }
            change(&mut tx, store, t, "TUPLE_OPERATION_WRITE", &now).await?;
        }
        tx.commit().await?;
        self.cache
            .invalidate(store, writes.iter().chain(deletes.iter()));
        Ok(())
    }

    /// Load many tuples at once (benchmarks, imports): one transaction, no
    /// changelog, existing tuples skipped.
    pub async fn bulk_insert(&self, store: &str, tuples: &[TupleKey]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let now = ts(Utc::now());
        for chunk in tuples.chunks(500) {
            let mut q = sqlx::QueryBuilder::new("INSERT OR IGNORE INTO tuples (store, object_type, object_id, relation, user, user_type, ulid, inserted_at) ");
            q.push_values(chunk, |mut b, t| {
                let (ot, oid) = split(&t.object);
                b.push_bind(store)
                    .push_bind(ot.to_string())
                    .push_bind(oid.to_string())
                    .push_bind(t.relation.clone())
                    .push_bind(t.user.clone())
                    .push_bind(object_type(&t.user).to_string())
                    .push_bind(ulid())
                    .push_bind(now.clone());
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.cache.invalidate(store, tuples.iter());
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
        let rows = sqlx::query(
            "SELECT object_type, object_id, relation, user, inserted_at FROM tuples
             WHERE store = ?1 AND (?2 IS NULL OR object_type = ?2) AND (?3 IS NULL OR object_id = ?3)
               AND (?4 IS NULL OR relation = ?4) AND (?5 IS NULL OR user = ?5)
               AND (object_type, object_id, relation, user) > (?6, ?7, ?8, ?9)
             ORDER BY object_type, object_id, relation, user LIMIT ?10",
        )
        .bind(store)
        .bind(ot)
        .bind(oid)
        .bind(&filter.relation)
        .bind(&filter.user)
        .bind(&after[0])
        .bind(&after[1])
        .bind(&after[2])
        .bind(&after[3])
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let ot: String = r.try_get(0)?;
                let oid: String = r.try_get(1)?;
                Ok(TupleRow {
                    key: TupleKey {
                        object: format!("{ot}:{oid}"),
                        relation: r.try_get(2)?,
                        user: r.try_get(3)?,
                    },
                    timestamp: r.try_get(4)?,
                })
            })
            .collect()
    }

    pub async fn changes(
        &self,
        store: &str,
        object_type: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ChangeRow>> {
        let rows = sqlx::query(
            "SELECT seq, object, relation, user, operation, at FROM changes
             WHERE store = ?1 AND (?2 IS NULL OR object_type = ?2) AND seq > ?3 ORDER BY seq LIMIT ?4",
        )
        .bind(store)
        .bind(object_type)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ChangeRow {
                    seq: r.try_get(0)?,
                    tuple_key: TupleKey {
                        object: r.try_get(1)?,
                        relation: r.try_get(2)?,
                        user: r.try_get(3)?,
                    },
                    operation: r.try_get(4)?,
                    timestamp: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub async fn tuple_count(&self, store: &str) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM tuples WHERE store = ?")
            .bind(store)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }

    /// Tuple count of every store (for metrics).
    pub async fn tuple_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT s.id, (SELECT COUNT(*) FROM tuples t WHERE t.store = s.id) FROM stores s WHERE s.deleted_at IS NULL ORDER BY s.id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// A reader for evaluation in one store.
    pub fn reader(&self, store: &str) -> SqlReader {
        SqlReader {
            pool: self.pool.clone(),
            store: store.to_string(),
            cache: self.cache.clone(),
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

async fn change(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    store: &str,
    t: &TupleKey,
    op: &str,
    now: &str,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO changes (store, object_type, object, relation, user, operation, at) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .bind(store)
        .bind(object_type(&t.object))
        .bind(&t.object)
        .bind(&t.relation)
        .bind(&t.user)
        .bind(op)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn store_row(r: &sqlx::sqlite::SqliteRow) -> Result<StoreRow> {
    Ok(StoreRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        created_at: r.try_get(2)?,
        updated_at: r.try_get(3)?,
    })
}

fn model_row(r: &sqlx::sqlite::SqliteRow) -> Result<AuthorizationModel> {
    serde_json::from_str(&r.try_get::<String, _>(0)?)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// [`TupleReader`] over one store in SQLite; every query uses an index.
pub struct SqlReader {
    pool: SqlitePool,
    store: String,
    cache: Arc<UsersCache>,
}

impl SqlReader {
    /// The users of `object#relation`, through the cache.
    async fn users(
        &self,
        object: &str,
        relation: &str,
    ) -> std::result::Result<Arc<Vec<String>>, EvalError> {
        if let Some(v) = self.cache.get(&self.store, object, relation) {
            return Ok(v);
        }
        let generation = self.cache.generation.load(Ordering::SeqCst);
        let (ot, oid) = split(object);
        let v: Vec<String> = sqlx::query_scalar("SELECT user FROM tuples WHERE store = ? AND object_type = ? AND object_id = ? AND relation = ?")
            .bind(&self.store)
            .bind(ot)
            .bind(oid)
            .bind(relation)
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
        let v = Arc::new(v);
        self.cache.put(
            generation,
            (self.store.clone(), object.to_string(), relation.to_string()),
            v.clone(),
        );
        Ok(v)
    }
}

fn storage(e: sqlx::Error) -> EvalError {
    EvalError::Storage(e.to_string())
}

impl TupleReader for SqlReader {
    fn users_of(
        &self,
        object: &str,
        relation: &str,
    ) -> BoxFuture<'_, std::result::Result<Vec<String>, EvalError>> {
        let (o, r) = (object.to_string(), relation.to_string());
        Box::pin(async move { Ok(self.users(&o, &r).await?.as_ref().clone()) })
    }
    fn exists<'a>(
        &'a self,
        object: &'a str,
        relation: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, std::result::Result<bool, EvalError>> {
        Box::pin(async move {
            Ok(self
                .users(object, relation)
                .await?
                .iter()
                .any(|u| u == user))
        })
    }
    fn objects_of_type<'a>(
        &'a self,
        ty: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Vec<String>, EvalError>> {
        Box::pin(async move {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT object_id FROM tuples WHERE store = ? AND object_type = ?",
            )
            .bind(&self.store)
            .bind(ty)
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
            Ok(ids.into_iter().map(|id| format!("{ty}:{id}")).collect())
        })
    }
    fn users_of_type<'a>(
        &'a self,
        ty: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Vec<String>, EvalError>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT DISTINCT user FROM tuples WHERE store = ? AND user_type = ?")
                .bind(&self.store)
                .bind(ty)
                .fetch_all(&self.pool)
                .await
                .map_err(storage)
        })
    }
    fn by_user<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Vec<(String, String)>, EvalError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT object_type, object_id, relation FROM tuples WHERE store = ? AND user = ?",
            )
            .bind(&self.store)
            .bind(user)
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let t: String = r.try_get(0).map_err(storage)?;
                let id: String = r.try_get(1).map_err(storage)?;
                out.push((format!("{t}:{id}"), r.try_get(2).map_err(storage)?));
            }
            Ok(out)
        })
    }
}
