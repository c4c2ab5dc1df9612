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
        accepts_tenants: true,
    }
}

/// A cell that takes no new tenants (draining, or without the data plane).
fn closed(id: &str, region: &str, shape: &str) -> Cell {
    Cell {
        accepts_tenants: false,
        ..cell(id, region, shape)
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
    // Growing 1 per hour over three hours: the last value plus 10 over a
    // 10 h horizon.
    let h = 3600.0;
    let f = forecast(
        &[(0.0, 0.0), (h, 1.0), (2.0 * h, 2.0), (3.0 * h, 3.0)],
        10.0 * h,
    );
    assert!((f - 13.0).abs() < 1e-9, "{f}");
    // Shrinking: never below the peak seen.
    assert_eq!(forecast(&[(0.0, 9.0), (h, 5.0)], 10.0 * h), 9.0);
}

#[test]
fn a_few_scrapes_seconds_apart_make_no_trend() {
    // Noise over 45 s of scrapes, projected over 7 days, would call the
    // cell at risk: until the history spans an hour the forecast is the peak.
    let series = [(0.0, 100.0), (15.0, 110.0), (30.0, 120.0), (45.0, 130.0)];
    assert_eq!(forecast(&series, 7.0 * 86_400.0), 130.0);
    let hour = [(0.0, 100.0), (MIN_TREND_SPAN_SECS, 110.0)];
    assert!(forecast(&hour, 7.0 * 86_400.0) > 110.0);
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
    let r = rebalance(&s, &cells, &usage, &Policy::default());
    assert!(r.unresolved.is_empty(), "{r:?}");
    let moves = r.moves;
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
fn placement_only_picks_cells_that_take_tenants() {
    let s = shapes();
    // `cmd` (a command-target cell without the data plane) is the tighter
    // fit; it must never be picked, nor a draining cell.
    let cells = vec![
        closed("cmd", "r1", "small"),
        cell("fga", "r1", "large"),
        closed("old", "r2", "large"),
    ];
    let p = Policy::default();
    let pl = place(&s, &cells, &[], "r1", [100.0, 1000.0, 1.0], &p).expect("placed");
    assert_eq!(pl.cell.as_deref(), Some("fga"));
    assert!(
        pl.reason.contains("take no new tenants") && pl.reason.contains("cmd"),
        "{}",
        pl.reason
    );
    // A region whose only cell takes no tenants: stamp one, and say why.
    let pl = place(&s, &cells, &[], "r2", [100.0, 1000.0, 1.0], &p).expect("placed");
    assert_eq!((pl.cell, pl.new_shape.as_deref()), (None, Some("small")));
    assert!(
        pl.reason.contains("no cell in r2 takes new tenants") && pl.reason.contains("old"),
        "{}",
        pl.reason
    );
}

#[test]
fn rebalancing_names_the_hot_cells_it_cannot_relieve() {
    let s = shapes();
    // r1: two hot small cells and nowhere to go; r2: a cell whose tenant
    // no shape holds.
    let cells = vec![
        cell("a", "r1", "small"),
        cell("b", "r1", "small"),
        cell("c", "r2", "small"),
    ];
    let usage = vec![
        flat("ta", "a", 1500.0, 0.0),
        flat("tb", "b", 1600.0, 0.0),
        flat("huge", "c", 30_000.0, 0.0),
    ];
    let p = Policy::default();
    let plan = plan_capacity(&s, &cells, &usage, &p);
    assert_eq!(plan.at_risk.len(), 3);
    let r = rebalance(&s, &cells, &usage, &p);
    assert!(r.moves.is_empty(), "{r:?}");
    let names: Vec<&str> = r.unresolved.iter().map(|u| u.cell.as_str()).collect();
    assert_eq!(names, vec!["a", "b", "c"]);
    assert!(r.unresolved[0].reason.contains("grow it"), "{r:?}");
    assert!(r.unresolved[2].reason.contains("split it"), "{r:?}");
    let text = report::rebalance(&r);
    assert!(!text.contains("within its headroom"), "{text}");
    assert!(text.contains("unresolved a (r1, peak 75%"), "{text}");
}

#[test]
fn rebalancing_empties_cells_that_take_no_tenants_and_never_fills_them() {
    let s = shapes();
    let cells = vec![
        closed("draining", "r1", "medium"),
        cell("hot", "r1", "small"),
        cell("roomy", "r1", "large"),
        closed("cmd", "r2", "xlarge"),
        cell("hot2", "r2", "small"),
    ];
    let usage = vec![
        flat("leaving", "draining", 200.0, 0.0),
        flat("big", "hot", 1000.0, 0.0),
        flat("small1", "hot", 600.0, 0.0),
        flat("base", "roomy", 3000.0, 0.0),
        flat("stuck", "hot2", 1500.0, 0.0),
    ];
    let r = rebalance(&s, &cells, &usage, &Policy::default());
    assert!(
        r.moves.iter().all(|m| m.to != "draining" && m.to != "cmd"),
        "{r:?}"
    );
    assert!(
        r.moves
            .iter()
            .any(|m| m.tenant == "leaving" && m.gain.contains("empties draining")),
        "{r:?}"
    );
    // hot2's only neighbour takes no tenants: unresolved, not moved there.
    assert_eq!(r.unresolved.len(), 1, "{r:?}");
    assert_eq!(r.unresolved[0].cell, "hot2");
    // A cell that takes no tenants and keeps some, for want of room, is named.
    let cells = vec![closed("d", "r1", "small"), cell("full", "r1", "small")];
    let usage = vec![flat("t1", "d", 500.0, 0.0), flat("t2", "full", 1200.0, 0.0)];
    let r = rebalance(&s, &cells, &usage, &Policy::default());
    assert!(r.moves.is_empty(), "{r:?}");
    assert_eq!(r.unresolved.len(), 1, "{r:?}");
    assert!(
        r.unresolved[0].reason.contains("still hosts 1: t1"),
        "{r:?}"
    );
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
    /// Rebalancing is honest: every cell the plan calls at risk is back
    /// under the headroom after the moves or listed as unresolved; every
    /// cell that takes no tenants is emptied or listed; no move goes to a
    /// cell that takes no tenants or to another region.
    #[test]
    fn rebalancing_accounts_for_every_cell_at_risk(
        fleet in proptest::collection::vec((0usize..4, 0usize..2, any::<bool>()), 1..8),
        tenants in proptest::collection::vec((0usize..8, 0.0f64..3000.0, 0.0f64..3e6), 0..20),
    ) {
        let s = shapes();
        let p = Policy::default();
        let cells: Vec<Cell> = fleet
            .iter()
            .enumerate()
            .map(|(i, (shape, region, open))| Cell {
                accepts_tenants: *open,
                ..cell(&format!("c{i}"), &format!("r{region}"), &s[*shape].name)
            })
            .collect();
        let usage: Vec<TenantUsage> = tenants
            .iter()
            .enumerate()
            .map(|(i, (c, rps, tuples))| flat(&format!("t{i}"), &format!("c{}", c % cells.len()), *rps, *tuples))
            .collect();
        let plan = plan_capacity(&s, &cells, &usage, &p);
        let r = rebalance(&s, &cells, &usage, &p);
        let by_id: BTreeMap<&str, &Cell> = cells.iter().map(|c| (c.id.as_str(), c)).collect();
        let mut load: BTreeMap<String, Vector> = BTreeMap::new();
        let mut home: BTreeMap<String, String> = BTreeMap::new();
        for t in &usage {
            let (_, fc) = tenant_demand(t, &p);
            let l = load.entry(t.cell.clone()).or_default();
            *l = add(*l, fc);
            home.insert(t.tenant.clone(), t.cell.clone());
        }
        for m in &r.moves {
            prop_assert!(by_id[m.to.as_str()].accepts_tenants, "{m:?}");
            prop_assert_eq!(&by_id[m.to.as_str()].region, &by_id[m.from.as_str()].region);
            prop_assert_eq!(home.get(&m.tenant), Some(&m.from));
            let t = usage.iter().find(|t| t.tenant == m.tenant).map(|t| tenant_demand(t, &p).1).unwrap_or_default();
            let f = load.entry(m.from.clone()).or_default();
            *f = sub(*f, t);
            let to = load.entry(m.to.clone()).or_default();
            *to = add(*to, t);
            home.insert(m.tenant.clone(), m.to.clone());
        }
        let unresolved: Vec<&str> = r.unresolved.iter().map(|u| u.cell.as_str()).collect();
        for c in &plan.at_risk {
            let cap = capacity(s.iter().find(|x| x.name == by_id[c.as_str()].shape).expect("shape"));
            let after = load.get(c).copied().unwrap_or_default();
            prop_assert!(
                unresolved.contains(&c.as_str()) || p.fits(after, cap),
                "{} at risk, neither relieved nor unresolved: {:?}", c, r
            );
        }
        for c in cells.iter().filter(|c| !c.accepts_tenants) {
            let keeps = home.values().any(|h| *h == c.id);
            prop_assert!(!keeps || unresolved.contains(&c.id.as_str()), "{} keeps tenants: {:?}", c.id, r);
        }
    }

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

#[test]
fn a_limits_push_reports_its_real_outcome() {
    use serde_json::json;
    let ok = json!({"tenant": "a", "cell": "c1", "ok": true, "detail": "10 rps"});
    let bad = json!({"tenant": "b", "cell": "c2", "ok": false, "detail": "no running data plane workers found for the cell"});
    let all = report::push_outcome(&[ok.clone(), ok.clone()]);
    assert_eq!(all.outcome, "succeeded");
    assert_eq!(all.summary(), "succeeded: 2 of 2 limits pushed");
    let some = report::push_outcome(&[ok.clone(), bad.clone()]);
    assert_eq!(some.outcome, "partly");
    assert_eq!(
        some.summary(),
        "partly: 1 of 2 limits pushed; failed: b on c2: no running data plane workers found for the cell"
    );
    let none = report::push_outcome(&[bad.clone(), bad]);
    assert_eq!((none.outcome, none.pushed, none.limits), ("failed", 0, 2));
    // No admin key: nothing pushed at all.
    let nokey = report::push_outcome(&[json!({"ok": false, "detail": "no data plane admin key"})]);
    assert_eq!(nokey.outcome, "failed");
    assert!(nokey.summary().contains("no data plane admin key"));
    // Fail closed: an entry that does not say ok is not pushed.
    let odd = report::push_outcome(&[json!({"tenant": "a", "cell": "c"})]);
    assert_eq!(odd.outcome, "failed");
    assert_eq!(report::push_outcome(&[]).outcome, "succeeded");
    // Imported tenants that are no FGA store are skipped, not failed.
    let skip = json!({"tenant": "acme", "cell": "c1", "ok": false, "skipped": true, "detail": "not an FGA store id"});
    let mixed = report::push_outcome(&[ok.clone(), skip]);
    assert_eq!(
        (mixed.outcome, mixed.pushed, mixed.limits, mixed.skipped),
        ("succeeded", 1, 1, 1)
    );
    assert_eq!(
        mixed.summary(),
        "succeeded: 1 of 1 limits pushed; 1 skipped (not FGA store ids: imported usage)"
    );
}

#[test]
fn only_store_ids_are_pushed_to() {
    use crate::service::is_store_id;
    assert!(is_store_id("01JDQ6Z0ZXJ7V8Q9R2S3T4V5W6"));
    for bad in [
        "acme",
        "01jdq6z0zxj7v8q9r2s3t4v5w6",
        "01JDQ6Z0ZXJ7V8Q9R2S3T4V5WI",
        "01JDQ6Z0ZXJ7V8Q9R2S3T4V5W",
    ] {
        assert!(!is_store_id(bad), "{bad}");
    }
}

#[test]
fn shifting_to_now_keeps_the_spacing() {
    let mut t = vec![flat("a", "c1", 1.0, 1.0), flat("b", "c2", 2.0, 2.0)];
    t[1].samples[3].at += 100.0;
    let before: Vec<f64> = t.iter().flat_map(|u| &u.samples).map(|s| s.at).collect();
    shift_to(&mut t, 1e9);
    let after: Vec<f64> = t.iter().flat_map(|u| &u.samples).map(|s| s.at).collect();
    assert_eq!(after.iter().copied().reduce(f64::max), Some(1e9));
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(b - a, after[0] - before[0]);
    }
}
