//! Opening a [`Db`]: the database URL, the SQLite file (created private),
//! the connection settings of each back end, and the migrations.

use super::{Db, DbOptions, Result, StoreError};
use crate::cache::{ModelCache, TupleCache};
use sqlx::any::AnyPoolOptions;
use sqlx::Executor;
use std::sync::Arc;
use std::time::Duration;

/// Does `url` name a PostgreSQL database (else SQLite)?
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Set on every new SQLite connection (these settings are per connection):
/// write-ahead log, fsync at checkpoints only, wait up to 10 s for a lock.
const SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;";

/// The sqlx URL of a SQLite database given as `sqlite://PATH` or a plain
/// path (`?` starts sqlx's parameters, as before), its file created (mode 0600: private from the start, and so are
/// the `-wal` and `-shm` files SQLite makes with the database's mode) if
/// missing; its directory must exist. Opened read-only (`?mode=ro`), it is
/// never created.
fn sqlite_url(given: &str) -> Result<String> {
    let fail = |path: &str, message: String| StoreError::File {
        path: path.to_string(),
        message,
    };
    // As sqlx reads a SQLite URL: what follows `?` are its parameters.
    let rest = given.strip_prefix("sqlite://").unwrap_or(given);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(fail(given, "no file named".into()));
    }
    // sqlx parses the URL (a `#` would start a fragment) and then
    // percent-decodes the path.
    let encoded = path.replace('%', "%25").replace('#', "%23");
    let url = match query {
        Some(q) => format!("sqlite://{encoded}?{q}"),
        None => format!("sqlite://{encoded}"),
    };
    if path == ":memory:" || query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("mode="))) {
        // In memory, or the caller chose how it is opened (`mode=ro`, `rw`, `rwc`).
        return Ok(url);
    }
    let file = std::path::Path::new(path);
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(fail(
                path,
                format!("its directory {} does not exist", dir.display()),
            ));
        }
    }
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| fail(path, format!("cannot open or create it: {e}")))?;
    Ok(url)
}

impl Db {
    /// Open a database by URL with the given options (see [`Db::connect`]).
    pub async fn connect_with(url: &str, opts: DbOptions) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let postgres = is_postgres_url(url);
        let pool = if postgres {
            let pool = AnyPoolOptions::new()
                .max_connections(opts.max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            sqlx::migrate!("../../migrations/postgres/fga")
                .run(&pool)
                .await?;
            pool
        } else {
            let url = sqlite_url(url)?;
            let pool = AnyPoolOptions::new()
                .max_connections(opts.max_connections)
                .after_connect(|conn, _| {
                    Box::pin(async move { conn.execute(SQLITE_PRAGMAS).await.map(drop) })
                })
                .connect(&url)
                .await?;
            sqlx::migrate!("../../migrations/sqlite/fga")
                .run(&pool)
                .await?;
            pool
        };
        Ok(Db {
            pool,
            backend: if postgres { "postgres" } else { "sqlite" },
            tuples: opts
                .cache
                .then(|| Arc::new(TupleCache::new(opts.cache_tuples))),
            models: Arc::new(ModelCache::new(opts.cache)),
        })
    }
}

/// The placeholders of a multi-row `VALUES` list: `rows` rows of `cols`.
/// PostgreSQL: numbered, `($1, $2), ($3, $4)`. SQLite: anonymous,
/// `(?, ?), (?, ?)`, bound in order: sqlx looks each numbered parameter's
/// name up in SQLite, a linear search there, so binding N numbered
/// parameters costs N^2.
pub(super) fn values_placeholders(postgres: bool, rows: usize, cols: usize) -> String {
    let mut sql = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            if postgres {
                sql.push_str(&format!("${}", r * cols + c + 1));
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_placeholders_are_numbered_on_postgres_and_anonymous_on_sqlite() {
        assert_eq!(
            values_placeholders(true, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(values_placeholders(false, 2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(values_placeholders(false, 1, 1), "(?)");
        assert_eq!(values_placeholders(true, 0, 3), "");
    }
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    /// The pragmas are per connection: every connection of the pool has them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_is_private_and_every_connection_has_the_pragmas() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("fga.db");
        let db = Db::open(&file).await.expect("open");
        assert_eq!(db.backend(), "sqlite");
        assert_eq!(mode(&file), 0o600);
        db.create_store("s").await.expect("write");
        let wal = dir.path().join("fga.db-wal");
        assert!(wal.exists(), "WAL mode makes a -wal file");
        assert_eq!(mode(&wal), 0o600);
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(db.pool.acquire().await.expect("acquire"));
        }
        for c in &mut conns {
            let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut **c)
                .await
                .expect("journal_mode");
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut **c)
                .await
                .expect("synchronous");
            let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                .fetch_one(&mut **c)
                .await
                .expect("busy_timeout");
            assert_eq!((journal.as_str(), sync, busy), ("wal", 1, 10_000));
        }
    }

    #[tokio::test]
    async fn sqlite_urls_and_missing_directories() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("a b#c.db");
        let url = format!("sqlite://{}", file.display());
        let db = Db::connect(&url)
            .await
            .expect("a path with a space and a #");
        db.create_store("s").await.expect("write");
        assert_eq!(mode(&file), 0o600);
        let missing = dir.path().join("nope").join("fga.db");
        let e = Db::open(&missing).await.err().expect("no directory");
        assert!(matches!(e, StoreError::File { .. }), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        // Read-only: never created.
        let ro = dir.path().join("ro.db");
        let r = Db::connect(&format!("sqlite://{}?mode=ro", ro.display())).await;
        assert!(r.is_err());
        assert!(!ro.exists());
    }
}
