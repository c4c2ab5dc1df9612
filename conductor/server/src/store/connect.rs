//! Opening the store: a SQLite file (the default) or a PostgreSQL database.
//!
//! Both run the same queries through sqlx's `Any` driver; [`Backend`]
//! tells the few statements that must differ which database they talk to.

use super::*;
use sqlx::any::AnyPoolOptions;
use sqlx::Connection;
use std::path::Path;

/// Which database the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Does a database URL carry a password (`user:password@` or `password=`)?
pub fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let userinfo_password = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let query_password = url
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("password=")));
    userinfo_password || query_password
}

/// The key of the PostgreSQL advisory lock that serializes the store's
/// write transactions (what SQLite's `BEGIN IMMEDIATE` does): the audit
/// chain's head and a pipeline's current revision cannot change between
/// being read and the commit.
const WRITE_LOCK: i64 = 0x436f_6e64_7563_7472; // "Conductr"

/// The path of a SQLite URL (`sqlite://PATH` or `sqlite:PATH`, no query
/// string: the store sets its own options).
pub fn sqlite_path(url: &str) -> Result<&str> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| {
            StoreError::Open(format!(
                "unknown database URL scheme in {:?}: use sqlite://PATH or postgres://…",
                url.split("://").next().unwrap_or("")
            ))
        })?;
    if path.is_empty() || path.contains(['?', '#']) || path == ":memory:" {
        return Err(StoreError::Open(format!(
            "the SQLite URL must name a file, without options: {url:?}"
        )));
    }
    Ok(path)
}

/// Create the SQLite file if missing, private to its owner (0600), so that
/// it is never readable by others, not even for a moment.
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| {
        StoreError::Open(format!("the SQLite database {}: {e}", path.display()))
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    let md = f.metadata().map_err(fail)?;
    if md.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
    }
    Ok(())
}

/// SQLite's settings, per connection: WAL + NORMAL (a committed transaction
/// survives a crash of the process, kill -9; only a power loss can drop the
/// last commits), a writer waits up to 10 s for the lock, foreign keys on.
async fn sqlite_pragmas(conn: &mut AnyConnection) -> std::result::Result<(), sqlx::Error> {
    for p in [
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
        "PRAGMA busy_timeout = 10000",
        "PRAGMA foreign_keys = ON",
    ] {
        sqlx::query(p).execute(&mut *conn).await?;
    }
    Ok(())
}

impl Store {
    /// Open (creating if needed) the SQLite database at `path` and run
    /// the migrations.
    pub async fn open(path: &Path) -> Result<Store> {
        Store::connect(&format!("sqlite://{}", path.display())).await
    }

    /// Open `url` (`sqlite://PATH`, the file created 0600 if missing; or
    /// `postgres://…`, an existing database) and run the migrations.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if is_postgres_url(url) {
            Backend::Postgres
        } else {
            create_private(Path::new(sqlite_path(url)?))?;
            Backend::Sqlite
        };
        let url = match backend {
            Backend::Postgres => url.to_string(),
            Backend::Sqlite => format!("sqlite://{}", sqlite_path(url)?),
        };
        let url = url.as_str();
        let (pool, writer) = match backend {
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .connect(url)
                    .await?;
                sqlx::migrate!("../../migrations/postgres/conductor")
                    .run(&pool)
                    .await?;
                (pool, AnyConnection::connect(url).await?)
            }
            Backend::Sqlite => {
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _| Box::pin(sqlite_pragmas(conn)))
                    .connect(url)
                    .await?;
                sqlx::migrate!("../../migrations/sqlite/conductor")
                    .run(&pool)
                    .await?;
                let mut writer = AnyConnection::connect(url).await?;
                sqlite_pragmas(&mut writer).await?;
                (pool, writer)
            }
        };
        let mut writer = writer;
        super::trains::warm_writer(&mut writer, backend).await?;
        let store = Store {
            pool,
            backend,
            url: url.into(),
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            fence: Arc::new(AtomicI64::new(0)),
        };
        // Audit rows written by an earlier release join the hash chain.
        let chained = store.chain_unchained_audit().await?;
        if chained > 0 {
            tracing::info!(
                rows = chained,
                "chained the audit rows of an earlier release"
            );
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A write transaction that holds the store's write lock from its
    /// start (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped
    /// advisory lock), so that what it reads (the audit chain's head, a
    /// pipeline's current revision) cannot change before it commits.
    ///
    /// Fenced ([`Store::set_fence`]), the transaction first checks that
    /// the leadership's epoch is still the fence: else it is rolled back
    /// and the error is [`StoreError::Fenced`], so a deposed leader writes
    /// nothing.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                write_lock(&mut tx).await?;
                tx
            }
        };
        self.check_fence(&mut tx).await?;
        Ok(tx)
    }

    /// A write transaction for writes that read nothing of the store's
    /// first (no write lock on PostgreSQL; SQLite's `BEGIN IMMEDIATE`, as
    /// it reads the leadership first), fenced like [`Store::begin_write`].
    pub(crate) async fn begin_fenced(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        self.check_fence(&mut tx).await?;
        Ok(tx)
    }

    /// Run one writing statement: on the pool when the store is not
    /// fenced, else in a [`Store::begin_fenced`] transaction.
    pub(crate) async fn write_one<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<sqlx::any::AnyQueryResult> {
        if self.fence.load(Ordering::SeqCst) == 0 {
            return Ok(q.execute(&self.pool).await?);
        }
        let mut tx = self.begin_fenced().await?;
        let r = q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Inside a write transaction: is the leadership's epoch still this
    /// store's fence (if it has one)? PostgreSQL reads the row FOR SHARE,
    /// so that a concurrent claim waits until the transaction ends.
    pub(super) async fn check_fence(&self, conn: &mut AnyConnection) -> Result<()> {
        let fence = self.fence.load(Ordering::SeqCst);
        if fence == 0 {
            return Ok(());
        }
        let current = super::leadership::epoch_in(conn, self.backend).await?;
        if current != fence {
            return Err(StoreError::Fenced {
                ours: fence,
                current,
            });
        }
        Ok(())
    }

    /// The value of a SQLite setting on a connection of the pool (`PRAGMA
    /// name`), to check what is in effect; None on PostgreSQL.
    pub async fn sqlite_setting(&self, name: &str) -> Result<Option<String>> {
        if self.backend != Backend::Sqlite
            || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            return Ok(None);
        }
        let row = sqlx::query(&format!("PRAGMA {name}"))
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            None => None,
            Some(r) => Some(match r.try_get::<String, _>(0) {
                Ok(s) => s,
                Err(_) => r.try_get::<i64, _>(0)?.to_string(),
            }),
        })
    }
}

/// Take the PostgreSQL write lock inside a transaction (released when it ends).
pub(super) async fn write_lock(conn: &mut AnyConnection) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}
