//! The event stream: committed events in commit order, from a position.
//!
//! The global `events.seq` is the stream's position. One writer (the
//! engine, on the leader) commits batches serially, so seq order is commit
//! order and a reader that has seen `seq = n` has seen everything before
//! it. Queries are written with `$N` placeholders and read only integer
//! and text columns, so they run unchanged on SQLite and PostgreSQL.

use super::*;

/// One committed event, as streams serve it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamEvent {
    pub seq: i64,
    pub train_id: String,
    pub at: String,
    pub event: serde_json::Value,
}

impl Store {
    /// Up to `limit` events with `seq > after_seq`, oldest first, of one
    /// train or of every train.
    pub async fn events_after(
        &self,
        after_seq: i64,
        train: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StreamEvent>> {
        let q = match train {
            Some(t) => sqlx::query(
                "SELECT seq, train_id, at, body FROM events
                 WHERE train_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(t.to_string()),
            None => sqlx::query(
                "SELECT seq, train_id, at, body FROM events
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            ),
        };
        let rows = q.bind(after_seq).bind(limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(StreamEvent {
                    seq: r.try_get(0)?,
                    train_id: r.try_get(1)?,
                    at: r.try_get(2)?,
                    event: serde_json::from_str(&r.try_get::<String, _>(3)?).map_err(corrupt)?,
                })
            })
            .collect()
    }

    /// The highest committed seq (0: no event yet).
    pub async fn last_event_seq(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }

    /// A train's stored status (None: no such train). Its snapshot is
    /// written in the same transaction as the events that change its
    /// status, so a finished status here means every event that finished
    /// it is committed.
    pub async fn train_status(&self, id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT status FROM trains WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }
}
