//! `conductor-bench`: how close the engine gets to the critical path.
//!
//! A simulated target whose deploy takes a fixed time (20 ms by default); a
//! train over 1,000 cells in waves of 1 cell, 1%, 10% and the rest, with
//! `max_parallel: 100` and no bake. Every event is persisted exactly as in
//! production: in SQLite (a file in a temporary directory), or in the
//! PostgreSQL database given by `--database-url` (or CONDUCTOR_DATABASE_URL). Reports the wall
//! time against the critical path (the sum over waves of
//! ceil(cells / max_parallel) x deploy time), and events persisted per second.
//!
//! Usage: `cargo run --release -p conductor --bin conductor-bench -- [--cells N] [--runs N] [--deploy-ms N] [--database-url URL]`

use anyhow::{Context, Result};
use cells_inventory::CellSpec;
use conductor::engine::{Clock, Engine, SystemClock};
use conductor::leases::Leases;
use conductor::metrics::Metrics;
use conductor::store::Store;
use conductor::targets::SimExecutor;
use conductor_core::{pipeline, plan, train::TrainSpec};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .context("missing value")?
            .parse()
            .with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: conductor-bench [--cells N (1000)] [--runs N (5)] [--deploy-ms N (20)] [--max-parallel N (100)] [--database-url URL]");
        println!("  --database-url: postgres://USER@HOST/DB (a password only in CONDUCTOR_DATABASE_URL) or sqlite://PATH; default: a SQLite file in a temporary directory");
        return Ok(());
    }
    let database_url = match args.iter().position(|a| a == "--database-url") {
        Some(i) => {
            let u = args.get(i + 1).context("--database-url: missing value")?;
            anyhow::ensure!(
                !conductor::store::url_has_password(u),
                "--database-url carries a password, which the command line shows in `ps`: set CONDUCTOR_DATABASE_URL instead"
            );
            Some(u.clone())
        }
        None => std::env::var("CONDUCTOR_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty()),
    };
    let n = arg(&args, "--cells", 1000)? as usize;
    let runs = arg(&args, "--runs", 5)?;
    let deploy = Duration::from_millis(arg(&args, "--deploy-ms", 20)?);
    let mp = arg(&args, "--max-parallel", 100)?;

    let regions = ["us-east-1", "eu-west-1", "ap-southeast-2"];
    let cells: Vec<CellSpec> = (0..n)
        .map(|i| CellSpec {
            id: format!("cell-{i:05}"),
            region: regions[i % 3].into(),
            shape: "small".into(),
            labels: [("service".to_string(), "fga".to_string())].into(),
            target: cells_inventory::TargetSpec::Local,
            port: None,
            tz: None,
        })
        .collect();
    let yaml = format!(
        "name: bench\nartifact: {{ kind: binary, name: sim }}\ncells: {{ labels: {{ service: fga }} }}\nsteps:\n  - deploy: {{}}\nwaves:\n  - {{ name: one, cells: 1, max_parallel: {mp} }}\n  - {{ name: p1, percent: 1, max_parallel: {mp} }}\n  - {{ name: p10, percent: 10, max_parallel: {mp} }}\n  - {{ name: rest, percent: 100, max_parallel: {mp} }}\n"
    );
    let (p, spans) = pipeline::parse("bench.yaml", &yaml).map_err(|d| anyhow::anyhow!("{d}"))?;
    let pl = plan::plan(&p, &spans, &cells).map_err(|d| anyhow::anyhow!("{d}"))?;
    let critical: Duration = pl
        .waves
        .iter()
        .map(|w| deploy * (w.cells.len() as u32).div_ceil(w.max_parallel))
        .sum();
    let sizes: Vec<usize> = pl.waves.iter().map(|w| w.cells.len()).collect();
    println!("cells {n}, waves {sizes:?}, max_parallel {mp}, deploy {deploy:?}; critical path {critical:?}; database {}",
        if database_url.as_deref().is_some_and(conductor::store::is_postgres_url) { "postgres" } else { "sqlite" });

    let mut results = Vec::new();
    for run in 1..=runs {
        let dir = tempfile::tempdir()?;
        let store = match &database_url {
            Some(u) => Store::connect(u).await?,
            None => Store::open(&dir.path().join("bench.db")).await?,
        };
        store.seed_cells(&cells, chrono::Utc::now()).await?;
        let metrics = Arc::new(Metrics::default());
        let leases = Arc::new(Leases::new(metrics.clone()));
        let sim = Arc::new(SimExecutor {
            deploy_time: deploy,
            deploys: Default::default(),
        });
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let engine =
            Engine::start(store.clone(), clock, sim.clone(), leases, metrics.clone()).await?;
        let mut finished = engine.finished();
        let spec = TrainSpec {
            // Unique: a database given by URL keeps earlier runs' trains.
            id: format!("bench-{}-{run}", chrono::Utc::now().timestamp_micros()),
            pipeline: "bench".into(),
            artifact: p.artifact.clone(),
            version: "1".into(),
            started_by: "bench".into(),
            steps: p.steps.clone(),
            on_failure: p.on_failure,
            windows: vec![],
            plan: pl.clone(),
        };
        let id = spec.id.clone();
        let t0 = Instant::now();
        engine.start_train(spec, None).await?;
        let (_, status) = finished.recv().await?;
        let wall = t0.elapsed();
        let events = store.train_event_count(&id).await?;
        let deploys = sim
            .deploys
            .lock()
            .map(|m| (m.len(), m.values().all(|c| *c == 1)))
            .unwrap_or((0, false));
        anyhow::ensure!(
            status.as_str() == "succeeded",
            "train ended {}",
            status.as_str()
        );
        anyhow::ensure!(
            deploys == (n, true),
            "expected {n} single deploys, got {deploys:?}"
        );
        let ratio = wall.as_secs_f64() / critical.as_secs_f64();
        let eps = events as f64 / wall.as_secs_f64();
        println!("run {run}: wall {:>7.1} ms  ratio {ratio:.3}  events {events}  ({eps:.0} events/s persisted)", wall.as_secs_f64() * 1e3);
        results.push((ratio, eps, wall));
    }
    results.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, eps, wall) = results[results.len() / 2];
    println!(
        "median: wall {:.1} ms vs critical path {:.1} ms = {ratio:.3}x (target <= 1.10x); {eps:.0} events/s persisted",
        wall.as_secs_f64() * 1e3,
        critical.as_secs_f64() * 1e3
    );
    Ok(())
}
