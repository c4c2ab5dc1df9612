//! Capacity rules the API's capacity handlers (`api::capacity`) apply:
//! which cells take tenants, which cells run the FGA data plane, and what
//! the planner's tenant list of a cell says. No HTTP here.

use crate::store::CellRow;
use cells_inventory::TargetSpec;
use conductor_core::CellStatus;
use serde_json::Value;

/// The artifact that makes a cell host tenants (FGA stores): the planner
/// scrapes it, places tenants on cells that run it, and pushes it limits.
pub const FGA_ARTIFACT: &str = "fga-dataplane";

/// The version of the FGA data plane a cell runs: `None` if it never ran
/// it, `Some(None)` if it ran it and was rolled back to nothing.
pub fn fga_version(c: &CellRow) -> Option<Option<&str>> {
    c.versions
        .iter()
        .find(|v| v.artifact == FGA_ARTIFACT)
        .map(|v| v.version.as_deref())
}

/// Only active cells where the Conductor runs the FGA data plane take
/// tenants: a draining cell takes no new ones, and a cell without the data
/// plane (a command-target cell, whatever its scripts deployed) cannot be
/// scraped, limited or placed on.
pub fn accepts_tenants(status: CellStatus, fga_workers_running: usize) -> bool {
    status == CellStatus::Active && fga_workers_running > 0
}

/// The tenants a cell hosts, from the planner's `/tenants` answer about it;
/// `Err` says why they cannot be known.
pub fn tenants_from_answer(cell: &CellRow, v: &Value) -> Result<Vec<String>, String> {
    let unreachable = v["workers_unreachable"].as_u64().unwrap_or(0);
    if unreachable > 0 {
        return Err(format!(
            "{unreachable} of the cell's data plane workers did not answer the planner"
        ));
    }
    let running_locally =
        fga_version(cell).flatten().is_some() && cell.spec.target == TargetSpec::Local;
    if running_locally && v["workers_scraped"].as_u64() == Some(0) {
        return Err("the cell's data plane did not answer the planner".into());
    }
    let list = v["tenants"]
        .as_array()
        .ok_or("the planner's answer lists no tenants")?;
    list.iter()
        .map(|t| {
            t["tenant"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| "the planner's answer names a tenant without a name".to_string())
        })
        .collect()
}
