//! Rebalancing, pure: tenant moves that empty cells taking no new tenants
//! (draining, or not running the FGA data plane), relieve hot cells and
//! free lightly used ones; and, said plainly, what the moves cannot fix.
//!
//! *Invariant*: every cell the capacity plan calls at risk (over the
//! headroom at the forecast peak) is either brought back under the headroom
//! by the moves or listed in [`Rebalance::unresolved`] with the reason; so
//! is every cell that takes no new tenants and keeps some.

use crate::{
    add, capacity, max3, recommend_shape, sub, tenant_demand, utilization, Cell, Policy,
    TenantUsage, Vector,
};
use cells_inventory::Shape;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A proposed tenant move.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Move {
    pub tenant: String,
    pub from: String,
    pub to: String,
    /// What it achieves: empties a cell, relieves a hot cell or helps free one.
    pub gain: String,
}

/// A cell rebalancing cannot fix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unresolved {
    pub cell: String,
    pub region: String,
    /// The highest utilization of any dimension at the forecast peak, after the moves.
    pub peak_utilization: f64,
    /// Why no move fixes it, and what would.
    pub reason: String,
}

/// What rebalancing proposes, and what it leaves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rebalance {
    pub moves: Vec<Move>,
    /// Cells still over the headroom after the moves, and cells that take
    /// no new tenants but keep some.
    pub unresolved: Vec<Unresolved>,
}

/// Forecast load and tenants per cell, as moves change them.
struct Fleet<'a> {
    cells: &'a [Cell],
    caps: BTreeMap<&'a str, Vector>,
    load: BTreeMap<String, Vector>,
    tenants: BTreeMap<String, Vec<(String, Vector)>>,
    policy: &'a Policy,
}

impl Fleet<'_> {
    fn load_of(&self, cell: &str) -> Vector {
        self.load.get(cell).copied().unwrap_or_default()
    }

    /// A cell's tenants, the largest (relative to `cap`) first.
    fn largest_first(&self, cell: &str, cap: Vector) -> Vec<(String, Vector)> {
        let mut ts = self.tenants.get(cell).cloned().unwrap_or_default();
        ts.sort_by(|a, b| max3(utilization(b.1, cap)).total_cmp(&max3(utilization(a.1, cap))));
        ts
    }

    /// The best other cell of `from`'s region that takes tenants and keeps
    /// its headroom with `d` added (the tightest fit), under `load`.
    fn target(
        &self,
        load: &BTreeMap<String, Vector>,
        from: &Cell,
        d: Vector,
        avoid: &[String],
    ) -> Option<String> {
        self.cells
            .iter()
            .filter(|c| {
                c.accepts_tenants
                    && c.id != from.id
                    && c.region == from.region
                    && !avoid.contains(&c.id)
            })
            .filter_map(|c| {
                let cap = *self.caps.get(c.id.as_str())?;
                let after = add(load.get(&c.id).copied().unwrap_or_default(), d);
                self.policy.fits(after, cap).then(|| {
                    let slack: f64 = (0..3)
                        .map(|k| self.policy.headroom - after[k] / cap[k])
                        .sum();
                    (slack, c.id.clone())
                })
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|x| x.1)
    }

    fn shift(&mut self, tenant: &str, d: Vector, from: &str, to: &str) {
        let l = self.load.entry(from.to_string()).or_default();
        *l = sub(*l, d).map(|x| x.max(0.0));
        let l = self.load.entry(to.to_string()).or_default();
        *l = add(*l, d);
        if let Some(v) = self.tenants.get_mut(from) {
            v.retain(|x| x.0 != tenant);
        }
        self.tenants
            .entry(to.to_string())
            .or_default()
            .push((tenant.to_string(), d));
    }
}

/// Moves that (1) empty cells that take no new tenants, (2) relieve hot
/// cells (over the headroom at the forecast peak) and (3) free lightly used
/// cells whose tenants all fit elsewhere in their region; tenants only ever
/// go to cells of the same region that take tenants. What the moves leave
/// unfixed is in `unresolved`, with the remedy.
pub fn rebalance(
    shapes: &[Shape],
    cells: &[Cell],
    usage: &[TenantUsage],
    policy: &Policy,
) -> Rebalance {
    let by_name: BTreeMap<&str, &Shape> = shapes.iter().map(|s| (s.name.as_str(), s)).collect();
    let caps: BTreeMap<&str, Vector> = cells
        .iter()
        .filter_map(|c| Some((c.id.as_str(), capacity(by_name.get(c.shape.as_str())?))))
        .collect();
    let mut f = Fleet {
        cells,
        caps,
        load: BTreeMap::new(),
        tenants: BTreeMap::new(),
        policy,
    };
    for t in usage {
        if !f.caps.contains_key(t.cell.as_str()) {
            continue;
        }
        let (_, fc) = tenant_demand(t, policy);
        let l = f.load.entry(t.cell.clone()).or_default();
        *l = add(*l, fc);
        f.tenants
            .entry(t.cell.clone())
            .or_default()
            .push((t.tenant.clone(), fc));
    }
    let mut out = Rebalance::default();
    // Cells that took tenants are not freed afterwards.
    let mut received: Vec<String> = Vec::new();
    let headroom = policy.headroom * 100.0;

    // 1. Empty the cells that take no new tenants.
    for c in cells.iter().filter(|c| !c.accepts_tenants) {
        let Some(&cap) = f.caps.get(c.id.as_str()) else {
            continue;
        };
        let mut stuck = Vec::new();
        for (t, d) in f.largest_first(&c.id, cap) {
            match f.target(&f.load, c, d, &[]) {
                Some(to) => {
                    f.shift(&t, d, &c.id, &to);
                    received.push(to.clone());
                    out.moves.push(Move {
                        tenant: t,
                        from: c.id.clone(),
                        to,
                        gain: format!("empties {}, which takes no new tenants", c.id),
                    });
                }
                None => stuck.push(t),
            }
        }
        if !stuck.is_empty() {
            out.unresolved.push(Unresolved {
                cell: c.id.clone(),
                region: c.region.clone(),
                peak_utilization: max3(utilization(f.load_of(&c.id), cap)),
                reason: format!(
                    "takes no new tenants but still hosts {}: {}; no cell in {} that takes tenants has room for them: add one (conductor cells add) or grow one (conductor cells resize)",
                    stuck.len(),
                    stuck.join(", "),
                    c.region
                ),
            });
        }
    }

    // 2. Relieve hot cells: move their largest tenants (on the hot
    //    dimension) that fit elsewhere until the cell is back under the
    //    headroom; say so when it is not.
    for c in cells.iter().filter(|c| c.accepts_tenants) {
        let Some(&cap) = f.caps.get(c.id.as_str()) else {
            continue;
        };
        let before = utilization(f.load_of(&c.id), cap);
        if policy.fits(f.load_of(&c.id), cap) {
            continue;
        }
        let mut moved = 0;
        for (t, d) in f.largest_first(&c.id, cap) {
            let cur = f.load_of(&c.id);
            if policy.fits(cur, cap) {
                break;
            }
            if let Some(to) = f.target(&f.load, c, d, &[]) {
                f.shift(&t, d, &c.id, &to);
                received.push(to.clone());
                moved += 1;
                out.moves.push(Move {
                    tenant: t,
                    from: c.id.clone(),
                    to,
                    gain: format!(
                        "relieves {}: peak utilization {:.0}% -> {:.0}%",
                        c.id,
                        max3(before) * 100.0,
                        max3(utilization(f.load_of(&c.id), cap)) * 100.0
                    ),
                });
            }
        }
        let after = f.load_of(&c.id);
        if !policy.fits(after, cap) {
            let what = if moved == 0 {
                format!(
                    "no other cell in {} that takes tenants has room for any of its tenants",
                    c.region
                )
            } else {
                format!("the {moved} move(s) above relieve it only partly")
            };
            let fix = if recommend_shape(shapes, after, policy).is_some() {
                "grow it (conductor plan capacity --apply)"
            } else {
                "no shape holds its load: split it (add a cell in its region with conductor cells add and move tenants there)"
            };
            out.unresolved.push(Unresolved {
                cell: c.id.clone(),
                region: c.region.clone(),
                peak_utilization: max3(utilization(after, cap)),
                reason: format!("over {headroom:.0}% at the forecast peak: {what}; {fix}"),
            });
        }
    }

    // 3. Free lightly used cells (under a third of the headroom everywhere),
    //    least used first, when all of their tenants fit elsewhere in the
    //    region; a cell that takes tenants is not freed itself.
    let mut freed: Vec<String> = Vec::new();
    let mut light: Vec<(f64, &Cell)> = cells
        .iter()
        .filter(|c| c.accepts_tenants)
        .filter_map(|c| {
            let cap = *f.caps.get(c.id.as_str())?;
            let u = max3(utilization(f.load_of(&c.id), cap));
            (u <= policy.headroom / 3.0).then_some((u, c))
        })
        .collect();
    light.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, c) in light {
        if received.contains(&c.id) {
            continue;
        }
        let ts = f.tenants.get(&c.id).cloned().unwrap_or_default();
        if ts.is_empty() {
            continue;
        }
        let mut trial = f.load.clone();
        let mut planned = Vec::new();
        let mut avoid = freed.clone();
        avoid.push(c.id.clone());
        let ok = ts
            .iter()
            .all(|(t, d)| match f.target(&trial, c, *d, &avoid) {
                Some(to) => {
                    let e = trial.entry(to.clone()).or_default();
                    *e = add(*e, *d);
                    planned.push((t.clone(), *d, to));
                    true
                }
                None => false,
            });
        if ok {
            let cost = by_name.get(c.shape.as_str()).map_or(0.0, |s| s.cost);
            freed.push(c.id.clone());
            for (t, d, to) in planned {
                f.shift(&t, d, &c.id, &to);
                received.push(to.clone());
                out.moves.push(Move {
                    tenant: t,
                    from: c.id.clone(),
                    to,
                    gain: format!("frees {} (saves cost {cost})", c.id),
                });
            }
        }
    }
    out
}
