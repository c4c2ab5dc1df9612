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
use capacity_planner::{Cell, Policy, TenantUsage};
use cells_inventory::Shape;
use clap::{Parser, Subcommand};
use serde::Deserialize;
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageFile {
    tenants: Vec<TenantUsage>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn load_usage(path: Option<&Path>) -> Result<Vec<TenantUsage>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = read(path)?;
    let name = path.display().to_string();
    let (doc, _spans): (UsageFile, _) =
        yamlspan::from_str(&name, &text).map_err(|e| anyhow!("{e}"))?;
    for t in &doc.tenants {
        if t.samples.windows(2).any(|w| w[1].at < w[0].at) {
            return Err(anyhow!(
                "{name}: samples of tenant {:?} are not in time order",
                t.tenant
            ));
        }
        if t.samples.iter().any(|s| {
            [s.check_rps, s.tuples, s.connections]
                .iter()
                .any(|x| !x.is_finite() || *x < 0.0)
        }) {
            return Err(anyhow!(
                "{name}: tenant {:?} has a negative or non-finite sample",
                t.tenant
            ));
        }
    }
    Ok(doc.tenants)
}

fn pct(v: [f64; 3]) -> String {
    format!(
        "{:>4.0}% {:>4.0}% {:>4.0}%",
        v[0] * 100.0,
        v[1] * 100.0,
        v[2] * 100.0
    )
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
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
        })
        .collect();
    let usage = load_usage(cli.usage.as_deref())?;
    let policy = Policy {
        headroom: cli.headroom,
        horizon_secs: cli.horizon_days * 86_400.0,
        ..Policy::default()
    };
    match cli.cmd {
        Cmd::Plan => {
            let r = capacity_planner::plan_capacity(&shapes, &cells, &usage, &policy);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "{:<12} {:<16} {:<7} {:>7}  {:<17}  {:<17}  {:<11} action",
                "CELL", "REGION", "SHAPE", "TENANTS", "NOW rps/tup/conn", "FORECAST", "RECOMMEND"
            );
            for c in &r.cells {
                println!(
                    "{:<12} {:<16} {:<7} {:>7}  {}  {}  {:<11} {}{}",
                    c.cell,
                    c.region,
                    c.shape,
                    c.tenants,
                    pct(c.utilization_now),
                    pct(c.utilization_forecast),
                    c.recommended.as_deref().unwrap_or("-"),
                    c.action,
                    if c.at_risk { "  AT RISK" } else { "" }
                );
            }
            println!(
                "fleet: cost {} now, {} recommended; stranded capacity: {:.0} rps, {:.0} tuples, {:.0} connections; at risk: {}",
                r.cost_now,
                r.cost_recommended,
                r.stranded[0],
                r.stranded[1],
                r.stranded[2],
                if r.at_risk.is_empty() { "none".to_string() } else { r.at_risk.join(", ") }
            );
            if !r.unknown_cells.is_empty() {
                println!(
                    "warning: tenants on cells not in the inventory: {}",
                    r.unknown_cells.join(", ")
                );
            }
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
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                match &p.cell {
                    Some(c) => println!("place on {c}"),
                    None => println!(
                        "stamp a new {} cell in {}",
                        p.new_shape.as_deref().unwrap_or("?"),
                        p.region
                    ),
                }
                println!("why: {}", p.reason);
            }
        }
        Cmd::Rebalance => {
            let moves = capacity_planner::rebalance(&shapes, &cells, &usage, &policy);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&moves)?);
            } else if moves.is_empty() {
                println!("no moves: every cell is within its headroom and none can be freed");
            } else {
                for m in moves {
                    println!("move {} {} -> {}: {}", m.tenant, m.from, m.to, m.gain);
                }
            }
        }
        Cmd::Limits => {
            let mut limits =
                capacity_planner::rate_limits(&shapes, &cells, &usage, &BTreeMap::new(), &policy);
            limits.sort_by(|a, b| {
                b.near_limit
                    .cmp(&a.near_limit)
                    .then((b.usage_rps / b.rate).total_cmp(&(a.usage_rps / a.rate)))
            });
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&limits)?);
            } else {
                println!(
                    "{:<20} {:<12} {:>10} {:>10} {:>10}",
                    "TENANT", "CELL", "USAGE rps", "LIMIT", "BURST"
                );
                for l in limits {
                    println!(
                        "{:<20} {:<12} {:>10.0} {:>10.0} {:>10.0}{}",
                        l.tenant,
                        l.cell,
                        l.usage_rps,
                        l.rate,
                        l.burst,
                        if l.near_limit { "  NEAR LIMIT" } else { "" }
                    );
                }
            }
        }
    }
    Ok(())
}
