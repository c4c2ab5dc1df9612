//! The audit log: a hash chain, each row written in the same transaction
//! as the change it records.
//!
//! Every row holds the hash of the row before it (`prev_hash`; 64 zeros for
//! the first) and its own `hash`: SHA-256 over `prev_hash` and the row's
//! fields. Changing, removing or reordering a row breaks the chain at that
//! row; [`Store::verify_audit`] finds the first broken link. Triggers
//! refuse UPDATE and DELETE and an INSERT that does not extend the chain;
//! someone with write access to the file can drop them and rewrite the
//! whole chain, which only an anchor kept elsewhere (a `seq` and its hash)
//! reveals.

use super::*;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows per page when the chain is walked.
const PAGE: i64 = 5000;

/// Who did what to what: one audit row before it is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

impl AuditEntry {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> AuditEntry {
        AuditEntry {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

/// The hash of a row: SHA-256 over the previous row's hash and the row's
/// fields, each prefixed by its length (so no two rows collide by moving
/// text from one field to the next).
pub fn row_hash(
    prev: &str,
    at: &str,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    for f in [prev, at, actor, action, target, detail] {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Append one row to the chain. Must run inside a transaction that holds
/// the write lock ([`Store::begin_write`], or after the change's own writes
/// on SQLite), so that no other row lands between reading the chain's head
/// and writing. On PostgreSQL the row's `seq` is the head's plus one,
/// written out (a sequence would skip the numbers of rolled-back rows); on
/// SQLite AUTOINCREMENT numbers it, so that a removed tail leaves a gap.
pub(crate) async fn append_audit(
    conn: &mut AnyConnection,
    backend: Backend,
    e: &AuditEntry,
    now: DateTime<Utc>,
) -> Result<i64> {
    let head: Option<(i64, Option<String>)> =
        sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    let (next, prev) = match head {
        None => (1, GENESIS.to_string()),
        Some((s, Some(h))) => (s + 1, h),
        Some((_, None)) => {
            return Err(StoreError::Corrupt(
                "the newest audit row is not chained".into(),
            ))
        }
    };
    let seq = (backend == Backend::Postgres).then_some(next);
    let at = ts(now);
    let hash = row_hash(&prev, &at, &e.actor, &e.action, &e.target, &e.detail);
    let seq: i64 = sqlx::query(
        "INSERT INTO audit (seq, at, actor, action, target, detail, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq",
    )
    .bind(seq)
    .bind(&at)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.target)
    .bind(&e.detail)
    .bind(&prev)
    .bind(&hash)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    Ok(seq)
}

/// The first link of the chain that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    /// The row at which the chain breaks (for a removed tail: the last row).
    pub seq: i64,
    pub problem: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub rows: i64,
    /// The newest row's `seq` and hash: keep it elsewhere as an anchor.
    pub head: Option<(i64, String)>,
    pub first_broken: Option<BrokenLink>,
    /// Whether the anchor asked for is still in the chain.
    pub anchor_found: Option<bool>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.first_broken.is_none() && self.anchor_found != Some(false)
    }
}

/// Walks rows in `seq` order and finds the first broken link (pure).
#[derive(Debug)]
pub struct ChainCheck {
    prev: Option<(i64, String)>,
    pub rows: i64,
    pub broken: Option<BrokenLink>,
    anchor: Option<(i64, String)>,
    pub anchor_found: Option<bool>,
}

impl ChainCheck {
    pub fn new(anchor: Option<(i64, String)>) -> ChainCheck {
        ChainCheck {
            prev: None,
            rows: 0,
            broken: None,
            anchor_found: anchor.as_ref().map(|_| false),
            anchor,
        }
    }

    /// The newest row seen (seq, hash).
    pub fn head(&self) -> Option<&(i64, String)> {
        self.prev.as_ref()
    }

    fn fail(&mut self, seq: i64, problem: String) {
        if self.broken.is_none() {
            self.broken = Some(BrokenLink { seq, problem });
        }
    }

    pub fn push(&mut self, r: &AuditRow) {
        self.rows += 1;
        let (Some(prev_hash), Some(hash)) = (&r.prev_hash, &r.hash) else {
            self.fail(
                r.seq,
                format!("row {} is not chained (it has no hash)", r.seq),
            );
            return;
        };
        match &self.prev {
            None if prev_hash != GENESIS => self.fail(
                r.seq,
                format!(
                    "row {} is the first row but links to an earlier one: the rows before it were removed",
                    r.seq
                ),
            ),
            Some((pseq, phash)) if prev_hash != phash => self.fail(
                r.seq,
                format!(
                    "row {} does not link to row {pseq}: a row between them was removed, or row {pseq} was changed",
                    r.seq
                ),
            ),
            Some((pseq, _)) if r.seq != pseq + 1 => self.fail(
                r.seq,
                format!("rows {} to {} are missing", pseq + 1, r.seq - 1),
            ),
            _ => {}
        }
        let want = row_hash(prev_hash, &r.at, &r.actor, &r.action, &r.target, &r.detail);
        if &want != hash {
            self.fail(
                r.seq,
                format!(
                    "row {} was changed after it was written (its hash does not match its contents)",
                    r.seq
                ),
            );
        }
        if let Some((aseq, ahash)) = &self.anchor {
            if *aseq == r.seq {
                self.anchor_found = Some(ahash == hash);
            }
        }
        self.prev = Some((r.seq, hash.clone()));
    }
}

const TRIGGERS: [&str; 3] = ["audit_no_update", "audit_no_delete", "audit_chained"];
/// PostgreSQL's also refuse TRUNCATE.
const PG_TRIGGERS: [&str; 4] = [
    "audit_no_update",
    "audit_no_delete",
    "audit_chained",
    "audit_no_truncate",
];

impl Store {
    /// Append one audit row on its own (for calls whose only write is the
    /// row, e.g. a push to another service).
    pub async fn audit(&self, e: &AuditEntry, now: DateTime<Utc>) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let seq = append_audit(&mut tx, self.backend, e, now).await?;
        tx.commit().await?;
        Ok(seq)
    }

    pub async fn audit_log(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>> {
        Ok(sqlx::query_as(
            "SELECT seq, at, actor, action, target, detail, prev_hash, hash FROM audit
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Chain the rows written before the log was a chain (earlier
    /// releases), in `seq` order, after the chained ones if any.
    pub(super) async fn chain_unchained_audit(&self) -> Result<usize> {
        let mut tx = self.begin_write().await?;
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT seq, at, actor, action, target, detail, prev_hash, hash FROM audit
             WHERE hash IS NULL ORDER BY seq",
        )
        .fetch_all(&mut *tx)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(0);
        };
        let before: Option<(Option<String>,)> =
            sqlx::query_as("SELECT hash FROM audit WHERE seq < $1 ORDER BY seq DESC LIMIT 1")
                .bind(first.seq)
                .fetch_optional(&mut *tx)
                .await?;
        let mut prev = match before {
            None => GENESIS.to_string(),
            Some((Some(h),)) => h,
            Some((None,)) => return Err(StoreError::Corrupt("audit chain out of order".into())),
        };
        for r in &rows {
            let hash = row_hash(&prev, &r.at, &r.actor, &r.action, &r.target, &r.detail);
            sqlx::query(
                "UPDATE audit SET prev_hash = $1, hash = $2 WHERE seq = $3 AND hash IS NULL",
            )
            .bind(&prev)
            .bind(&hash)
            .bind(r.seq)
            .execute(&mut *tx)
            .await?;
            prev = hash;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Walk the whole chain and report the first broken link. Also
    /// detects a removed tail while SQLite's sequence still remembers it,
    /// dropped (on PostgreSQL also disabled) triggers, and (with `anchor`) a chain rewritten from an
    /// earlier row on.
    pub async fn verify_audit(&self, anchor: Option<(i64, String)>) -> Result<AuditReport> {
        let mut check = ChainCheck::new(anchor);
        let mut after = 0;
        loop {
            let page = self.audit_log(after, PAGE).await?;
            for r in &page {
                check.push(r);
            }
            match page.last() {
                Some(r) if page.len() as i64 == PAGE => after = r.seq,
                _ => break,
            }
        }
        let head = check.head().cloned();
        let last_seq = head.as_ref().map_or(0, |h| h.0);
        if self.backend == Backend::Sqlite {
            let seq: Option<(i64,)> =
                sqlx::query_as("SELECT seq FROM sqlite_sequence WHERE name = 'audit'")
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some((top,)) = seq {
                if top > last_seq {
                    check.fail(
                        last_seq,
                        format!(
                            "rows after {last_seq} were removed: rows up to {top} were written"
                        ),
                    );
                }
            }
        }
        let triggers: &[&str] = match self.backend {
            Backend::Sqlite => &TRIGGERS,
            Backend::Postgres => &PG_TRIGGERS,
        };
        for t in triggers {
            // PostgreSQL: a disabled trigger counts as dropped.
            let sql = match self.backend {
                Backend::Sqlite => {
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name = $1"
                }
                Backend::Postgres => {
                    "SELECT tgname::text FROM pg_trigger
                     WHERE tgrelid = 'audit'::regclass AND tgname = $1 AND tgenabled <> 'D'"
                }
            };
            let found: Option<(String,)> = sqlx::query_as(sql)
                .bind(*t)
                .fetch_optional(&self.pool)
                .await?;
            if found.is_none() {
                check.fail(
                    last_seq,
                    format!("the trigger {t} that keeps the log append-only was dropped"),
                );
            }
        }
        Ok(AuditReport {
            rows: check.rows,
            head,
            first_broken: check.broken,
            anchor_found: check.anchor_found,
        })
    }
}
