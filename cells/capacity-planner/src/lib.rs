//! The capacity planner's rules, pure: no I/O, no clock. Given the cell
//! shapes, the cells, and each tenant's usage history, it computes
//! utilization and forecasts, recommends shapes under a headroom policy,
//! places new tenants, proposes rebalancing moves, sets per-tenant rate
//! limits, and packs a whole fleet (the benchmark's plan).
//!
//! This module, [`pack`] and [`report`] are pure. The service half sits
//! beside them: [`history`] (the usage database, sqlx), [`scrape`] (reading
//! the cells' `/metrics`; its parsing and rate rules are pure) and
//! [`service`] (`capacity-planner serve`, HTTP).
//!
//! Demand and capacity have three dimensions: check requests per second,
//! tuples stored, connections ([`DIMS`]).

pub mod history;
pub mod pack;
pub mod rebalance;
pub mod report;
pub mod scrape;
pub mod secrets;
pub mod service;

use cells_inventory::Shape;
pub use rebalance::{rebalance, Move, Rebalance, Unresolved};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The dimensions, in the order of every `[f64; 3]` here.
pub const DIMS: [&str; 3] = ["check_rps", "tuples", "connections"];

/// An amount per dimension (demand, load or capacity).
pub type Vector = [f64; 3];

pub fn add(a: Vector, b: Vector) -> Vector {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

pub fn sub(a: Vector, b: Vector) -> Vector {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

/// A shape's capacity as a vector.
pub fn capacity(s: &Shape) -> Vector {
    [
        s.capacity.check_rps as f64,
        s.capacity.tuples as f64,
        s.capacity.connections as f64,
    ]
}

/// `load / capacity` per dimension.
pub fn utilization(load: Vector, cap: Vector) -> Vector {
    [load[0] / cap[0], load[1] / cap[1], load[2] / cap[2]]
}

/// The largest of the three dimensions.
pub fn max3(v: Vector) -> f64 {
    v[0].max(v[1]).max(v[2])
}

/// The planning policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    /// Stay under this fraction of every dimension at the forecast peak.
    pub headroom: f64,
    /// How far ahead the forecast looks, in seconds.
    pub horizon_secs: f64,
    /// A tenant is "near its limit" at this fraction of it.
    pub near_limit: f64,
    /// A tenant's rate limit is its forecast rate times (1 + this).
    pub limit_margin: f64,
    /// No tenant's limit is below this (requests per second).
    pub min_limit: f64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            headroom: 0.70,
            horizon_secs: 7.0 * 86_400.0,
            near_limit: 0.80,
            limit_margin: 0.5,
            min_limit: 10.0,
        }
    }
}

impl Policy {
    /// Does `load` stay within the headroom of `cap`?
    pub fn fits(&self, load: Vector, cap: Vector) -> bool {
        (0..3).all(|d| load[d] <= self.headroom * cap[d] + 1e-9)
    }
}

/// One usage sample of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Seconds (any epoch, increasing).
    pub at: f64,
    pub check_rps: f64,
    pub tuples: f64,
    #[serde(default)]
    pub connections: f64,
}

impl Sample {
    pub fn vector(&self) -> Vector {
        [self.check_rps, self.tuples, self.connections]
    }
}

/// A tenant (an FGA store) on a cell, with its usage history, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantUsage {
    pub tenant: String,
    pub cell: String,
    pub samples: Vec<Sample>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageFile {
    tenants: Vec<TenantUsage>,
}

/// Most tenants × samples one usage file may hold.
pub const MAX_USAGE_SAMPLES: usize = 5_000_000;

/// Read a usage file (YAML or JSON: `tenants: [{tenant, cell, samples: [{at,
/// check_rps, tuples, connections}]}]`), every sample checked. Errors name
/// `FILE:LINE:COL` where the decoder can.
pub fn parse_usage(name: &str, text: &str) -> Result<Vec<TenantUsage>, String> {
    // JSON (any size) directly; YAML through yamlspan for positions.
    let doc: UsageFile = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| format!("{name}:{}:{}: {e}", e.line(), e.column()))?
    } else {
        yamlspan::from_str(name, text).map_err(|e| e.to_string())?.0
    };
    let total: usize = doc.tenants.iter().map(|t| t.samples.len()).sum();
    if total > MAX_USAGE_SAMPLES {
        return Err(format!(
            "{name}: {total} samples; at most {MAX_USAGE_SAMPLES} per file"
        ));
    }
    for t in &doc.tenants {
        if t.tenant.is_empty() || t.tenant.len() > 128 || t.cell.is_empty() || t.cell.len() > 63 {
            return Err(format!(
                "{name}: tenant {:?} on cell {:?}: names must be 1-128 (tenant) and 1-63 (cell) characters",
                t.tenant, t.cell
            ));
        }
        if t.samples.windows(2).any(|w| w[1].at < w[0].at) {
            return Err(format!(
                "{name}: samples of tenant {:?} are not in time order",
                t.tenant
            ));
        }
        if t.samples.iter().any(|s| {
            [s.at, s.check_rps, s.tuples, s.connections]
                .iter()
                .any(|x| !x.is_finite() || *x < 0.0)
        }) {
            return Err(format!(
                "{name}: tenant {:?} has a negative or non-finite sample",
                t.tenant
            ));
        }
    }
    Ok(doc.tenants)
}

/// A cell as the planner sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    pub id: String,
    pub region: String,
    pub shape: String,
    /// Whether new tenants may go to this cell: it is active (not draining)
    /// and runs the FGA data plane. Placement and rebalancing only ever move
    /// tenants to such cells; a cell that takes none and still hosts
    /// tenants is emptied by rebalancing. Default: true.
    #[serde(default = "yes")]
    pub accepts_tenants: bool,
}

fn yes() -> bool {
    true
}

/// Move every sample of `tenants` by one offset so that the newest is at
/// `now` (spacing kept): replaying recorded or example usage as current.
pub fn shift_to(tenants: &mut [TenantUsage], now: f64) {
    let newest = tenants
        .iter()
        .flat_map(|t| &t.samples)
        .map(|s| s.at)
        .reduce(f64::max);
    if let Some(newest) = newest {
        let by = now - newest;
        for s in tenants.iter_mut().flat_map(|t| t.samples.iter_mut()) {
            s.at += by;
        }
    }
}

/// The shortest history (seconds between the first and last sample) whose
/// trend the forecast trusts. A slope fitted to a few scrapes seconds apart
/// is noise, and projected over a horizon of days it would call any cell
/// at risk; until a series spans this long its forecast is its peak.
pub const MIN_TREND_SPAN_SECS: f64 = 3600.0;

/// The forecast peak of a series `(t, v)`: the highest value seen plus the
/// upward trend (least-squares slope, never negative) over the horizon,
/// once the series spans at least [`MIN_TREND_SPAN_SECS`].
pub fn forecast(series: &[(f64, f64)], horizon_secs: f64) -> f64 {
    let Some(peak) = series.iter().map(|p| p.1).reduce(f64::max) else {
        return 0.0;
    };
    let first = series.iter().map(|p| p.0).reduce(f64::min).unwrap_or(0.0);
    let last = series.iter().map(|p| p.0).reduce(f64::max).unwrap_or(0.0);
    if series.len() < 2 || last - first < MIN_TREND_SPAN_SECS {
        return peak;
    }
    let n = series.len() as f64;
    let mt = series.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = series.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = series.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum();
    let var: f64 = series.iter().map(|p| (p.0 - mt) * (p.0 - mt)).sum();
    let slope = if var > 0.0 { cov / var } else { 0.0 };
    peak + slope.max(0.0) * horizon_secs
}

/// A tenant's current usage (last sample) and forecast peak.
pub fn tenant_demand(t: &TenantUsage, policy: &Policy) -> (Vector, Vector) {
    let now = t.samples.last().map(Sample::vector).unwrap_or_default();
    let mut fc = [0.0; 3];
    for (d, f) in fc.iter_mut().enumerate() {
        let series: Vec<(f64, f64)> = t.samples.iter().map(|s| (s.at, s.vector()[d])).collect();
        *f = forecast(&series, policy.horizon_secs);
    }
    (now, fc)
}

/// The cheapest shape that holds `load` within the headroom (ties: the
/// first listed); `None` when even the largest cannot.
pub fn recommend_shape<'a>(
    shapes: &'a [Shape],
    load: Vector,
    policy: &Policy,
) -> Option<&'a Shape> {
    shapes
        .iter()
        .filter(|s| policy.fits(load, capacity(s)))
        .min_by(|a, b| a.cost.total_cmp(&b.cost))
}

/// What the plan says about one cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellReport {
    pub cell: String,
    pub region: String,
    pub shape: String,
    pub tenants: usize,
    /// Utilization per dimension now and at the forecast peak (fractions).
    pub utilization_now: Vector,
    pub utilization_forecast: Vector,
    /// The recommended shape; `None`: no shape holds the forecast (split the cell).
    pub recommended: Option<String>,
    /// `keep`, `grow`, `shrink` or `split`.
    pub action: String,
    /// Over the headroom at the forecast peak on its current shape.
    pub at_risk: bool,
}

/// The fleet plan: per cell, and totals.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetReport {
    pub headroom: f64,
    pub cells: Vec<CellReport>,
    pub cost_now: f64,
    pub cost_recommended: f64,
    /// Capacity not used now, summed over cells, per dimension.
    pub stranded: Vector,
    pub at_risk: Vec<String>,
    /// Tenants whose cell is not in the inventory.
    pub unknown_cells: Vec<String>,
}

/// Per cell: load now, load at the forecast peak, tenant count.
pub type CellLoads = BTreeMap<String, (Vector, Vector, usize)>;

/// Per-cell loads (now, forecast) and tenant counts, and the tenants whose
/// cell is unknown.
pub fn cell_loads(
    cells: &[Cell],
    usage: &[TenantUsage],
    policy: &Policy,
) -> (CellLoads, Vec<String>) {
    let mut loads: BTreeMap<String, (Vector, Vector, usize)> = cells
        .iter()
        .map(|c| (c.id.clone(), ([0.0; 3], [0.0; 3], 0)))
        .collect();
    let mut unknown = Vec::new();
    for t in usage {
        let (now, fc) = tenant_demand(t, policy);
        match loads.get_mut(&t.cell) {
            Some(l) => {
                l.0 = add(l.0, now);
                l.1 = add(l.1, fc);
                l.2 += 1;
            }
            None => unknown.push(t.tenant.clone()),
        }
    }
    (loads, unknown)
}

/// Utilization now and forecast, the recommended shapes and fleet totals.
pub fn plan_capacity(
    shapes: &[Shape],
    cells: &[Cell],
    usage: &[TenantUsage],
    policy: &Policy,
) -> FleetReport {
    let by_name: BTreeMap<&str, &Shape> = shapes.iter().map(|s| (s.name.as_str(), s)).collect();
    let (loads, unknown_cells) = cell_loads(cells, usage, policy);
    let mut report = FleetReport {
        headroom: policy.headroom,
        cells: Vec::new(),
        cost_now: 0.0,
        cost_recommended: 0.0,
        stranded: [0.0; 3],
        at_risk: Vec::new(),
        unknown_cells,
    };
    for c in cells {
        let Some(shape) = by_name.get(c.shape.as_str()) else {
            continue;
        };
        let (now, fc, n) = loads.get(&c.id).copied().unwrap_or_default();
        let cap = capacity(shape);
        let rec = recommend_shape(shapes, fc, policy);
        let at_risk = !policy.fits(fc, cap);
        let action = match rec {
            None => "split",
            Some(r) if r.name == shape.name => "keep",
            Some(r) if r.cost > shape.cost => "grow",
            Some(_) => "shrink",
        };
        report.cost_now += shape.cost;
        report.cost_recommended += rec.map_or(shape.cost, |r| r.cost);
        report.stranded = add(report.stranded, sub(cap, now).map(|x| x.max(0.0)));
        if at_risk {
            report.at_risk.push(c.id.clone());
        }
        report.cells.push(CellReport {
            cell: c.id.clone(),
            region: c.region.clone(),
            shape: shape.name.clone(),
            tenants: n,
            utilization_now: utilization(now, cap),
            utilization_forecast: utilization(fc, cap),
            recommended: rec.map(|r| r.name.clone()),
            action: action.into(),
            at_risk,
        });
    }
    report
}

/// Where a new tenant goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placement {
    /// An existing cell, or `None` when a new cell must be stamped.
    pub cell: Option<String>,
    /// The shape of the new cell to stamp, when `cell` is `None`.
    pub new_shape: Option<String>,
    pub region: String,
    /// Utilization of the chosen cell after placement (forecast).
    pub utilization_after: Vector,
    pub reason: String,
}

/// Pick the cell for a new tenant in `region`: the best fit (least capacity
/// left over) among the cells that take tenants ([`Cell::accepts_tenants`])
/// and keep their headroom with it; if none can, the cheapest shape to stamp
/// a new cell with.
pub fn place(
    shapes: &[Shape],
    cells: &[Cell],
    usage: &[TenantUsage],
    region: &str,
    demand: Vector,
    policy: &Policy,
) -> Result<Placement, String> {
    let by_name: BTreeMap<&str, &Shape> = shapes.iter().map(|s| (s.name.as_str(), s)).collect();
    let (loads, _) = cell_loads(cells, usage, policy);
    let in_region: Vec<&Cell> = cells.iter().filter(|c| c.region == region).collect();
    // Only cells that take tenants (active, running the FGA data plane).
    let (open, closed): (Vec<&Cell>, Vec<&Cell>) =
        in_region.iter().copied().partition(|c| c.accepts_tenants);
    let closed_note = if closed.is_empty() {
        String::new()
    } else {
        let ids: Vec<&str> = closed.iter().map(|c| c.id.as_str()).collect();
        format!(
            "; {} take no new tenants (draining or not running the FGA data plane): {}",
            ids.len(),
            ids.join(", ")
        )
    };
    let mut best: Option<(f64, &Cell, Vector)> = None;
    let mut full = 0;
    for c in &open {
        let Some(s) = by_name.get(c.shape.as_str()) else {
            continue;
        };
        let cap = capacity(s);
        let after = add(loads.get(&c.id).map(|l| l.1).unwrap_or_default(), demand);
        if !policy.fits(after, cap) {
            full += 1;
            continue;
        }
        // Left over within the headroom, summed over dimensions (normalized).
        let slack: f64 = (0..3).map(|d| policy.headroom - after[d] / cap[d]).sum();
        if best.as_ref().is_none_or(|b| slack < b.0) {
            best = Some((slack, c, utilization(after, cap)));
        }
    }
    if let Some((_, c, u)) = best {
        let tightest = (0..3).max_by(|a, b| u[*a].total_cmp(&u[*b])).unwrap_or(0);
        return Ok(Placement {
            cell: Some(c.id.clone()),
            new_shape: None,
            region: region.into(),
            utilization_after: u,
            reason: format!(
                "best fit of {} cell(s) in {region} with room ({} without{closed_note}): {} ({}) stays under {:.0}% on every dimension at the forecast peak, {} highest at {:.0}%",
                open.len() - full,
                full,
                c.id,
                c.shape,
                policy.headroom * 100.0,
                DIMS[tightest],
                u[tightest] * 100.0
            ),
        });
    }
    let Some(s) = recommend_shape(shapes, demand, policy) else {
        return Err(format!(
            "no shape can hold this tenant within {:.0}% headroom (check_rps {}, tuples {}): it needs a dedicated split",
            policy.headroom * 100.0,
            demand[0],
            demand[1]
        ));
    };
    Ok(Placement {
        cell: None,
        new_shape: Some(s.name.clone()),
        region: region.into(),
        utilization_after: utilization(demand, capacity(s)),
        reason: if in_region.is_empty() {
            format!("{region} has no cells: stamp a new {} cell", s.name)
        } else if open.is_empty() {
            format!(
                "no cell in {region} takes new tenants{closed_note}: stamp a new {} cell (the cheapest shape that holds it)",
                s.name
            )
        } else {
            format!(
                "none of the {} cell(s) in {region} that take tenants keeps {:.0}% headroom with this tenant{closed_note}: stamp a new {} cell (the cheapest shape that holds it)",
                open.len(),
                policy.headroom * 100.0,
                s.name
            )
        },
    })
}

/// A tenant's rate limit, as pushed to its cell's data plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantLimit {
    pub tenant: String,
    pub cell: String,
    /// Requests per second.
    pub rate: f64,
    /// Bucket size: the rate plus the tenant's share of the cell's spare capacity.
    pub burst: f64,
    pub usage_rps: f64,
    /// The limit in force now, if known (what the data plane enforces).
    pub in_force: Option<f64>,
    /// Usage at or above `near_limit` of the limit in force (or, when none
    /// is known, of the new rate): the early warning.
    pub near_limit: bool,
}

/// Per-tenant limits: the forecast rate with a margin, and a burst that
/// shares the cell's spare capacity (within the headroom) by usage.
/// `in_force` holds the limits the data planes enforce now, by tenant.
pub fn rate_limits(
    shapes: &[Shape],
    cells: &[Cell],
    usage: &[TenantUsage],
    in_force: &BTreeMap<String, f64>,
    policy: &Policy,
) -> Vec<TenantLimit> {
    let by_name: BTreeMap<&str, &Shape> = shapes.iter().map(|s| (s.name.as_str(), s)).collect();
    let (loads, _) = cell_loads(cells, usage, policy);
    let shape_of: BTreeMap<&str, &Shape> = cells
        .iter()
        .filter_map(|c| Some((c.id.as_str(), *by_name.get(c.shape.as_str())?)))
        .collect();
    let mut out = Vec::new();
    for t in usage {
        let (Some(shape), Some(l)) = (shape_of.get(t.cell.as_str()), loads.get(&t.cell)) else {
            continue;
        };
        let (now, fc) = tenant_demand(t, policy);
        let usable = policy.headroom * shape.capacity.check_rps as f64;
        let spare = (usable - l.1[0]).max(0.0);
        let share = if l.1[0] > 0.0 {
            fc[0] / l.1[0]
        } else {
            1.0 / l.2.max(1) as f64
        };
        let rate = (fc[0] * (1.0 + policy.limit_margin))
            .max(policy.min_limit)
            .ceil();
        let burst = (rate + spare * share).ceil();
        let current = in_force.get(&t.tenant).copied();
        out.push(TenantLimit {
            tenant: t.tenant.clone(),
            cell: t.cell.clone(),
            rate,
            burst,
            usage_rps: now[0],
            in_force: current,
            near_limit: now[0] >= policy.near_limit * current.unwrap_or(rate),
        });
    }
    out
}

#[cfg(test)]
mod tests;
