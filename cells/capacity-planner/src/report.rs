//! Text rendering of the planner's answers, shared by `capacity-planner`
//! and `conductor plan|tenants` so that both print the same tables.

use crate::{FleetReport, Placement, Rebalance, TenantLimit};
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

/// The moves, each with its gain; then every cell the moves leave over
/// the headroom (or hosting tenants it should not), with why and the remedy.
pub fn rebalance(r: &Rebalance) -> String {
    let mut o = String::new();
    if r.moves.is_empty() && r.unresolved.is_empty() {
        return "no moves: every cell is within its headroom, no draining cell hosts tenants, and none can be freed\n".into();
    }
    if r.moves.is_empty() {
        let _ = writeln!(o, "no moves help:");
    }
    for m in &r.moves {
        let _ = writeln!(o, "move {} {} -> {}: {}", m.tenant, m.from, m.to, m.gain);
    }
    for u in &r.unresolved {
        let _ = writeln!(
            o,
            "unresolved {} ({}, peak {:.0}% at the forecast): {}",
            u.cell,
            u.region,
            u.peak_utilization * 100.0,
            u.reason
        );
    }
    o
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

/// What a limits push achieved, from the planner's per-tenant results
/// (`{tenant, cell, ok, detail}`; an entry without a tenant is a failure of
/// the whole push, such as a missing admin key).
#[derive(Debug, Clone, PartialEq)]
pub struct PushOutcome {
    /// `succeeded` (every limit pushed), `partly` or `failed` (none).
    pub outcome: &'static str,
    pub pushed: usize,
    pub limits: usize,
    /// Tenants with no store to push to (imported usage), not counted in
    /// `limits`.
    pub skipped: usize,
    /// What failed: `tenant on cell: why`.
    pub failures: Vec<String>,
}

/// Most failures named in [`PushOutcome::summary`].
const MAX_NAMED_FAILURES: usize = 20;

/// Fail closed: an entry is pushed only if it says `"ok": true`.
pub fn push_outcome(results: &[serde_json::Value]) -> PushOutcome {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    let (mut pushed, mut limits, mut skipped, mut whole) = (0, 0, 0, false);
    let mut failures = Vec::new();
    for r in results {
        let ok = r["ok"] == serde_json::Value::Bool(true);
        if r["skipped"] == serde_json::Value::Bool(true)
            && r.get("tenant").is_some_and(|t| !t.is_null())
        {
            skipped += 1;
            continue;
        }
        if r.get("tenant").is_some_and(|t| !t.is_null()) {
            limits += 1;
            if ok {
                pushed += 1;
                continue;
            }
            failures.push(format!(
                "{} on {}: {}",
                text(&r["tenant"]),
                text(&r["cell"]),
                text(&r["detail"])
            ));
        } else if !ok {
            whole = true;
            failures.push(text(&r["detail"]));
        }
    }
    let outcome = if failures.is_empty() {
        "succeeded"
    } else if pushed == 0 || whole {
        "failed"
    } else {
        "partly"
    };
    PushOutcome {
        outcome,
        pushed,
        limits,
        skipped,
        failures,
    }
}

impl PushOutcome {
    /// One line for the audit log: the outcome first, then what failed.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} of {} limits pushed",
            self.outcome, self.pushed, self.limits
        );
        if self.skipped > 0 {
            let _ = write!(
                s,
                "; {} skipped (not FGA store ids: imported usage)",
                self.skipped
            );
        }
        if !self.failures.is_empty() {
            let named: Vec<&str> = self
                .failures
                .iter()
                .take(MAX_NAMED_FAILURES)
                .map(String::as_str)
                .collect();
            let _ = write!(s, "; failed: {}", named.join("; "));
            if self.failures.len() > MAX_NAMED_FAILURES {
                let _ = write!(s, "; and {} more", self.failures.len() - MAX_NAMED_FAILURES);
            }
        }
        s
    }
}
