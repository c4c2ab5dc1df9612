//! Cell inventory and cell shapes.
//!
//! A cell is one isolated, shared-nothing replica of the stack, in one region,
//! of exactly one shape. This crate holds the types and reads the two files
//! that describe a fleet: `templates/shapes.yaml` (the shapes) and a cells file
//! such as `deploy/local/cells.yaml` (the seed inventory). It does no I/O
//! beyond what its callers hand it: text in, validated values or
//! `FILE:LINE:COL` diagnostics out.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use yamlspan::{Diagnostic, Diagnostics, Spans};

/// Identifiers of cells, regions, shapes and labels: short, lowercase, safe in
/// paths, environment variables and URLs.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// The IANA time zone of an AWS-style region, used by deploy windows with
/// `tz: cell`. A cell may override it with its own `tz`.
pub fn region_time_zone(region: &str) -> Option<&'static str> {
    Some(match region {
        "us-east-1" | "us-east-2" => "America/New_York",
        "us-west-1" | "us-west-2" => "America/Los_Angeles",
        "ca-central-1" => "America/Toronto",
        "sa-east-1" => "America/Sao_Paulo",
        "eu-west-1" => "Europe/Dublin",
        "eu-west-2" => "Europe/London",
        "eu-west-3" => "Europe/Paris",
        "eu-central-1" => "Europe/Berlin",
        "eu-north-1" => "Europe/Stockholm",
        "ap-southeast-1" => "Asia/Singapore",
        "ap-southeast-2" => "Australia/Sydney",
        "ap-northeast-1" => "Asia/Tokyo",
        "ap-northeast-2" => "Asia/Seoul",
        "ap-south-1" => "Asia/Kolkata",
        _ => return None,
    })
}

/// How a cell is deployed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetSpec {
    /// Child processes on loopback, supervised by the Conductor.
    #[default]
    Local,
    /// External tooling (Ansible, Terraform, a script). The cell's fields are
    /// passed as environment variables; exit status 0 means success.
    Command { deploy: String, rollback: String },
}

impl TargetSpec {
    /// The kind's name (`local`, `command`), as in a cells file: what the
    /// Conductor's target registry is keyed by.
    pub fn kind(&self) -> &'static str {
        match self {
            TargetSpec::Local => "local",
            TargetSpec::Command { .. } => "command",
        }
    }
}

/// A cell as declared in a cells file (and as stored in the inventory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    pub id: String,
    pub region: String,
    pub shape: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `local`, or `{ command: { deploy: ..., rollback: ... } }`.
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub target: TargetSpec,
    /// First of the two loopback ports the local target uses for this cell
    /// (blue/green: `port` and `port + 1`).
    #[serde(default)]
    pub port: Option<u16>,
    /// IANA time zone; defaults to the region's.
    #[serde(default)]
    pub tz: Option<String>,
}

impl CellSpec {
    /// The time zone deploy windows with `tz: cell` use.
    pub fn time_zone(&self) -> &str {
        self.tz
            .as_deref()
            .or_else(|| region_time_zone(&self.region))
            .unwrap_or("UTC")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CellsFile {
    cells: Vec<CellSpec>,
}

/// Capacity of a shape, per dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub check_rps: u64,
    pub tuples: u64,
    pub connections: u64,
}

/// One of the fixed sizes a cell can have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub name: String,
    /// Worker processes a cell of this shape runs.
    pub workers: u32,
    pub capacity: Capacity,
    /// Relative cost (the smallest shape is usually 1).
    pub cost: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapesFile {
    shapes: Vec<Shape>,
}

/// Read and validate a shapes file. All problems are reported at once.
pub fn parse_shapes(file: &str, text: &str) -> Result<Vec<Shape>, Diagnostics> {
    let (doc, spans): (ShapesFile, Spans) = yamlspan::from_str(file, text)?;
    let mut errs = Vec::new();
    let mut seen = BTreeSet::new();
    if doc.shapes.is_empty() {
        errs.push(spans.error("shapes", "no shapes declared"));
    }
    for (i, s) in doc.shapes.iter().enumerate() {
        let at = |f: &str| format!("shapes[{i}].{f}");
        if !valid_id(&s.name) {
            errs.push(spans.error_hint(
                &at("name"),
                format!("invalid shape name {:?}", s.name),
                "use lowercase letters, digits, '-' or '_'",
            ));
        }
        if !seen.insert(s.name.clone()) {
            errs.push(spans.error(&at("name"), format!("shape {:?} declared twice", s.name)));
        }
        if s.workers == 0 {
            errs.push(spans.error(&at("workers"), "a shape needs at least one worker"));
        }
        if !(s.cost.is_finite() && s.cost > 0.0) {
            errs.push(spans.error(&at("cost"), "cost must be a positive number"));
        }
        let c = &s.capacity;
        if c.check_rps == 0 || c.tuples == 0 || c.connections == 0 {
            errs.push(spans.error(&at("capacity"), "every capacity dimension must be positive"));
        }
    }
    finish(doc.shapes, errs)
}

/// Read and validate a cells file against the known shapes. All problems are
/// reported at once.
pub fn parse_cells(file: &str, text: &str, shapes: &[Shape]) -> Result<Vec<CellSpec>, Diagnostics> {
    let (doc, spans): (CellsFile, Spans) = yamlspan::from_str(file, text)?;
    let mut errs = Vec::new();
    let mut ids = BTreeSet::new();
    let mut ports: BTreeMap<u16, String> = BTreeMap::new();
    let shape_names: Vec<&str> = shapes.iter().map(|s| s.name.as_str()).collect();
    for (i, c) in doc.cells.iter().enumerate() {
        let at = |f: &str| format!("cells[{i}].{f}");
        errs.extend(check_cell(c, &spans, &at, &shape_names));
        if !ids.insert(c.id.clone()) {
            errs.push(spans.error(&at("id"), format!("cell {:?} declared twice", c.id)));
        }
        if let Some(p) = c.port {
            for q in [p, p.wrapping_add(1)] {
                if let Some(other) = ports.insert(q, c.id.clone()) {
                    errs.push(spans.error_hint(
                        &at("port"),
                        format!("port {q} is also used by cell {other:?}"),
                        "each local cell uses `port` and `port + 1`; leave a gap of 2",
                    ));
                }
            }
        }
    }
    finish(doc.cells, errs)
}

/// Validate one cell's fields (also used when a cell is added at run time).
pub fn check_cell(
    c: &CellSpec,
    spans: &Spans,
    at: &dyn Fn(&str) -> String,
    shapes: &[&str],
) -> Vec<Diagnostic> {
    let mut errs = Vec::new();
    if !valid_id(&c.id) {
        errs.push(spans.error_hint(
            &at("id"),
            format!("invalid cell id {:?}", c.id),
            "use 1-63 lowercase letters, digits, '-' or '_'",
        ));
    }
    if !valid_id(&c.region) {
        errs.push(spans.error(&at("region"), format!("invalid region {:?}", c.region)));
    }
    if !shapes.contains(&c.shape.as_str()) {
        errs.push(spans.error_hint(
            &at("shape"),
            format!("unknown shape {:?}", c.shape),
            format!("known shapes: {}", shapes.join(", ")),
        ));
    }
    for (k, v) in &c.labels {
        if !valid_id(k) || v.is_empty() || v.len() > 63 {
            errs.push(spans.error(
                &at(&format!("labels.{k}")),
                format!("invalid label {k}={v:?}"),
            ));
        }
    }
    if c.tz.is_none() && region_time_zone(&c.region).is_none() {
        errs.push(spans.error_hint(
            &at("region"),
            format!("no known time zone for region {:?}", c.region),
            "set `tz:` on the cell (an IANA name such as Europe/Paris)",
        ));
    }
    if matches!(c.target, TargetSpec::Local) && c.port.is_none() {
        errs.push(spans.error_hint(
            &at("target"),
            "a local cell needs a `port`",
            "add `port: N`; the cell uses N and N+1 on 127.0.0.1",
        ));
    }
    errs
}

fn finish<T>(v: T, mut errs: Vec<Diagnostic>) -> Result<T, Diagnostics> {
    if errs.is_empty() {
        Ok(v)
    } else {
        errs.sort_by_key(|d| (d.pos.line, d.pos.col));
        Err(Diagnostics(errs))
    }
}

/// The template new cells are stamped from (`templates/cell.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellTemplate {
    pub defaults: TemplateDefaults,
    pub regions: BTreeMap<String, RegionTemplate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateDefaults {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub target: TargetSpec,
    /// The first local port when no cell has one yet.
    #[serde(default = "default_first_port")]
    pub first_port: u16,
}

fn default_first_port() -> u16 {
    18101
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionTemplate {
    /// Cell ids in the region are `<prefix>-<letter>`.
    pub prefix: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub tz: Option<String>,
}

/// Read a cell template; every problem is reported with its position.
pub fn parse_template(file: &str, text: &str) -> Result<CellTemplate, Diagnostics> {
    let (t, spans): (CellTemplate, Spans) = yamlspan::from_str(file, text)?;
    let mut errs = Vec::new();
    for (region, r) in &t.regions {
        let at = format!("regions.{region}.prefix");
        if !valid_id(&r.prefix) || r.prefix.len() > 40 {
            errs.push(spans.error_hint(
                &at,
                format!("invalid prefix {:?}", r.prefix),
                "use lowercase letters, digits and '-'",
            ));
        }
    }
    if errs.is_empty() {
        Ok(t)
    } else {
        Err(Diagnostics(errs))
    }
}

impl CellTemplate {
    /// A new cell of `shape` in `region`, given the cells that exist (any
    /// status: a retired cell's id and ports are never reused).
    pub fn stamp(
        &self,
        region: &str,
        shape: &str,
        shapes: &[Shape],
        existing: &[CellSpec],
    ) -> Result<CellSpec, String> {
        let r = self.regions.get(region).ok_or_else(|| {
            format!(
                "no template for region {region:?} (regions: {})",
                self.regions.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        if !shapes.iter().any(|s| s.name == shape) {
            return Err(format!(
                "no shape {shape:?} (shapes: {})",
                shapes
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let taken: BTreeSet<&str> = existing.iter().map(|c| c.id.as_str()).collect();
        let suffixes = (b'a'..=b'z')
            .map(|b| (b as char).to_string())
            .chain((1..10_000).map(|n| n.to_string()));
        let id = suffixes
            .map(|s| format!("{}-{s}", r.prefix))
            .find(|id| !taken.contains(id.as_str()))
            .ok_or_else(|| format!("region {region} has no free cell id"))?;
        let port = match self.defaults.target {
            TargetSpec::Local => {
                let next = existing
                    .iter()
                    .filter_map(|c| c.port)
                    .max()
                    .map_or(Some(self.defaults.first_port), |p| p.checked_add(2));
                Some(
                    next.filter(|p| *p < u16::MAX)
                        .ok_or("no free local ports left")?,
                )
            }
            TargetSpec::Command { .. } => None,
        };
        let mut labels = self.defaults.labels.clone();
        labels.extend(r.labels.clone());
        let c = CellSpec {
            id,
            region: region.to_string(),
            shape: shape.to_string(),
            labels,
            target: self.defaults.target.clone(),
            port,
            tz: r.tz.clone(),
        };
        let names: Vec<&str> = shapes.iter().map(|s| s.name.as_str()).collect();
        let errs = check_cell(&c, &Spans::default(), &|f: &str| f.to_string(), &names);
        match errs.first() {
            Some(e) => Err(e.message.clone()),
            None => Ok(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPES: &str = "shapes:\n  - { name: small, workers: 1, cost: 1, capacity: { check_rps: 1000, tuples: 1000000, connections: 100 } }\n";

    #[test]
    fn parses_cells() {
        let shapes = parse_shapes("s.yaml", SHAPES).expect("shapes");
        let cells = parse_cells(
            "c.yaml",
            "cells:\n  - { id: a1, region: us-east-1, shape: small, port: 18000, labels: { service: fga } }\n",
            &shapes,
        )
        .expect("cells");
        assert_eq!(cells[0].time_zone(), "America/New_York");
    }

    #[test]
    fn reports_every_problem_with_positions() {
        let shapes = parse_shapes("s.yaml", SHAPES).expect("shapes");
        let text = "cells:\n  - { id: a1, region: us-east-1, shape: huge, port: 18000 }\n  - { id: a1, region: mars-1, shape: small, port: 18001 }\n";
        let e = parse_cells("c.yaml", text, &shapes).expect_err("invalid");
        let all = e.to_string();
        assert!(
            all.contains("c.yaml:2:") && all.contains("unknown shape \"huge\""),
            "{all}"
        );
        assert!(
            all.contains("c.yaml:3:") && all.contains("declared twice"),
            "{all}"
        );
        assert!(all.contains("no known time zone"), "{all}");
        assert!(all.contains("port 18001 is also used"), "{all}");
    }

    #[test]
    fn command_targets_parse() {
        let shapes = parse_shapes("s.yaml", SHAPES).expect("shapes");
        let cells = parse_cells(
            "c.yaml",
            "cells:\n  - { id: x, region: eu-west-1, shape: small, target: { command: { deploy: d, rollback: r } } }\n",
            &shapes,
        )
        .expect("cells");
        assert_eq!(
            cells[0].target,
            TargetSpec::Command {
                deploy: "d".into(),
                rollback: "r".into()
            }
        );
    }

    #[test]
    fn ids_are_restricted() {
        assert!(valid_id("use1-a"));
        assert!(!valid_id("../etc"));
        assert!(!valid_id(""));
        assert!(!valid_id("A"));
    }

    #[test]
    fn stamps_the_next_free_id_and_ports() {
        let shapes = parse_shapes("s.yaml", SHAPES).expect("shapes");
        let t = parse_template(
            "t.yaml",
            "defaults: { labels: { service: fga }, target: local }\nregions:\n  us-east-1: { prefix: use1, labels: { tier: main } }\n",
        )
        .expect("template");
        let existing = parse_cells(
            "c.yaml",
            "cells:\n  - { id: use1-a, region: us-east-1, shape: small, port: 18101 }\n",
            &shapes,
        )
        .expect("cells");
        let c = t
            .stamp("us-east-1", "small", &shapes, &existing)
            .expect("stamp");
        assert_eq!(c.id, "use1-b");
        assert_eq!(c.port, Some(18103));
        assert_eq!(c.labels.get("service").map(String::as_str), Some("fga"));
        assert_eq!(c.labels.get("tier").map(String::as_str), Some("main"));
        let e = t
            .stamp("mars-1", "small", &shapes, &existing)
            .err()
            .unwrap_or_default();
        assert!(e.contains("no template for region"), "{e}");
        let e = t
            .stamp("us-east-1", "huge", &shapes, &existing)
            .err()
            .unwrap_or_default();
        assert!(e.contains("no shape"), "{e}");
        let bad = parse_template(
            "t.yaml",
            "defaults: {}\nregions:\n  x: { prefix: \"A B\" }\n",
        );
        let msg = bad.err().map(|d| d.to_string()).unwrap_or_default();
        assert!(msg.starts_with("t.yaml:3:"), "{msg}");
    }
}
