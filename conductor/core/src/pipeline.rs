//! The pipeline language: what a developer writes in `pipelines/*.yaml`.
//!
//! Decoding is strict (unknown keys are errors); validation then checks every
//! rule and reports all problems at once, each as `FILE:LINE:COL: message`
//! with a hint.

use crate::duration::Dur;
use crate::window::{self, Window, WindowTz};
use cells_inventory::valid_id;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use yamlspan::{Diagnostic, Diagnostics, Spans};

mod schema;

/// What is being shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub kind: ArtifactKind,
    pub name: String,
    /// Arguments the local target starts the binary with. `{port}`, `{cell}`,
    /// `{data_dir}` and `{version}` are replaced per cell.
    #[serde(default)]
    pub args: Vec<String>,
    /// Path of the health endpoint the local target waits for.
    #[serde(default = "default_health")]
    pub health: String,
}

fn default_health() -> String {
    "/healthz".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    Binary,
    Container,
    Command,
}

/// Which cells of the inventory a pipeline deploys to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Every label must match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Any of these regions (empty: all).
    #[serde(default)]
    pub regions: Vec<String>,
}

/// A synthetic HTTP check against the cell's live endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub path: String,
    #[serde(default = "default_status")]
    pub expect_status: u16,
}

fn default_status() -> u16 {
    200
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestStep {
    #[serde(default)]
    pub http: Option<HttpCheck>,
    /// A shell command; exit status 0 passes.
    #[serde(default)]
    pub command: Option<String>,
    /// HTTP checks: how many requests to send (all must pass).
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_step_timeout")]
    pub timeout: Dur,
    /// Plain (not secret) environment variables for this step's command
    /// (the pipeline's `env` merged in; this step's win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

fn default_min_requests() -> u32 {
    10
}
fn default_step_timeout() -> Dur {
    Dur::secs(300)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployStep {
    /// How long to wait for the new version's health endpoint.
    #[serde(default = "default_health_timeout")]
    pub health_timeout: Dur,
    /// Plain environment variables for a command target's deploy and
    /// rollback commands (the pipeline's `env` merged in).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

fn default_health_timeout() -> Dur {
    Dur::secs(60)
}

impl Default for DeployStep {
    fn default() -> Self {
        DeployStep {
            health_timeout: default_health_timeout(),
            env: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandStep {
    pub run: String,
    #[serde(default = "default_step_timeout")]
    pub timeout: Dur,
    /// Plain (not secret) environment variables for this step's command
    /// (the pipeline's `env` merged in; this step's win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// One step run on each cell, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    Deploy(DeployStep),
    Test(TestStep),
    Bake(Dur),
    Command(CommandStep),
}

impl Step {
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Deploy(_) => "deploy",
            Step::Test(_) => "test",
            Step::Bake(_) => "bake",
            Step::Command(_) => "command",
        }
    }
}

/// An approval gate in front of a wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Approvers must belong to this group (admins may always approve).
    pub group: String,
    /// Distinct approvers needed.
    #[serde(default = "one")]
    pub quorum: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveSpec {
    pub name: String,
    /// The next N cells.
    #[serde(default)]
    pub cells: Option<u32>,
    /// N cells of each region.
    #[serde(default)]
    pub per_region: Option<u32>,
    /// P percent of all selected cells (rounded up); 100 takes the rest.
    #[serde(default)]
    pub percent: Option<u32>,
    /// Exactly these cells.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    #[serde(default = "one")]
    pub max_parallel: u32,
    #[serde(default)]
    pub approval: Option<Gate>,
    /// Waves this one waits for; default: the wave before it.
    #[serde(default)]
    pub after: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Roll back the cell that failed and start no new cell.
    #[default]
    RollbackCellAndHalt,
    /// Roll back every cell the train deployed, newest wave first.
    RollbackTrain,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub allow: String,
    #[serde(default)]
    pub tz: WindowTz,
}

/// A pipeline as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub name: String,
    pub artifact: Artifact,
    #[serde(default)]
    pub cells: Selector,
    /// Steps are written as one-key maps (`- bake: 10m`).
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub steps: Vec<Step>,
    pub waves: Vec<WaveSpec>,
    #[serde(default)]
    pub on_failure: OnFailure,
    #[serde(default)]
    pub windows: Vec<WindowSpec>,
    /// Plain (not secret) environment variables for every command step,
    /// command test and command target of the pipeline.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl Step {
    /// The environment a step declares, if it runs a command.
    pub fn env(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Step::Deploy(d) => Some(&d.env),
            Step::Test(t) => Some(&t.env),
            Step::Command(c) => Some(&c.env),
            Step::Bake(_) => None,
        }
    }

    fn env_mut(&mut self) -> Option<&mut BTreeMap<String, String>> {
        match self {
            Step::Deploy(d) => Some(&mut d.env),
            Step::Test(t) => Some(&mut t.env),
            Step::Command(c) => Some(&mut c.env),
            Step::Bake(_) => None,
        }
    }
}

/// Names the Conductor sets itself in a command's environment.
pub fn reserved_env(name: &str) -> bool {
    name.starts_with("CELL_")
        || name.starts_with("ARTIFACT_")
        || matches!(
            name,
            "TRAIN_ID" | "PIPELINE" | "IDEMPOTENCY_KEY" | "TO_VERSION"
        )
}

/// Problems with a declared environment, as `(key, message)`.
fn env_problems(env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if env.len() > 50 {
        out.push((String::new(), "more than 50 environment variables".into()));
    }
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && k.len() <= 64
            && !k.as_bytes()[0].is_ascii_digit()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            out.push((k.clone(), format!("invalid variable name {k:?}")));
        } else if reserved_env(k) {
            out.push((k.clone(), format!("{k} is set by the Conductor")));
        }
        if v.len() > 4096 || v.contains('\0') {
            out.push((
                k.clone(),
                format!("the value of {k} is over 4096 bytes or holds a NUL"),
            ));
        }
    }
    out
}

impl Pipeline {
    /// The parsed deploy windows (valid after [`parse`]).
    pub fn parsed_windows(&self) -> Vec<Window> {
        self.windows
            .iter()
            .filter_map(|w| window::parse(&w.allow, w.tz.clone()).ok())
            .collect()
    }

    /// Names of the waves each wave waits for.
    pub fn wave_deps(&self, i: usize) -> Vec<String> {
        match &self.waves[i].after {
            Some(after) => after.clone(),
            None if i == 0 => vec![],
            None => vec![self.waves[i - 1].name.clone()],
        }
    }
}

/// Decode and validate a pipeline file. All problems come back at once:
/// every mismatch with the language's shape (unknown keys, values of the
/// wrong kind, bad durations), or, once there are none, every semantic one.
pub fn parse(file: &str, text: &str) -> Result<(Pipeline, Spans), Diagnostics> {
    let (mut p, spans): (Pipeline, Spans) =
        yamlspan::from_str_checked(file, text, &schema::DOCUMENT)?;
    let errs = validate(&p, &spans);
    if errs.is_empty() {
        // Every command step carries the pipeline's environment (its own wins).
        for st in &mut p.steps {
            if let Some(env) = st.env_mut() {
                for (k, v) in &p.env {
                    env.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        Ok((p, spans))
    } else {
        Err(sorted(errs))
    }
}

/// [`parse`] for a file's bytes: invalid UTF-8 is reported at its line and column.
pub fn parse_bytes(file: &str, bytes: &[u8]) -> Result<(Pipeline, Spans), Diagnostics> {
    parse(file, yamlspan::decode_utf8(file, bytes)?)
}

pub(crate) fn sorted(mut errs: Vec<Diagnostic>) -> Diagnostics {
    errs.sort_by_key(|d| (d.pos.line, d.pos.col));
    Diagnostics(errs)
}

fn validate(p: &Pipeline, s: &Spans) -> Vec<Diagnostic> {
    let mut e = Vec::new();
    if !valid_id(&p.name) {
        e.push(s.error_hint(
            "name",
            format!("invalid pipeline name {:?}", p.name),
            "use 1-63 lowercase letters, digits, '-' or '_'",
        ));
    }
    if !valid_id(&p.artifact.name) {
        e.push(s.error_hint(
            "artifact.name",
            format!("invalid artifact name {:?}", p.artifact.name),
            "use 1-63 lowercase letters, digits, '-' or '_'",
        ));
    }
    if !p.artifact.health.starts_with('/') {
        e.push(s.error("artifact.health", "the health path must start with '/'"));
    }
    for (k, v) in &p.cells.labels {
        if !valid_id(k) || v.is_empty() {
            e.push(s.error(
                &format!("cells.labels.{k}"),
                format!("invalid label {k}={v:?}"),
            ));
        }
    }
    if p.steps.is_empty() {
        e.push(s.error_hint("steps", "no steps", "add at least `- deploy: {}`"));
    }
    if p.steps.len() > 50 {
        e.push(s.error("steps", "more than 50 steps"));
    }
    let deploys = p
        .steps
        .iter()
        .filter(|st| matches!(st, Step::Deploy(_)))
        .count();
    if deploys > 1 {
        e.push(s.error("steps", "more than one `deploy` step"));
    }
    if deploys == 0 && p.artifact.kind != ArtifactKind::Command {
        e.push(s.error_hint(
            "steps",
            "no `deploy` step",
            "add `- deploy: {}`, or use `artifact: { kind: command }` for command-only pipelines",
        ));
    }
    let env_hint = "names are letters, digits and '_' (not CELL_*, ARTIFACT_*, TRAIN_ID, PIPELINE, IDEMPOTENCY_KEY, TO_VERSION); values are plain text, not secrets";
    for (k, msg) in env_problems(&p.env) {
        let at = if k.is_empty() {
            "env".to_string()
        } else {
            format!("env.{k}")
        };
        e.push(s.error_hint(&at, msg, env_hint));
    }
    for (i, st) in p.steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        if let Some(env) = st.env() {
            for (k, msg) in env_problems(env) {
                let at = format!(
                    "{at}.{}.env{}",
                    st.kind(),
                    if k.is_empty() {
                        String::new()
                    } else {
                        format!(".{k}")
                    }
                );
                e.push(s.error_hint(&at, msg, env_hint));
            }
        }
        match st {
            Step::Bake(d) if d.0.is_zero() => {
                e.push(s.error(&format!("{at}.bake"), "a bake of zero does nothing"))
            }
            Step::Test(t) => {
                if t.http.is_some() == t.command.is_some() {
                    e.push(s.error_hint(
                        &format!("{at}.test"),
                        "a test needs exactly one of `http` or `command`",
                        "for example `test: { http: { path: /healthz }, min_requests: 100 }`",
                    ));
                }
                if let Some(h) = &t.http {
                    if !h.path.starts_with('/') {
                        e.push(s.error(
                            &format!("{at}.test.http.path"),
                            "the path must start with '/'",
                        ));
                    }
                }
                if t.min_requests == 0 || t.min_requests > 100_000 {
                    e.push(s.error(
                        &format!("{at}.test.min_requests"),
                        "min_requests must be 1 to 100000",
                    ));
                }
            }
            Step::Command(c) if c.run.trim().is_empty() => {
                e.push(s.error(&format!("{at}.command.run"), "empty command"))
            }
            _ => {}
        }
    }
    if p.waves.is_empty() {
        e.push(s.error_hint(
            "waves",
            "no waves",
            "add at least `- { name: all, percent: 100 }`",
        ));
    }
    let names: BTreeSet<&str> = p.waves.iter().map(|w| w.name.as_str()).collect();
    let mut seen = BTreeSet::new();
    for (i, w) in p.waves.iter().enumerate() {
        let at = |f: &str| format!("waves[{i}].{f}");
        if !valid_id(&w.name) {
            e.push(s.error(&at("name"), format!("invalid wave name {:?}", w.name)));
        }
        if !seen.insert(w.name.as_str()) {
            e.push(s.error(&at("name"), format!("wave {:?} declared twice", w.name)));
        }
        let sizing = [
            w.cells.is_some(),
            w.per_region.is_some(),
            w.percent.is_some(),
            w.ids.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if sizing != 1 {
            e.push(s.error_hint(
                &format!("waves[{i}]"),
                format!(
                    "wave {:?} needs exactly one of `cells`, `per_region`, `percent` or `ids`",
                    w.name
                ),
                "for example `{ name: canary, cells: 1 }`",
            ));
        }
        if w.cells == Some(0) || w.per_region == Some(0) {
            e.push(s.error(
                &format!("waves[{i}]"),
                format!("wave {:?} is empty", w.name),
            ));
        }
        if let Some(pc) = w.percent {
            if pc == 0 || pc > 100 {
                e.push(s.error(&at("percent"), "percent must be 1 to 100"));
            }
        }
        if let Some(ids) = &w.ids {
            if ids.is_empty() {
                e.push(s.error(&at("ids"), format!("wave {:?} is empty", w.name)));
            }
        }
        if w.max_parallel == 0 {
            e.push(s.error(&at("max_parallel"), "max_parallel must be at least 1"));
        }
        if let Some(g) = &w.approval {
            if !valid_id(&g.group) {
                e.push(s.error(
                    &at("approval.group"),
                    format!("invalid group {:?}", g.group),
                ));
            }
            if g.quorum == 0 || g.quorum > 20 {
                e.push(s.error(&at("approval.quorum"), "quorum must be 1 to 20"));
            }
        }
        for (j, d) in w.after.iter().flatten().enumerate() {
            if !names.contains(d.as_str()) {
                e.push(s.error_hint(
                    &format!("waves[{i}].after[{j}]"),
                    format!("unknown wave {d:?}"),
                    format!(
                        "waves: {}",
                        names.iter().copied().collect::<Vec<_>>().join(", ")
                    ),
                ));
            } else if d == &w.name {
                e.push(s.error(
                    &format!("waves[{i}].after[{j}]"),
                    "a wave cannot wait for itself",
                ));
            }
        }
    }
    for (i, w) in p.windows.iter().enumerate() {
        if let Err(msg) = window::parse(&w.allow, w.tz.clone()) {
            e.push(s.error_hint(
                &format!("windows[{i}].allow"),
                msg,
                "write days and hours, for example `Mon-Thu 08:00-17:00`",
            ));
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const GOOD: &str = r#"
name: fga-dataplane
artifact: { kind: binary, name: fga-dataplane }
cells: { labels: { service: fga } }
steps:
  - deploy: {}
  - test: { http: { path: /healthz }, min_requests: 100 }
  - bake: 10m
waves:
  - { name: canary, cells: 1 }
  - { name: first-per-region, per_region: 1 }
  - { name: rest, percent: 100, max_parallel: 20, approval: { group: release-managers } }
on_failure: rollback_cell_and_halt
windows: [ { allow: "Mon-Thu 08:00-17:00", tz: cell } ]
"#;

    #[test]
    fn parses_the_design_example() {
        let (p, _) = parse("p.yaml", GOOD).expect("valid");
        assert_eq!(p.waves.len(), 3);
        assert_eq!(p.wave_deps(2), vec!["first-per-region".to_string()]);
        assert!(matches!(p.steps[2], Step::Bake(d) if d.0.as_secs() == 600));
    }

    #[test]
    fn unknown_keys_are_rejected_with_position() {
        let bad = GOOD.replace("bake: 10m", "bkae: 10m");
        let e = parse("p.yaml", &bad).expect_err("invalid");
        let s = e.to_string();
        assert!(s.starts_with("p.yaml:8:"), "{s}");
        assert!(s.contains("bkae"), "{s}");
    }

    #[test]
    fn bad_duration_is_located() {
        let bad = GOOD.replace("bake: 10m", "bake: 10 minutes");
        let e = parse("p.yaml", &bad).expect_err("invalid");
        assert!(e.to_string().contains("p.yaml:8:"), "{e}");
    }

    #[test]
    fn all_schema_errors_at_once_each_at_its_value() {
        // An unknown key no longer hides a bad duration and a bad on_failure.
        let bad = GOOD
            .replace("min_requests: 100", "min_request: 100")
            .replace("bake: 10m", "bake: 10 minutes")
            .replace(
                "on_failure: rollback_cell_and_halt",
                "on_failure: rollback_everything",
            )
            .replace("cells: 1 }", "cells: one }");
        let e = parse("p.yaml", &bad).expect_err("invalid");
        let at: Vec<(usize, usize)> = e.0.iter().map(|d| (d.pos.line, d.pos.col)).collect();
        assert_eq!(at, vec![(7, 39), (8, 11), (10, 28), (13, 13)], "{e}");
        assert!(
            e.0[0].message.contains("unknown field `min_request`"),
            "{e}"
        );
        assert!(e.0[1].message.contains("invalid duration"), "{e}");
        assert!(e.0[2].message.contains("expected u32"), "{e}");
        assert!(
            e.0[3]
                .message
                .contains("unknown variant `rollback_everything`"),
            "{e}"
        );
        assert!(e.0.iter().all(|d| d.hint.is_some()), "{e}");
        // Steps written with an unknown kind are located at the key.
        let e = parse("p.yaml", &GOOD.replace("bake: 10m", "bkae: 10m")).expect_err("step");
        assert_eq!((e.0[0].pos.line, e.0[0].pos.col), (8, 5), "{e}");
        assert!(e.0[0].message.contains("`bake`"), "{e}");
    }

    #[test]
    fn invalid_utf8_is_located() {
        let mut bytes = GOOD.as_bytes().to_vec();
        let at = GOOD.find("fga-dataplane").expect("name");
        bytes[at + 3] = 0xE9;
        let e = parse_bytes("p.yaml", &bytes).expect_err("invalid");
        assert_eq!(e.0.len(), 1, "{e}");
        assert!(
            e.to_string().starts_with("p.yaml:2:10: invalid UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn the_example_pipelines_are_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines");
        let mut n = 0;
        for f in std::fs::read_dir(dir).expect("pipelines/") {
            let path = f.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            let r = parse_bytes(&path.display().to_string(), &bytes);
            assert!(
                r.is_ok(),
                "{}",
                r.err().map(|e| e.to_string()).unwrap_or_default()
            );
            n += 1;
        }
        assert!(n >= 3);
    }

    #[test]
    fn all_semantic_errors_at_once() {
        let bad = GOOD
            .replace(
                "{ name: canary, cells: 1 }",
                "{ name: canary, cells: 1, percent: 5 }",
            )
            .replace("max_parallel: 20", "max_parallel: 0")
            .replace("Mon-Thu", "Mon-Funday");
        let e = parse("p.yaml", &bad).expect_err("invalid");
        assert_eq!(e.0.len(), 3, "{e}");
        assert_eq!(e.0[0].pos.line, 10, "{e}");
        assert_eq!(e.0[1].pos.line, 12, "{e}");
        assert_eq!(e.0[2].pos.line, 14, "{e}");
        assert!(e
            .0
            .iter()
            .all(|d| d.hint.is_some() || d.message.contains("max_parallel")));
    }

    #[test]
    fn steps_carry_the_declared_environment_and_bad_names_are_located() {
        let yaml = GOOD.replace(
            "  - bake: 10m\n",
            "  - bake: 10m\n  - command: { run: \"true\", env: { MODE: fast } }\n",
        ) + "env: { REGION_HINT: eu, MODE: slow }\n";
        let (p, _) = parse("p.yaml", &yaml).expect("valid");
        let env = p.steps[3].env().expect("command env");
        assert_eq!(env.get("MODE").map(String::as_str), Some("fast"));
        assert_eq!(env.get("REGION_HINT").map(String::as_str), Some("eu"));
        assert!(p.steps[2].env().is_none());
        let bad = GOOD.to_string() + "env: { CELL_ID: x, \"1BAD\": y }\n";
        let e = parse("p.yaml", &bad).expect_err("invalid");
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(e.to_string().contains("p.yaml:15:17:"), "{e}");
        assert!(
            e.to_string().contains("CELL_ID is set by the Conductor"),
            "{e}"
        );
    }

    #[test]
    fn never_panics_on_garbage() {
        for text in [
            "",
            "[]",
            "name: [",
            ":",
            "name: x\nsteps: 3",
            "\u{0}",
            "a: &x [*x]",
            "steps: [ { deploy: {}, bake: 1m } ]\nwaves: [ [1] ]",
            "? [a]\n: b\nsteps: [ { ? [a] : b } ]",
            "name: !!binary aGVsbG8=\nartifact: !t { kind: 1 }",
            "windows: { allow: x }\nwaves: { a: 1 }\ncells: [1]\non_failure: [x]",
            "artifact: { kind: binary, name: a, args: {}, health: [] }",
        ] {
            let _ = parse("p.yaml", text);
        }
    }
}
