//! Capacity actuators: what changes a cell's capacity when a resize runs.
//!
//! Like the deploy [`Targets`](crate::targets::Targets), actuators are
//! found in a registry, [`Actuators`], by the cell's target kind; the
//! resizer never matches on the kind. The one-machine actuator,
//! [`LocalActuator`], is registered for `local` cells (their worker
//! processes); a cell of a kind with no actuator (today: `command`) is
//! refused with a message saying so. An AWS one (an ECS service's desired
//! count, an Auto Scaling group) registers for its own kind.

use crate::engine::BoxFut;
use crate::targets::Supervisor;
use cells_inventory::{CellSpec, Shape};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Changes a cell's capacity to a shape. Setting, not adding: running it
/// twice for the same shape leaves the cell as once. `Ok` says what it did.
pub trait CapacityActuator: Send + Sync + 'static {
    fn resize<'a>(
        &'a self,
        cell: &'a CellSpec,
        shape: &'a Shape,
    ) -> BoxFut<'a, Result<String, String>>;
}

/// The local actuator: a local cell's worker processes, one per shape worker.
pub struct LocalActuator {
    pub supervisor: Arc<Supervisor>,
    pub health_timeout: Duration,
}

impl CapacityActuator for LocalActuator {
    fn resize<'a>(
        &'a self,
        cell: &'a CellSpec,
        shape: &'a Shape,
    ) -> BoxFut<'a, Result<String, String>> {
        Box::pin(async move {
            self.supervisor
                .set_workers(cell, shape.workers, self.health_timeout)
                .await
        })
    }
}

/// The capacity actuators by the cell target kind they serve, built at
/// start-up. It is itself a [`CapacityActuator`]: it hands each resize to
/// the actuator of the cell's kind.
#[derive(Clone, Default)]
pub struct Actuators {
    by_kind: BTreeMap<&'static str, Arc<dyn CapacityActuator>>,
}

impl Actuators {
    /// The one-machine actuators: local cells' worker processes (waiting
    /// up to `health_timeout` for new workers to answer their health check).
    pub fn local(supervisor: Arc<Supervisor>, health_timeout: Duration) -> Actuators {
        let local = LocalActuator {
            supervisor,
            health_timeout,
        };
        Actuators::default().with("local", Arc::new(local))
    }

    /// Resize cells of target kind `kind` with `actuator`.
    pub fn with(mut self, kind: &'static str, actuator: Arc<dyn CapacityActuator>) -> Actuators {
        self.by_kind.insert(kind, actuator);
        self
    }

    /// The actuator of a cell, or why there is none.
    pub fn for_cell(&self, cell: &CellSpec) -> Result<&Arc<dyn CapacityActuator>, String> {
        let kind = cell.target.kind();
        self.by_kind.get(kind).ok_or_else(|| {
            let kinds: Vec<&str> = self.by_kind.keys().copied().collect();
            let which = if kinds.is_empty() {
                "no cells can be resized here".to_string()
            } else {
                format!("only {} cells can be resized here", kinds.join(" or "))
            };
            format!(
                "cell {} uses the {kind} target, which has no capacity actuator ({which})",
                cell.id
            )
        })
    }
}

impl CapacityActuator for Actuators {
    fn resize<'a>(
        &'a self,
        cell: &'a CellSpec,
        shape: &'a Shape,
    ) -> BoxFut<'a, Result<String, String>> {
        Box::pin(async move { self.for_cell(cell)?.resize(cell, shape).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cells_inventory::TargetSpec;
    use std::sync::Mutex;

    /// An actuator that records the shapes it was asked for.
    #[derive(Default)]
    struct Recording(Mutex<Vec<(String, String)>>);

    impl CapacityActuator for Recording {
        fn resize<'a>(
            &'a self,
            cell: &'a CellSpec,
            shape: &'a Shape,
        ) -> BoxFut<'a, Result<String, String>> {
            Box::pin(async move {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((cell.id.clone(), shape.name.clone()));
                Ok(format!("{} workers", shape.workers))
            })
        }
    }

    fn cell(id: &str, target: TargetSpec) -> CellSpec {
        CellSpec {
            id: id.into(),
            region: "eu-west-1".into(),
            shape: "small".into(),
            labels: Default::default(),
            target,
            port: None,
            tz: None,
        }
    }

    fn shape() -> Shape {
        serde_json::from_value(serde_json::json!({
            "name": "large", "workers": 4, "cost": 4.0,
            "capacity": {"check_rps": 1000, "tuples": 1000, "connections": 100}
        }))
        .expect("a shape")
    }

    #[tokio::test]
    async fn a_cell_is_resized_by_the_actuator_of_its_kind_and_a_kind_without_one_is_refused() {
        let rec = Arc::new(Recording::default());
        let actuators = Actuators::default().with("local", rec.clone());
        let large = shape();

        let local = cell("l1", TargetSpec::Local);
        let did = actuators.resize(&local, &large).await.expect("resized");
        assert_eq!(did, "4 workers");
        assert_eq!(
            *rec.0.lock().unwrap_or_else(|p| p.into_inner()),
            vec![("l1".to_string(), "large".to_string())]
        );

        let command = cell(
            "c1",
            TargetSpec::Command {
                deploy: "true".into(),
                rollback: "true".into(),
            },
        );
        let err = actuators
            .resize(&command, &large)
            .await
            .expect_err("a command cell has no actuator");
        assert_eq!(
            err,
            "cell c1 uses the command target, which has no capacity actuator \
             (only local cells can be resized here)"
        );
        // The refused cell reached no actuator.
        assert_eq!(rec.0.lock().unwrap_or_else(|p| p.into_inner()).len(), 1);

        let none = Actuators::default();
        let err = none.resize(&local, &large).await.expect_err("no actuator");
        assert!(err.contains("no cells can be resized here"), "{err}");
    }
}
