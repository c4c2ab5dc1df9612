//! Which events a train accepts: a refused event is not persisted.

use super::*;

impl Train {
    pub(super) fn wave_index(&self, name: &str) -> Result<usize, Refusal> {
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
                    Some(CellPhase::Running { step: s, .. }) if s == step => Ok(()),
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
}
