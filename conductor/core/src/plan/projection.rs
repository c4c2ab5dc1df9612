//! Projected timing of a plan: how long each step takes on a cell (as
//! written, measured by recent trains, or assumed) and when each wave starts
//! and ends, with every cell's deploy window read in its own time zone.

use super::Plan;
use crate::duration::Dur;
use crate::pipeline::{Gate, OnFailure, Pipeline, Step};
use crate::train::Train;
use crate::window::{self, Window};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Assumed durations of steps whose length is not written down, for steps
/// no recent train of the pipeline has measured.
#[derive(Debug, Clone, Copy)]
pub struct Estimates {
    pub deploy: Dur,
    pub test: Dur,
    pub command: Dur,
}

impl Default for Estimates {
    fn default() -> Self {
        Estimates {
            deploy: Dur::secs(30),
            test: Dur::secs(10),
            command: Dur::secs(60),
        }
    }
}

/// Where a step's projected duration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// As written in the pipeline (bakes).
    Written,
    /// The median of what recent trains of the pipeline took.
    Measured,
    /// A fixed guess ([`Estimates`]): nothing measured.
    Assumed,
}

/// The projected duration of one step on one cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepEstimate {
    pub step: usize,
    pub kind: String,
    pub duration: Dur,
    pub basis: Basis,
    /// Runs measured (0 unless `basis` is measured).
    pub samples: usize,
}

/// How long each step of `p` takes on a cell: bakes as written; other steps
/// the median of the successful runs of that same step in `history` (recent
/// trains: those of other pipelines, or whose step at that place differs,
/// are ignored), else as `assumed`.
pub fn step_estimates(p: &Pipeline, history: &[Train], assumed: Estimates) -> Vec<StepEstimate> {
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); p.steps.len()];
    for t in history.iter().filter(|t| t.spec.pipeline == p.name) {
        for c in t.cells.values() {
            for r in c.log.iter().filter(|r| r.ok) {
                let (Some(step), Some(took)) = (p.steps.get(r.step), r.took()) else {
                    continue;
                };
                if t.spec.steps.get(r.step) == Some(step) {
                    samples[r.step].push(took);
                }
            }
        }
    }
    p.steps
        .iter()
        .zip(samples)
        .enumerate()
        .map(|(i, (s, mut got))| {
            let (duration, basis) = match s {
                Step::Bake(d) => (*d, Basis::Written),
                _ if !got.is_empty() => {
                    got.sort();
                    let mid = got[got.len() / 2];
                    let ms = u64::try_from(mid.num_milliseconds()).unwrap_or(0);
                    (Dur(std::time::Duration::from_millis(ms)), Basis::Measured)
                }
                Step::Deploy(_) => (assumed.deploy, Basis::Assumed),
                Step::Test(_) => (assumed.test, Basis::Assumed),
                Step::Command(_) => (assumed.command, Basis::Assumed),
            };
            StepEstimate {
                step: i,
                kind: s.kind().to_string(),
                duration,
                basis,
                samples: if basis == Basis::Measured {
                    got.len()
                } else {
                    0
                },
            }
        })
        .collect()
}

/// A cell that would be ready to start but waits for its deploy window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowWait {
    pub cell: String,
    /// The time zone the window is read in for this cell.
    pub tz: String,
    pub ready: DateTime<Utc>,
    pub opens: DateTime<Utc>,
}

/// Projected timing of one wave.
#[derive(Debug, Clone, Serialize)]
pub struct WaveProjection {
    pub name: String,
    pub cells: usize,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The wave waits for an approval first (not counted in the times).
    pub approval: bool,
    /// Cells held back by their deploy window.
    pub waits: Vec<WindowWait>,
}

/// Project when each wave starts and ends, if the train started at `start`,
/// as the train runs it: each cell takes one of the wave's `max_parallel`
/// slots as soon as one is free, waits there for its deploy window (read in
/// its own time zone), then runs every step (`steps`).
pub fn project(
    plan: &Plan,
    windows: &[Window],
    start: DateTime<Utc>,
    steps: &[StepEstimate],
) -> Vec<WaveProjection> {
    let per_cell = Duration::milliseconds(steps.iter().map(|s| s.duration.millis()).sum());
    let mut ends: BTreeMap<usize, DateTime<Utc>> = BTreeMap::new();
    let mut out: BTreeMap<usize, WaveProjection> = BTreeMap::new();
    for &i in &plan.order {
        let w = &plan.waves[i];
        let wave_start = w
            .after
            .iter()
            .filter_map(|d| ends.get(d))
            .max()
            .copied()
            .unwrap_or(start);
        let mut slots = vec![wave_start; w.max_parallel.max(1) as usize];
        let mut end = wave_start;
        let mut waits = Vec::new();
        for c in &w.cells {
            let Some((slot, ready)) = slots.iter().copied().enumerate().min_by_key(|(_, t)| *t)
            else {
                break;
            };
            let tz = plan.cell_tz.get(c).map_or("UTC", String::as_str);
            let begin = window::next_allowed(windows, ready, tz).unwrap_or(ready);
            if begin > ready {
                waits.push(WindowWait {
                    cell: c.clone(),
                    tz: tz.to_string(),
                    ready,
                    opens: begin,
                });
            }
            slots[slot] = begin + per_cell;
            end = end.max(slots[slot]);
        }
        ends.insert(i, end);
        out.insert(
            i,
            WaveProjection {
                name: w.name.clone(),
                cells: w.cells.len(),
                start: wave_start,
                end,
                approval: w.approval.is_some(),
                waits,
            },
        );
    }
    plan.order.iter().filter_map(|i| out.remove(i)).collect()
}

/// One wave of a [`PlanReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveReport {
    pub name: String,
    pub cells: Vec<String>,
    pub max_parallel: u32,
    pub approval: Option<Gate>,
    /// Names of the waves it waits for.
    pub after: Vec<String>,
    pub projected_start: DateTime<Utc>,
    pub projected_end: DateTime<Utc>,
    #[serde(default)]
    pub window_waits: Vec<WindowWait>,
}

/// What `pipeline plan` shows, offline or from the server (same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanReport {
    pub pipeline: String,
    /// Selected cells.
    pub cells: usize,
    pub on_failure: OnFailure,
    /// Deploy windows as written.
    #[serde(default)]
    pub windows: Vec<String>,
    /// The instant the projection starts from.
    pub start: DateTime<Utc>,
    pub waves: Vec<WaveReport>,
    pub projected_end: Option<DateTime<Utc>>,
    /// Per step: its projected duration on one cell and where it comes from.
    #[serde(default)]
    pub step_durations: Vec<StepEstimate>,
    /// Recent trains of the pipeline the durations were measured from.
    #[serde(default)]
    pub trains_measured: usize,
}

/// The plan and its projection from `start`, with step durations measured
/// from `history` (recent trains of the pipeline; empty offline).
pub fn report(
    p: &Pipeline,
    plan: &Plan,
    history: &[Train],
    start: DateTime<Utc>,
    assumed: Estimates,
) -> PlanReport {
    let steps = step_estimates(p, history, assumed);
    let proj = project(plan, &p.parsed_windows(), start, &steps);
    let waves = plan
        .order
        .iter()
        .zip(proj)
        .map(|(i, w)| {
            let pw = &plan.waves[*i];
            WaveReport {
                name: pw.name.clone(),
                cells: pw.cells.clone(),
                max_parallel: pw.max_parallel,
                approval: pw.approval.clone(),
                after: pw
                    .after
                    .iter()
                    .map(|a| plan.waves[*a].name.clone())
                    .collect(),
                projected_start: w.start,
                projected_end: w.end,
                window_waits: w.waits,
            }
        })
        .collect::<Vec<_>>();
    PlanReport {
        pipeline: p.name.clone(),
        cells: plan.cell_count(),
        on_failure: p.on_failure,
        windows: p.windows.iter().map(|w| w.allow.clone()).collect(),
        start,
        projected_end: waves.iter().map(|w| w.projected_end).max(),
        waves,
        step_durations: steps,
        trains_measured: history.iter().filter(|t| t.spec.pipeline == p.name).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::super::tests::{fleet, pipe};
    use super::*;
    use crate::pipeline::parse;
    use cells_inventory::CellSpec;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .expect("time")
    }

    #[test]
    fn each_cell_waits_for_its_own_window() {
        // One wave mixing eu-west-1 and us-east-1, both cells at once.
        let text = format!(
            "{}windows: [ {{ allow: \"daily 08:00-20:00\", tz: cell }} ]\n",
            pipe("  - { name: all, percent: 100, max_parallel: 2 }\n")
        );
        let (p, s) = parse("p.yaml", &text).expect("valid");
        let cells: Vec<CellSpec> = fleet(1)
            .into_iter()
            .filter(|c| c.region != "ap-southeast-2")
            .collect();
        let pl = plan(&p, &s, &cells).expect("plan");
        let est = step_estimates(&p, &[], Estimates::default());
        let per_cell = Duration::seconds(630);
        // 10:00 in Dublin (open), 05:00 in New York: its window opens at 13:00 UTC.
        let start = at("2026-11-23T10:00:00Z");
        let proj = project(&pl, &p.parsed_windows(), start, &est);
        assert_eq!(proj[0].end, at("2026-11-23T13:00:00Z") + per_cell);
        assert_eq!(
            proj[0].waits,
            vec![WindowWait {
                cell: "us-east-1-000".into(),
                tz: "America/New_York".into(),
                ready: start,
                opens: at("2026-11-23T13:00:00Z"),
            }]
        );
        // A cell waiting for its window holds its slot, as in the train.
        let text = text.replace("max_parallel: 2", "max_parallel: 1");
        let (p, s) = parse("p.yaml", &text).expect("valid");
        let pl = plan(&p, &s, &cells).expect("plan");
        let proj = project(&pl, &p.parsed_windows(), start, &est);
        assert_eq!(proj[0].end, at("2026-11-23T13:00:00Z") + per_cell);
        let late = at("2026-11-23T19:55:00Z");
        let proj = project(&pl, &p.parsed_windows(), late, &est);
        // Dublin closes at 20:00 but a started cell runs on; New York is open.
        assert!(proj[0].waits.is_empty(), "{:?}", proj[0].waits);
        assert_eq!(proj[0].end, late + per_cell * 2);
    }

    #[test]
    fn recent_trains_measure_the_steps() {
        let text = "name: p\nartifact: { kind: binary, name: a }\nsteps:\n  - deploy: {}\n  - test: { command: \"true\" }\n  - bake: 1m\n  - command: { run: x }\nwaves:\n  - { name: all, percent: 100, max_parallel: 3 }\n";
        let (p, s) = parse("p.yaml", text).expect("valid");
        let pl = plan(&p, &s, &fleet(1)).expect("plan");
        let spec = |pipeline: &str| crate::train::TrainSpec {
            id: "t".into(),
            pipeline: pipeline.into(),
            artifact: p.artifact.clone(),
            version: "1".into(),
            started_by: "x".into(),
            steps: p.steps.clone(),
            on_failure: p.on_failure,
            windows: vec![],
            plan: pl.clone(),
        };
        let t0 = at("2026-11-23T10:00:00Z");
        let rec = |step: usize, kind: &str, secs: i64, ok: bool| crate::train::StepRecord {
            step,
            kind: kind.into(),
            at: t0 + Duration::seconds(secs),
            started: Some(t0),
            ok,
            detail: String::new(),
        };
        // Deploys took 4, 5 and 6 s; the only test run failed (not counted).
        let mut mine = Train::new(spec("p"), false, t0);
        for (i, c) in mine.cells.values_mut().enumerate() {
            let i = i64::try_from(i).expect("small");
            c.log.push(rec(0, "deploy", 4 + i, true));
            c.log.push(rec(1, "test", 100, false));
        }
        // Another pipeline's train does not count.
        let mut other = Train::new(spec("q"), false, t0);
        for c in other.cells.values_mut() {
            c.log.push(rec(1, "test", 500, true));
        }
        let est = step_estimates(&p, &[mine.clone(), other], Estimates::default());
        let got: Vec<(&str, i64, Basis, usize)> = est
            .iter()
            .map(|e| {
                (
                    e.kind.as_str(),
                    e.duration.millis() / 1000,
                    e.basis,
                    e.samples,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("deploy", 5, Basis::Measured, 3),
                ("test", 10, Basis::Assumed, 0),
                ("bake", 60, Basis::Written, 0),
                ("command", 60, Basis::Assumed, 0),
            ]
        );
        let proj = project(&pl, &[], t0, &est);
        assert_eq!(proj[0].end, t0 + Duration::seconds(5 + 10 + 60 + 60));
        // The report says so, and reads back from JSON (what the server sends).
        let r = report(&p, &pl, &[mine], t0, Estimates::default());
        assert_eq!(r.trains_measured, 1);
        assert_eq!(r.projected_end, Some(proj[0].end));
        let back: PlanReport =
            serde_json::from_value(serde_json::to_value(&r).expect("json")).expect("read back");
        assert_eq!(back, r);
    }
}
