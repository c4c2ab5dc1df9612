//! The release-train state machine.
//!
//! Pure: `apply(state, event, now) -> (state, effects)`. No I/O, no clocks:
//! time is an input and everything the outside world must do comes back as
//! [`Effect`]s, each with an idempotency key where it changes a cell. The
//! engine persists an event before it applies it, and executes the effects
//! after; replaying the persisted events rebuilds the same state, and
//! [`Train::resume`] re-issues the effects that were in flight.
//!
//! Rules:
//! - A wave starts when every wave it waits for is done and its approval gate
//!   (if any) has a quorum of distinct approvers, none of them the starter.
//! - Within a running wave at most `max_parallel` cells are active; a cell
//!   starts only inside a deploy window and after it holds the cell's lease.
//! - A failed step triggers `on_failure`; a halted, rejected or cancelled train
//!   starts no new cell. In-flight cells finish their step; a cancelled train
//!   leaves them at a recorded step, a rolled-back train restores them.
//! - Rolling back the whole train goes newest wave first.

use crate::pipeline::{Artifact, OnFailure, Step};
use crate::plan::Plan;
use crate::window::{self, Window};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod machine;
pub mod queue;
mod validate;

/// Everything fixed when a train is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainSpec {
    pub id: String,
    pub pipeline: String,
    pub artifact: Artifact,
    pub version: String,
    pub started_by: String,
    pub steps: Vec<Step>,
    pub on_failure: OnFailure,
    pub windows: Vec<Window>,
    pub plan: Plan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum TrainStatus {
    /// Waiting behind a running train of the same pipeline.
    Queued,
    Running,
    /// Rolling back (after a failure with `rollback_train`, or on request).
    RollingBack,
    Succeeded,
    Failed,
    RolledBack,
    Cancelled,
    Rejected,
    /// A newer train of the same pipeline took its place in the queue.
    Superseded,
}

impl TrainStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            TrainStatus::Queued | TrainStatus::Running | TrainStatus::RollingBack
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TrainStatus::Queued => "queued",
            TrainStatus::Running => "running",
            TrainStatus::RollingBack => "rolling_back",
            TrainStatus::Succeeded => "succeeded",
            TrainStatus::Failed => "failed",
            TrainStatus::RolledBack => "rolled_back",
            TrainStatus::Cancelled => "cancelled",
            TrainStatus::Rejected => "rejected",
            TrainStatus::Superseded => "superseded",
        }
    }
    pub const ALL: [TrainStatus; 9] = [
        TrainStatus::Queued,
        TrainStatus::Running,
        TrainStatus::RollingBack,
        TrainStatus::Succeeded,
        TrainStatus::Failed,
        TrainStatus::RolledBack,
        TrainStatus::Cancelled,
        TrainStatus::Rejected,
        TrainStatus::Superseded,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveStatus {
    Pending,
    AwaitingApproval,
    Running,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveState {
    pub status: WaveStatus,
    pub approvals: Vec<Decision>,
    pub rejection: Option<Decision>,
    /// Cells of the wave that are active (started, not at rest).
    #[serde(default)]
    pub active: usize,
    /// Cells of the wave that succeeded.
    #[serde(default)]
    pub succeeded: usize,
    /// Index into the wave's cells before which no cell is pending for a
    /// forward start (cells only go back to pending once the train halts,
    /// after which none starts again).
    #[serde(default)]
    pub cursor: usize,
}

/// Where one cell is in this train.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum CellPhase {
    Pending,
    WaitingWindow {
        until: DateTime<Utc>,
    },
    WaitingLease,
    Running {
        step: usize,
        /// When the step started (absent in states written before it was kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// Not rolled back: by the time this train's rollback reached the cell,
    /// it no longer ran the version this train deployed (a newer train, or
    /// someone else, had changed it since). Left as it is.
    RollbackSkipped,
    /// Left as it was when the train was cancelled; `next_step` had not run.
    Stopped {
        next_step: usize,
    },
}

impl CellPhase {
    /// Started and not yet at rest: counts against `max_parallel`.
    fn is_active(&self) -> bool {
        matches!(
            self,
            CellPhase::WaitingWindow { .. }
                | CellPhase::WaitingLease
                | CellPhase::Running { .. }
                | CellPhase::Baking { .. }
                | CellPhase::RollbackWaitingLease
                | CellPhase::RollingBack
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub kind: String,
    /// When the step ended.
    pub at: DateTime<Utc>,
    /// When it started (steps run by the shell; absent in older states).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    pub ok: bool,
    pub detail: String,
}

impl StepRecord {
    /// How long the step ran, when its start is known.
    pub fn took(&self) -> Option<Duration> {
        self.started
            .map(|s| self.at - s)
            .filter(|d| *d >= Duration::zero())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellRun {
    pub wave: usize,
    #[serde(flatten)]
    pub phase: CellPhase,
    /// The deploy step succeeded in this train (and was not rolled back).
    pub deployed: bool,
    /// The version the cell ran before this train's deploy.
    pub previous_version: Option<String>,
    pub rollbacks: u32,
    pub log: Vec<StepRecord>,
}

/// A release train: the state the machine folds events into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Train {
    pub spec: TrainSpec,
    pub status: TrainStatus,
    pub waves: Vec<WaveState>,
    pub cells: BTreeMap<String, CellRun>,
    pub halted: bool,
    pub cancel_requested: bool,
    pub rollback_all: bool,
    pub rejected: bool,
    pub failure: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Inputs to the machine. Every one is persisted before it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Event {
    Created {
        spec: Box<TrainSpec>,
        queued: bool,
    },
    Promoted,
    Superseded {
        by: String,
    },
    LeaseGranted {
        cell: String,
    },
    StepFinished {
        cell: String,
        step: usize,
        attempt: u32,
        ok: bool,
        detail: String,
        #[serde(default)]
        previous_version: Option<String>,
    },
    Wake {
        cell: Option<String>,
    },
    Approved {
        wave: String,
        by: String,
        groups: Vec<String>,
        admin: bool,
        reason: Option<String>,
    },
    Rejected {
        wave: String,
        by: String,
        groups: Vec<String>,
        admin: bool,
        reason: Option<String>,
    },
    CancelRequested {
        by: String,
    },
    RollbackRequested {
        by: String,
    },
    RollbackFinished {
        cell: String,
        ok: bool,
        detail: String,
        /// The target left the cell as it was: it no longer ran this train's
        /// version (see [`CellPhase::RollbackSkipped`]). `ok` is true.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        skipped: bool,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Effect {
    AcquireLease {
        cell: String,
    },
    /// Release the cell's lease, or withdraw a pending request for it.
    ReleaseLease {
        cell: String,
    },
    RunStep {
        cell: String,
        step: usize,
        attempt: u32,
        key: String,
    },
    Rollback {
        cell: String,
        to_version: Option<String>,
        key: String,
    },
    WakeAt {
        at: DateTime<Utc>,
        cell: Option<String>,
    },
    Finished {
        status: TrainStatus,
    },
}

/// Why an event was refused (it is then not persisted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("train has no wave named {0:?}")]
    UnknownWave(String),
    #[error("wave {0:?} is not waiting for an approval")]
    NotAwaitingApproval(String),
    #[error("{0} started this train and cannot approve or reject it")]
    SelfApproval(String),
    #[error("{by} is not in group {group:?}, which gates wave {wave:?}")]
    NotInGroup {
        by: String,
        group: String,
        wave: String,
    },
    #[error("{0} already approved this wave; a quorum needs distinct approvers")]
    AlreadyApproved(String),
    #[error("train is {0}")]
    Finished(&'static str),
    #[error("train has no deployed cell to roll back")]
    NothingToRollBack,
    #[error("event does not apply to the train's current state")]
    Stale,
}

/// The pure transition function.
pub fn apply(mut state: Train, event: &Event, now: DateTime<Utc>) -> (Train, Vec<Effect>) {
    let fx = state.apply(event, now);
    (state, fx)
}

/// The idempotency key of a forward step attempt.
pub fn step_key(train: &str, cell: &str, step: usize, attempt: u32) -> String {
    format!("{train}/{cell}/step{step}/a{attempt}")
}

impl Train {
    /// The state right after `Created`.
    pub fn new(spec: TrainSpec, queued: bool, now: DateTime<Utc>) -> Train {
        let mut cells = BTreeMap::new();
        for (w, wave) in spec.plan.waves.iter().enumerate() {
            for c in &wave.cells {
                cells.insert(
                    c.clone(),
                    CellRun {
                        wave: w,
                        phase: CellPhase::Pending,
                        deployed: false,
                        previous_version: None,
                        rollbacks: 0,
                        log: Vec::new(),
                    },
                );
            }
        }
        let waves = spec
            .plan
            .waves
            .iter()
            .map(|_| WaveState {
                status: WaveStatus::Pending,
                approvals: vec![],
                rejection: None,
                active: 0,
                succeeded: 0,
                cursor: 0,
            })
            .collect();
        Train {
            spec,
            status: if queued {
                TrainStatus::Queued
            } else {
                TrainStatus::Running
            },
            waves,
            cells,
            halted: false,
            cancel_requested: false,
            rollback_all: false,
            rejected: false,
            failure: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
        }
    }

    /// Rebuild a train from its events (the first must be `Created`).
    pub fn replay<'a>(
        events: impl IntoIterator<Item = (&'a Event, DateTime<Utc>)>,
    ) -> Option<Train> {
        let mut it = events.into_iter();
        let (first, t0) = it.next()?;
        let Event::Created { spec, queued } = first else {
            return None;
        };
        let mut t = Train::new(TrainSpec::clone(spec), *queued, t0);
        for (ev, at) in it {
            t.apply(ev, at);
        }
        Some(t)
    }

    /// The effects that were in flight in this state: what the engine
    /// re-issues after a restart. Each carries the same idempotency key as before.
    pub fn resume(&self) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.status.is_terminal() || self.status == TrainStatus::Queued {
            return fx;
        }
        for (id, c) in &self.cells {
            let cell = id.clone();
            match &c.phase {
                CellPhase::WaitingLease | CellPhase::RollbackWaitingLease => {
                    fx.push(Effect::AcquireLease { cell })
                }
                CellPhase::Running { step, .. } => fx.push(Effect::RunStep {
                    cell,
                    step: *step,
                    attempt: 1,
                    key: step_key(&self.spec.id, id, *step, 1),
                }),
                CellPhase::RollingBack => fx.push(Effect::Rollback {
                    cell,
                    to_version: c.previous_version.clone(),
                    key: format!("{}/{id}/rollback{}", self.spec.id, c.rollbacks),
                }),
                CellPhase::Baking { until, .. } | CellPhase::WaitingWindow { until } => {
                    fx.push(Effect::WakeAt {
                        at: *until,
                        cell: Some(cell),
                    })
                }
                _ => {}
            }
        }
        fx
    }

    /// Waves waiting for an approval now.
    pub fn gates_waiting(&self) -> Vec<&str> {
        if self.status.is_terminal() || self.halted || self.cancel_requested {
            return Vec::new();
        }
        self.waves
            .iter()
            .enumerate()
            .filter(|(_, w)| w.status == WaveStatus::AwaitingApproval)
            .map(|(i, _)| self.spec.plan.waves[i].name.as_str())
            .collect()
    }

    /// Count of cells per phase name (for status lines and metrics).
    pub fn cell_summary(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for c in self.cells.values() {
            let k = match c.phase {
                CellPhase::Pending => "pending",
                CellPhase::WaitingWindow { .. } => "waiting_window",
                CellPhase::WaitingLease => "waiting_lease",
                CellPhase::Running { .. } => "running",
                CellPhase::Baking { .. } => "baking",
                CellPhase::Succeeded => "succeeded",
                CellPhase::RollbackWaitingLease | CellPhase::RollingBack => "rolling_back",
                CellPhase::RolledBack => "rolled_back",
                CellPhase::RollbackFailed => "rollback_failed",
                CellPhase::RollbackSkipped => "rollback_skipped",
                CellPhase::Stopped { .. } => "stopped",
            };
            *m.entry(k).or_insert(0) += 1;
        }
        m
    }
}
