//! `conductor-bench`: how close the engine gets to the critical path.
//!
//! A simulated target whose deploy takes a fixed time (20 ms by default); a
//! train over 1,000 cells in waves of 1 cell, 1%, 10% and the rest, with
//! `max_parallel: 100` and no bake. Every event is persisted exactly as in
//! production: in SQLite (a file in a temporary directory), or in the
//! PostgreSQL database given by `--database-url` (or CONDUCTOR_DATABASE_URL).
//! Reports the wall time against the critical path (the sum over waves of
//! ceil(cells / max_parallel) x deploy time), events persisted per second and
//! commits (event transactions) per second.
//!
//! `--trains N` (N > 1) starts N trains of N different pipelines at once over
//! the same cells; each cell's lease serializes them (see `bench/trains.rs`).
//!
//! Usage: `cargo run --release -p conductor --bin conductor-bench -- --help`

#[path = "bench/trains.rs"]
mod trains;

use anyhow::{Context, Result};
use cells_inventory::CellSpec;
use conductor::engine::{Clock, Engine, SystemClock};
use conductor::leases::Leases;
use conductor::metrics::Metrics;
use conductor::store::Store;
use conductor::targets::SimExecutor;
use conductor_core::pipeline::Pipeline;
use conductor_core::plan::Plan;
use conductor_core::{pipeline, plan, train::TrainSpec};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HELP: &str = "\
usage: conductor-bench [--cells N] [--runs N] [--deploy-ms N] [--max-parallel N] [--trains N] [--database-url URL]
  --cells N          cells in the inventory, 1..=100000 (default 1000); waves: 1 cell, 1%, 10%, the rest
  --runs N           runs, 1..=100 (default 5); the median run is reported
  --deploy-ms N      simulated deploy time in ms, 1..=10000 (default 20)
  --max-parallel N   max_parallel of every wave, 1..=10000 (default 100)
  --trains N         trains started at once, 1..=1000 (default 1); N > 1: N trains of N pipelines
                     (bench-0..bench-N-1, same waves) over the same cells, serialized per cell by its lease
  --database-url URL postgres://USER@HOST/DB (a password only in CONDUCTOR_DATABASE_URL) or sqlite://PATH;
                     default: CONDUCTOR_DATABASE_URL, else a new SQLite file in a temporary directory per run
  RUST_LOG           if set, the engine's logs go to stderr (e.g. RUST_LOG=conductor::engine=debug: each
                     batch's size, apply and commit time)";

/// Command-line options, each bounded.
pub struct Opts {
    pub cells: usize,
    pub runs: u64,
    pub deploy: Duration,
    pub max_parallel: u64,
    pub trains: usize,
    pub database_url: Option<String>,
}

fn arg(args: &[String], name: &str, default: u64, max: u64) -> Result<u64> {
    let v = match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name}: missing value"))?
            .parse()
            .with_context(|| format!("{name} takes a number"))?,
        None => default,
    };
    anyhow::ensure!((1..=max).contains(&v), "{name} must be in 1..={max}");
    Ok(v)
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    const KNOWN: [&str; 6] = [
        "--cells",
        "--runs",
        "--deploy-ms",
        "--max-parallel",
        "--trains",
        "--database-url",
    ];
    let mut i = 1;
    while i < args.len() {
        anyhow::ensure!(
            KNOWN.contains(&args[i].as_str()),
            "unknown argument {:?} (see --help)",
            args[i]
        );
        i += 2;
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
    Ok(Opts {
        cells: arg(args, "--cells", 1000, 100_000)? as usize,
        runs: arg(args, "--runs", 5, 100)?,
        deploy: Duration::from_millis(arg(args, "--deploy-ms", 20, 10_000)?),
        max_parallel: arg(args, "--max-parallel", 100, 10_000)?,
        trains: arg(args, "--trains", 1, 1000)? as usize,
        database_url,
    })
}

/// The inventory, the pipeline and its plan, shared by every train.
pub struct Setup {
    pub cells: Vec<CellSpec>,
    pub pipeline: Pipeline,
    pub plan: Plan,
    /// Per wave: ceil(cells / max_parallel) x deploy time.
    pub wave_paths: Vec<Duration>,
}

impl Setup {
    fn new(o: &Opts) -> Result<Setup> {
        let regions = ["us-east-1", "eu-west-1", "ap-southeast-2"];
        let cells: Vec<CellSpec> = (0..o.cells)
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
        let mp = o.max_parallel;
        let yaml = format!(
            "name: bench\nartifact: {{ kind: binary, name: sim }}\ncells: {{ labels: {{ service: fga }} }}\nsteps:\n  - deploy: {{}}\nwaves:\n  - {{ name: one, cells: 1, max_parallel: {mp} }}\n  - {{ name: p1, percent: 1, max_parallel: {mp} }}\n  - {{ name: p10, percent: 10, max_parallel: {mp} }}\n  - {{ name: rest, percent: 100, max_parallel: {mp} }}\n"
        );
        let (p, spans) =
            pipeline::parse("bench.yaml", &yaml).map_err(|d| anyhow::anyhow!("{d}"))?;
        let pl = plan::plan(&p, &spans, &cells).map_err(|d| anyhow::anyhow!("{d}"))?;
        let wave_paths = pl
            .waves
            .iter()
            .map(|w| o.deploy * (w.cells.len() as u32).div_ceil(w.max_parallel.max(1)))
            .collect();
        Ok(Setup {
            cells,
            pipeline: p,
            plan: pl,
            wave_paths,
        })
    }

    pub fn critical(&self) -> Duration {
        self.wave_paths.iter().sum()
    }

    pub fn spec(&self, id: String, pipeline: String) -> TrainSpec {
        TrainSpec {
            id,
            pipeline,
            artifact: self.pipeline.artifact.clone(),
            version: "1".into(),
            started_by: "bench".into(),
            steps: self.pipeline.steps.clone(),
            on_failure: self.pipeline.on_failure,
            windows: vec![],
            plan: self.plan.clone(),
        }
    }
}

/// A store (new SQLite file in `dir`, or the database at the URL) with the
/// cells seeded, and an engine on it.
pub struct Rig {
    pub store: Store,
    pub engine: Engine,
    pub sim: Arc<SimExecutor>,
    pub metrics: Arc<Metrics>,
}

impl Rig {
    pub async fn new(o: &Opts, s: &Setup, dir: &std::path::Path) -> Result<Rig> {
        let store = match &o.database_url {
            Some(u) => Store::connect(u).await?,
            None => Store::open(&dir.join("bench.db")).await?,
        };
        store.seed_cells(&s.cells, chrono::Utc::now()).await?;
        let metrics = Arc::new(Metrics::default());
        let leases = Arc::new(Leases::new(metrics.clone()));
        let sim = Arc::new(SimExecutor::new(o.deploy));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let engine =
            Engine::start(store.clone(), clock, sim.clone(), leases, metrics.clone()).await?;
        Ok(Rig {
            store,
            engine,
            sim,
            metrics,
        })
    }

    /// Event transactions committed so far (read from the metrics once, after
    /// a run: the hot path only bumps a counter).
    pub fn commits(&self) -> Result<u64> {
        let text = self.metrics.render(&[]);
        text.lines()
            .find_map(|l| l.strip_prefix("conductor_event_batches_total "))
            .context("metrics: no conductor_event_batches_total")?
            .trim()
            .parse()
            .context("metrics: conductor_event_batches_total is not a number")
    }

    /// Each (train, cell) of `trains` x `cells` deployed exactly once, and
    /// nothing else deployed.
    pub fn check_deploys(&self, trains: &[String], cells: &[CellSpec]) -> Result<()> {
        let m = self
            .sim
            .deploys
            .lock()
            .map_err(|_| anyhow::anyhow!("deploys: poisoned lock"))?;
        let known: HashSet<&str> = trains.iter().map(String::as_str).collect();
        let mut per: HashMap<(&str, &str), u32> = HashMap::new();
        for (key, n) in m.iter() {
            // step_key: "{train}/{cell}/step{step}/a{attempt}".
            let mut parts = key.splitn(3, '/');
            let (Some(t), Some(c)) = (parts.next(), parts.next()) else {
                anyhow::bail!("unexpected deploy key {key:?}");
            };
            anyhow::ensure!(known.contains(t), "deploy of an unknown train: {key:?}");
            *per.entry((t, c)).or_insert(0) += n;
        }
        let want = trains.len() * cells.len();
        anyhow::ensure!(
            per.len() == want && per.values().all(|n| *n == 1),
            "expected {want} (train, cell) pairs deployed once each, got {} pairs, {} deployed more than once",
            per.len(),
            per.values().filter(|n| **n > 1).count()
        );
        Ok(())
    }
}

pub fn median<T: Copy>(sorted: &[T]) -> T {
    sorted[sorted.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn single(o: &Opts, s: &Setup) -> Result<()> {
    let critical = s.critical();
    let mut results = Vec::new();
    for run in 1..=o.runs {
        let dir = tempfile::tempdir()?;
        let rig = Rig::new(o, s, dir.path()).await?;
        let mut finished = rig.engine.finished();
        // Unique: a database given by URL keeps earlier runs' trains.
        let id = format!("bench-{}-{run}", chrono::Utc::now().timestamp_micros());
        let t0 = Instant::now();
        rig.engine
            .start_train(s.spec(id.clone(), "bench".into()), None)
            .await?;
        let (_, status) = finished.recv().await?;
        let wall = t0.elapsed();
        anyhow::ensure!(
            status.as_str() == "succeeded",
            "train ended {}",
            status.as_str()
        );
        let events = rig.store.train_event_count(&id).await?;
        let commits = rig.commits()?;
        rig.check_deploys(std::slice::from_ref(&id), &s.cells)?;
        let ratio = wall.as_secs_f64() / critical.as_secs_f64();
        let eps = events as f64 / wall.as_secs_f64();
        let cps = commits as f64 / wall.as_secs_f64();
        println!(
            "run {run}: wall {:>7.1} ms  ratio {ratio:.3}  events {events}  ({eps:.0} events/s persisted)  commits {commits} ({cps:.0}/s)",
            ms(wall)
        );
        results.push((ratio, eps, wall, cps));
    }
    results.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, eps, wall, cps) = median(&results);
    println!(
        "median: wall {:.1} ms vs critical path {:.1} ms = {ratio:.3}x; {eps:.0} events/s persisted, {cps:.0} commits/s",
        ms(wall),
        ms(critical)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return Ok(());
    }
    let o = parse_opts(&args)?;
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let s = Setup::new(&o)?;
    let sizes: Vec<usize> = s.plan.waves.iter().map(|w| w.cells.len()).collect();
    let db = if o
        .database_url
        .as_deref()
        .is_some_and(conductor::store::is_postgres_url)
    {
        "postgres"
    } else {
        "sqlite"
    };
    println!(
        "cells {}, waves {sizes:?}, max_parallel {}, deploy {:?}, trains {}; critical path {:?}; database {db}",
        o.cells,
        o.max_parallel,
        o.deploy,
        o.trains,
        s.critical()
    );
    if o.trains > 1 {
        trains::run(&o, &s).await
    } else {
        single(&o, &s).await
    }
}
