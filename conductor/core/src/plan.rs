//! Planning: a pipeline resolved against the cell inventory.
//!
//! The waves form a graph (each wave waits for the waves in its `after`, by
//! default the one before it). The graph is built with petgraph; a cycle is an
//! error. Cells are then handed to waves in dependency order, so that every
//! selected cell lands in exactly one wave.

use crate::pipeline::{sorted, Gate, Pipeline};
use cells_inventory::CellSpec;
use petgraph::algo::toposort;
use petgraph::graphmap::DiGraphMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use yamlspan::{Diagnostics, Spans};

mod projection;
pub use projection::{
    project, report, step_estimates, Basis, Estimates, PlanReport, StepEstimate, WaveProjection,
    WaveReport, WindowWait,
};

/// A wave with its cells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedWave {
    pub name: String,
    pub cells: Vec<String>,
    pub max_parallel: u32,
    pub approval: Option<Gate>,
    /// Indices of the waves this one waits for.
    pub after: Vec<usize>,
}

/// What a train will do, fixed when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub waves: Vec<PlannedWave>,
    /// Wave indices in a valid execution order.
    pub order: Vec<usize>,
    /// Time zone of each planned cell (for deploy windows).
    pub cell_tz: BTreeMap<String, String>,
}

impl Plan {
    pub fn cell_count(&self) -> usize {
        self.cell_tz.len()
    }
}

/// Does the selector pick this cell?
pub fn selects(p: &Pipeline, c: &CellSpec) -> bool {
    p.cells
        .labels
        .iter()
        .all(|(k, v)| c.labels.get(k) == Some(v))
        && (p.cells.regions.is_empty() || p.cells.regions.contains(&c.region))
}

/// Resolve `p` against `cells`. Errors point into the pipeline file.
pub fn plan(p: &Pipeline, spans: &Spans, cells: &[CellSpec]) -> Result<Plan, Diagnostics> {
    let mut errs = Vec::new();
    let index: BTreeMap<&str, usize> = p
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| (w.name.as_str(), i))
        .collect();

    // The wave graph: an edge dep -> wave.
    let mut g: DiGraphMap<usize, ()> = DiGraphMap::new();
    let mut after = vec![Vec::new(); p.waves.len()];
    for (i, deps) in after.iter_mut().enumerate() {
        g.add_node(i);
        for d in p.wave_deps(i) {
            if let Some(&j) = index.get(d.as_str()) {
                g.add_edge(j, i, ());
                deps.push(j);
            }
        }
    }
    if let Err(cycle) = toposort(&g, None) {
        let i = cycle.node_id();
        return Err(Diagnostics(vec![spans.error_hint(
            &format!("waves[{i}].after"),
            format!("waves form a cycle through {:?}", p.waves[i].name),
            "a wave may only wait for waves that do not (directly or not) wait for it",
        )]));
    }
    // Deterministic order: among ready waves, the one declared first.
    let mut order = Vec::with_capacity(p.waves.len());
    let mut done = BTreeSet::new();
    while order.len() < p.waves.len() {
        let next = (0..p.waves.len())
            .find(|i| !done.contains(i) && after[*i].iter().all(|d| done.contains(d)));
        match next {
            Some(i) => {
                done.insert(i);
                order.push(i);
            }
            None => break,
        }
    }

    let mut pool: Vec<&CellSpec> = cells.iter().filter(|c| selects(p, c)).collect();
    pool.sort_by(|a, b| (&a.region, &a.id).cmp(&(&b.region, &b.id)));
    if pool.is_empty() {
        return Err(Diagnostics(vec![spans.error_hint(
            "cells",
            "the selector matches no cell of the inventory",
            "check the labels and regions against `conductor cells list`",
        )]));
    }
    let total = pool.len();
    let selected: BTreeSet<&str> = pool.iter().map(|c| c.id.as_str()).collect();
    let mut assigned: BTreeMap<String, usize> = BTreeMap::new();
    let mut wave_cells = vec![Vec::new(); p.waves.len()];
    for &i in &order {
        let w = &p.waves[i];
        let take: Vec<String> = if let Some(ids) = &w.ids {
            let mut v = Vec::new();
            for (j, id) in ids.iter().enumerate() {
                if !selected.contains(id.as_str()) {
                    errs.push(spans.error_hint(
                        &format!("waves[{i}].ids[{j}]"),
                        format!("cell {id:?} is not selected by this pipeline"),
                        "check the id and the pipeline's `cells` selector",
                    ));
                } else if let Some(&other) = assigned.get(id) {
                    errs.push(spans.error(
                        &format!("waves[{i}].ids[{j}]"),
                        format!(
                            "cell {id:?} is in two waves: {:?} and {:?}",
                            p.waves[other].name, w.name
                        ),
                    ));
                } else if !v.contains(id) {
                    v.push(id.clone());
                }
            }
            v
        } else {
            let free: Vec<&&CellSpec> = pool
                .iter()
                .filter(|c| !assigned.contains_key(&c.id))
                .collect();
            if let Some(n) = w.cells {
                free.iter().take(n as usize).map(|c| c.id.clone()).collect()
            } else if let Some(n) = w.per_region {
                let mut per: BTreeMap<&str, u32> = BTreeMap::new();
                free.iter()
                    .filter(|c| {
                        let k = per.entry(c.region.as_str()).or_insert(0);
                        *k += 1;
                        *k <= n
                    })
                    .map(|c| c.id.clone())
                    .collect()
            } else if let Some(pc) = w.percent {
                let n = (total * pc as usize).div_ceil(100);
                free.iter().take(n).map(|c| c.id.clone()).collect()
            } else {
                Vec::new()
            }
        };
        if take.is_empty() && (w.ids.is_none() || errs.is_empty()) {
            errs.push(spans.error_hint(
                &format!("waves[{i}]"),
                format!("wave {:?} gets no cell", w.name),
                "earlier waves already take every selected cell; remove this wave or shrink them",
            ));
        }
        for c in &take {
            assigned.insert(c.clone(), i);
        }
        wave_cells[i] = take;
    }
    let left: Vec<&str> = pool
        .iter()
        .filter(|c| !assigned.contains_key(&c.id))
        .map(|c| c.id.as_str())
        .collect();
    if !left.is_empty() {
        errs.push(spans.error_hint(
            "waves",
            format!(
                "{} selected cell(s) are in no wave: {}",
                left.len(),
                left.join(", ")
            ),
            "end with a wave such as `{ name: rest, percent: 100 }`",
        ));
    }
    if !errs.is_empty() {
        return Err(sorted(errs));
    }
    let waves = p
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| PlannedWave {
            name: w.name.clone(),
            cells: std::mem::take(&mut wave_cells[i]),
            max_parallel: w.max_parallel,
            approval: w.approval.clone(),
            after: after[i].clone(),
        })
        .collect();
    let cell_tz = pool
        .iter()
        .map(|c| (c.id.clone(), c.time_zone().to_string()))
        .collect();
    Ok(Plan {
        waves,
        order,
        cell_tz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse;
    use chrono::{DateTime, Duration};

    pub fn fleet(n_per_region: usize) -> Vec<CellSpec> {
        let mut v = Vec::new();
        for r in ["us-east-1", "eu-west-1", "ap-southeast-2"] {
            for i in 0..n_per_region {
                v.push(CellSpec {
                    id: format!("{r}-{i:03}"),
                    region: r.into(),
                    shape: "small".into(),
                    labels: [("service".to_string(), "fga".to_string())].into(),
                    target: Default::default(),
                    port: None,
                    tz: None,
                });
            }
        }
        v
    }

    pub(super) fn pipe(waves: &str) -> String {
        format!(
            "name: p\nartifact: {{ kind: binary, name: a }}\ncells: {{ labels: {{ service: fga }} }}\nsteps:\n  - deploy: {{}}\n  - bake: 10m\nwaves:\n{waves}"
        )
    }

    #[test]
    fn canary_per_region_rest() {
        let text = pipe("  - { name: canary, cells: 1 }\n  - { name: regions, per_region: 1 }\n  - { name: rest, percent: 100, max_parallel: 5 }\n");
        let (p, s) = parse("p.yaml", &text).expect("valid");
        let plan = plan(&p, &s, &fleet(4)).expect("plan");
        assert_eq!(plan.waves[0].cells.len(), 1);
        assert_eq!(plan.waves[1].cells.len(), 3);
        assert_eq!(plan.waves[2].cells.len(), 8);
        let all: BTreeSet<_> = plan.waves.iter().flat_map(|w| w.cells.clone()).collect();
        assert_eq!(all.len(), 12);
        let est = step_estimates(&p, &[], Estimates::default());
        let proj = project(&plan, &[], DateTime::UNIX_EPOCH, &est);
        // canary 1 batch, regions 3 batches (max_parallel 1), rest 2 batches.
        let per = Duration::seconds(630);
        assert_eq!(proj[2].end - DateTime::UNIX_EPOCH, per * 6);
    }

    #[test]
    fn leftover_cells_and_empty_waves_are_errors() {
        let text = pipe("  - { name: canary, cells: 1 }\n  - { name: more, percent: 10 }\n");
        let (p, s) = parse("p.yaml", &text).expect("valid");
        let e = plan(&p, &s, &fleet(4)).expect_err("leftover");
        assert!(e.to_string().contains("are in no wave"), "{e}");

        let text = pipe("  - { name: all, percent: 100 }\n  - { name: extra, cells: 1 }\n");
        let (p, s) = parse("p.yaml", &text).expect("valid");
        let e = plan(&p, &s, &fleet(4)).expect_err("empty");
        assert!(e.to_string().contains("gets no cell"), "{e}");
        assert!(e.to_string().starts_with("p.yaml:9:"), "{e}");
    }

    #[test]
    fn cell_in_two_waves_is_an_error() {
        let text = pipe("  - { name: a, ids: [us-east-1-000] }\n  - { name: b, ids: [us-east-1-000] }\n  - { name: rest, percent: 100 }\n");
        let (p, s) = parse("p.yaml", &text).expect("valid");
        let e = plan(&p, &s, &fleet(2)).expect_err("twice");
        assert!(e.to_string().contains("is in two waves"), "{e}");
    }

    #[test]
    fn cycles_are_errors() {
        let text = pipe(
            "  - { name: a, cells: 1, after: [b] }\n  - { name: b, percent: 100, after: [a] }\n",
        );
        let (p, s) = parse("p.yaml", &text).expect("valid");
        let e = plan(&p, &s, &fleet(2)).expect_err("cycle");
        assert!(e.to_string().contains("cycle"), "{e}");
    }

    #[test]
    fn parallel_waves_share_a_start() {
        let text = pipe("  - { name: canary, cells: 1 }\n  - { name: us, ids: [us-east-1-001], after: [canary] }\n  - { name: eu, percent: 100, after: [canary], max_parallel: 10 }\n");
        let (p, s) = parse("p.yaml", &text).expect("valid");
        let plan = plan(&p, &s, &fleet(2)).expect("plan");
        let est = step_estimates(&p, &[], Estimates::default());
        let proj = project(&plan, &[], DateTime::UNIX_EPOCH, &est);
        assert_eq!(proj[1].start, proj[2].start);
    }
}
