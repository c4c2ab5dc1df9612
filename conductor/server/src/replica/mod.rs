//! Replicas: several Conductors on one PostgreSQL database, one of which
//! (the leader) runs the engine, its timers, leases, resizes and the cells.
//!
//! The leader is elected through the database: it holds a session-level
//! advisory lock on a connection of its own, and then claims the next
//! *epoch* of the `leadership` row (its fencing token). Every event append
//! checks that epoch in the append's transaction (`Store::set_fence`), so
//! a deposed leader can never commit again, even before it notices. When the
//! leader dies its connection closes, PostgreSQL releases the lock, and the
//! next replica to ask takes it, replays the committed log and carries on.
//! A leader that can no longer reach its lock connection exits (its
//! supervisor restarts it as a follower).
//!
//! On SQLite there is one Conductor per database file: an exclusive lock
//! on a file beside the database refuses a second one, and that one leads.
//!
//! `front` serves the API on every replica: the leader answers everything,
//! a follower forwards to the leader and answers reads itself while no
//! leader can be reached.

use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod front;

/// The advisory lock key of the Conductor's leadership ("cndctr" in hex).
const LOCK_KEY: i64 = 0x636e_6463_7472;

/// How often a follower asks for the lock, and the leader checks it still
/// holds it.
pub const ELECTION_INTERVAL: Duration = Duration::from_millis(500);
/// Longest a leader waits for its lock connection to answer before it
/// assumes the lock is lost.
const LOCK_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Exit status of a leader that lost its leadership.
pub const EXIT_DEPOSED: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("database error during the election: {0}")]
    Db(#[from] sqlx::Error),
    #[error("another Conductor already uses {path} (one Conductor per SQLite database; run replicas on PostgreSQL)")]
    Busy { path: PathBuf },
    #[error("locking {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Who this replica is, as other replicas and operators see it.
#[derive(Debug, Clone)]
pub struct Me {
    /// Unique per process: `host:pid:random`.
    pub id: String,
    /// Where its API answers (followers forward there).
    pub address: String,
}

impl Me {
    pub fn new(address: &str) -> Me {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let mut b = [0u8; 4];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
        Me {
            id: format!("{host}:{}:{}", std::process::id(), hex::encode(b)),
            address: address.to_string(),
        }
    }
}

/// The leadership this replica holds.
pub struct Leadership {
    pub epoch: i64,
}

/// Run for leadership until this replica has it.
pub enum Elector {
    /// SQLite: the one Conductor of the database file (it holds an
    /// exclusive lock on `DB.lock` from before it opens the database).
    Single { _lock: std::fs::File },
    /// PostgreSQL: an advisory lock on a connection of our own.
    Postgres { url: String },
}

impl Elector {
    /// The elector of a SQLite database: fails at once if another process
    /// uses the database. Call it before opening the database.
    pub fn single(db: &Path) -> Result<Elector, ElectionError> {
        Ok(Elector::Single {
            _lock: lock_file(db)?,
        })
    }

    /// Become the leader: at once on SQLite (or fail if another process
    /// has the database); on PostgreSQL, wait until no other replica holds
    /// the lock. `on_wait` is called once if the lock is taken by another.
    pub async fn campaign(
        &self,
        store: &Store,
        me: &Me,
        now: impl Fn() -> DateTime<Utc>,
        on_wait: impl FnOnce(),
    ) -> Result<Leadership, ElectionError> {
        match self {
            Elector::Single { .. } => {
                let epoch = store.claim_leadership(&me.id, &me.address, now()).await?;
                store.set_fence(epoch);
                Ok(Leadership { epoch })
            }
            Elector::Postgres { url } => {
                let mut on_wait = Some(on_wait);
                let conn = loop {
                    match try_lock(url).await {
                        Ok(Some(conn)) => break conn,
                        Ok(None) => {
                            if let Some(f) = on_wait.take() {
                                f();
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot ask for the leadership; retrying")
                        }
                    }
                    tokio::time::sleep(ELECTION_INTERVAL).await;
                };
                let epoch = store.claim_leadership(&me.id, &me.address, now()).await?;
                store.set_fence(epoch);
                tokio::spawn(watch_lock(conn, epoch));
                Ok(Leadership { epoch })
            }
        }
    }
}

/// A new connection that holds the leadership lock, or None if another
/// session holds it.
async fn try_lock(url: &str) -> Result<Option<sqlx::AnyConnection>, sqlx::Error> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    // A leader whose machine vanishes (no FIN) is noticed by the server in
    // about 5 + 2 * 3 s, and its lock released.
    for set in [
        "SET tcp_keepalives_idle = 5",
        "SET tcp_keepalives_interval = 2",
        "SET tcp_keepalives_count = 3",
    ] {
        sqlx::query(set).execute(&mut conn).await?;
    }
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut conn)
        .await?;
    if got {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

/// The leader's check that it still holds the lock: if its connection
/// stops answering, another replica may have the lock by now, so this
/// process stops at once (its appends are fenced anyway).
async fn watch_lock(mut conn: sqlx::AnyConnection, epoch: i64) {
    loop {
        tokio::time::sleep(ELECTION_INTERVAL).await;
        let q = sqlx::query_scalar::<_, i64>("SELECT $1").bind(epoch);
        match tokio::time::timeout(LOCK_CHECK_TIMEOUT, q.fetch_one(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => deposed(&format!("the leadership lock's connection failed: {e}")),
            Err(_) => deposed("the leadership lock's connection stopped answering"),
        }
    }
}

/// This process may no longer lead: stop now, loudly.
pub fn deposed(why: &str) -> ! {
    tracing::error!(
        reason = why,
        "lost the leadership; stopping (a supervisor restarts this replica as a follower)"
    );
    eprintln!("conductor: lost the leadership ({why}); stopping");
    std::process::exit(EXIT_DEPOSED)
}

/// An exclusive lock on `DB.lock`, held while the returned file is open
/// (the kernel releases it when the process dies, even by kill -9).
#[allow(unsafe_code)]
fn lock_file(db: &Path) -> Result<std::fs::File, ElectionError> {
    use std::os::fd::AsRawFd;
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| ElectionError::Lock {
                path: path.clone(),
                source,
            })?
    };
    // SAFETY: flock(2) on a descriptor this function owns.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            ElectionError::Busy { path: db.into() }
        } else {
            ElectionError::Lock { path, source: err }
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_process_cannot_lock_the_same_sqlite_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("conductor.db");
        let first = lock_file(&db).expect("first lock");
        // flock locks belong to the open file description: a second open
        // (as a second process would do) is refused while the first holds it.
        assert!(matches!(lock_file(&db), Err(ElectionError::Busy { .. })));
        drop(first);
        lock_file(&db).expect("free again once the first is closed");
    }
}
