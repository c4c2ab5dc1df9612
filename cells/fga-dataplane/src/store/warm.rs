//! Warming the tuple cache at start: every store's objects in key order,
//! while the cache has room, safe beside traffic.

use super::{Db, Result};
use crate::cache::ObjectTuples;
use std::sync::Arc;

impl Db {
    /// Fill the tuple cache with a store's objects, in key order, while it
    /// has room (objects too large to cache are skipped). Safe beside
    /// traffic: a page read while a write commits is simply not kept.
    /// Returns how many tuples were cached.
    pub async fn warm_cache(&self, store: &str) -> Result<usize> {
        const PAGE: i64 = 20_000;
        let Some(cache) = &self.tuples else {
            return Ok(0);
        };
        let mut after = [String::new(), String::new(), String::new(), String::new()];
        let mut cached = 0usize;
        loop {
            if !cache.has_room(PAGE as usize) {
                break;
            }
            let generation = cache.generation();
            let rows: Vec<(String, String, String, String)> = sqlx::query_as(
                "SELECT object_type, object_id, relation, \"user\" FROM tuples
                 WHERE store = $1 AND (object_type, object_id, relation, \"user\") > ($2, $3, $4, $5)
                 ORDER BY object_type, object_id, relation, \"user\" LIMIT $6",
            )
            .bind(store)
            .bind(&after[0])
            .bind(&after[1])
            .bind(&after[2])
            .bind(&after[3])
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            let full = rows.len() as i64 == PAGE;
            let Some(last) = rows.last().cloned() else {
                break;
            };
            // Group by object; the page's last object may go on in the next
            // page, so it is left for that page (or skipped, when it alone
            // fills a page: too large to cache).
            // ((object type, object id), [(relation, user)])
            type Rows = Vec<(String, String)>;
            let mut objects: Vec<((String, String), Rows)> = Vec::new();
            for (ot, oid, rel, user) in rows {
                match objects.last_mut() {
                    Some((key, v)) if key.0 == ot && key.1 == oid => v.push((rel, user)),
                    _ => objects.push(((ot, oid), vec![(rel, user)])),
                }
            }
            if full {
                if objects.len() > 1 {
                    objects.pop();
                    after = [last.0, last.1, String::new(), String::new()];
                } else {
                    // One object alone fills a page: skip past all of it.
                    after = [
                        last.0,
                        format!("{}\u{0}", last.1),
                        String::new(),
                        String::new(),
                    ];
                    continue;
                }
            }
            let n: usize = objects.iter().map(|(_, v)| v.len()).sum();
            let kept = cache.put_many(
                generation,
                store,
                objects.into_iter().map(|((ot, oid), v)| {
                    (format!("{ot}:{oid}"), Arc::new(ObjectTuples::from_rows(v)))
                }),
            );
            if kept {
                cached += n;
            }
            if !full {
                break;
            }
        }
        Ok(cached)
    }

    /// Warm the cache with every store, oldest first, while it has room.
    pub async fn warm_cache_all(&self) -> Result<usize> {
        let mut total = 0;
        let mut after = String::new();
        loop {
            let stores = self.list_stores(&after, 100, None).await?;
            let Some(last) = stores.last() else { break };
            after = last.id.clone();
            for s in &stores {
                total += self.warm_cache(&s.id).await?;
            }
        }
        Ok(total)
    }
}
