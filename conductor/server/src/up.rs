//! `conductor up`: everything on one machine, no other service.

use crate::api::{router, AppState};
use crate::auth::{hash_token, new_token};
use crate::engine::{Clock, Engine, SystemClock};
use crate::leases::Leases;
use crate::metrics::Metrics;
use crate::planner::Planner;
use crate::resizer::{LocalActuator, Resizer};
use crate::store::Store;
use crate::targets::{restore_local_cells, ArtifactDir, CellExecutor, Supervisor};
use anyhow::{Context, Result};
use cells_inventory::Shape;
use conductor_core::pipeline::{self, Artifact};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct UpOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub cells_file: PathBuf,
    pub shapes_file: PathBuf,
    /// The template new cells are stamped from.
    pub cell_template: PathBuf,
    pub planner: PlannerMode,
}

/// Where the capacity planner is.
pub enum PlannerMode {
    /// Start `capacity-planner serve` (found beside this binary) as a child.
    Auto {
        interval_secs: f64,
    },
    Off,
    /// A planner that runs elsewhere, with its token.
    Url(String, String),
}

/// A secret kept (mode 0600) in the data dir, created on first use.
fn secret(data_dir: &Path, name: &str) -> Result<String> {
    let file = data_dir.join(name);
    if let Ok(s) = std::fs::read_to_string(&file) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let s = new_token();
    write_private(&file, &s).with_context(|| format!("writing {}", file.display()))?;
    Ok(s)
}

/// Start the capacity planner beside the Conductor: it scrapes the local
/// cells (through the routing table) into `DATA/planner/capacity.db` and
/// dies with the Conductor. Returns its URL and token.
async fn start_planner(
    data_dir: &Path,
    shapes_file: &Path,
    fga_admin_key: &str,
    interval_secs: f64,
) -> Result<Option<(String, String, tokio::process::Child)>> {
    let exe = std::env::current_exe().context("finding the conductor binary")?;
    let bin = exe.with_file_name("capacity-planner");
    if !bin.is_file() {
        tracing::warn!(path = %bin.display(), "no capacity-planner binary beside conductor; capacity commands are off");
        return Ok(None);
    }
    let token = secret(data_dir, "planner.token")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("planner.log"))
        .context("opening planner.log")?;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("--shapes")
        .arg(shapes_file)
        .args(["serve", "--listen", "127.0.0.1:0", "--interval-secs"])
        .arg(interval_secs.to_string())
        .arg("--data-dir")
        .arg(data_dir.join("planner"))
        .arg("--routes")
        .arg(data_dir.join("routes.json"))
        .env("CAPACITY_TOKEN", &token)
        .env("FGA_ADMIN_KEY", fga_admin_key)
        .env_remove("CAPACITY_DATABASE_URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    crate::procs::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().context("starting capacity-planner")?;
    let out = child.stdout.take().context("planner stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(rest) = l.strip_prefix("capacity-planner listening on ") {
                return rest.split_whitespace().next().map(String::from);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .with_context(|| {
        format!(
            "capacity-planner did not start; see {}",
            data_dir.join("planner.log").display()
        )
    })?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Some((url, token, child)))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Read and validate the shapes.
pub fn load_shapes(shapes_file: &Path) -> Result<Vec<Shape>> {
    cells_inventory::parse_shapes(&shapes_file.display().to_string(), &read(shapes_file)?)
        .map_err(|d| anyhow::anyhow!("{d}"))
}

/// Read and validate the shapes and the seed cells.
pub fn load_inventory(
    shapes_file: &Path,
    cells_file: &Path,
) -> Result<Vec<cells_inventory::CellSpec>> {
    let shapes = load_shapes(shapes_file)?;
    cells_inventory::parse_cells(
        &cells_file.display().to_string(),
        &read(cells_file)?,
        &shapes,
    )
    .map_err(|d| anyhow::anyhow!("{d}"))
}

/// The admin token: created with the database, kept (mode 0600) in the data dir.
async fn admin_token(store: &Store, data_dir: &Path) -> Result<Option<String>> {
    let file = data_dir.join("admin.token");
    if store.count_tokens().await? == 0 {
        let token = new_token();
        let audit = crate::store::AuditEntry::new(
            "conductor",
            "token.create",
            "admin",
            "role admin (the first token, written to admin.token)",
        );
        store
            .create_token(
                "admin",
                "admin",
                &[],
                &hash_token(&token),
                None,
                chrono::Utc::now(),
                &audit,
            )
            .await?;
        write_private(&file, &token).context("writing the admin token")?;
        return Ok(Some(token));
    }
    Ok(std::fs::read_to_string(&file)
        .ok()
        .map(|s| s.trim().to_string()))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// The artifact spec of every pipeline, by artifact name (to restart cells).
async fn artifact_specs(store: &Store) -> Result<HashMap<String, Artifact>> {
    let mut m = HashMap::new();
    for row in store.list_pipelines().await? {
        if let Ok((p, _)) = pipeline::parse(&row.name, &row.yaml) {
            m.insert(p.artifact.name.clone(), p.artifact);
        }
    }
    Ok(m)
}

pub async fn up(opts: UpOptions) -> Result<()> {
    let shapes = load_shapes(&opts.shapes_file)?;
    let cells = load_inventory(&opts.shapes_file, &opts.cells_file)?;
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let data_dir = opts
        .data_dir
        .canonicalize()
        .context("resolving the data directory")?;
    let store = Store::open(&data_dir.join("conductor.db"))
        .await
        .context("opening the database")?;
    let added = store
        .seed_cells(&cells, chrono::Utc::now())
        .await
        .context("seeding cells")?;
    let token = admin_token(&store, &data_dir).await?;

    let metrics = Arc::new(Metrics::default());
    let leases = Arc::new(Leases::new(metrics.clone()));
    let artifacts = ArtifactDir {
        root: data_dir.join("artifacts"),
    };
    let workers = shapes.iter().map(|s| (s.name.clone(), s.workers)).collect();
    // The fleet's data plane admin key: local cells get it, and so does the
    // planner, which pushes rate limits with it.
    let fga_admin_key = secret(&data_dir, "fga-admin.key")?;
    let cell_env = [("FGA_ADMIN_KEY".to_string(), fga_admin_key.clone())].into();
    let supervisor = Supervisor::new(artifacts.clone(), data_dir.clone(), workers, cell_env);
    let template_name = opts.cell_template.display().to_string();
    let template = cells_inventory::parse_template(&template_name, &read(&opts.cell_template)?)
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    // Cells first, so that resumed steps find them running.
    restore_local_cells(&store, &supervisor, &artifact_specs(&store).await?).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let executor = Arc::new(CellExecutor {
        store: store.clone(),
        supervisor: supervisor.clone(),
        http,
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let engine = Engine::start(
        store.clone(),
        clock,
        executor,
        leases.clone(),
        metrics.clone(),
    )
    .await
    .context("starting the engine")?;
    let actuator = Arc::new(LocalActuator {
        supervisor: supervisor.clone(),
        health_timeout: Duration::from_secs(60),
    });
    let resizer = Resizer::start(store, leases, engine.clone(), actuator, shapes)
        .await
        .context("resuming resize operations")?;
    let (planner, _planner_child) = match opts.planner {
        PlannerMode::Off => (None, None),
        PlannerMode::Url(url, token) => (Some(Planner::new(&url, &token)), None),
        PlannerMode::Auto { interval_secs } => {
            match start_planner(&data_dir, &opts.shapes_file, &fga_admin_key, interval_secs).await?
            {
                Some((url, token, child)) => (Some(Planner::new(&url, &token)), Some(child)),
                None => (None, None),
            }
        }
    };
    let planner_url = planner.as_ref().map(|p| p.url.clone());

    let app = router(AppState {
        engine,
        metrics,
        artifacts,
        supervisor: supervisor.clone(),
        resizer,
        planner: planner.map(Arc::new),
        template: Arc::new(template),
    });
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "Conductor is up at http://{addr}/  (data in {})",
        data_dir.display()
    );
    println!("  cells: {} in the inventory ({} new)", cells.len(), added);
    match &planner_url {
        Some(u) => println!("  capacity planner: {u}"),
        None => println!("  capacity planner: off"),
    }
    match token {
        Some(t) => {
            println!("  admin token: {t}\n  export CONDUCTOR_URL=http://{addr} CONDUCTOR_TOKEN={t}")
        }
        None => println!(
            "  admin token: see {}",
            data_dir.join("admin.token").display()
        ),
    }
    tracing::info!(%addr, "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
        .context("serving HTTP")?;
    supervisor.stop_all();
    println!("Conductor stopped; trains resume on the next `conductor up`.");
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
