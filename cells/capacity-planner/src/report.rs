//! Text rendering of the planner's answers, shared by `capacity-planner`
//! and `conductor plan|tenants` so that both print the same tables.

use crate::{FleetReport, Move, Placement, TenantLimit};
use std::fmt::Write;

fn pct(v: [f64; 3]) -> String {
    format!(
        "{:>4.0}% {:>4.0}% {:>4.0}%",
        v[0] * 100.0,
        v[1] * 100.0,
        v[2] * 100.0
    )
}

/// Per cell: shape, tenants, utilization now and forecast, recommendation;
/// then the fleet totals.
pub fn plan(r: &FleetReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<12} {:<16} {:<7} {:>7}  {:<17}  {:<17}  {:<11} action",
        "CELL", "REGION", "SHAPE", "TENANTS", "NOW rps/tup/conn", "FORECAST", "RECOMMEND"
    );
    for c in &r.cells {
        let _ = writeln!(
            o,
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
    let _ = writeln!(
        o,
        "fleet: cost {} now, {} recommended; stranded capacity: {:.0} rps, {:.0} tuples, {:.0} connections; at risk: {}",
        r.cost_now,
        r.cost_recommended,
        r.stranded[0],
        r.stranded[1],
        r.stranded[2],
        if r.at_risk.is_empty() { "none".to_string() } else { r.at_risk.join(", ") }
    );
    let _ = writeln!(
        o,
        "headroom policy: stay under {:.0}% of every dimension at the forecast peak",
        r.headroom * 100.0
    );
    if !r.unknown_cells.is_empty() {
        let _ = writeln!(
            o,
            "warning: tenants on cells not in the inventory: {}",
            r.unknown_cells.join(", ")
        );
    }
    o
}

pub fn placement(p: &Placement) -> String {
    let head = match &p.cell {
        Some(c) => format!("place on {c}"),
        None => format!(
            "stamp a new {} cell in {}",
            p.new_shape.as_deref().unwrap_or("?"),
            p.region
        ),
    };
    format!("{head}\nwhy: {}\n", p.reason)
}

pub fn moves(moves: &[Move]) -> String {
    if moves.is_empty() {
        return "no moves: every cell is within its headroom and none can be freed\n".into();
    }
    moves
        .iter()
        .map(|m| format!("move {} {} -> {}: {}\n", m.tenant, m.from, m.to, m.gain))
        .collect()
}

/// Tenants near their limit first, then by how close they are.
pub fn sort_limits(limits: &mut [TenantLimit]) {
    limits.sort_by(|a, b| {
        b.near_limit
            .cmp(&a.near_limit)
            .then((b.usage_rps / b.rate).total_cmp(&(a.usage_rps / a.rate)))
    });
}

pub fn limits(limits: &[TenantLimit]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<28} {:<12} {:>10} {:>10} {:>10} {:>10}",
        "TENANT", "CELL", "USAGE rps", "IN FORCE", "LIMIT", "BURST"
    );
    for l in limits {
        let _ = writeln!(
            o,
            "{:<28} {:<12} {:>10.0} {:>10} {:>10.0} {:>10.0}{}",
            l.tenant,
            l.cell,
            l.usage_rps,
            l.in_force.map_or("-".to_string(), |r| format!("{r:.0}")),
            l.rate,
            l.burst,
            if l.near_limit { "  NEAR LIMIT" } else { "" }
        );
    }
    o
}
