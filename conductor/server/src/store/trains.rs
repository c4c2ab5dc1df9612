//! Trains, their events and snapshots.

use super::*;

/// An event to append: its train, its number within the train (1, 2, …:
/// the unique index on `(train_id, train_seq)` refuses a number taken by
/// another writer), the event and its time.
pub type NewEvent = (String, i64, Event, DateTime<Utc>);

/// What one engine commit writes, in one transaction: all of it, or
/// (fenced, an event number taken, an error) none of it.
#[derive(Clone, Copy, Default)]
pub struct Commit<'a> {
    /// Events, numbered within their trains.
    pub events: &'a [NewEvent],
    /// Snapshots of the trains they change.
    pub trains: &'a [&'a Train],
    /// Audit rows of the accepted commands and recorded outcomes.
    pub audit: &'a [(AuditEntry, DateTime<Utc>)],
    /// Cell version changes the events report (versions and deploy log).
    pub changes: &'a [CellChange],
    /// Finished resizes, each with the cell's new spec if it succeeded.
    pub resizes: &'a [ResizeDone],
    /// Cells' new lifecycle statuses (drain, retire).
    pub statuses: &'a [CellStatusChange],
}

impl Store {
    /// Append events, write the snapshots of the trains they change, and
    /// the audit rows of the commands among them, in one transaction.
    /// Returns when the transaction is committed. When the store is fenced
    /// ([`Store::set_fence`]), the leadership's epoch must still be the
    /// fence's, checked in the same transaction: else nothing is written
    /// and the error is [`StoreError::Fenced`].
    pub async fn commit(
        &self,
        events: &[NewEvent],
        trains: &[&Train],
        audit: &[(AuditEntry, DateTime<Utc>)],
    ) -> Result<()> {
        self.commit_all(events, trains, audit, &[]).await
    }

    /// [`Store::commit`] with the cell version changes the events report
    /// (each a `cell_versions` upsert and a `deploy_log` row), in the same
    /// transaction: all of it is written, or (fenced, a sequence number
    /// taken, an error) none of it.
    pub async fn commit_all(
        &self,
        events: &[NewEvent],
        trains: &[&Train],
        audit: &[(AuditEntry, DateTime<Utc>)],
        changes: &[CellChange],
    ) -> Result<()> {
        self.commit_batch(&Commit {
            events,
            trains,
            audit,
            changes,
            ..Default::default()
        })
        .await
    }

    /// Write one engine commit ([`Commit`]) in one transaction.
    pub async fn commit_batch(&self, c: &Commit<'_>) -> Result<()> {
        let mut conn = self.writer.lock().await;
        let r = self.commit_on(&mut conn, c).await;
        // A PostgreSQL connection can break (the server restarted, the
        // network): the engine retries, on a new connection.
        if let Err(StoreError::Db(e)) = &r {
            if self.backend == Backend::Postgres && connection_lost(e) {
                match sqlx::Connection::connect(&self.url).await {
                    Ok(c) => *conn = c,
                    Err(e) => tracing::warn!(error = %e, "cannot reconnect the event writer"),
                }
            }
        }
        r
    }

    async fn commit_on(&self, conn: &mut AnyConnection, c: &Commit<'_>) -> Result<()> {
        let Commit {
            events,
            trains,
            audit,
            changes,
            resizes,
            statuses,
        } = *c;
        let fence = self.fence.load(Ordering::SeqCst);
        let rows = event_rows(events)?;
        // One statement is atomic on its own: most batches (events only, no
        // snapshot) need no BEGIN/COMMIT round trips. Fenced, the statement
        // inserts its rows only if the epoch is still ours.
        if trains.is_empty()
            && audit.is_empty()
            && changes.is_empty()
            && resizes.is_empty()
            && statuses.is_empty()
            && rows.len() <= max_rows(self.backend)
        {
            let n = insert_events(conn, self.backend, &rows, fence).await?;
            if n < rows.len() as u64 {
                return Err(self.fenced(conn, fence).await);
            }
            return Ok(());
        }
        let mut tx = match self.backend {
            // IMMEDIATE: the audit chain's head cannot move before this commits.
            Backend::Sqlite => sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE").await?,
            Backend::Postgres => {
                let mut tx = sqlx::Connection::begin(conn).await?;
                if !audit.is_empty() {
                    connect::write_lock(&mut tx).await?;
                }
                tx
            }
        };
        // Roll back at once on an error: a transaction left open on the
        // writer's connection would keep its locks (PostgreSQL: the
        // leadership row read FOR SHARE, which a replica claiming the
        // leadership waits for) until the connection's next use.
        match self.write_commit(&mut tx, c, &rows).await {
            Ok(()) => tx.commit().await?,
            Err(e) => {
                if let Err(r) = tx.rollback().await {
                    tracing::warn!(error = %r, "rolling back a refused commit failed");
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// The writes of [`Store::commit_on`], inside its transaction.
    async fn write_commit(
        &self,
        tx: &mut AnyConnection,
        c: &Commit<'_>,
        rows: &[EventRowText<'_>],
    ) -> Result<()> {
        self.check_fence(tx).await?;
        for t in c.trains {
            let state = serde_json::to_string(t).map_err(corrupt)?;
            sqlx::query(
                "INSERT INTO trains (id, pipeline, version, status, started_by, state, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
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
        for chunk in rows.chunks(max_rows(self.backend)) {
            // Checked above, under the transaction's lock.
            insert_events(tx, self.backend, chunk, 0).await?;
        }
        super::deploys::write_changes(tx, self.backend, c.changes).await?;
        for r in c.resizes {
            super::cells::write_resize_done(tx, r).await?;
        }
        for st in c.statuses {
            super::cells::write_status(tx, st).await?;
        }
        for (entry, at) in c.audit {
            append_audit(tx, self.backend, entry, *at).await?;
        }
        Ok(())
    }

    /// The error of a fenced append that wrote nothing.
    async fn fenced(&self, conn: &mut AnyConnection, ours: i64) -> StoreError {
        match leadership::epoch_in(conn, self.backend).await {
            Ok(current) => StoreError::Fenced { ours, current },
            Err(e) => e,
        }
    }

    /// How many events of train `id` are stored (its highest `train_seq`).
    pub async fn train_event_count(&self, id: &str) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COALESCE(MAX(train_seq), 0) FROM events WHERE train_id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }

    /// Events of every train that has not finished, grouped by train, in order.
    pub async fn active_train_events(&self) -> Result<Vec<Vec<(Event, DateTime<Utc>)>>> {
        let rows = sqlx::query(
            "SELECT e.train_id, e.at, e.body FROM events e JOIN trains t ON t.id = e.train_id
             WHERE t.status IN ('queued', 'running', 'rolling_back') ORDER BY e.train_id, e.train_seq",
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
        let row = sqlx::query("SELECT state FROM trains WHERE id = $1")
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
            "SELECT state FROM trains WHERE pipeline = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
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
             WHERE ($1 IS NULL OR pipeline = $1) ORDER BY created_at DESC, id DESC LIMIT $2",
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
            "SELECT seq, at, body FROM events WHERE train_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
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

/// Is the connection gone: a transport error, or the server closing it
/// (SQLSTATE class 08, connection exception; 57P, operator intervention,
/// e.g. a shutdown or pg_terminate_backend)?
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => true,
    }
}

type EventRowText<'a> = (&'a String, i64, String, String);

fn event_rows(events: &[NewEvent]) -> Result<Vec<EventRowText<'_>>> {
    events
        .iter()
        .map(|(train, n, ev, at)| {
            Ok((
                train,
                *n,
                ts(*at),
                serde_json::to_string(ev).map_err(corrupt)?,
            ))
        })
        .collect()
}

/// Make the event writer's first commit cost what the others do: run each
/// append statement once with no rows (so that it is prepared and cached
/// on the writer's connection, and PostgreSQL's new session has loaded the
/// tables' catalog entries), and read the train table.
pub(super) async fn warm_writer(conn: &mut AnyConnection, backend: Backend) -> Result<()> {
    let none: [EventRowText<'_>; 0] = [];
    match backend {
        Backend::Postgres => {
            for fence in [0, -1] {
                insert_events(conn, backend, &none, fence).await?;
            }
        }
        Backend::Sqlite => {
            for n in PADDED_ROWS {
                for fence in [0, -1] {
                    insert_padded(conn, &none, n, fence).await?;
                }
            }
        }
    }
    sqlx::query("SELECT state FROM trains WHERE id = $1")
        .bind("")
        .fetch_optional(conn)
        .await?;
    Ok(())
}

/// SQLite: row counts of the event INSERTs. A batch's rows are padded with
/// NULL rows (skipped by the statement) up to the next of these, so that
/// the few statements are prepared once per connection and then cached (a
/// new SQL text per batch size costs a prepare per commit, about as long
/// as inserting the rows). PostgreSQL takes any number of rows in one
/// statement.
const PADDED_ROWS: [usize; 4] = [16, 64, 256, 1024];

/// The most events one INSERT appends.
fn max_rows(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => PADDED_ROWS[PADDED_ROWS.len() - 1],
        Backend::Postgres => usize::MAX,
    }
}

/// SQLite: the INSERT of up to `rows` events (NULL rows skipped), fenced
/// or not. Anonymous `?`: sqlx looks up each numbered parameter's name, a
/// linear search in SQLite, so that binding N numbered ones costs N^2.
fn sqlite_insert(rows: usize, fenced: bool) -> &'static str {
    use std::sync::OnceLock;
    static SQL: [[OnceLock<String>; 2]; PADDED_ROWS.len()] =
        [const { [const { OnceLock::new() }; 2] }; PADDED_ROWS.len()];
    let r = PADDED_ROWS
        .iter()
        .position(|&n| n == rows)
        .unwrap_or(PADDED_ROWS.len() - 1);
    SQL[r][usize::from(fenced)].get_or_init(|| {
        let mut sql = String::with_capacity(120 + rows * 14);
        sql.push_str("INSERT INTO events (train_id, train_seq, at, body) SELECT * FROM (VALUES ");
        for i in 0..rows {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?)"
            });
        }
        sql.push_str(") AS v WHERE v.column1 IS NOT NULL");
        if fenced {
            sql.push_str(" AND (SELECT epoch FROM leadership WHERE id = 1) = ?");
        }
        sql
    })
}

/// PostgreSQL: one statement for any number of events, given as one JSON
/// array (one parameter; the statement is prepared once and cached), in
/// their order. Fenced, the leadership row is read FOR SHARE, so that a
/// claim waits for this statement.
const PG_INSERT: &str = "INSERT INTO events (train_id, train_seq, at, body)
    SELECT r.t, r.n, r.a, r.b
    FROM ROWS FROM (json_to_recordset($1::JSON) AS (t TEXT, n BIGINT, a TEXT, b TEXT))
        WITH ORDINALITY AS r (t, n, a, b, i)
    ORDER BY r.i";
const PG_INSERT_FENCED: &str = "INSERT INTO events (train_id, train_seq, at, body)
    SELECT r.t, r.n, r.a, r.b
    FROM ROWS FROM (json_to_recordset($1::JSON) AS (t TEXT, n BIGINT, a TEXT, b TEXT))
        WITH ORDINALITY AS r (t, n, a, b, i)
    WHERE EXISTS (SELECT 1 FROM leadership WHERE id = 1 AND epoch = $2 FOR SHARE)
    ORDER BY r.i";

#[derive(serde::Serialize)]
struct PgRow<'a> {
    t: &'a str,
    n: i64,
    a: &'a str,
    b: &'a str,
}

/// Append up to [`max_rows`] events with one INSERT (one round trip). With
/// a fence (not 0), the rows are inserted only if the leadership's epoch is
/// the fence; returns how many were inserted. A number already taken in
/// its train is [`StoreError::SequenceTaken`].
async fn insert_events(
    conn: &mut AnyConnection,
    backend: Backend,
    rows: &[EventRowText<'_>],
    fence: i64,
) -> Result<u64> {
    if backend == Backend::Sqlite {
        let padded = PADDED_ROWS
            .iter()
            .copied()
            .find(|&n| n >= rows.len())
            .unwrap_or(max_rows(backend));
        return insert_padded(conn, rows, padded, fence).await;
    }
    let v: Vec<PgRow> = rows
        .iter()
        .map(|(t, n, a, b)| PgRow {
            t: t.as_str(),
            n: *n,
            a: a.as_str(),
            b: b.as_str(),
        })
        .collect();
    let json = serde_json::to_string(&v).map_err(corrupt)?;
    let q = if fence != 0 {
        sqlx::query(PG_INSERT_FENCED)
            .bind(json.as_str())
            .bind(fence)
    } else {
        sqlx::query(PG_INSERT).bind(json.as_str())
    };
    run_insert(conn, q).await
}

/// SQLite: append `rows` (at most `padded`) with the statement of
/// `padded` rows, the rest bound as NULL rows.
async fn insert_padded(
    conn: &mut AnyConnection,
    rows: &[EventRowText<'_>],
    padded: usize,
    fence: i64,
) -> Result<u64> {
    let mut q = sqlx::query(sqlite_insert(padded, fence != 0));
    for (train, n, at, body) in rows {
        q = q
            .bind(train.as_str())
            .bind(*n)
            .bind(at.as_str())
            .bind(body.as_str());
    }
    for _ in rows.len()..padded {
        q = q
            .bind(None::<&str>)
            .bind(None::<i64>)
            .bind(None::<&str>)
            .bind(None::<&str>);
    }
    if fence != 0 {
        q = q.bind(fence);
    }
    run_insert(conn, q).await
}

async fn run_insert<'q>(
    conn: &mut AnyConnection,
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
) -> Result<u64> {
    match q.execute(conn).await {
        Ok(r) => Ok(r.rows_affected()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(StoreError::SequenceTaken(format!(
                "an event was numbered as one already stored in its train (another Conductor appended to it); nothing was written: {e}"
            )))
        }
        Err(e) => Err(e.into()),
    }
}
