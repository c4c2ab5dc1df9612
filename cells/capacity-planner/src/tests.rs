//! Unit and property tests of the planning rules.

use super::*;
use crate::pack::{first_fit_decreasing, lower_bound, plan};
use proptest::prelude::*;

fn shapes() -> Vec<Shape> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../templates/shapes.yaml"
    ))
    .expect("templates/shapes.yaml");
    cells_inventory::parse_shapes("templates/shapes.yaml", &text).expect("valid shapes")
}

fn cell(id: &str, region: &str, shape: &str) -> Cell {
    Cell {
        id: id.into(),
        region: region.into(),
        shape: shape.into(),
    }
}

/// A tenant with a flat usage history.
fn flat(tenant: &str, cell: &str, rps: f64, tuples: f64) -> TenantUsage {
    TenantUsage {
        tenant: tenant.into(),
        cell: cell.into(),
        samples: (0..4)
            .map(|i| Sample {
                at: f64::from(i) * 3600.0,
                check_rps: rps,
                tuples,
                connections: 1.0,
            })
            .collect(),
    }
}

#[test]
fn forecast_is_the_peak_plus_the_upward_trend() {
    assert_eq!(forecast(&[], 100.0), 0.0);
    assert_eq!(forecast(&[(0.0, 5.0)], 100.0), 5.0);
    // Flat: the peak.
    assert_eq!(forecast(&[(0.0, 5.0), (1.0, 7.0), (2.0, 5.0)], 100.0), 7.0);
    // Growing 1 per second: the last value plus 10 over a 10 s horizon.
    let f = forecast(&[(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)], 10.0);
    assert!((f - 13.0).abs() < 1e-9, "{f}");
    // Shrinking: never below the peak seen.
    assert_eq!(forecast(&[(0.0, 9.0), (1.0, 5.0)], 10.0), 9.0);
}

#[test]
fn the_recommended_shape_is_the_cheapest_within_headroom() {
    let s = shapes();
    let p = Policy::default();
    // small holds 2,000 rps: 70% is 1,400.
    assert_eq!(
        recommend_shape(&s, [1400.0, 0.0, 0.0], &p).map(|x| x.name.as_str()),
        Some("small")
    );
    assert_eq!(
        recommend_shape(&s, [1401.0, 0.0, 0.0], &p).map(|x| x.name.as_str()),
        Some("medium")
    );
    // Tuples decide as well as rps.
    assert_eq!(
        recommend_shape(&s, [10.0, 8_000_000.0, 0.0], &p).map(|x| x.name.as_str()),
        Some("large")
    );
    assert!(recommend_shape(&s, [1e9, 0.0, 0.0], &p).is_none());
    let lax = Policy {
        headroom: 1.0,
        ..Policy::default()
    };
    assert_eq!(
        recommend_shape(&s, [2000.0, 0.0, 0.0], &lax).map(|x| x.name.as_str()),
        Some("small")
    );
}

#[test]
fn the_capacity_plan_reports_utilization_actions_and_totals() {
    let s = shapes();
    let cells = vec![
        cell("hot", "r1", "small"),
        cell("idle", "r1", "large"),
        cell("ok", "r2", "medium"),
    ];
    let mut growing = flat("t-hot", "hot", 0.0, 1000.0);
    for (i, smp) in growing.samples.iter_mut().enumerate() {
        smp.check_rps = 1000.0 + 100.0 * i as f64;
    }
    let usage = vec![
        growing,
        flat("t-idle", "idle", 100.0, 1000.0),
        flat("t-ok", "ok", 2000.0, 1000.0),
        flat("t-lost", "nowhere", 1.0, 1.0),
    ];
    // Two hours ahead: the growing tenant reaches 1,500 rps.
    let policy = Policy {
        horizon_secs: 7200.0,
        ..Policy::default()
    };
    let r = plan_capacity(&s, &cells, &usage, &policy);
    let by: BTreeMap<&str, &CellReport> = r.cells.iter().map(|c| (c.cell.as_str(), c)).collect();
    assert_eq!(by["hot"].action, "grow");
    assert!(by["hot"].at_risk);
    assert!((by["hot"].utilization_now[0] - 0.65).abs() < 1e-9);
    assert!(by["hot"].utilization_forecast[0] > 0.7);
    assert_eq!(by["idle"].action, "shrink");
    assert_eq!(by["idle"].recommended.as_deref(), Some("small"));
    assert_eq!(by["ok"].action, "keep");
    assert_eq!(r.at_risk, vec!["hot".to_string()]);
    assert_eq!(r.unknown_cells, vec!["t-lost".to_string()]);
    assert_eq!(r.cost_now, 1.0 + 4.0 + 2.0);
    assert!(r.cost_recommended < r.cost_now + 2.0);
    // Stranded: capacity minus usage now, summed.
    assert!(
        (r.stranded[0] - ((2000.0 - 1300.0) + (10000.0 - 100.0) + (4500.0 - 2000.0))).abs() < 1e-6
    );
}

#[test]
fn placement_picks_the_tightest_cell_with_room_or_stamps_one() {
    let s = shapes();
    let cells = vec![
        cell("a", "r1", "medium"),
        cell("b", "r1", "medium"),
        cell("c", "r2", "small"),
    ];
    let usage = vec![flat("x", "a", 2500.0, 0.0), flat("y", "b", 500.0, 0.0)];
    let p = Policy::default();
    // 500 more fits both (a at 3,000 of 3,150 usable): a is the tighter fit.
    let pl = place(&s, &cells, &usage, "r1", [500.0, 1000.0, 1.0], &p).expect("placed");
    assert_eq!(pl.cell.as_deref(), Some("a"));
    assert!(pl.reason.contains("best fit"), "{}", pl.reason);
    // 1,000 more only fits b.
    let pl = place(&s, &cells, &usage, "r1", [1000.0, 1000.0, 1.0], &p).expect("placed");
    assert_eq!(pl.cell.as_deref(), Some("b"));
    // 3,000 fits neither: stamp the cheapest shape that holds it.
    let pl = place(&s, &cells, &usage, "r1", [3000.0, 1000.0, 1.0], &p).expect("placed");
    assert_eq!(pl.cell, None);
    assert_eq!(pl.new_shape.as_deref(), Some("medium"));
    assert!(pl.reason.contains("stamp"), "{}", pl.reason);
    // A region with no cells stamps one; a tenant too big for any shape is an error.
    let pl = place(&s, &cells, &usage, "r9", [10.0, 10.0, 1.0], &p).expect("placed");
    assert_eq!(pl.new_shape.as_deref(), Some("small"));
    assert!(place(&s, &cells, &usage, "r1", [1e9, 0.0, 0.0], &p).is_err());
}

#[test]
fn rebalancing_relieves_hot_cells_and_frees_idle_ones() {
    let s = shapes();
    let cells = vec![
        cell("hot", "r1", "small"),
        cell("roomy", "r1", "large"),
        cell("idle", "r1", "small"),
        cell("far", "r2", "xlarge"),
    ];
    let usage = vec![
        flat("big", "hot", 1000.0, 0.0),
        flat("small1", "hot", 600.0, 0.0),
        flat("tiny", "idle", 450.0, 0.0),
        flat("base", "roomy", 1000.0, 0.0),
    ];
    let moves = rebalance(&s, &cells, &usage, &Policy::default());
    // The hot cell (1,600 of 1,400 usable) sheds its largest tenant to the
    // only cell in its region with room for it; nothing goes to another region.
    assert!(moves.iter().all(|m| m.to != "far"));
    let relief: Vec<&Move> = moves.iter().filter(|m| m.from == "hot").collect();
    assert_eq!(relief.len(), 1, "{moves:?}");
    assert_eq!(relief[0].tenant, "big");
    assert!(relief[0].gain.contains("relieves hot"));
    // The idle cell's one tenant moves out, freeing it.
    assert!(moves
        .iter()
        .any(|m| m.tenant == "tiny" && m.gain.contains("frees idle")));
}

#[test]
fn rate_limits_share_spare_capacity_and_warn_near_the_limit() {
    let s = shapes();
    let cells = vec![cell("a", "r1", "small")];
    let usage = vec![
        flat("busy", "a", 300.0, 0.0),
        flat("quiet", "a", 100.0, 0.0),
    ];
    let mut in_force = BTreeMap::new();
    in_force.insert("busy".to_string(), 320.0);
    let limits = rate_limits(&s, &cells, &usage, &in_force, &Policy::default());
    let by: BTreeMap<&str, &TenantLimit> = limits.iter().map(|l| (l.tenant.as_str(), l)).collect();
    assert_eq!(by["busy"].rate, 450.0);
    assert_eq!(by["quiet"].rate, 150.0);
    // Spare: 1,400 usable - 400 used = 1,000, shared 3:1.
    assert_eq!(by["busy"].burst, 450.0 + 750.0);
    assert_eq!(by["quiet"].burst, 150.0 + 250.0);
    // busy runs at 300 of the 320 in force: near its limit.
    assert!(by["busy"].near_limit);
    assert!(!by["quiet"].near_limit);
}

#[test]
fn the_bound_the_plan_and_the_baseline_on_a_small_case() {
    let s = shapes();
    let p = Policy::default();
    // Three tenants of 5,000 rps: 15,000 in all; xlarge holds 15,400 usable.
    let d = vec![[5000.0, 1.0, 1.0]; 3];
    assert_eq!(lower_bound(&s, &d, &p), 8.0);
    let ours = plan(&s, &d, &p);
    assert_eq!(ours.cost, 8.0);
    assert_eq!(first_fit_decreasing(&s, &d, &p).cost, 8.0);
    // One small tenant: the baseline opens an xlarge, the plan a small.
    let d = vec![[100.0, 1.0, 1.0]];
    assert_eq!(plan(&s, &d, &p).cost, 1.0);
    assert_eq!(first_fit_decreasing(&s, &d, &p).cost, 8.0);
    // Too big for any shape: reported, not placed.
    let d = vec![[1e9, 1.0, 1.0]];
    assert_eq!(plan(&s, &d, &p).unplaceable, vec![0]);
}

proptest! {
    /// Every packing keeps every cell within the headroom, places every
    /// tenant that fits exactly once, and never costs less than the bound.
    #[test]
    fn packings_are_valid_and_above_the_bound(
        demands in proptest::collection::vec((1.0f64..5000.0, 1.0f64..5e6, 0.0f64..500.0), 1..120)
    ) {
        let s = shapes();
        let p = Policy::default();
        let d: Vec<Vector> = demands.iter().map(|x| [x.0, x.1, x.2]).collect();
        let lb = lower_bound(&s, &d, &p);
        for packing in [plan(&s, &d, &p), first_fit_decreasing(&s, &d, &p)] {
            let mut seen = vec![0u32; d.len()];
            for b in &packing.bins {
                let mut load = [0.0; 3];
                for &i in &b.tenants {
                    seen[i] += 1;
                    load = add(load, d[i]);
                }
                prop_assert!(p.fits(load, capacity(&s[b.shape])));
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
            prop_assert!(packing.cost + 1e-9 >= lb);
        }
    }
}
