//! Packing a region's tenants into cells: the planner's whole-fleet plan, a
//! first-fit-decreasing baseline, and the lower bound both are measured
//! against. Multi-dimensional (check rps, tuples, connections), every cell
//! kept within the policy's headroom.

use crate::{add, capacity, Policy, Vector};
use cells_inventory::Shape;
use serde::Serialize;

/// One cell of a packing.
#[derive(Debug, Clone, Serialize)]
pub struct Bin {
    /// Index into the shapes.
    pub shape: usize,
    pub load: Vector,
    /// Indexes into the demands.
    pub tenants: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Packing {
    pub bins: Vec<Bin>,
    pub cost: f64,
    /// Tenants no shape can hold within the headroom (they need a split).
    pub unplaceable: Vec<usize>,
}

/// The shape with the most capacity per unit of cost on its worst
/// dimension: the one to fill.
pub fn workhorse(shapes: &[Shape]) -> usize {
    let eff = |s: &Shape| {
        let c = capacity(s);
        c.iter().map(|x| x / s.cost).fold(f64::INFINITY, f64::min)
    };
    (0..shapes.len())
        .max_by(|a, b| eff(&shapes[*a]).total_cmp(&eff(&shapes[*b])))
        .unwrap_or(0)
}

fn usable(shapes: &[Shape], i: usize, policy: &Policy) -> Vector {
    capacity(&shapes[i]).map(|c| c * policy.headroom)
}

fn fits(load: Vector, d: Vector, cap: Vector) -> bool {
    (0..3).all(|k| load[k] + d[k] <= cap[k] * (1.0 + 1e-12))
}

/// Tenant indexes, largest first (by their largest share of the
/// workhorse's usable capacity).
fn decreasing(demands: &[Vector], cap: Vector) -> Vec<usize> {
    let size = |d: &Vector| (0..3).map(|k| d[k] / cap[k]).fold(0.0, f64::max);
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by(|a, b| size(&demands[*b]).total_cmp(&size(&demands[*a])));
    order
}

fn total_cost(shapes: &[Shape], bins: &[Bin]) -> f64 {
    bins.iter().map(|b| shapes[b.shape].cost).sum()
}

/// Decreasing-order packing on workhorse cells: `choose` picks, among the
/// open cells (and the tenant's demand and the usable capacity), the one to
/// add the tenant to, or `None` to open a new cell.
fn decreasing_fit(
    shapes: &[Shape],
    demands: &[Vector],
    policy: &Policy,
    choose: impl Fn(&[Bin], Vector, Vector) -> Option<usize>,
) -> (Vec<Bin>, Vec<usize>) {
    let w = workhorse(shapes);
    let cap = usable(shapes, w, policy);
    let mut bins: Vec<Bin> = Vec::new();
    let mut unplaceable = Vec::new();
    for i in decreasing(demands, cap) {
        let d = demands[i];
        if !fits([0.0; 3], d, cap) {
            unplaceable.push(i);
            continue;
        }
        match choose(&bins, d, cap) {
            Some(j) => {
                bins[j].load = add(bins[j].load, d);
                bins[j].tenants.push(i);
            }
            None => bins.push(Bin {
                shape: w,
                load: d,
                tenants: vec![i],
            }),
        }
    }
    (bins, unplaceable)
}

/// The planner's packing: best fit decreasing on workhorse cells, choosing
/// for each tenant the cell it leaves most evenly and tightly filled (the
/// smallest remaining capacity, as a norm over dimensions, so that no one
/// dimension strands the others), then every cell right-sized to the
/// cheapest shape that holds its load within the headroom.
pub fn plan(shapes: &[Shape], demands: &[Vector], policy: &Policy) -> Packing {
    let (mut bins, unplaceable) = decreasing_fit(shapes, demands, policy, |bins, d, cap| {
        let mut best: Option<(f64, usize)> = None;
        for (j, b) in bins.iter().enumerate() {
            if !fits(b.load, d, cap) {
                continue;
            }
            let r: f64 = (0..3)
                .map(|k| {
                    let x = (cap[k] - b.load[k] - d[k]) / cap[k];
                    x * x
                })
                .sum();
            if best.is_none_or(|(s, _)| r < s) {
                best = Some((r, j));
            }
        }
        best.map(|b| b.1)
    });
    for b in &mut bins {
        if let Some(s) = crate::recommend_shape(shapes, b.load, policy) {
            b.shape = shapes
                .iter()
                .position(|x| x.name == s.name)
                .unwrap_or(b.shape);
        }
    }
    let cost = total_cost(shapes, &bins);
    Packing {
        bins,
        cost,
        unplaceable,
    }
}

/// The baseline: first fit decreasing on workhorse cells, as they are.
pub fn first_fit_decreasing(shapes: &[Shape], demands: &[Vector], policy: &Policy) -> Packing {
    let (bins, unplaceable) = decreasing_fit(shapes, demands, policy, |bins, d, cap| {
        bins.iter().position(|b| fits(b.load, d, cap))
    });
    let cost = total_cost(shapes, &bins);
    Packing {
        bins,
        cost,
        unplaceable,
    }
}

/// A lower bound on the cost of any packing within the headroom: per
/// dimension, the total demand times the cheapest cost per unit of usable
/// capacity, rounded up to whole cells of the cheapest shape; the largest
/// of these. (Rounding up to cells of the most efficient shape instead
/// would not be a bound: a mix of shapes can come in under it.)
pub fn lower_bound(shapes: &[Shape], demands: &[Vector], policy: &Policy) -> f64 {
    let total = demands.iter().fold([0.0; 3], |a, d| add(a, *d));
    let unit = shapes.iter().map(|s| s.cost).fold(f64::INFINITY, f64::min);
    if !unit.is_finite() {
        return 0.0;
    }
    (0..3)
        .map(|k| {
            let per_cost = shapes
                .iter()
                .map(|s| s.cost / (capacity(s)[k] * policy.headroom))
                .fold(f64::INFINITY, f64::min);
            // A tiny tolerance keeps float noise from adding a whole cell.
            ((total[k] * per_cost / unit) - 1e-9).ceil().max(0.0) * unit
        })
        .fold(0.0, f64::max)
}
