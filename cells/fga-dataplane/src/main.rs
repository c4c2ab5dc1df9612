//! `fga-dataplane`: the FGA data plane of one cell.
//!
//! - `fga-dataplane serve`: the OpenFGA-compatible HTTP API over SQLite.
//! - `fga-dataplane test --tests FILE.fga.yaml`: model tests on an embedded
//!   store, like `fga model test`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use fga_dataplane::ratelimit::{Limit, Limiter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(
    name = "fga-dataplane",
    version,
    about = "Relationship-based authorization (OpenFGA-compatible) for one cell"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the OpenFGA-compatible HTTP API for this cell.
    Serve(Box<ServeArgs>),
    /// Run `.fga.yaml` model tests (the `fga model test` format) on an embedded store.
    Test {
        /// Test files (repeat, or pass several).
        #[arg(long = "tests", required = true, num_args = 1..)]
        tests: Vec<PathBuf>,
        /// Print every failure (default: the first 20 per file).
        #[arg(long)]
        verbose: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// This worker's own port on 127.0.0.1 (also CELL_WORKER_PORT, which the
    /// Conductor's local target sets): the same API, answered by this
    /// process only, for per-worker health checks, metrics and rate limits.
    #[arg(long, env = "CELL_WORKER_PORT")]
    worker_port: Option<u16>,
    /// How many worker processes share the database and `--addr` (also
    /// CELL_WORKERS). With more than one, the cache defaults to off, since
    /// it is correct only for a single writer.
    #[arg(long, env = "CELL_WORKERS", default_value_t = 1)]
    workers: u32,
    /// Where the SQLite database lives (`DIR/fga.db`), unless a database URL
    /// is given. The directory is the service's own: it is made private
    /// (mode 0700) and the database files 0600.
    #[arg(long, default_value = ".fga-data")]
    data_dir: PathBuf,
    /// A PostgreSQL database instead of SQLite (`postgres://USER@HOST/DB`);
    /// also FGA_DATABASE_URL. A URL with a password is refused here (the
    /// command line is public): put it in FGA_DATABASE_URL or
    /// --database-url-file, or the password in PGPASSWORD / ~/.pgpass.
    /// Migrations run on start.
    #[arg(long, env = "FGA_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A file holding the database URL (mode 0600), instead of --database-url.
    #[arg(long, value_name = "FILE", conflicts_with = "database_url")]
    database_url_file: Option<PathBuf>,
    /// Cache tuples (by object) and store metadata in memory. Correct only
    /// while this process is the database's only writer: default on for
    /// SQLite, off for PostgreSQL (which several workers may share).
    #[arg(long)]
    cache: Option<bool>,
    /// About how many tuples the cache holds (a quarter of the objects is
    /// evicted when full; about 100 bytes per tuple).
    #[arg(long, default_value_t = 2_000_000)]
    cache_tuples: usize,
    /// Fill the cache from the database in the background at start (while
    /// it has room), so the first requests do not pay for cold reads.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    warm_cache: bool,
    /// A file (mode 0600) with the pre-shared keys clients must send as
    /// `Authorization: Bearer KEY`, separated by commas or new lines. Or set
    /// them in FGA_AUTHN_PRESHARED_KEYS (comma separated). Neither: no
    /// authentication.
    #[arg(long, value_name = "FILE")]
    authn_preshared_keys_file: Option<PathBuf>,
    /// Removed: keys on the command line show in `ps`.
    #[arg(long, hide = true)]
    authn_preshared_keys: Option<String>,
    /// Most objects a ListObjects call returns.
    #[arg(long, default_value_t = 1000)]
    list_objects_max_results: usize,
    /// Default per-store limit, requests per second (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    rate_limit: f64,
    /// Default per-store burst (bucket size); default: one second of the rate.
    #[arg(long)]
    rate_limit_burst: Option<f64>,
    /// The cell's capacity in requests per second: stores may burst above
    /// their limit while at least half of it is spare (0: no bursting).
    #[arg(long, default_value_t = 0.0)]
    cell_capacity_rps: f64,
    /// A file (mode 0600) with the key of the admin API
    /// (`PUT /admin/rate-limits/{store}`). Or set it in FGA_ADMIN_KEY (what
    /// the Conductor does). Neither: the admin API is off.
    #[arg(long, value_name = "FILE")]
    admin_key_file: Option<PathBuf>,
    /// Removed: keys on the command line show in `ps`.
    #[arg(long, hide = true)]
    admin_key: Option<String>,
}

/// Where each secret comes from: an environment variable or a private file,
/// never the command line.
struct Secrets {
    keys: Vec<String>,
    admin_key: Option<String>,
    database_url: Option<String>,
}

fn secrets(a: &ServeArgs, url_on_command_line: bool) -> anyhow::Result<Secrets> {
    use fga_dataplane::secrets::{url_has_password, Source};
    if a.authn_preshared_keys.is_some() {
        anyhow::bail!("--authn-preshared-keys is no more (the command line shows in `ps`): set FGA_AUTHN_PRESHARED_KEYS or use --authn-preshared-keys-file");
    }
    if a.admin_key.is_some() {
        anyhow::bail!("--admin-key is no more (the command line shows in `ps`): set FGA_ADMIN_KEY or use --admin-key-file");
    }
    let env = |k: &str| std::env::var(k).ok();
    let keys = Source {
        what: "the pre-shared keys",
        env: "FGA_AUTHN_PRESHARED_KEYS",
        env_value: env("FGA_AUTHN_PRESHARED_KEYS"),
        flag: "--authn-preshared-keys-file",
        file: a.authn_preshared_keys_file.as_deref(),
    }
    .list()?;
    let admin_key = Source {
        what: "the admin key",
        env: "FGA_ADMIN_KEY",
        env_value: env("FGA_ADMIN_KEY"),
        flag: "--admin-key-file",
        file: a.admin_key_file.as_deref(),
    }
    .one()?;
    let database_url = match (&a.database_url, &a.database_url_file) {
        (Some(u), _) if url_on_command_line && url_has_password(u) => anyhow::bail!(
            "--database-url carries a password, which the command line shows in `ps`: set FGA_DATABASE_URL, use --database-url-file, or PGPASSWORD / ~/.pgpass"
        ),
        (Some(u), _) => Some(u.clone()).filter(|u| !u.is_empty()),
        (None, Some(f)) => Some(fga_dataplane::secrets::read_secret_file(f)?)
            .filter(|u| !u.is_empty()),
        (None, None) => None,
    };
    Ok(Secrets {
        keys,
        admin_key,
        database_url,
    })
}

fn main() {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    // Whether the database URL was typed on the command line (public) or
    // came from the environment.
    let url_on_command_line = matches
        .subcommand_matches("serve")
        .and_then(|m| m.value_source("database_url"))
        == Some(clap::parser::ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async {
        match cli.cmd {
            Cmd::Serve(a) => match serve(*a, url_on_command_line).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            },
            Cmd::Test { tests, verbose } => test(&tests, verbose).await,
        }
    });
    std::process::exit(code);
}

async fn test(files: &[PathBuf], verbose: bool) -> i32 {
    let mut ok = true;
    for f in files {
        match fga_dataplane::modeltest::run_file(f).await {
            Ok(s) => {
                let shown = if verbose { s.failures.len() } else { 20 };
                for line in s.failures.iter().take(shown) {
                    println!("FAIL {line}");
                }
                if s.failures.len() > shown {
                    println!(
                        "... and {} more failures (--verbose shows all)",
                        s.failures.len() - shown
                    );
                }
                print!("{}", s.report());
                ok &= s.passed();
            }
            Err(e) => {
                eprintln!("error: {}: {e:#}", f.display());
                return 2;
            }
        }
    }
    i32::from(!ok)
}

fn limit(rate: f64, burst: Option<f64>) -> anyhow::Result<Option<Limit>> {
    if rate <= 0.0 {
        return Ok(None);
    }
    let l = Limit {
        rate,
        burst: burst.unwrap_or(rate).max(1.0),
    };
    anyhow::ensure!(
        l.valid(),
        "invalid rate limit {rate}/s with burst {}",
        l.burst
    );
    Ok(Some(l))
}

async fn serve(a: ServeArgs, url_on_command_line: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let Secrets {
        keys,
        admin_key,
        database_url,
    } = secrets(&a, url_on_command_line).context("reading the secrets")?;
    let limiter = Limiter::new(
        limit(a.rate_limit, a.rate_limit_burst)?,
        limit(a.cell_capacity_rps, None)?,
    );
    let url = match database_url {
        Some(u) => u,
        None => {
            let data_dir: &Path = &a.data_dir;
            fga_dataplane::secrets::private_dir(data_dir)
                .with_context(|| format!("preparing the data directory {}", data_dir.display()))?;
            data_dir.join("fga.db").display().to_string()
        }
    };
    let postgres = fga_dataplane::store::is_postgres_url(&url);
    // The database and its -wal/-shm files are the service's own (0600).
    let sqlite_file = (!postgres).then(|| {
        PathBuf::from(
            url.strip_prefix("sqlite://")
                .unwrap_or(&url)
                .split('?')
                .next()
                .unwrap_or(""),
        )
    });
    if let Some(f) = &sqlite_file {
        fga_dataplane::secrets::private_sqlite(f)
            .with_context(|| format!("making {} private", f.display()))?;
    }
    let mut opts = fga_dataplane::store::DbOptions::for_url(&url);
    opts.cache = a.cache.unwrap_or(opts.cache && a.workers <= 1);
    opts.cache_tuples = a.cache_tuples;
    let opts_cache = opts.cache;
    let db = fga_dataplane::store::Db::connect_with(&url, opts)
        .await
        .with_context(|| {
            // Never print a password that may be in the URL.
            format!(
                "opening the {} database",
                if postgres { "PostgreSQL" } else { "SQLite" }
            )
        })?;
    let db_backend = db.backend();
    if let Some(f) = &sqlite_file {
        // Opening in WAL mode made the -wal and -shm files: private too.
        fga_dataplane::secrets::private_sqlite(f)
            .with_context(|| format!("making {} private", f.display()))?;
    }
    if opts_cache && a.warm_cache {
        let db = db.clone();
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            match db.warm_cache_all().await {
                Ok(n) => tracing::info!(
                    tuples = n,
                    secs = t0.elapsed().as_secs_f64(),
                    "cache warmed"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "warming the cache failed (reads go to the database)")
                }
            }
        });
    }
    let app = fga_dataplane::api::router(fga_dataplane::api::AppState {
        db,
        keys: Arc::new(keys.clone()),
        list_objects_max: a.list_objects_max_results.max(1),
        admin_key: admin_key.map(Arc::new),
        limiter: Arc::new(Mutex::new(limiter)),
        metrics: Arc::new(fga_dataplane::metrics::Metrics::default()),
        started: std::time::Instant::now(),
    });
    let listener = shared_listener(&a.addr)
        .await
        .with_context(|| format!("listening on {}", a.addr))?;
    let local = listener.local_addr()?;
    if let Some(wp) = a.worker_port {
        let l = match std::env::var("CELL_WORKER_FD") {
            // The Conductor's local target hands the worker socket over, bound.
            Ok(fd) => inherited_listener(&fd)
                .with_context(|| format!("taking the worker socket CELL_WORKER_FD={fd}"))?,
            Err(_) => tokio::net::TcpListener::bind(("127.0.0.1", wp))
                .await
                .with_context(|| format!("listening on worker port 127.0.0.1:{wp}"))?,
        };
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "the worker port stopped serving");
            }
        });
    }
    println!(
        "fga-dataplane listening on http://{local} (store: {}, authentication: {})",
        db_backend,
        if keys.is_empty() {
            "none"
        } else {
            "pre-shared keys"
        }
    );
    tracing::info!(%local, "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving HTTP")
}

/// The listening socket inherited on file descriptor `fd` (`CELL_WORKER_FD`,
/// set by the Conductor's local target, which binds the worker port itself
/// so that no other process can take it before this worker serves it).
#[allow(unsafe_code)]
fn inherited_listener(fd: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fd: i32 = fd.parse().context("not a file descriptor number")?;
    anyhow::ensure!(fd > 2, "stdio is not a socket");
    // SAFETY: the fd was open when the process started (handed over by the
    // Conductor), so nothing in this process opened or owns it; it is taken
    // once, here, and checked below.
    let l = std::net::TcpListener::from(unsafe { OwnedFd::from_raw_fd(fd) });
    l.local_addr().context("not a socket")?;
    l.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(l)?)
}

/// Listen on `addr` with `SO_REUSEPORT`, so that a cell's worker processes
/// share one port (the kernel spreads connections over them).
async fn shared_listener(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let sa = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{addr} resolves to no address"))?;
    let sock = if sa.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.bind(sa)?;
    Ok(sock.listen(1024)?)
}
