//! Fixtures shared by the store tests: a local cell and a one-cell train.

#![allow(dead_code)]

use cells_inventory::{CellSpec, TargetSpec};
use chrono::Utc;
use conductor_core::train::{Train, TrainSpec};
use conductor_core::{pipeline, plan};

const YAML: &str = "name: p\nartifact: { kind: binary, name: a }\nsteps:\n  - deploy: {}\nwaves:\n  - { name: all, percent: 100 }\n";

/// A local cell `id` in us-east-1, shape `small`.
pub fn cell(id: &str) -> CellSpec {
    CellSpec {
        id: id.into(),
        region: "us-east-1".into(),
        shape: "small".into(),
        labels: Default::default(),
        target: TargetSpec::Local,
        port: None,
        tz: None,
    }
}

/// The spec of train `id` of the pipeline `yaml` over `cells`.
pub fn spec(id: &str, yaml: &str, cells: &[CellSpec]) -> TrainSpec {
    let (p, spans) = pipeline::parse("p.yaml", yaml).expect("pipeline");
    let pl = plan::plan(&p, &spans, cells).expect("plan");
    TrainSpec {
        id: id.into(),
        pipeline: p.name.clone(),
        artifact: p.artifact.clone(),
        version: "1".into(),
        started_by: "tester".into(),
        steps: p.steps.clone(),
        on_failure: p.on_failure,
        windows: p.parsed_windows(),
        plan: pl,
    }
}

/// A train `id` of pipeline `p` (one deploy step) over the cell `c1`.
pub fn train(id: &str) -> Train {
    Train::new(spec(id, YAML, &[cell("c1")]), false, Utc::now())
}
