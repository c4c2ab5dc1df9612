//! The queue rule of a pipeline's trains: one train of a pipeline runs at a
//! time. A new train queues behind a running (or rolling back) train of
//! its pipeline and supersedes every train still queued, so only the
//! newest waits; when the pipeline frees, its oldest queued train starts.

use super::TrainStatus;
use chrono::{DateTime, Utc};

/// A train of the pipeline as the rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedTrain {
    pub id: String,
    pub status: TrainStatus,
    pub created_at: DateTime<Utc>,
}

/// What starting a new train does to its pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartDecision {
    /// The new train waits (another train of the pipeline is running).
    pub queued: bool,
    /// The queued trains it takes the place of, oldest first.
    pub supersedes: Vec<String>,
}

fn busy(s: TrainStatus) -> bool {
    matches!(s, TrainStatus::Running | TrainStatus::RollingBack)
}

/// Oldest first (by creation, then id): the order the rule reads trains in.
fn in_order(trains: &[QueuedTrain]) -> Vec<&QueuedTrain> {
    let mut v: Vec<&QueuedTrain> = trains.iter().collect();
    v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    v
}

/// A new train of a pipeline whose other trains are `others`.
pub fn on_start(others: &[QueuedTrain]) -> StartDecision {
    StartDecision {
        queued: others.iter().any(|t| busy(t.status)),
        supersedes: in_order(others)
            .into_iter()
            .filter(|t| t.status == TrainStatus::Queued)
            .map(|t| t.id.clone())
            .collect(),
    }
}

/// The train to start now that a train of the pipeline finished: the
/// oldest queued one, unless another still runs.
pub fn next_to_promote(trains: &[QueuedTrain]) -> Option<&str> {
    if trains.iter().any(|t| busy(t.status)) {
        return None;
    }
    in_order(trains)
        .into_iter()
        .find(|t| t.status == TrainStatus::Queued)
        .map(|t| t.id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use TrainStatus::*;

    fn t(id: &str, status: TrainStatus, secs: i64) -> QueuedTrain {
        QueuedTrain {
            id: id.into(),
            status,
            created_at: DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap_or_default(),
        }
    }

    #[test]
    fn a_train_of_an_idle_pipeline_starts_at_once() {
        let d = on_start(&[t("old", Succeeded, 0), t("bad", Failed, 1)]);
        assert_eq!(
            d,
            StartDecision {
                queued: false,
                supersedes: vec![]
            }
        );
        assert!(!on_start(&[]).queued);
    }

    #[test]
    fn a_train_queues_behind_a_running_or_rolling_back_one_and_supersedes_the_queued() {
        for running in [Running, RollingBack] {
            let d = on_start(&[
                t("q2", Queued, 3),
                t("run", running, 1),
                t("q1", Queued, 2),
                t("done", Succeeded, 0),
            ]);
            assert!(d.queued, "{running:?}");
            assert_eq!(d.supersedes, vec!["q1".to_string(), "q2".to_string()]);
        }
    }

    #[test]
    fn queued_trains_with_nothing_running_are_superseded_and_the_new_one_runs() {
        // (After a restart mid-promotion, say.)
        let d = on_start(&[t("q", Queued, 1)]);
        assert!(!d.queued);
        assert_eq!(d.supersedes, vec!["q".to_string()]);
    }

    #[test]
    fn the_oldest_queued_train_is_promoted_once_the_pipeline_frees() {
        let free = [
            t("b", Queued, 5),
            t("a", Queued, 5),
            t("c", Queued, 2),
            t("done", Succeeded, 0),
        ];
        assert_eq!(next_to_promote(&free), Some("c"));
        let tie = [t("b", Queued, 5), t("a", Queued, 5)];
        assert_eq!(next_to_promote(&tie), Some("a"));
        let busy = [t("q", Queued, 2), t("r", RollingBack, 1)];
        assert_eq!(next_to_promote(&busy), None);
        assert_eq!(next_to_promote(&[t("x", Cancelled, 1)]), None);
    }
}
