//! `capacity-planner`: plan cell capacity offline from a usage file.
//!
//! The usage file (YAML or JSON) lists tenants with their cell and usage
//! samples:
//!
//! ```yaml
//! tenants:
//!   - tenant: acme
//!     cell: use1-a
//!     samples:
//!       - { at: 0, check_rps: 120, tuples: 50000, connections: 10 }
//!       - { at: 3600, check_rps: 140, tuples: 52000, connections: 12 }
//! ```

use anyhow::{anyhow, Context, Result};
use capacity_planner::{report, secrets, Cell, Policy, TenantUsage};
use cells_inventory::Shape;
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "capacity-planner",
    version,
    about = "Cell capacity: utilization and forecasts, shape recommendations, tenant placement, rebalancing, rate limits"
)]
struct Cli {
    /// Cell shapes.
    #[arg(long, global = true, default_value = "templates/shapes.yaml")]
    shapes: PathBuf,
    /// The cells (the inventory format of deploy/local/cells.yaml).
    #[arg(long, global = true, default_value = "deploy/local/cells.yaml")]
    cells: PathBuf,
    /// Tenant usage to plan from (see `--help` of the crate: `tenants:` with samples).
    #[arg(long, global = true)]
    usage: Option<PathBuf>,
    /// Stay under this fraction of every dimension at the forecast peak.
    #[arg(long, global = true, default_value_t = 0.70)]
    headroom: f64,
    /// How far ahead the forecast looks, in days.
    #[arg(long, global = true, default_value_t = 7.0)]
    horizon_days: f64,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per cell: shape, utilization now and forecast, recommended shape; fleet totals.
    Plan,
    /// Pick the cell for a new tenant in a region (or the shape of a new cell).
    Place {
        #[arg(long)]
        region: String,
        #[arg(long)]
        expected_rps: f64,
        #[arg(long)]
        expected_tuples: f64,
        #[arg(long, default_value_t = 0.0)]
        expected_connections: f64,
    },
    /// Tenant moves that relieve hot cells or free idle ones.
    Rebalance,
    /// Per-tenant rate limits and bursts; tenants near their limit first.
    Limits,
    /// Run the planner service: scrape the cells' /metrics into the usage
    /// history and answer the Conductor's plan requests over HTTP.
    Serve(ServeArgs),
    /// Import a usage file (--usage) into the history database, for planning offline.
    Import {
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(clap::Args)]
struct DbArgs {
    /// The usage history: `sqlite://PATH` (created if missing) or a file
    /// path, or `postgres://USER@HOST/DB`. A URL holding a password is
    /// refused here (arguments show in `ps`): set CAPACITY_DATABASE_URL,
    /// use --database-url-file, or give the password in PGPASSWORD.
    /// Default: DATA_DIR/capacity.db.
    #[arg(long)]
    database_url: Option<String>,
    /// A file (mode 0600) holding the database URL (passwords allowed).
    #[arg(long, conflicts_with = "database_url")]
    database_url_file: Option<PathBuf>,
    /// Where the default SQLite database lives (made 0700).
    #[arg(long, default_value = ".capacity-data")]
    data_dir: PathBuf,
}

/// Does a database URL carry a password (`user:password@` or `password=`)?
fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let userinfo = authority.rsplit_once('@').map(|(u, _)| u);
    userinfo.is_some_and(|u| u.contains(':'))
        || url
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("password=")))
}

impl DbArgs {
    /// The database URL: --database-url, --database-url-file or
    /// CAPACITY_DATABASE_URL; `None`: the default SQLite file.
    fn url(&self) -> Result<Option<String>> {
        if let Some(u) = self.database_url.as_deref().filter(|u| !u.is_empty()) {
            if has_password(u) {
                return Err(anyhow!(
                    "--database-url holds a password, which every user sees in `ps`: set CAPACITY_DATABASE_URL, use --database-url-file FILE (mode 0600), or put the password in PGPASSWORD"
                ));
            }
            return Ok(Some(u.to_string()));
        }
        Ok(secrets::secret_from(
            self.database_url_file.as_deref(),
            "CAPACITY_DATABASE_URL",
        )?)
    }

    async fn open(&self) -> Result<capacity_planner::history::History> {
        let url = match self.url()? {
            Some(u) => u,
            None => {
                secrets::private_dir(&self.data_dir)?;
                self.data_dir.join("capacity.db").display().to_string()
            }
        };
        let pg = capacity_planner::history::is_postgres_url(&url);
        // Never print the URL: it may hold a password.
        capacity_planner::history::History::connect(&url)
            .await
            .with_context(|| {
                format!(
                    "opening the {} usage history",
                    if pg { "PostgreSQL" } else { "SQLite" }
                )
            })
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to serve the planner API on.
    #[arg(long, default_value = "127.0.0.1:8490")]
    listen: String,
    #[command(flatten)]
    db: DbArgs,
    /// The Conductor's routing table (DATA/routes.json), where the cells'
    /// workers are found. Without it nothing is scraped (imports only).
    #[arg(long)]
    routes: Option<PathBuf>,
    /// The artifact whose /metrics are scraped.
    #[arg(long, default_value = "fga-dataplane")]
    artifact: String,
    /// Seconds between scrapes.
    #[arg(long, default_value_t = 15.0)]
    interval_secs: f64,
    /// How many days of usage plans look at.
    #[arg(long, default_value_t = 14.0)]
    window_days: f64,
    /// Usage older than this many days is deleted.
    #[arg(long, default_value_t = 35.0)]
    retention_days: f64,
    /// A file (mode 0600) holding the bearer token every API call must
    /// present (at least 16 characters); without it, CAPACITY_TOKEN.
    /// Required.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A file (mode 0600) holding the data planes' admin key, to read and
    /// push rate limits; without it, FGA_ADMIN_KEY.
    #[arg(long)]
    fga_admin_key_file: Option<PathBuf>,
    /// Refused (arguments show in `ps`): use CAPACITY_TOKEN or --token-file.
    #[arg(long, hide = true)]
    token: Option<String>,
    /// Refused (arguments show in `ps`): use FGA_ADMIN_KEY or --fga-admin-key-file.
    #[arg(long, hide = true)]
    fga_admin_key: Option<String>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn load_usage(path: Option<&Path>) -> Result<Vec<TenantUsage>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    capacity_planner::parse_usage(&path.display().to_string(), &read(path)?)
        .map_err(|e| anyhow!("{e}"))
}

fn main() {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Serve(_) | Cmd::Import { .. }) {
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
        if let Err(e) = rt.block_on(run_service(cli)) {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if !(cli.headroom > 0.0 && cli.headroom <= 1.0) {
        return Err(anyhow!(
            "--headroom must be in (0, 1], got {}",
            cli.headroom
        ));
    }
    let shapes_name = cli.shapes.display().to_string();
    let shapes: Vec<Shape> = cells_inventory::parse_shapes(&shapes_name, &read(&cli.shapes)?)
        .map_err(|e| anyhow!("{e}"))?;
    let cells_name = cli.cells.display().to_string();
    let cells: Vec<Cell> = cells_inventory::parse_cells(&cells_name, &read(&cli.cells)?, &shapes)
        .map_err(|e| anyhow!("{e}"))?
        .into_iter()
        .map(|c| Cell {
            id: c.id,
            region: c.region,
            shape: c.shape,
            accepts_tenants: true,
        })
        .collect();
    let usage = load_usage(cli.usage.as_deref())?;
    let policy = Policy {
        headroom: cli.headroom,
        horizon_secs: cli.horizon_days * 86_400.0,
        ..Policy::default()
    };
    let out = |text: String, v: serde_json::Result<String>| -> Result<()> {
        if cli.json {
            println!("{}", v?);
        } else {
            print!("{text}");
        }
        Ok(())
    };
    match cli.cmd {
        Cmd::Plan => {
            let r = capacity_planner::plan_capacity(&shapes, &cells, &usage, &policy);
            out(report::plan(&r), serde_json::to_string_pretty(&r))?;
        }
        Cmd::Place {
            region,
            expected_rps,
            expected_tuples,
            expected_connections,
        } => {
            let d = [expected_rps, expected_tuples, expected_connections];
            if d.iter().any(|x| !x.is_finite() || *x < 0.0) {
                return Err(anyhow!("expected usage must be non-negative numbers"));
            }
            let p = capacity_planner::place(&shapes, &cells, &usage, &region, d, &policy)
                .map_err(|e| anyhow!(e))?;
            out(report::placement(&p), serde_json::to_string_pretty(&p))?;
        }
        Cmd::Rebalance => {
            let r = capacity_planner::rebalance(&shapes, &cells, &usage, &policy);
            out(report::rebalance(&r), serde_json::to_string_pretty(&r))?;
        }
        Cmd::Limits => {
            let mut l =
                capacity_planner::rate_limits(&shapes, &cells, &usage, &BTreeMap::new(), &policy);
            report::sort_limits(&mut l);
            out(report::limits(&l), serde_json::to_string_pretty(&l))?;
        }
        Cmd::Serve(_) | Cmd::Import { .. } => unreachable!("handled by run_service"),
    }
    Ok(())
}

async fn run_service(cli: Cli) -> Result<()> {
    let shapes_name = cli.shapes.display().to_string();
    let shapes: Vec<Shape> = cells_inventory::parse_shapes(&shapes_name, &read(&cli.shapes)?)
        .map_err(|e| anyhow!("{e}"))?;
    match cli.cmd {
        Cmd::Import { db } => {
            let Some(path) = cli.usage.as_deref() else {
                return Err(anyhow!("import needs --usage FILE"));
            };
            let usage = load_usage(Some(path))?;
            let h = db.open().await?;
            let n = h.import(&usage).await.context("importing usage")?;
            println!(
                "imported {n} samples of {} tenants into the {} usage history",
                usage.len(),
                h.backend()
            );
            Ok(())
        }
        Cmd::Serve(a) => serve(a, shapes).await,
        _ => unreachable!("offline commands run in run()"),
    }
}

async fn serve(a: ServeArgs, shapes: Vec<Shape>) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    for (flag, given, instead) in [
        (
            "--token",
            a.token.is_some(),
            "CAPACITY_TOKEN or --token-file FILE",
        ),
        (
            "--fga-admin-key",
            a.fga_admin_key.is_some(),
            "FGA_ADMIN_KEY or --fga-admin-key-file FILE",
        ),
    ] {
        if given {
            return Err(anyhow!(
                "{flag} is not accepted: a secret on the command line is seen by every user in `ps`; use {instead} (mode 0600)"
            ));
        }
    }
    let token = secrets::secret_from(a.token_file.as_deref(), "CAPACITY_TOKEN")?
        .filter(|t| t.len() >= 16)
        .ok_or_else(|| anyhow!("set a token of at least 16 characters in CAPACITY_TOKEN or a file named by --token-file; every API call must present it"))?;
    let fga_admin_key = secrets::secret_from(a.fga_admin_key_file.as_deref(), "FGA_ADMIN_KEY")?;
    for (name, v, lo, hi) in [
        ("--interval-secs", a.interval_secs, 0.05, 86_400.0),
        ("--window-days", a.window_days, 0.0, 3650.0),
        ("--retention-days", a.retention_days, 0.0, 3650.0),
    ] {
        if !(v.is_finite() && v > lo && v <= hi) {
            return Err(anyhow!("{name} must be in ({lo}, {hi}], got {v}"));
        }
    }
    let history = a.db.open().await?;
    let backend = history.backend();
    let cfg = std::sync::Arc::new(capacity_planner::service::Config {
        shapes,
        history,
        routes_file: a.routes.clone(),
        artifact: a.artifact.clone(),
        interval: std::time::Duration::from_secs_f64(a.interval_secs),
        window_secs: a.window_days * 86_400.0,
        retention_secs: a.retention_days * 86_400.0,
        token,
        fga_admin_key,
    });
    if a.routes.is_some() {
        tokio::spawn(capacity_planner::service::scrape_loop(cfg.clone()));
    }
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "capacity-planner listening on http://{addr} (history: {backend}; scraping: {})",
        a.routes.as_ref().map_or("off".to_string(), |r| format!(
            "{} every {}s",
            r.display(),
            a.interval_secs
        ))
    );
    axum::serve(listener, capacity_planner::service::router(cfg))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving HTTP")
}
