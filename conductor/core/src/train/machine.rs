//! The transitions: how each accepted event moves a train, and the rules
//! that start cells, roll them back and finish the train.

use super::*;

impl Train {
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
            Event::RollbackFinished {
                cell,
                ok,
                detail,
                skipped,
            } => {
                if let Some(c) = self.cells.get_mut(cell) {
                    c.log.push(StepRecord {
                        step: usize::MAX,
                        kind: if *skipped {
                            "rollback_skipped"
                        } else {
                            "rollback"
                        }
                        .into(),
                        at: now,
                        started: None,
                        ok: *ok,
                        detail: detail.clone(),
                    });
                    // Either way this train's version no longer runs there.
                    if *ok {
                        c.deployed = false;
                    }
                    let phase = match (*ok, *skipped) {
                        (true, true) => CellPhase::RollbackSkipped,
                        (true, false) => CellPhase::RolledBack,
                        (false, _) => CellPhase::RollbackFailed,
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
                self.set(
                    cell,
                    CellPhase::Running {
                        step: i,
                        since: Some(now),
                    },
                );
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
                    started: None,
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
            let started = match c.phase {
                CellPhase::Running { since, .. } => since,
                _ => None,
            };
            c.log.push(StepRecord {
                step,
                kind: kind.clone(),
                at: now,
                started,
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
}
