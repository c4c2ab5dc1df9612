//! `capacity-bench`: the planner on a synthetic fleet.
//!
//! 1,000 cells in 3 regions and 100,000 tenants with heavy-tailed (Pareto)
//! usage, spread at random over the cells of their region. Reports the
//! wall time of the capacity plan (per-cell report) and of the whole-fleet
//! plan (repacking every region), and the fleet plan's cost against the
//! lower bound and against a first-fit-decreasing baseline.
//!
//! `cargo run --release -p capacity-planner --bin capacity-bench -- [--cells N] [--tenants N] [--seed S]`

use capacity_planner::pack::{first_fit_decreasing, lower_bound, plan};
use capacity_planner::{plan_capacity, Cell, Policy, Sample, TenantUsage, Vector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn arg(args: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{name} takes a number")),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: capacity-bench [--cells N (1000)] [--tenants N (100000)] [--seed S (1)]");
        return Ok(());
    }
    let n_cells = arg(&args, "--cells", 1000)? as usize;
    let n_tenants = arg(&args, "--tenants", 100_000)? as usize;
    let seed = arg(&args, "--seed", 1)?;
    let text = std::fs::read_to_string("templates/shapes.yaml").or_else(|_| {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../templates/shapes.yaml"
        ))
    })?;
    let shapes = cells_inventory::parse_shapes("templates/shapes.yaml", &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let regions = ["us-east-1", "eu-west-1", "ap-southeast-2"];
    let mut rng = StdRng::seed_from_u64(seed);
    let cells: Vec<Cell> = (0..n_cells)
        .map(|i| Cell {
            id: format!("cell-{i:04}"),
            region: regions[i % regions.len()].to_string(),
            shape: shapes[rng.gen_range(0..shapes.len())].name.clone(),
            accepts_tenants: true,
        })
        .collect();
    // Heavy-tailed tenants: Pareto(alpha 1.3) request rates from 20 rps,
    // capped at 5,000; tuples proportional with a wide spread; connections
    // a fraction of the rate. Scaled so the fleet is about as busy as its
    // cells.
    let policy = Policy::default();
    let mut usage = Vec::with_capacity(n_tenants);
    for t in 0..n_tenants {
        let u: f64 = rng.gen_range(1e-9..1.0);
        let rps = (20.0 * u.powf(-1.0 / 1.3)).min(5000.0);
        let tuples = rps * rng.gen_range(200.0..3000.0);
        let conns = (rps * rng.gen_range(0.05..0.3)).ceil();
        let region = regions[t % regions.len()];
        // A random cell of the tenant's region.
        let k = rng.gen_range(0..n_cells / regions.len()) * regions.len() + t % regions.len();
        let cell = &cells[k.min(n_cells - 1)];
        debug_assert_eq!(cell.region, region);
        let growth = rng.gen_range(0.0..0.002);
        usage.push(TenantUsage {
            tenant: format!("t{t}"),
            cell: cell.id.clone(),
            samples: (0..6)
                .map(|h| Sample {
                    at: f64::from(h) * 3600.0,
                    check_rps: rps * (1.0 + growth * f64::from(h)),
                    tuples,
                    connections: conns,
                })
                .collect(),
        });
    }

    // The capacity plan: utilization, forecast and a shape per cell.
    let t0 = Instant::now();
    let report = plan_capacity(&shapes, &cells, &usage, &policy);
    let t_report = t0.elapsed().as_secs_f64();
    println!(
        "fleet: {n_cells} cells in {} regions, {n_tenants} tenants; capacity plan in {:.3} s: cost now {}, recommended {}, {} cells at risk",
        regions.len(),
        t_report,
        report.cost_now,
        report.cost_recommended,
        report.at_risk.len()
    );

    // The whole-fleet plan: repack every region at the forecast peak.
    let region_of: std::collections::HashMap<&str, &str> = cells
        .iter()
        .map(|c| (c.id.as_str(), c.region.as_str()))
        .collect();
    let by_region: Vec<Vec<Vector>> = regions
        .iter()
        .map(|r| {
            usage
                .iter()
                .filter(|u| region_of.get(u.cell.as_str()) == Some(r))
                .map(|u| capacity_planner::tenant_demand(u, &policy).1)
                .collect()
        })
        .collect();
    let t0 = Instant::now();
    let ours: Vec<_> = by_region
        .iter()
        .map(|d| plan(&shapes, d, &policy))
        .collect();
    let t_plan = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let ffd: Vec<_> = by_region
        .iter()
        .map(|d| first_fit_decreasing(&shapes, d, &policy))
        .collect();
    let t_ffd = t0.elapsed().as_secs_f64();
    let lb: f64 = by_region
        .iter()
        .map(|d| lower_bound(&shapes, d, &policy))
        .sum();
    let cost = |p: &[capacity_planner::pack::Packing]| p.iter().map(|x| x.cost).sum::<f64>();
    let cells_of =
        |p: &[capacity_planner::pack::Packing]| p.iter().map(|x| x.bins.len()).sum::<usize>();
    let unplaced: usize = ours.iter().map(|p| p.unplaceable.len()).sum();
    println!(
        "fleet plan (repack at the forecast peak, {:.0}% headroom): {:.3} s, cost {} in {} cells ({:.2}% above the lower bound {lb}); {unplaced} tenants too large for any shape",
        policy.headroom * 100.0,
        t_plan,
        cost(&ours),
        cells_of(&ours),
        (cost(&ours) / lb - 1.0) * 100.0
    );
    println!(
        "baseline first-fit decreasing: {:.3} s, cost {} in {} cells ({:.2}% above the bound); the plan saves {:.2}%",
        t_ffd,
        cost(&ffd),
        cells_of(&ffd),
        (cost(&ffd) / lb - 1.0) * 100.0,
        (1.0 - cost(&ours) / cost(&ffd)) * 100.0
    );
    Ok(())
}
