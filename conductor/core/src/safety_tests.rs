//! Tests of `safety`: one per rule, and properties over random pipelines
//! and random edits.

use super::*;
use crate::pipeline::parse;
use crate::plan::plan;
use cells_inventory::{CellSpec, TargetSpec};
use proptest::prelude::*;

fn fleet() -> Vec<CellSpec> {
    (0..6)
        .map(|i| CellSpec {
            id: format!("c{i}"),
            region: ["us-east-1", "eu-west-1", "ap-southeast-2"][i % 3].into(),
            shape: "small".into(),
            labels: [("service".to_string(), "fga".to_string())].into(),
            target: TargetSpec::Local,
            port: None,
            tz: None,
        })
        .collect()
}

fn yaml(waves: &str, tail: &str) -> String {
    format!(
        "name: p\nartifact: {{ kind: binary, name: a }}\ncells: {{ labels: {{ service: fga }} }}\nsteps:\n  - deploy: {{}}\nwaves:\n{waves}{tail}"
    )
}

const GATED: &str = "  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100, approval: { group: rm, quorum: 2 } }\n";

/// The weakenings from `a` to `b`, with plans.
fn diff(a: &str, b: &str) -> Vec<Weakening> {
    let cells = fleet();
    let (pa, sa) = parse("a.yaml", a).expect("a parses");
    let (pb, sb) = parse("b.yaml", b).expect("b parses");
    let (la, lb) = (
        plan(&pa, &sa, &cells).expect("a plans"),
        plan(&pb, &sb, &cells).expect("b plans"),
    );
    weakenings(
        Side {
            pipeline: &pa,
            plan: Some(&la),
        },
        Side {
            pipeline: &pb,
            plan: Some(&lb),
        },
    )
}

fn kinds(w: &[Weakening]) -> Vec<Kind> {
    w.iter().map(|w| w.kind).collect()
}

#[test]
fn removing_a_gate_is_a_weakening() {
    let a = yaml(GATED, "");
    let b = yaml(
        "  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100 }\n",
        "",
    );
    let w = diff(&a, &b);
    assert_eq!(kinds(&w), vec![Kind::GateRemoved], "{w:?}");
    assert!(w[0].message.contains("wave rest"), "{}", w[0]);
}

#[test]
fn lowering_a_quorum_or_changing_the_group() {
    let a = yaml(GATED, "");
    let lower = yaml(&GATED.replace("quorum: 2", "quorum: 1"), "");
    assert_eq!(kinds(&diff(&a, &lower)), vec![Kind::QuorumLowered]);
    let other = yaml(&GATED.replace("group: rm", "group: devs"), "");
    assert_eq!(kinds(&diff(&a, &other)), vec![Kind::GroupChanged]);
}

#[test]
fn moving_cells_in_front_of_the_gate_is_a_weakening() {
    // The gate stays on `rest`, but `canary` now takes most cells.
    let a = yaml(GATED, "");
    let b = yaml(&GATED.replace("cells: 1", "percent: 80"), "");
    let w = diff(&a, &b);
    assert_eq!(kinds(&w), vec![Kind::CellsUngated], "{w:?}");
    assert!(w[0].message.contains("5 of 6 cells"), "{}", w[0]);
    // A wave that stops waiting for the gated wave.
    let three = "  - { name: canary, cells: 1 }\n  - { name: gated, cells: 1, approval: { group: rm } }\n  - { name: rest, percent: 100 }\n";
    let parallel = three.replace(
        "{ name: rest, percent: 100 }",
        "{ name: rest, percent: 100, after: [canary] }",
    );
    assert_eq!(
        kinds(&diff(&yaml(three, ""), &yaml(&parallel, ""))),
        vec![Kind::CellsUngated]
    );
}

#[test]
fn stricter_revisions_and_renames_are_not_weakenings() {
    let a = yaml(GATED, "");
    for b in [
        // Gate moved earlier: more cells behind it.
        "  - { name: canary, cells: 1, approval: { group: rm, quorum: 2 } }\n  - { name: rest, percent: 100 }\n".to_string(),
        // Quorum raised, another gate added.
        GATED.replace("quorum: 2", "quorum: 3").replace("cells: 1 }", "cells: 1, approval: { group: qa } }"),
        // The gated wave renamed.
        GATED.replace("name: rest", "name: everything-else"),
    ] {
        let w = diff(&a, &yaml(&b, ""));
        assert!(w.is_empty(), "{b}: {w:?}");
    }
    // Steps may change freely.
    let more_steps = a.replace("  - deploy: {}\n", "  - deploy: {}\n  - bake: 10m\n");
    assert!(diff(&more_steps, &a).is_empty());
}

#[test]
fn windows_removed_or_widened() {
    let w1 = "windows: [ { allow: \"Mon-Thu 08:00-17:00\", tz: cell } ]\n";
    let a = yaml(GATED, w1);
    assert_eq!(
        kinds(&diff(&a, &yaml(GATED, ""))),
        vec![Kind::WindowsRemoved]
    );
    let wider = yaml(GATED, &w1.replace("Mon-Thu", "Mon-Fri"));
    let w = diff(&a, &wider);
    assert_eq!(kinds(&w), vec![Kind::WindowsWidened]);
    assert!(w[0].message.contains("Fri 08:00"), "{}", w[0]);
    // Same hours read in UTC instead of the cell's zone: not the same minutes.
    let utc = yaml(GATED, &w1.replace("tz: cell", "tz: utc"));
    assert_eq!(kinds(&diff(&a, &utc)), vec![Kind::WindowsWidened]);
    // Narrower windows, or windows where there were none, are fine.
    let narrower = yaml(GATED, &w1.replace("08:00-17:00", "09:00-12:00"));
    assert!(diff(&a, &narrower).is_empty());
    assert!(diff(&yaml(GATED, ""), &a).is_empty());
    // An overnight window covers the next morning.
    let night = yaml(
        GATED,
        "windows: [ { allow: \"Mon 22:00-06:00\", tz: utc } ]\n",
    );
    let tue = yaml(
        GATED,
        "windows: [ { allow: \"Tue 00:00-06:00\", tz: utc } ]\n",
    );
    assert!(diff(&night, &tue).is_empty());
    assert_eq!(kinds(&diff(&tue, &night)), vec![Kind::WindowsWidened]);
}

#[test]
fn on_failure_that_rolls_back_less() {
    let a = yaml(GATED, "on_failure: rollback_train\n");
    let b = yaml(GATED, "on_failure: rollback_cell_and_halt\n");
    assert_eq!(kinds(&diff(&a, &b)), vec![Kind::OnFailure]);
    assert!(diff(&b, &a).is_empty());
}

#[test]
fn without_plans_only_the_pipeline_rules_apply() {
    let (pa, _) = parse("a.yaml", &yaml(GATED, "")).expect("a");
    let (pb, _) = parse(
        "b.yaml",
        &yaml(&GATED.replace("cells: 1", "percent: 80"), ""),
    )
    .expect("b");
    let side = |p| Side {
        pipeline: p,
        plan: None,
    };
    assert!(weakenings(side(&pa), side(&pb)).is_empty());
    let (pc, _) = parse("c.yaml", &yaml("  - { name: all, percent: 100 }\n", "")).expect("c");
    assert_eq!(
        kinds(&weakenings(side(&pa), side(&pc))),
        vec![Kind::GateRemoved]
    );
}

#[test]
fn who_may_approve() {
    let rm: BTreeSet<String> = ["rm".to_string()].into();
    let g = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(approval_refusal(&rm, "dana", "alice", &g(&["rm"]), false).is_none());
    assert!(approval_refusal(&rm, "dana", "bob", &g(&["qa"]), false).is_some());
    assert!(approval_refusal(&rm, "dana", "root", &[], true).is_none());
    assert!(approval_refusal(&rm, "dana", "dana", &g(&["rm"]), true).is_some());
    // No gate today: any approver other than the author.
    assert!(approval_refusal(&BTreeSet::new(), "dana", "bob", &[], false).is_none());
}

// ---- properties ---------------------------------------------------------

/// A gate: group and quorum.
type GateGen = Option<(&'static str, u32)>;
/// A window: first and last day, start hour, length in hours, UTC or not.
type WindowGen = (usize, usize, u32, u32, bool);

/// The shape of a random pipeline over the fixed fleet: waves sized by
/// cells or percent, some gated, some waiting for the first wave; a
/// last wave that takes the rest; windows; a failure rule.
#[derive(Debug, Clone)]
struct Gen {
    waves: Vec<(String, GateGen, bool)>,
    last_gate: GateGen,
    windows: Vec<WindowGen>,
    train: bool,
}

fn arb_size() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u32..3).prop_map(|n| format!("cells: {n}")),
        (20u32..60).prop_map(|p| format!("percent: {p}"))
    ]
}

fn arb_gate() -> impl Strategy<Value = GateGen> {
    proptest::option::of((prop_oneof![Just("rm"), Just("qa"), Just("ops")], 1u32..4))
}

fn arb_window() -> impl Strategy<Value = WindowGen> {
    (0usize..7, 0usize..7, 0u32..24, 1u32..12, any::<bool>())
}

fn arb_gen() -> impl Strategy<Value = Gen> {
    (
        proptest::collection::vec((arb_size(), arb_gate(), any::<bool>()), 0..4),
        arb_gate(),
        proptest::collection::vec(arb_window(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(waves, last_gate, windows, train)| Gen {
            waves,
            last_gate,
            windows,
            train,
        })
}

/// One edit a developer might make to a revision.
#[derive(Debug, Clone)]
enum Edit {
    Gate(usize, GateGen),
    Size(usize, String),
    After(usize),
    AddWindow(WindowGen),
    DropWindow(usize),
    Train(bool),
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0usize..5, arb_gate()).prop_map(|(i, g)| Edit::Gate(i, g)),
        (0usize..4, arb_size()).prop_map(|(i, s)| Edit::Size(i, s)),
        (0usize..4).prop_map(Edit::After),
        arb_window().prop_map(Edit::AddWindow),
        (0usize..3).prop_map(Edit::DropWindow),
        any::<bool>().prop_map(Edit::Train),
    ]
}

fn edit(g: &Gen, edits: &[Edit]) -> Gen {
    let mut g = g.clone();
    for e in edits {
        match e {
            Edit::Gate(i, gate) => match g.waves.get_mut(*i) {
                Some(w) => w.1 = *gate,
                None => g.last_gate = *gate,
            },
            Edit::Size(i, s) => {
                if let Some(w) = g.waves.get_mut(*i) {
                    w.0 = s.clone();
                }
            }
            Edit::After(i) => {
                if let Some(w) = g.waves.get_mut(*i) {
                    w.2 = !w.2;
                }
            }
            Edit::AddWindow(w) => g.windows.push(*w),
            Edit::DropWindow(i) => {
                if *i < g.windows.len() {
                    g.windows.remove(*i);
                }
            }
            Edit::Train(t) => g.train = *t,
        }
    }
    g
}

fn render(g: &Gen) -> String {
    let gate = |gate: &GateGen| match gate {
        Some((group, q)) => format!(", approval: {{ group: {group}, quorum: {q} }}"),
        None => String::new(),
    };
    let mut s = String::new();
    for (i, (size, wave_gate, after_first)) in g.waves.iter().enumerate() {
        let after = if *after_first && i > 1 {
            ", after: [w0]"
        } else {
            ""
        };
        s.push_str(&format!(
            "  - {{ name: w{i}, {size}{}{after} }}\n",
            gate(wave_gate)
        ));
    }
    s.push_str(&format!(
        "  - {{ name: last, percent: 100{} }}\n",
        gate(&g.last_gate)
    ));
    let mut tail = String::new();
    if !g.windows.is_empty() {
        tail.push_str("windows:\n");
        for (d1, d2, h, len, utc) in &g.windows {
            let days = if d1 == d2 {
                DAYS[*d1].to_string()
            } else {
                format!("{}-{}", DAYS[*d1], DAYS[*d2])
            };
            let end = (h + len) % 24;
            tail.push_str(&format!(
                "  - {{ allow: \"{days} {h:02}:00-{end:02}:30\", tz: {} }}\n",
                if *utc { "utc" } else { "cell" }
            ));
        }
    }
    if g.train {
        tail.push_str("on_failure: rollback_train\n");
    }
    yaml(&s, &tail)
}

fn planned(text: &str) -> Option<(Pipeline, Plan)> {
    let (p, spans) = parse("p.yaml", text).ok()?;
    let pl = plan(&p, &spans, &fleet()).ok()?;
    Some((p, pl))
}

fn weak(a: &(Pipeline, Plan), b: &(Pipeline, Plan)) -> Vec<Weakening> {
    weakenings(
        Side {
            pipeline: &a.0,
            plan: Some(&a.1),
        },
        Side {
            pipeline: &b.0,
            plan: Some(&b.1),
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Resubmitting the same pipeline never weakens it.
    #[test]
    fn a_pipeline_does_not_weaken_itself(a in arb_gen()) {
        let a = render(&a);
        let Some(pa) = planned(&a) else { return Ok(()) };
        prop_assert!(weak(&pa, &pa).is_empty(), "{a}");
    }

    /// Steps that each keep the pipeline's safety never add up to a
    /// weakening: splitting a change in parts does not get past review.
    #[test]
    fn non_weakening_steps_compose(
        g in arb_gen(),
        e1 in proptest::collection::vec(arb_edit(), 1..4),
        e2 in proptest::collection::vec(arb_edit(), 1..4),
    ) {
        let gb = edit(&g, &e1);
        let (a, b, c) = (render(&g), render(&gb), render(&edit(&gb, &e2)));
        let (Some(pa), Some(pb), Some(pc)) = (planned(&a), planned(&b), planned(&c)) else {
            return Ok(());
        };
        if weak(&pa, &pb).is_empty() && weak(&pb, &pc).is_empty() {
            let w = weak(&pa, &pc);
            prop_assert!(w.is_empty(), "{a}\n->\n{b}\n->\n{c}\n{w:?}");
        }
    }

    /// Taking every gate out of a gated pipeline is always caught.
    #[test]
    fn removing_every_gate_is_caught(a in arb_gen()) {
        let a = render(&a);
        let Some(pa) = planned(&a) else { return Ok(()) };
        if approver_groups(&pa.0).is_empty() {
            return Ok(());
        }
        let mut open = pa.0.clone();
        for w in &mut open.waves {
            w.approval = None;
        }
        let mut open_plan = pa.1.clone();
        for w in &mut open_plan.waves {
            w.approval = None;
        }
        let w = weak(&pa, &(open, open_plan));
        prop_assert!(w.iter().any(|w| w.kind == Kind::GateRemoved), "{a}\n{w:?}");
    }

    /// A revision compared with itself plus more gates, or with its
    /// windows narrowed to fewer days, is never a weakening.
    #[test]
    fn strengthening_is_not_weakening(a in arb_gen(), q in 1u32..5) {
        let a = render(&a);
        let Some(pa) = planned(&a) else { return Ok(()) };
        let mut b = pa.clone();
        if let (Some(w), Some(pw)) = (b.0.waves.first_mut(), b.1.waves.first_mut()) {
            let gate = crate::pipeline::Gate { group: "extra".into(), quorum: q };
            w.approval.get_or_insert(gate.clone());
            pw.approval.get_or_insert(gate);
        }
        for w in &mut b.0.windows {
            if let Some((days, hours)) = w.allow.split_once(' ') {
                let first = days.split(['-', ',']).next().unwrap_or(days).to_string();
                w.allow = format!("{first} {hours}");
            }
        }
        prop_assert!(weak(&pa, &b).is_empty(), "{a}\n{:?}", weak(&pa, &b));
    }
}
