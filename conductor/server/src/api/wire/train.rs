//! The API's shapes of what a train holds: its spec (artifact, steps,
//! windows, plan), its waves and its cells (phase, step records). Each is
//! converted from the core type field by field, and enums by an exhaustive
//! `match`, so a core change that would change the JSON does not compile
//! until it is decided here.

use chrono::{DateTime, Utc};
use conductor_core::pipeline::{Artifact, ArtifactKind, Gate, HttpCheck, OnFailure, Step};
use conductor_core::plan::{Plan, PlannedWave};
use conductor_core::train::{
    CellPhase, CellRun, Decision, StepRecord, TrainSpec, WaveState, WaveStatus,
};
use conductor_core::window::{Window, WindowTz};
use serde::Serialize;
use std::collections::BTreeMap;

/// What was fixed when the train was created.
#[derive(Debug, Serialize)]
pub struct SpecView<'a> {
    pub id: &'a str,
    pub pipeline: &'a str,
    pub artifact: ArtifactView<'a>,
    pub version: &'a str,
    pub started_by: &'a str,
    pub steps: Vec<StepView<'a>>,
    pub on_failure: &'static str,
    pub windows: Vec<WindowView<'a>>,
    pub plan: PlanView<'a>,
}

impl<'a> From<&'a TrainSpec> for SpecView<'a> {
    fn from(s: &'a TrainSpec) -> SpecView<'a> {
        SpecView {
            id: &s.id,
            pipeline: &s.pipeline,
            artifact: ArtifactView::from(&s.artifact),
            version: &s.version,
            started_by: &s.started_by,
            steps: s.steps.iter().map(StepView::from).collect(),
            on_failure: match s.on_failure {
                OnFailure::RollbackCellAndHalt => "rollback_cell_and_halt",
                OnFailure::RollbackTrain => "rollback_train",
            },
            windows: s.windows.iter().map(WindowView::from).collect(),
            plan: PlanView::from(&s.plan),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ArtifactView<'a> {
    pub kind: &'static str,
    pub name: &'a str,
    pub args: &'a [String],
    pub health: &'a str,
}

impl<'a> From<&'a Artifact> for ArtifactView<'a> {
    fn from(a: &'a Artifact) -> ArtifactView<'a> {
        ArtifactView {
            kind: match a.kind {
                ArtifactKind::Binary => "binary",
                ArtifactKind::Container => "container",
                ArtifactKind::Command => "command",
            },
            name: &a.name,
            args: &a.args,
            health: &a.health,
        }
    }
}

type Env<'a> = &'a BTreeMap<String, String>;

/// A step, as a one-key object (`{"bake": "10m"}`); durations as text.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepView<'a> {
    Deploy {
        health_timeout: String,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        env: Env<'a>,
    },
    Test {
        http: Option<HttpCheckView<'a>>,
        command: Option<&'a str>,
        min_requests: u32,
        timeout: String,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        env: Env<'a>,
    },
    Bake(String),
    Command {
        run: &'a str,
        timeout: String,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        env: Env<'a>,
    },
}

impl<'a> From<&'a Step> for StepView<'a> {
    fn from(s: &'a Step) -> StepView<'a> {
        match s {
            Step::Deploy(d) => StepView::Deploy {
                health_timeout: d.health_timeout.to_string(),
                env: &d.env,
            },
            Step::Test(t) => StepView::Test {
                http: t.http.as_ref().map(HttpCheckView::from),
                command: t.command.as_deref(),
                min_requests: t.min_requests,
                timeout: t.timeout.to_string(),
                env: &t.env,
            },
            Step::Bake(d) => StepView::Bake(d.to_string()),
            Step::Command(c) => StepView::Command {
                run: &c.run,
                timeout: c.timeout.to_string(),
                env: &c.env,
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct HttpCheckView<'a> {
    pub path: &'a str,
    pub expect_status: u16,
}

impl<'a> From<&'a HttpCheck> for HttpCheckView<'a> {
    fn from(h: &'a HttpCheck) -> HttpCheckView<'a> {
        HttpCheckView {
            path: &h.path,
            expect_status: h.expect_status,
        }
    }
}

/// A deploy window: weekdays from Monday, minutes after midnight.
#[derive(Debug, Serialize)]
pub struct WindowView<'a> {
    pub days: [bool; 7],
    pub start: u32,
    pub end: u32,
    pub tz: &'static str,
    pub text: &'a str,
}

impl<'a> From<&'a Window> for WindowView<'a> {
    fn from(w: &'a Window) -> WindowView<'a> {
        WindowView {
            days: w.days,
            start: w.start,
            end: w.end,
            tz: match w.tz {
                WindowTz::Cell => "cell",
                WindowTz::Utc => "utc",
            },
            text: &w.text,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PlanView<'a> {
    pub waves: Vec<PlannedWaveView<'a>>,
    pub order: &'a [usize],
    pub cell_tz: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a Plan> for PlanView<'a> {
    fn from(p: &'a Plan) -> PlanView<'a> {
        PlanView {
            waves: p.waves.iter().map(PlannedWaveView::from).collect(),
            order: &p.order,
            cell_tz: &p.cell_tz,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PlannedWaveView<'a> {
    pub name: &'a str,
    pub cells: &'a [String],
    pub max_parallel: u32,
    pub approval: Option<GateView<'a>>,
    pub after: &'a [usize],
}

impl<'a> From<&'a PlannedWave> for PlannedWaveView<'a> {
    fn from(w: &'a PlannedWave) -> PlannedWaveView<'a> {
        PlannedWaveView {
            name: &w.name,
            cells: &w.cells,
            max_parallel: w.max_parallel,
            approval: w.approval.as_ref().map(GateView::from),
            after: &w.after,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct GateView<'a> {
    pub group: &'a str,
    pub quorum: u32,
}

impl<'a> From<&'a Gate> for GateView<'a> {
    fn from(g: &'a Gate) -> GateView<'a> {
        GateView {
            group: &g.group,
            quorum: g.quorum,
        }
    }
}

/// Where a wave is: its status, approvals and rejection, and counts.
#[derive(Debug, Serialize)]
pub struct WaveView<'a> {
    pub status: &'static str,
    pub approvals: Vec<DecisionView<'a>>,
    pub rejection: Option<DecisionView<'a>>,
    pub active: usize,
    pub succeeded: usize,
    pub cursor: usize,
}

impl<'a> From<&'a WaveState> for WaveView<'a> {
    fn from(w: &'a WaveState) -> WaveView<'a> {
        WaveView {
            status: match w.status {
                WaveStatus::Pending => "pending",
                WaveStatus::AwaitingApproval => "awaiting_approval",
                WaveStatus::Running => "running",
                WaveStatus::Done => "done",
            },
            approvals: w.approvals.iter().map(DecisionView::from).collect(),
            rejection: w.rejection.as_ref().map(DecisionView::from),
            active: w.active,
            succeeded: w.succeeded,
            cursor: w.cursor,
        }
    }
}

/// An approval or a rejection.
#[derive(Debug, Serialize)]
pub struct DecisionView<'a> {
    pub by: &'a str,
    pub at: DateTime<Utc>,
    pub reason: Option<&'a str>,
}

impl<'a> From<&'a Decision> for DecisionView<'a> {
    fn from(d: &'a Decision) -> DecisionView<'a> {
        DecisionView {
            by: &d.by,
            at: d.at,
            reason: d.reason.as_deref(),
        }
    }
}

/// Where one cell is in a train: its phase's fields sit beside the rest.
#[derive(Debug, Serialize)]
pub struct CellRunView<'a> {
    pub wave: usize,
    #[serde(flatten)]
    pub phase: PhaseView,
    pub deployed: bool,
    pub previous_version: Option<&'a str>,
    pub rollbacks: u32,
    pub log: Vec<StepRecordView<'a>>,
}

impl<'a> From<&'a CellRun> for CellRunView<'a> {
    fn from(c: &'a CellRun) -> CellRunView<'a> {
        CellRunView {
            wave: c.wave,
            phase: PhaseView::from(&c.phase),
            deployed: c.deployed,
            previous_version: c.previous_version.as_deref(),
            rollbacks: c.rollbacks,
            log: c.log.iter().map(StepRecordView::from).collect(),
        }
    }
}

/// A cell's phase, named by `phase`, with the fields of that phase.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum PhaseView {
    Pending,
    WaitingWindow {
        until: DateTime<Utc>,
    },
    WaitingLease,
    Running {
        step: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<DateTime<Utc>>,
    },
    Baking {
        step: usize,
        until: DateTime<Utc>,
    },
    Succeeded,
    RollbackWaitingLease,
    RollingBack,
    RolledBack,
    RollbackFailed,
    RollbackSkipped,
    Stopped {
        next_step: usize,
    },
}

impl From<&CellPhase> for PhaseView {
    fn from(p: &CellPhase) -> PhaseView {
        match *p {
            CellPhase::Pending => PhaseView::Pending,
            CellPhase::WaitingWindow { until } => PhaseView::WaitingWindow { until },
            CellPhase::WaitingLease => PhaseView::WaitingLease,
            CellPhase::Running { step, since } => PhaseView::Running { step, since },
            CellPhase::Baking { step, until } => PhaseView::Baking { step, until },
            CellPhase::Succeeded => PhaseView::Succeeded,
            CellPhase::RollbackWaitingLease => PhaseView::RollbackWaitingLease,
            CellPhase::RollingBack => PhaseView::RollingBack,
            CellPhase::RolledBack => PhaseView::RolledBack,
            CellPhase::RollbackFailed => PhaseView::RollbackFailed,
            CellPhase::RollbackSkipped => PhaseView::RollbackSkipped,
            CellPhase::Stopped { next_step } => PhaseView::Stopped { next_step },
        }
    }
}

/// A step a cell ran: when it ended (and started, when known), whether it
/// passed, and what it said.
#[derive(Debug, Serialize)]
pub struct StepRecordView<'a> {
    pub step: usize,
    pub kind: &'a str,
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    pub ok: bool,
    pub detail: &'a str,
}

impl<'a> From<&'a StepRecord> for StepRecordView<'a> {
    fn from(r: &'a StepRecord) -> StepRecordView<'a> {
        StepRecordView {
            step: r.step,
            kind: &r.kind,
            at: r.at,
            started: r.started,
            ok: r.ok,
            detail: &r.detail,
        }
    }
}
