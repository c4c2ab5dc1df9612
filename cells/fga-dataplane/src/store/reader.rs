//! [`SqlReader`]: the evaluator's reads of one store, through the tuple
//! cache when it is on, else by indexed queries only.

use super::split;
use crate::cache::{ObjectTuples, TupleCache};
use crate::engine::{EvalError, TupleReader, Users};
use futures::future::BoxFuture;
use sqlx::AnyPool;
use std::sync::Arc;

/// [`TupleReader`] over one store; every query uses an index.
pub struct SqlReader {
    pub(super) pool: AnyPool,
    pub(super) store: String,
    pub(super) cache: Option<Arc<TupleCache>>,
}

/// Objects with more tuples than this are not cached (each read of them
/// goes to the database, by relation).
const MAX_CACHED_OBJECT: usize = 10_000;

impl SqlReader {
    /// All tuples of `object`, through the cache; `None` without a cache or
    /// for an object too large to cache.
    async fn object(
        &self,
        object: &str,
    ) -> std::result::Result<Option<Arc<ObjectTuples>>, EvalError> {
        let Some(cache) = &self.cache else {
            return Ok(None);
        };
        if let Some(o) = cache.get(&self.store, object) {
            return Ok(Some(o));
        }
        let generation = cache.generation();
        let (ot, oid) = split(object);
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT relation, \"user\" FROM tuples WHERE store = $1 AND object_type = $2 AND object_id = $3 LIMIT $4")
            .bind(&self.store)
            .bind(ot)
            .bind(oid)
            .bind(MAX_CACHED_OBJECT as i64 + 1)
            .fetch_all(&self.pool)
            .await
        .map_err(storage)?;
        if rows.len() > MAX_CACHED_OBJECT {
            return Ok(None);
        }
        let o = Arc::new(ObjectTuples::from_rows(rows));
        cache.put(generation, &self.store, object, o.clone());
        Ok(Some(o))
    }

    /// The users of `object#relation`.
    async fn users(&self, object: &str, relation: &str) -> std::result::Result<Users, EvalError> {
        if let Some(o) = self.object(object).await? {
            return Ok(o.users(relation));
        }
        let (ot, oid) = split(object);
        let v: Vec<String> = sqlx::query_scalar("SELECT \"user\" FROM tuples WHERE store = $1 AND object_type = $2 AND object_id = $3 AND relation = $4")
            .bind(&self.store)
            .bind(ot)
            .bind(oid)
            .bind(relation)
            .fetch_all(&self.pool)
            .await
        .map_err(storage)?;
        Ok(Arc::new(v))
    }

    /// Does the tuple exist? (A point read by primary key when not cached.)
    async fn has(
        &self,
        object: &str,
        relation: &str,
        user: &str,
    ) -> std::result::Result<bool, EvalError> {
        if let Some(o) = self.object(object).await? {
            return Ok(o.contains(relation, user));
        }
        let (ot, oid) = split(object);
        let hit = sqlx::query("SELECT 1 FROM tuples WHERE store = $1 AND object_type = $2 AND object_id = $3 AND relation = $4 AND \"user\" = $5")
            .bind(&self.store)
            .bind(ot)
            .bind(oid)
            .bind(relation)
            .bind(user)
            .fetch_optional(&self.pool)
            .await
        .map_err(storage)?;
        Ok(hit.is_some())
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
    ) -> BoxFuture<'_, std::result::Result<Users, EvalError>> {
        let (o, r) = (object.to_string(), relation.to_string());
        Box::pin(async move { self.users(&o, &r).await })
    }
    fn exists<'a>(
        &'a self,
        object: &'a str,
        relation: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, std::result::Result<bool, EvalError>> {
        Box::pin(self.has(object, relation, user))
    }
    fn objects_of_type<'a>(
        &'a self,
        ty: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Vec<String>, EvalError>> {
        Box::pin(async move {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT object_id FROM tuples WHERE store = $1 AND object_type = $2",
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
            sqlx::query_scalar(
                "SELECT DISTINCT \"user\" FROM tuples WHERE store = $1 AND user_type = $2",
            )
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
            let rows: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT object_type, object_id, relation FROM tuples WHERE store = $1 AND \"user\" = $2",
            )
            .bind(&self.store)
            .bind(user)
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
            Ok(rows
                .into_iter()
                .map(|(t, id, rel)| (format!("{t}:{id}"), rel))
                .collect())
        })
    }
}
