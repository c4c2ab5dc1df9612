//! Resize operations: changing one cell's shape, audited and leased per cell.
//!
//! A resize is small next to a train: it waits for an approval (when it
//! shrinks a cell under `plan capacity --apply`), then for its cell's lease,
//! then runs the capacity actuator once and releases the lease. It never
//! holds the lease of any other cell, so trains elsewhere never wait for it.
//!
//! `apply(state, event, now) -> effects`, like the train machine: no I/O, time
//! is an input, and a refused event changes nothing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeStatus {
    /// Shrinks from `plan capacity --apply` wait for someone else to approve.
    AwaitingApproval,
    /// Waiting for the cell's lease (a train step or another resize holds it).
    WaitingForLease,
    /// Holding the lease; the actuator is changing the cell.
    Running,
    Succeeded,
    Failed,
    Rejected,
}

impl ResizeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResizeStatus::AwaitingApproval => "awaiting_approval",
            ResizeStatus::WaitingForLease => "waiting_for_lease",
            ResizeStatus::Running => "running",
            ResizeStatus::Succeeded => "succeeded",
            ResizeStatus::Failed => "failed",
            ResizeStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<ResizeStatus> {
        Some(match s {
            "awaiting_approval" => ResizeStatus::AwaitingApproval,
            "waiting_for_lease" => ResizeStatus::WaitingForLease,
            "running" => ResizeStatus::Running,
            "succeeded" => ResizeStatus::Succeeded,
            "failed" => ResizeStatus::Failed,
            "rejected" => ResizeStatus::Rejected,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ResizeStatus::Succeeded | ResizeStatus::Failed | ResizeStatus::Rejected
        )
    }
}

/// One resize operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resize {
    pub id: String,
    pub cell: String,
    pub from_shape: String,
    pub to_shape: String,
    pub requested_by: String,
    pub reason: String,
    pub status: ResizeStatus,
    pub approved_by: Option<String>,
    pub detail: String,
    pub created_at: DateTime<Utc>,
    /// When it got the cell's lease (began changing the cell).
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResizeEvent {
    Approved { by: String },
    Rejected { by: String, reason: String },
    LeaseGranted,
    Finished { ok: bool, detail: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResizeEffect {
    /// Ask for the cell's lease as holder [`Resize::holder`].
    AcquireLease,
    /// Change the cell to `to_shape` (idempotent: the actuator sets, not adds).
    Actuate,
    /// Give the lease back (or withdraw the request).
    ReleaseLease,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeRefusal {
    #[error("{0} requested this resize and cannot approve or reject it")]
    SelfApproval(String),
    #[error("resize is {0}; it is not waiting for an approval")]
    NotAwaitingApproval(&'static str),
    #[error("event does not apply to a resize that is {0}")]
    Stale(&'static str),
}

impl Resize {
    /// A new resize: it waits for an approval if `needs_approval`, else it
    /// asks for the lease at once.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        cell: String,
        from_shape: String,
        to_shape: String,
        requested_by: String,
        reason: String,
        needs_approval: bool,
        now: DateTime<Utc>,
    ) -> (Resize, Vec<ResizeEffect>) {
        let status = if needs_approval {
            ResizeStatus::AwaitingApproval
        } else {
            ResizeStatus::WaitingForLease
        };
        let r = Resize {
            id,
            cell,
            from_shape,
            to_shape,
            requested_by,
            reason,
            status,
            approved_by: None,
            detail: String::new(),
            created_at: now,
            started_at: None,
            updated_at: now,
        };
        let fx = if needs_approval {
            vec![]
        } else {
            vec![ResizeEffect::AcquireLease]
        };
        (r, fx)
    }

    /// The lease holder name of this resize.
    pub fn holder(&self) -> crate::cell::LeaseHolder {
        crate::cell::LeaseHolder::Resize(self.id.clone())
    }

    /// Would `event` be accepted?
    pub fn validate(&self, event: &ResizeEvent) -> Result<(), ResizeRefusal> {
        let s = self.status;
        match event {
            ResizeEvent::Approved { by } | ResizeEvent::Rejected { by, .. } => {
                if s != ResizeStatus::AwaitingApproval {
                    return Err(ResizeRefusal::NotAwaitingApproval(s.as_str()));
                }
                if *by == self.requested_by {
                    return Err(ResizeRefusal::SelfApproval(by.clone()));
                }
                Ok(())
            }
            ResizeEvent::LeaseGranted if s == ResizeStatus::WaitingForLease => Ok(()),
            ResizeEvent::Finished { .. } if s == ResizeStatus::Running => Ok(()),
            _ => Err(ResizeRefusal::Stale(s.as_str())),
        }
    }

    /// Apply an event; a refused event leaves the resize as it was.
    pub fn apply(
        &mut self,
        event: &ResizeEvent,
        now: DateTime<Utc>,
    ) -> Result<Vec<ResizeEffect>, ResizeRefusal> {
        self.validate(event)?;
        self.updated_at = now;
        Ok(match event {
            ResizeEvent::Approved { by } => {
                self.approved_by = Some(by.clone());
                self.status = ResizeStatus::WaitingForLease;
                vec![ResizeEffect::AcquireLease]
            }
            ResizeEvent::Rejected { by, reason } => {
                self.status = ResizeStatus::Rejected;
                self.detail = format!("rejected by {by}: {reason}");
                vec![]
            }
            ResizeEvent::LeaseGranted => {
                self.status = ResizeStatus::Running;
                self.started_at = Some(now);
                vec![ResizeEffect::Actuate]
            }
            ResizeEvent::Finished { ok, detail } => {
                self.status = if *ok {
                    ResizeStatus::Succeeded
                } else {
                    ResizeStatus::Failed
                };
                self.detail = detail.clone();
                vec![ResizeEffect::ReleaseLease]
            }
        })
    }

    /// What to re-issue after a restart: a waiting resize asks for its lease
    /// again; a running one held it and acts again (the actuator sets the
    /// worker count, so acting twice is harmless).
    pub fn resume(&self) -> Vec<ResizeEffect> {
        match self.status {
            ResizeStatus::WaitingForLease => vec![ResizeEffect::AcquireLease],
            ResizeStatus::Running => vec![ResizeEffect::Actuate],
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap_or_default()
    }

    fn new(approval: bool) -> (Resize, Vec<ResizeEffect>) {
        Resize::new(
            "r1".into(),
            "use1-a".into(),
            "large".into(),
            "small".into(),
            "sam".into(),
            "plan".into(),
            approval,
            t(0),
        )
    }

    #[test]
    fn a_grow_takes_the_lease_acts_and_releases() {
        let (mut r, fx) = new(false);
        assert_eq!(fx, vec![ResizeEffect::AcquireLease]);
        assert_eq!(r.holder().to_string(), "resize:r1");
        assert_eq!(
            r.apply(&ResizeEvent::LeaseGranted, t(1)),
            Ok(vec![ResizeEffect::Actuate])
        );
        assert_eq!(r.resume(), vec![ResizeEffect::Actuate]);
        let done = ResizeEvent::Finished {
            ok: true,
            detail: "2 -> 4 workers".into(),
        };
        assert_eq!(r.apply(&done, t(2)), Ok(vec![ResizeEffect::ReleaseLease]));
        assert_eq!(r.status, ResizeStatus::Succeeded);
        // A duplicate outcome is stale and changes nothing.
        let before = r.clone();
        assert!(r.apply(&done, t(3)).is_err());
        assert_eq!(r, before);
    }

    #[test]
    fn a_gated_shrink_waits_for_someone_else() {
        let (mut r, fx) = new(true);
        assert!(fx.is_empty());
        assert!(r.resume().is_empty());
        assert_eq!(
            r.apply(&ResizeEvent::LeaseGranted, t(1)),
            Err(ResizeRefusal::Stale("awaiting_approval"))
        );
        assert_eq!(
            r.apply(&ResizeEvent::Approved { by: "sam".into() }, t(1)),
            Err(ResizeRefusal::SelfApproval("sam".into()))
        );
        assert_eq!(
            r.apply(&ResizeEvent::Approved { by: "ana".into() }, t(1)),
            Ok(vec![ResizeEffect::AcquireLease])
        );
        assert_eq!(r.approved_by.as_deref(), Some("ana"));
        assert_eq!(r.resume(), vec![ResizeEffect::AcquireLease]);
        // Approving twice is refused.
        assert!(r
            .apply(&ResizeEvent::Approved { by: "bo".into() }, t(2))
            .is_err());
    }

    #[test]
    fn a_rejected_resize_never_acts() {
        let (mut r, _) = new(true);
        let ev = ResizeEvent::Rejected {
            by: "ana".into(),
            reason: "peak season".into(),
        };
        assert_eq!(r.apply(&ev, t(1)), Ok(vec![]));
        assert_eq!(r.status, ResizeStatus::Rejected);
        assert!(r.status.is_terminal());
        assert!(r.apply(&ResizeEvent::LeaseGranted, t(2)).is_err());
        assert!(r.resume().is_empty());
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            ResizeStatus::AwaitingApproval,
            ResizeStatus::WaitingForLease,
            ResizeStatus::Running,
            ResizeStatus::Succeeded,
            ResizeStatus::Failed,
            ResizeStatus::Rejected,
        ] {
            assert_eq!(ResizeStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ResizeStatus::parse("done"), None);
    }
}
