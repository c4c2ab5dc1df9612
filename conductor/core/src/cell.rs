//! A cell's lifecycle status and who may hold a cell's lease: rules as
//! types, stored and shown as the same strings as always (`active`,
//! `train:<id>`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a cell is in its life. Active cells take releases and tenants;
/// draining ones take releases but no new tenants; retired ones nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    #[default]
    Active,
    Draining,
    Retired,
}

impl CellStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CellStatus::Active => "active",
            CellStatus::Draining => "draining",
            CellStatus::Retired => "retired",
        }
    }

    /// Does the cell still serve (and so take releases and resizes)?
    pub fn in_service(self) -> bool {
        matches!(self, CellStatus::Active | CellStatus::Draining)
    }
}

impl fmt::Display for CellStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cell status {0:?} (active, draining or retired)")]
pub struct UnknownCellStatus(pub String);

impl FromStr for CellStatus {
    type Err = UnknownCellStatus;
    fn from_str(s: &str) -> Result<CellStatus, UnknownCellStatus> {
        match s {
            "active" => Ok(CellStatus::Active),
            "draining" => Ok(CellStatus::Draining),
            "retired" => Ok(CellStatus::Retired),
            other => Err(UnknownCellStatus(other.to_string())),
        }
    }
}

/// Who holds (or waits for) a cell's lease: a train running steps on it, a
/// resize changing it, or the cell's own retirement. Shown and compared as
/// `train:<id>`, `resize:<id>`, `retire:<cell>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum LeaseHolder {
    Train(String),
    Resize(String),
    Retire(String),
}

impl fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseHolder::Train(id) => write!(f, "train:{id}"),
            LeaseHolder::Resize(id) => write!(f, "resize:{id}"),
            LeaseHolder::Retire(cell) => write!(f, "retire:{cell}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a lease holder {0:?} (train:<id>, resize:<id> or retire:<cell>)")]
pub struct BadLeaseHolder(pub String);

impl FromStr for LeaseHolder {
    type Err = BadLeaseHolder;
    fn from_str(s: &str) -> Result<LeaseHolder, BadLeaseHolder> {
        let bad = || BadLeaseHolder(s.to_string());
        let (kind, id) = s.split_once(':').ok_or_else(bad)?;
        if id.is_empty() {
            return Err(bad());
        }
        match kind {
            "train" => Ok(LeaseHolder::Train(id.to_string())),
            "resize" => Ok(LeaseHolder::Resize(id.to_string())),
            "retire" => Ok(LeaseHolder::Retire(id.to_string())),
            _ => Err(bad()),
        }
    }
}

impl From<LeaseHolder> for String {
    fn from(h: LeaseHolder) -> String {
        h.to_string()
    }
}

impl TryFrom<String> for LeaseHolder {
    type Error = BadLeaseHolder;
    fn try_from(s: String) -> Result<LeaseHolder, BadLeaseHolder> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_statuses_round_trip_as_their_strings() {
        for s in [
            CellStatus::Active,
            CellStatus::Draining,
            CellStatus::Retired,
        ] {
            assert_eq!(s.as_str().parse::<CellStatus>(), Ok(s));
            let json = serde_json::to_string(&s).expect("serializes");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<CellStatus>(&json).ok(), Some(s));
        }
        assert!("Active".parse::<CellStatus>().is_err());
        assert!(CellStatus::Draining.in_service() && !CellStatus::Retired.in_service());
    }

    #[test]
    fn lease_holders_read_as_they_print() {
        let all = [
            (LeaseHolder::Train("t-1".into()), "train:t-1"),
            (LeaseHolder::Resize("rz-2".into()), "resize:rz-2"),
            (LeaseHolder::Retire("eu-1".into()), "retire:eu-1"),
        ];
        for (h, s) in all {
            assert_eq!(h.to_string(), s);
            assert_eq!(s.parse::<LeaseHolder>().as_ref(), Ok(&h));
            let json = serde_json::to_string(&h).expect("serializes");
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<LeaseHolder>(&json).ok(), Some(h));
        }
        for bad in ["train", "train:", "lock:x", ""] {
            assert!(bad.parse::<LeaseHolder>().is_err(), "{bad}");
        }
    }
}
