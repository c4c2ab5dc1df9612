//! The store on both databases: a SQLite file in a temporary directory,
//! and a fresh PostgreSQL database on the test server
//! (`FGA_TEST_DATABASE_URL`; without it the PostgreSQL half is skipped,
//! unless `CI` is set: then it fails).
#![allow(dead_code)]

use conductor::store::Store;

pub struct Db {
    pub store: Store,
    /// The URL the store was opened with (for a second store, or raw SQL).
    pub url: String,
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    /// Another store over the same database (a second Conductor).
    pub async fn reopen(&self) -> Store {
        Store::connect(&self.url).await.expect("reopen")
    }

    /// A connection of its own, outside the store (tampering, checks).
    pub async fn raw(&self) -> sqlx::AnyConnection {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.url)
            .await
            .expect("raw connection")
    }

    pub fn is_postgres(&self) -> bool {
        self.backend == "postgres"
    }
}

pub async fn sqlite() -> Db {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    Db {
        store: Store::connect(&url).await.expect("open sqlite"),
        url,
        backend: "sqlite",
        _dir: Some(dir),
    }
}

/// A fresh database named after `tag` (unique per test) and the process.
pub async fn postgres(tag: &str) -> Option<Db> {
    let url = empty_postgres(tag).await?;
    Some(Db {
        store: Store::connect(&url).await.expect("open postgres"),
        url,
        backend: "postgres",
        _dir: None,
    })
}

/// The URL of a fresh, empty PostgreSQL database named after `tag` (no
/// migrations run), or None without a test server.
pub async fn empty_postgres(tag: &str) -> Option<String> {
    let url = match std::env::var("FGA_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => u,
        _ if std::env::var_os("CI").is_some() => {
            panic!("FGA_TEST_DATABASE_URL is not set; CI runs the PostgreSQL tests (tests/run starts a server)")
        }
        _ => {
            eprintln!("FGA_TEST_DATABASE_URL is not set: skipping PostgreSQL (run ./tests/run)");
            return None;
        }
    };
    let name = format!("conductor_{tag}_{}", std::process::id());
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
    }
    let (base, _) = url.rsplit_once('/').expect("database in the URL");
    Some(format!("{base}/{name}"))
}

/// SQLite, then PostgreSQL when available.
pub async fn both(tag: &str) -> Vec<Db> {
    let mut v = vec![sqlite().await];
    v.extend(postgres(tag).await);
    v
}
