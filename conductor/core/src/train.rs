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
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub detail: String,
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

    fn wave_index(&self, name: &str) -> Result<usize, Refusal> {
        self.spec
            .plan
            .waves
            .iter()
            .position(|w| w.name == name)
            .ok_or_else(|| Refusal::UnknownWave(name.to_string()))
    }

    /// Would this event be accepted? Refused events are not persisted.
    pub fn validate(&self, event: &Event) -> Result<(), Refusal> {
        let live = !self.status.is_terminal();
        match event {
            Event::Created { .. } => Err(Refusal::Stale),
            Event::Promoted | Event::Superseded { .. } => (self.status == TrainStatus::Queued)
                .then_some(())
                .ok_or(Refusal::Stale),
            Event::Approved {
                wave,
                by,
                groups,
                admin,
                ..
            }
            | Event::Rejected {
                wave,
                by,
                groups,
                admin,
                ..
            } => {
                if !live {
                    return Err(Refusal::Finished(self.status.as_str()));
                }
                let i = self.wave_index(wave)?;
                if self.waves[i].status != WaveStatus::AwaitingApproval
                    || self.halted
                    || self.cancel_requested
                {
                    return Err(Refusal::NotAwaitingApproval(wave.clone()));
                }
                if by == &self.spec.started_by {
                    return Err(Refusal::SelfApproval(by.clone()));
                }
                if let Some(g) = &self.spec.plan.waves[i].approval {
                    if !admin && !groups.contains(&g.group) {
                        return Err(Refusal::NotInGroup {
                            by: by.clone(),
                            group: g.group.clone(),
                            wave: wave.clone(),
                        });
                    }
                }
                if matches!(event, Event::Approved { .. })
                    && self.waves[i].approvals.iter().any(|d| &d.by == by)
                {
                    return Err(Refusal::AlreadyApproved(by.clone()));
                }
                Ok(())
            }
            Event::CancelRequested { .. } => {
                if !live {
                    Err(Refusal::Finished(self.status.as_str()))
                } else if self.cancel_requested || self.rollback_all {
                    Err(Refusal::Stale)
                } else {
                    Ok(())
                }
            }
            Event::RollbackRequested { .. } => {
                if self.rollback_all {
                    return Err(Refusal::Stale);
                }
                let any = self
                    .cells
                    .values()
                    .any(|c| c.deployed || c.phase.is_active());
                if !any {
                    return Err(Refusal::NothingToRollBack);
                }
                Ok(())
            }
            Event::LeaseGranted { cell } => match self.cells.get(cell).map(|c| &c.phase) {
                Some(CellPhase::WaitingLease | CellPhase::RollbackWaitingLease) => Ok(()),
                // A grant nobody waits for still changes state: the lease is handed back.
                Some(_) => Ok(()),
                None => Err(Refusal::Stale),
            },
            Event::StepFinished { cell, step, .. } => {
                match self.cells.get(cell).map(|c| &c.phase) {
                    Some(CellPhase::Running { step: s }) if s == step => Ok(()),
                    _ => Err(Refusal::Stale),
                }
            }
            Event::RollbackFinished { cell, .. } => match self.cells.get(cell).map(|c| &c.phase) {
                Some(CellPhase::RollingBack) => Ok(()),
                _ => Err(Refusal::Stale),
            },
            Event::Wake { .. } => (!self.status.is_terminal())
                .then_some(())
                .ok_or(Refusal::Stale),
        }
    }

    /// Apply an event in place (validate first: a refused event is a no-op here).
    pub fn apply(&mut self, event: &Event, now: DateTime<Utc>) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.validate(event).is_err() {
            return fx;
        }
        self.updated_at = now;
        match event {
            Event::Created { .. } => {}
            Event::Promoted => self.status = TrainStatus::Running,
            Event::Superseded { by } => {
                self.status = TrainStatus::Superseded;
                self.failure = Some(format!("superseded by {by}"));
                self.finished_at = Some(now);
                fx.push(Effect::Finished {
                    status: self.status,
                });
                return fx;
            }
            Event::LeaseGranted { cell } => self.on_lease(cell, now, &mut fx),
            Event::StepFinished {
                cell,
                step,
                ok,
                detail,
                previous_version,
                ..
            } => self.on_step(
                cell,
                *step,
                *ok,
                detail,
                previous_version.clone(),
                now,
                &mut fx,
            ),
            Event::Wake { cell } => {
                if let Some(c) = cell {
                    self.on_wake(c, now, &mut fx);
                }
            }
            Event::Approved {
                wave, by, reason, ..
            } => {
                if let Ok(i) = self.wave_index(wave) {
                    self.waves[i].approvals.push(Decision {
                        by: by.clone(),
                        at: now,
                        reason: reason.clone(),
                    });
                    let quorum = self.spec.plan.waves[i]
                        .approval
                        .as_ref()
                        .map_or(1, |g| g.quorum) as usize;
                    if self.waves[i].approvals.len() >= quorum {
                        self.waves[i].status = WaveStatus::Running;
                    }
                }
            }
            Event::Rejected {
                wave, by, reason, ..
            } => {
                if let Ok(i) = self.wave_index(wave) {
                    self.waves[i].rejection = Some(Decision {
                        by: by.clone(),
                        at: now,
                        reason: reason.clone(),
                    });
                    self.rejected = true;
                    self.halted = true;
                    self.failure = Some(format!("wave {wave} rejected by {by}"));
                }
            }
            Event::CancelRequested { by } => {
                self.cancel_requested = true;
                self.failure
                    .get_or_insert_with(|| format!("cancelled by {by}"));
                if self.status == TrainStatus::Queued {
                    self.status = TrainStatus::Cancelled;
                    self.finished_at = Some(now);
                    fx.push(Effect::Finished {
                        status: self.status,
                    });
                    return fx;
                }
            }
            Event::RollbackRequested { by } => {
                self.halted = true;
                self.rollback_all = true;
                self.failure
                    .get_or_insert_with(|| format!("rollback requested by {by}"));
                self.status = TrainStatus::RollingBack;
                self.finished_at = None;
            }
            Event::RollbackFinished { cell, ok, detail } => {
                if let Some(c) = self.cells.get_mut(cell) {
                    c.log.push(StepRecord {
                        step: usize::MAX,
                        kind: "rollback".into(),
                        at: now,
                        ok: *ok,
                        detail: detail.clone(),
                    });
                    if *ok {
                        c.deployed = false;
                    }
                    let phase = if *ok {
                        CellPhase::RolledBack
                    } else {
                        CellPhase::RollbackFailed
                    };
                    self.set(cell, phase);
                    fx.push(Effect::ReleaseLease { cell: cell.clone() });
                }
            }
        }
        self.advance(now, &mut fx);
        fx
    }

    fn deploy_index(&self) -> Option<usize> {
        self.spec
            .steps
            .iter()
            .position(|s| matches!(s, Step::Deploy(_)))
    }

    /// Every phase change goes through here, keeping the wave counters true.
    fn set(&mut self, cell: &str, phase: CellPhase) {
        if let Some(c) = self.cells.get_mut(cell) {
            let w = &mut self.waves[c.wave];
            let (was_active, was_ok) = (c.phase.is_active(), c.phase == CellPhase::Succeeded);
            let (is_active, is_ok) = (phase.is_active(), phase == CellPhase::Succeeded);
            w.active = w.active + usize::from(is_active) - usize::from(was_active);
            w.succeeded = w.succeeded + usize::from(is_ok) - usize::from(was_ok);
            c.phase = phase;
        }
    }

    fn on_lease(&mut self, cell: &str, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        let phase = self.cells.get(cell).map(|c| c.phase.clone());
        match phase {
            Some(CellPhase::WaitingLease) => self.start_step(cell, 0, now, fx),
            Some(CellPhase::RollbackWaitingLease) => self.start_rollback(cell, fx),
            // Nobody waits for it any more (cancelled, halted): hand it back.
            _ => fx.push(Effect::ReleaseLease {
                cell: cell.to_string(),
            }),
        }
    }

    /// Run step `i` on a cell that holds its lease (or finish the cell).
    fn start_step(&mut self, cell: &str, i: usize, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        if self.cancel_requested {
            self.set(cell, CellPhase::Stopped { next_step: i });
            fx.push(Effect::ReleaseLease {
                cell: cell.to_string(),
            });
            return;
        }
        if self.rollback_all {
            self.begin_cell_rollback(cell, fx);
            return;
        }
        match self.spec.steps.get(i) {
            None => {
                self.set(cell, CellPhase::Succeeded);
                fx.push(Effect::ReleaseLease {
                    cell: cell.to_string(),
                });
            }
            Some(Step::Bake(d)) => {
                let until = now + Duration::milliseconds(d.millis());
                self.set(cell, CellPhase::Baking { step: i, until });
                fx.push(Effect::WakeAt {
                    at: until,
                    cell: Some(cell.to_string()),
                });
            }
            Some(_) => {
                self.set(cell, CellPhase::Running { step: i });
                fx.push(Effect::RunStep {
                    cell: cell.to_string(),
                    step: i,
                    attempt: 1,
                    key: step_key(&self.spec.id, cell, i, 1),
                });
            }
        }
    }

    /// A cell holding its lease starts to roll back (or has nothing to undo).
    fn begin_cell_rollback(&mut self, cell: &str, fx: &mut Vec<Effect>) {
        let Some(c) = self.cells.get(cell) else {
            return;
        };
        let touched = c.deployed || c.log.iter().any(|r| Some(r.step) == self.deploy_index());
        if touched {
            self.start_rollback(cell, fx);
        } else {
            self.set(cell, CellPhase::RolledBack);
            if let Some(c) = self.cells.get_mut(cell) {
                c.log.push(StepRecord {
                    step: usize::MAX,
                    kind: "rollback".into(),
                    at: self.updated_at,
                    ok: true,
                    detail: "nothing to roll back: the cell was not deployed".into(),
                });
            }
            fx.push(Effect::ReleaseLease {
                cell: cell.to_string(),
            });
        }
    }

    fn start_rollback(&mut self, cell: &str, fx: &mut Vec<Effect>) {
        let id = self.spec.id.clone();
        let Some(c) = self.cells.get_mut(cell) else {
            return;
        };
        c.rollbacks += 1;
        fx.push(Effect::Rollback {
            cell: cell.to_string(),
            to_version: c.previous_version.clone(),
            key: format!("{id}/{cell}/rollback{}", c.rollbacks),
        });
        self.set(cell, CellPhase::RollingBack);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_step(
        &mut self,
        cell: &str,
        step: usize,
        ok: bool,
        detail: &str,
        previous_version: Option<String>,
        now: DateTime<Utc>,
        fx: &mut Vec<Effect>,
    ) {
        let kind = self
            .spec
            .steps
            .get(step)
            .map_or("step", Step::kind)
            .to_string();
        let is_deploy = self.deploy_index() == Some(step);
        if let Some(c) = self.cells.get_mut(cell) {
            c.log.push(StepRecord {
                step,
                kind: kind.clone(),
                at: now,
                ok,
                detail: detail.to_string(),
            });
            if is_deploy {
                c.previous_version = previous_version;
                c.deployed = ok;
            }
        }
        if ok {
            self.start_step(cell, step + 1, now, fx);
            return;
        }
        self.failure
            .get_or_insert_with(|| format!("{kind} failed on {cell}: {detail}"));
        self.halted = true;
        if self.spec.on_failure == OnFailure::RollbackTrain {
            self.rollback_all = true;
        }
        self.begin_cell_rollback(cell, fx);
    }

    fn on_wake(&mut self, cell: &str, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        let Some(phase) = self.cells.get(cell).map(|c| c.phase.clone()) else {
            return;
        };
        match phase {
            CellPhase::Baking { step, until } if now >= until => {
                self.start_step(cell, step + 1, now, fx)
            }
            CellPhase::Baking { until, .. } => fx.push(Effect::WakeAt {
                at: until,
                cell: Some(cell.into()),
            }),
            CellPhase::WaitingWindow { .. } => self.try_enter(cell, now, fx),
            _ => {}
        }
    }

    /// Start a pending cell if its window allows, else wait for the window.
    fn try_enter(&mut self, cell: &str, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        let tz = self
            .spec
            .plan
            .cell_tz
            .get(cell)
            .cloned()
            .unwrap_or_else(|| "UTC".into());
        match window::next_allowed(&self.spec.windows, now, &tz) {
            Some(t) if t <= now => {
                self.set(cell, CellPhase::WaitingLease);
                fx.push(Effect::AcquireLease {
                    cell: cell.to_string(),
                });
            }
            Some(t) => {
                self.set(cell, CellPhase::WaitingWindow { until: t });
                fx.push(Effect::WakeAt {
                    at: t,
                    cell: Some(cell.to_string()),
                });
            }
            None => {
                // No opening within a week: look again in a day.
                let t = now + Duration::days(1);
                self.set(cell, CellPhase::WaitingWindow { until: t });
                fx.push(Effect::WakeAt {
                    at: t,
                    cell: Some(cell.to_string()),
                });
            }
        }
    }

    fn wave_cells(&self, w: usize) -> impl Iterator<Item = (&String, &CellRun)> {
        self.spec.plan.waves[w]
            .cells
            .iter()
            .filter_map(|c| self.cells.get_key_value(c))
    }

    /// Move the train forward as far as the rules allow at `now`.
    fn advance(&mut self, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        if self.status.is_terminal() || self.status == TrainStatus::Queued {
            return;
        }
        if self.halted || self.cancel_requested {
            // Cells that have not touched their cell yet go back to pending.
            let idle: Vec<(String, bool)> = self
                .cells
                .iter()
                .filter_map(|(id, c)| match c.phase {
                    CellPhase::WaitingWindow { .. } => Some((id.clone(), false)),
                    CellPhase::WaitingLease => Some((id.clone(), true)),
                    _ => None,
                })
                .collect();
            for (id, leased) in idle {
                self.set(&id, CellPhase::Pending);
                if leased {
                    fx.push(Effect::ReleaseLease { cell: id });
                }
            }
            // A cancel stops baking cells where they are.
            if self.cancel_requested && !self.rollback_all {
                let baking: Vec<(String, usize)> = self
                    .cells
                    .iter()
                    .filter_map(|(id, c)| match c.phase {
                        CellPhase::Baking { step, .. } => Some((id.clone(), step + 1)),
                        _ => None,
                    })
                    .collect();
                for (id, next) in baking {
                    self.set(&id, CellPhase::Stopped { next_step: next });
                    fx.push(Effect::ReleaseLease { cell: id });
                }
            }
        } else {
            self.advance_waves(now, fx);
        }
        if self.rollback_all {
            self.advance_rollback(fx);
        }
        self.settle(now, fx);
    }

    fn advance_waves(&mut self, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        loop {
            let mut changed = false;
            for oi in 0..self.spec.plan.order.len() {
                let w = self.spec.plan.order[oi];
                if self.waves[w].status == WaveStatus::Pending
                    && self.spec.plan.waves[w]
                        .after
                        .iter()
                        .all(|d| self.waves[*d].status == WaveStatus::Done)
                {
                    self.waves[w].status = if self.spec.plan.waves[w].approval.is_some() {
                        WaveStatus::AwaitingApproval
                    } else {
                        WaveStatus::Running
                    };
                    changed = true;
                }
                if self.waves[w].status != WaveStatus::Running {
                    continue;
                }
                let max = self.spec.plan.waves[w].max_parallel.max(1) as usize;
                let len = self.spec.plan.waves[w].cells.len();
                while self.waves[w].active < max && self.waves[w].cursor < len {
                    let i = self.waves[w].cursor;
                    self.waves[w].cursor += 1;
                    let id = self.spec.plan.waves[w].cells[i].clone();
                    if self
                        .cells
                        .get(&id)
                        .is_some_and(|c| c.phase == CellPhase::Pending)
                    {
                        self.try_enter(&id, now, fx);
                    }
                }
                if self.waves[w].succeeded == len {
                    self.waves[w].status = WaveStatus::Done;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Roll back deployed cells, newest wave first, `max_parallel` at a time.
    fn advance_rollback(&mut self, fx: &mut Vec<Effect>) {
        let forward_active = self.cells.values().any(|c| {
            matches!(
                c.phase,
                CellPhase::Running { .. } | CellPhase::Baking { .. } | CellPhase::WaitingLease
            )
        });
        if forward_active {
            return;
        }
        for oi in (0..self.spec.plan.order.len()).rev() {
            let w = self.spec.plan.order[oi];
            let in_flight = self
                .wave_cells(w)
                .filter(|(_, c)| {
                    matches!(
                        c.phase,
                        CellPhase::RollbackWaitingLease | CellPhase::RollingBack
                    )
                })
                .count();
            let todo: Vec<String> = self
                .wave_cells(w)
                .filter(|(_, c)| {
                    c.deployed
                        && matches!(c.phase, CellPhase::Succeeded | CellPhase::Stopped { .. })
                })
                .map(|(id, _)| id.clone())
                .collect();
            if in_flight == 0 && todo.is_empty() {
                continue;
            }
            let max = self.spec.plan.waves[w].max_parallel.max(1) as usize;
            for id in todo.into_iter().take(max.saturating_sub(in_flight)) {
                self.set(&id, CellPhase::RollbackWaitingLease);
                fx.push(Effect::AcquireLease { cell: id });
            }
            return;
        }
    }

    /// Decide whether the train is over.
    fn settle(&mut self, now: DateTime<Utc>, fx: &mut Vec<Effect>) {
        if self.waves.iter().any(|w| w.active > 0) {
            return;
        }
        let status = if self.rollback_all {
            let left = self
                .cells
                .values()
                .any(|c| c.deployed && !matches!(c.phase, CellPhase::RollbackFailed));
            if left {
                return;
            }
            if self
                .cells
                .values()
                .any(|c| c.phase == CellPhase::RollbackFailed)
            {
                TrainStatus::Failed
            } else {
                TrainStatus::RolledBack
            }
        } else if self.cancel_requested {
            TrainStatus::Cancelled
        } else if self.rejected {
            TrainStatus::Rejected
        } else if self.halted {
            TrainStatus::Failed
        } else if self.waves.iter().all(|w| w.status == WaveStatus::Done) {
            TrainStatus::Succeeded
        } else {
            return;
        };
        self.status = status;
        self.finished_at = Some(now);
        fx.push(Effect::Finished { status });
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
                CellPhase::Running { step } => fx.push(Effect::RunStep {
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
                CellPhase::Stopped { .. } => "stopped",
            };
            *m.entry(k).or_insert(0) += 1;
        }
        m
    }
}
