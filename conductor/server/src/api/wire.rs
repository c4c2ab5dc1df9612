//! The API's response shapes: their own serde types, converted from the
//! core's and the store's, so that a change to a core type does not change
//! the JSON the CLI and scripts read (and the other way round). Field
//! names are the API's contract.

use crate::store::{CellRow, CellVersion, TrainRow};
use cells_inventory::{CellSpec, TargetSpec};
use chrono::{DateTime, Utc};
use conductor_core::resize::Resize;
use conductor_core::train::Train;
use serde::Serialize;
use std::collections::BTreeMap;

mod train;
pub use train::*;

/// A train as every train endpoint answers it: its state, the gates
/// waiting for an approval and the count of cells per phase.
#[derive(Debug, Serialize)]
pub struct TrainView<'a> {
    pub spec: SpecView<'a>,
    pub status: &'static str,
    pub waves: Vec<WaveView<'a>>,
    pub cells: BTreeMap<&'a str, CellRunView<'a>>,
    pub halted: bool,
    pub cancel_requested: bool,
    pub rollback_all: bool,
    pub rejected: bool,
    pub failure: Option<&'a str>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub gates_waiting: Vec<&'a str>,
    pub summary: BTreeMap<&'static str, usize>,
}

impl<'a> From<&'a Train> for TrainView<'a> {
    fn from(t: &'a Train) -> TrainView<'a> {
        TrainView {
            spec: SpecView::from(&t.spec),
            status: t.status.as_str(),
            waves: t.waves.iter().map(WaveView::from).collect(),
            cells: t
                .cells
                .iter()
                .map(|(id, c)| (id.as_str(), CellRunView::from(c)))
                .collect(),
            halted: t.halted,
            cancel_requested: t.cancel_requested,
            rollback_all: t.rollback_all,
            rejected: t.rejected,
            failure: t.failure.as_deref(),
            created_at: t.created_at,
            updated_at: t.updated_at,
            finished_at: t.finished_at,
            gates_waiting: t.gates_waiting(),
            summary: t.cell_summary(),
        }
    }
}

/// A train as every train endpoint answers it ([`TrainView`]), as the
/// JSON value the handlers send.
pub fn train_json(t: &Train) -> serde_json::Value {
    serde_json::json!(TrainView::from(t))
}

/// A train in a list.
#[derive(Debug, Serialize)]
pub struct TrainSummary<'a> {
    pub id: &'a str,
    pub pipeline: &'a str,
    pub version: &'a str,
    pub status: &'a str,
    pub started_by: &'a str,
    pub created_at: &'a str,
    pub updated_at: &'a str,
}

impl<'a> From<&'a TrainRow> for TrainSummary<'a> {
    fn from(r: &'a TrainRow) -> TrainSummary<'a> {
        TrainSummary {
            id: &r.id,
            pipeline: &r.pipeline,
            version: &r.version,
            status: &r.status,
            started_by: &r.started_by,
            created_at: &r.created_at,
            updated_at: &r.updated_at,
        }
    }
}

/// The version of an artifact a cell runs.
#[derive(Debug, Serialize)]
pub struct VersionView<'a> {
    pub artifact: &'a str,
    pub version: Option<&'a str>,
    pub previous_version: Option<&'a str>,
}

impl<'a> From<&'a CellVersion> for VersionView<'a> {
    fn from(v: &'a CellVersion) -> VersionView<'a> {
        VersionView {
            artifact: &v.artifact,
            version: v.version.as_deref(),
            previous_version: v.previous_version.as_deref(),
        }
    }
}

/// Worker processes: what the cell's shape wants next to what runs.
#[derive(Debug, Serialize)]
pub struct Workers {
    pub desired: u32,
    pub running: BTreeMap<String, usize>,
}

/// A cell's fields, as in a cells file.
#[derive(Debug, Serialize)]
pub struct CellSpecView<'a> {
    pub id: &'a str,
    pub region: &'a str,
    pub shape: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub target: TargetView<'a>,
    pub port: Option<u16>,
    pub tz: Option<&'a str>,
}

/// How a cell is deployed to: `"local"`, or `{"command": {deploy, rollback}}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetView<'a> {
    Local,
    Command { deploy: &'a str, rollback: &'a str },
}

impl<'a> From<&'a CellSpec> for CellSpecView<'a> {
    fn from(c: &'a CellSpec) -> CellSpecView<'a> {
        CellSpecView {
            id: &c.id,
            region: &c.region,
            shape: &c.shape,
            labels: &c.labels,
            target: match &c.target {
                TargetSpec::Local => TargetView::Local,
                TargetSpec::Command { deploy, rollback } => {
                    TargetView::Command { deploy, rollback }
                }
            },
            port: c.port,
            tz: c.tz.as_deref(),
        }
    }
}

/// A cell of the inventory: its fields, lifecycle status, versions and
/// (for local cells) workers.
#[derive(Debug, Serialize)]
pub struct CellView<'a> {
    #[serde(flatten)]
    pub spec: CellSpecView<'a>,
    pub status: &'static str,
    pub versions: Vec<VersionView<'a>>,
    pub workers: Workers,
}

impl<'a> CellView<'a> {
    pub fn new(c: &'a CellRow, workers: Workers) -> CellView<'a> {
        CellView {
            spec: CellSpecView::from(&c.spec),
            status: c.status.as_str(),
            versions: c.versions.iter().map(VersionView::from).collect(),
            workers,
        }
    }
}

/// A resize operation.
#[derive(Debug, Serialize)]
pub struct ResizeView<'a> {
    pub id: &'a str,
    pub cell: &'a str,
    pub from_shape: &'a str,
    pub to_shape: &'a str,
    pub requested_by: &'a str,
    pub reason: &'a str,
    pub status: &'static str,
    pub approved_by: Option<&'a str>,
    pub detail: &'a str,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Resize> for ResizeView<'a> {
    fn from(r: &'a Resize) -> ResizeView<'a> {
        ResizeView {
            id: &r.id,
            cell: &r.cell,
            from_shape: &r.from_shape,
            to_shape: &r.to_shape,
            requested_by: &r.requested_by,
            reason: &r.reason,
            status: r.status.as_str(),
            approved_by: r.approved_by.as_deref(),
            detail: &r.detail,
            created_at: r.created_at,
            started_at: r.started_at,
            updated_at: r.updated_at,
        }
    }
}

/// Views of a list.
pub fn views<'a, T, V: From<&'a T>>(items: &'a [T]) -> Vec<V> {
    items.iter().map(V::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use conductor_core::train::TrainSpec;
    use serde_json::{json, Value};

    fn train() -> Train {
        let spec: TrainSpec = serde_json::from_value(json!({
            "id": "t1", "pipeline": "p", "version": "2", "started_by": "alice",
            "artifact": {"name": "svc", "kind": "binary"},
            "steps": [], "on_failure": "rollback_cell_and_halt", "windows": [],
            "plan": {"waves": [], "order": [], "cell_tz": {}}
        }))
        .expect("a train spec");
        let at = DateTime::from_timestamp(1_700_000_000, 0).expect("an instant");
        Train::new(spec, true, at)
    }

    /// The wire shape of a train is the train's fields plus the gates and
    /// the summary: the same JSON the API has always answered.
    #[test]
    fn a_train_view_has_the_fields_the_api_always_answered() {
        let t = train();
        let wire = serde_json::to_value(TrainView::from(&t)).expect("json");
        let mut expected = serde_json::to_value(&t).expect("json");
        expected["gates_waiting"] = json!(t.gates_waiting());
        expected["summary"] = json!(t.cell_summary());
        assert_eq!(wire, expected);
    }

    #[test]
    fn a_resize_view_has_the_fields_of_a_resize() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).expect("an instant");
        let (rz, _) = Resize::new(
            "rz-1".into(),
            "c1".into(),
            "small".into(),
            "large".into(),
            "sre".into(),
            "grow".into(),
            true,
            at,
        );
        let wire = serde_json::to_value(ResizeView::from(&rz)).expect("json");
        assert_eq!(wire, serde_json::to_value(&rz).expect("json"));
        assert_eq!(wire["status"], Value::from(rz.status.as_str()));
    }

    /// A cell's fields answer as the cell spec always serialized, for
    /// both target kinds.
    #[test]
    fn a_cell_spec_view_has_the_fields_of_a_cell_spec() {
        let local: CellSpec = serde_json::from_value(json!({
            "id": "c1", "region": "eu-west-1", "shape": "small",
            "labels": {"tier": "gold"}, "port": 4100
        }))
        .expect("a cell");
        let command: CellSpec = serde_json::from_value(json!({
            "id": "c2", "region": "us-east-1", "shape": "large", "tz": "UTC",
            "target": {"command": {"deploy": "./up", "rollback": "./down"}}
        }))
        .expect("a cell");
        for c in [&local, &command] {
            let wire = serde_json::to_value(CellSpecView::from(c)).expect("json");
            assert_eq!(wire, serde_json::to_value(c).expect("json"));
        }
        let wire = serde_json::to_value(CellSpecView::from(&command)).expect("json");
        assert_eq!(wire["target"]["command"]["rollback"], "./down");
        assert_eq!(
            serde_json::to_value(CellSpecView::from(&local)).expect("json")["target"],
            "local"
        );
    }
}
