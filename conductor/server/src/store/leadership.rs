//! The leadership: one row (`id = 1`) holding the epoch, who holds it, at
//! which address, since when. A Conductor claims it (epoch + 1) and fences
//! its appends with the epoch it got: once another claims, they fail.

use super::*;

type Opt = Option<String>;

/// Who leads, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderRow {
    pub epoch: i64,
    pub holder: String,
    pub address: String,
    pub since: String,
}

/// The leadership's epoch, inside a transaction (PostgreSQL: read FOR
/// SHARE, so that a concurrent claim waits until this transaction ends).
pub(super) async fn epoch_in(conn: &mut AnyConnection, backend: Backend) -> Result<i64> {
    let sql = match backend {
        Backend::Sqlite => "SELECT epoch FROM leadership WHERE id = 1",
        Backend::Postgres => "SELECT epoch FROM leadership WHERE id = 1 FOR SHARE",
    };
    let row: Option<(i64,)> = sqlx::query_as(sql).fetch_optional(conn).await?;
    row.map(|r| r.0)
        .ok_or_else(|| StoreError::Corrupt("the leadership row is missing".into()))
}

impl Store {
    /// Claim the leadership: the epoch goes up by one, atomically, and is
    /// returned. Appends fenced with an earlier epoch fail from now on.
    pub async fn claim_leadership(
        &self,
        holder: &str,
        address: &str,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE leadership SET epoch = epoch + 1, holder = $1, address = $2, since = $3
             WHERE id = 1 RETURNING epoch",
        )
        .bind(holder)
        .bind(address)
        .bind(ts(now))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.0)
            .ok_or_else(|| StoreError::Corrupt("the leadership row is missing".into()))
    }

    /// The current leader, if anyone ever claimed the leadership.
    pub async fn leader(&self) -> Result<Option<LeaderRow>> {
        let row: Option<(i64, Opt, Opt, Opt)> =
            sqlx::query_as("SELECT epoch, holder, address, since FROM leadership WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some((epoch, Some(holder), address, since)) if epoch > 0 => Some(LeaderRow {
                epoch,
                holder,
                address: address.unwrap_or_default(),
                since: since.unwrap_or_default(),
            }),
            _ => None,
        })
    }

    /// Append events only while the leadership's epoch is `epoch` (0: no
    /// fence, as in tests and a single Conductor). Shared by every clone.
    pub fn set_fence(&self, epoch: i64) {
        self.fence.store(epoch, Ordering::SeqCst);
    }

    /// The epoch appends are fenced with, if any.
    pub fn fence(&self) -> Option<i64> {
        Some(self.fence.load(Ordering::SeqCst)).filter(|e| *e != 0)
    }
}
