//! Trains, their events and snapshots.

use super::*;

impl Store {
    /// Append events, write the snapshots of the trains they change, and
    /// the audit rows of the commands among them, in one transaction.
    /// Returns when the transaction is committed.
    pub async fn commit(
        &self,
        events: &[(String, Event, DateTime<Utc>)],
        trains: &[&Train],
        audit: &[(AuditEntry, DateTime<Utc>)],
    ) -> Result<()> {
        let mut conn = self.writer.lock().await;
        let rows = event_rows(events)?;
        // One statement is atomic on its own: most batches (events only, no
        // snapshot) need no BEGIN/COMMIT round trips.
        if trains.is_empty() && audit.is_empty() && rows.len() <= EVENT_CHUNK {
            insert_events(&mut conn, &rows).await?;
            return Ok(());
        }
        // IMMEDIATE: the audit chain's head cannot move before this commits.
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
        for t in trains {
            let state = serde_json::to_string(t).map_err(corrupt)?;
            sqlx::query(
                "INSERT INTO trains (id, pipeline, version, status, started_by, state, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, state = excluded.state,
                     updated_at = excluded.updated_at",
            )
            .bind(&t.spec.id)
            .bind(&t.spec.pipeline)
            .bind(&t.spec.version)
            .bind(t.status.as_str())
            .bind(&t.spec.started_by)
            .bind(state)
            .bind(ts(t.created_at))
            .bind(ts(t.updated_at))
            .execute(&mut *tx)
            .await?;
        }
        for chunk in rows.chunks(EVENT_CHUNK) {
            insert_events(&mut tx, chunk).await?;
        }
        for (entry, at) in audit {
            append_audit(&mut tx, entry, *at).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Events of every train that has not finished, grouped by train, in order.
    pub async fn active_train_events(&self) -> Result<Vec<Vec<(Event, DateTime<Utc>)>>> {
        let rows = sqlx::query(
            "SELECT e.train_id, e.at, e.body FROM events e JOIN trains t ON t.id = e.train_id
             WHERE t.status IN ('queued', 'running', 'rolling_back') ORDER BY e.train_id, e.seq",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<Vec<(Event, DateTime<Utc>)>> = Vec::new();
        let mut last: Option<String> = None;
        for r in rows {
            let id: String = r.try_get(0)?;
            let at = parse_ts(&r.try_get::<String, _>(1)?)?;
            let ev: Event = serde_json::from_str(&r.try_get::<String, _>(2)?).map_err(corrupt)?;
            if last.as_deref() != Some(id.as_str()) {
                out.push(Vec::new());
                last = Some(id);
            }
            if let Some(v) = out.last_mut() {
                v.push((ev, at));
            }
        }
        Ok(out)
    }

    pub async fn get_train(&self, id: &str) -> Result<Option<Train>> {
        let row = sqlx::query("SELECT state FROM trains WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| serde_json::from_str(&r.try_get::<String, _>(0)?).map_err(corrupt))
            .transpose()
    }

    /// The `limit` most recent trains of a pipeline, newest first (their
    /// step records measure the pipeline's step durations for plans).
    pub async fn recent_trains(&self, pipeline: &str, limit: i64) -> Result<Vec<Train>> {
        let rows = sqlx::query(
            "SELECT state FROM trains WHERE pipeline = ? ORDER BY created_at DESC, id DESC LIMIT ?",
        )
        .bind(pipeline)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| serde_json::from_str(&r.try_get::<String, _>(0)?).map_err(corrupt))
            .collect()
    }

    pub async fn list_trains(&self, pipeline: Option<&str>, limit: i64) -> Result<Vec<TrainRow>> {
        Ok(sqlx::query_as(
            "SELECT id, pipeline, version, status, started_by, created_at, updated_at FROM trains
             WHERE (?1 IS NULL OR pipeline = ?1) ORDER BY created_at DESC, id DESC LIMIT ?2",
        )
        .bind(pipeline)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn count_trains_by_status(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM trains GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn train_events(&self, id: &str, after: i64, limit: i64) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT seq, at, body FROM events WHERE train_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    seq: r.try_get(0)?,
                    at: r.try_get(1)?,
                    event: serde_json::from_str(&r.try_get::<String, _>(2)?).map_err(corrupt)?,
                })
            })
            .collect()
    }

    pub async fn count_events(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM events")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }
}

type EventRowText<'a> = (&'a String, String, String);

fn event_rows(events: &[(String, Event, DateTime<Utc>)]) -> Result<Vec<EventRowText<'_>>> {
    events
        .iter()
        .map(|(train, ev, at)| Ok((train, ts(*at), serde_json::to_string(ev).map_err(corrupt)?)))
        .collect()
}

/// Append events with one multi-row INSERT (one round trip to SQLite).
async fn insert_events(conn: &mut sqlx::SqliteConnection, rows: &[EventRowText<'_>]) -> Result<()> {
    let mut q = sqlx::QueryBuilder::new("INSERT INTO events (train_id, at, body) ");
    q.push_values(rows, |mut b, (train, at, body)| {
        b.push_bind(*train).push_bind(at).push_bind(body);
    });
    // Each row count is a new SQL text: keep it out of the statement cache.
    q.build().persistent(false).execute(conn).await?;
    Ok(())
}
