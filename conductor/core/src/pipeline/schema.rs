//! The pipeline's shape for [`yamlspan::from_str_checked`]: mirrors the serde
//! types of `pipeline.rs`, so that a file with several problems gets them
//! all reported at once. A test checks every struct's keys against serde's.

use super::{ArtifactKind, OnFailure};
use crate::duration::Dur;
use crate::window::WindowTz;
use yamlspan::schema::{leaf, Field, Schema};

const STR: Schema = Schema::Leaf(leaf::<String>, "write text here");
const U32: Schema = Schema::Leaf(leaf::<u32>, "write a whole number, without quotes");
const DUR: Schema = Schema::Leaf(
    leaf::<Dur>,
    "write a duration such as 250ms, 90s, 10m, 2h or 1h30m",
);
const VALUES: &str = "use one of the values listed above";
const STRS: Schema = Schema::Seq(&STR);
const ENV: Schema = Schema::Map(&STR);

pub(super) static ARTIFACT: [Field; 4] = [
    Field::required("kind", Schema::Leaf(leaf::<ArtifactKind>, VALUES)),
    Field::required("name", STR),
    Field::optional("args", STRS),
    Field::optional("health", STR),
];

pub(super) static SELECTOR: [Field; 2] = [
    Field::optional("labels", Schema::Map(&STR)),
    Field::optional("regions", STRS),
];

pub(super) static HTTP: [Field; 2] = [
    Field::required("path", STR),
    Field::optional(
        "expect_status",
        Schema::Leaf(leaf::<u16>, "write an HTTP status code such as 200"),
    ),
];

pub(super) static TEST: [Field; 5] = [
    Field::optional("http", Schema::Struct(&HTTP)),
    Field::optional("command", STR),
    Field::optional("min_requests", U32),
    Field::optional("timeout", DUR),
    Field::optional("env", ENV),
];

pub(super) static DEPLOY: [Field; 2] = [
    Field::optional("health_timeout", DUR),
    Field::optional("env", ENV),
];

pub(super) static COMMAND: [Field; 3] = [
    Field::required("run", STR),
    Field::optional("timeout", DUR),
    Field::optional("env", ENV),
];

pub(super) static STEP: [(&str, Schema); 4] = [
    ("deploy", Schema::Struct(&DEPLOY)),
    ("test", Schema::Struct(&TEST)),
    ("bake", DUR),
    ("command", Schema::Struct(&COMMAND)),
];

pub(super) static GATE: [Field; 2] = [
    Field::required("group", STR),
    Field::optional("quorum", U32),
];

pub(super) static WAVE: [Field; 8] = [
    Field::required("name", STR),
    Field::optional("cells", U32),
    Field::optional("per_region", U32),
    Field::optional("percent", U32),
    Field::optional("ids", STRS),
    Field::optional("max_parallel", U32),
    Field::optional("approval", Schema::Struct(&GATE)),
    Field::optional("after", STRS),
];

pub(super) static WINDOW: [Field; 2] = [
    Field::required("allow", STR),
    Field::optional("tz", Schema::Leaf(leaf::<WindowTz>, VALUES)),
];

pub(super) static PIPELINE: [Field; 8] = [
    Field::required("name", STR),
    Field::required("artifact", Schema::Struct(&ARTIFACT)),
    Field::optional("cells", Schema::Struct(&SELECTOR)),
    Field::required("steps", Schema::Seq(&Schema::OneOf(&STEP))),
    Field::required("waves", Schema::Seq(&Schema::Struct(&WAVE))),
    Field::optional("on_failure", Schema::Leaf(leaf::<OnFailure>, VALUES)),
    Field::optional("windows", Schema::Seq(&Schema::Struct(&WINDOW))),
    Field::optional("env", ENV),
];

/// The whole pipeline document.
pub(super) const DOCUMENT: Schema = Schema::Struct(&PIPELINE);

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;
    use serde::de::DeserializeOwned;

    /// The keys serde expects for `T`, from its "unknown field" message.
    fn serde_keys<T: DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let e = serde_yaml::from_str::<T>("__probe: 1").expect_err("probe refused");
        backticked(&e.to_string())
    }

    fn backticked(msg: &str) -> Vec<String> {
        let after = msg.split_once("expected").map_or("", |(_, r)| r);
        after
            .split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect()
    }

    fn names(fields: &[Field]) -> Vec<String> {
        fields.iter().map(|f| f.name.to_string()).collect()
    }

    #[test]
    fn schema_matches_the_serde_types() {
        assert_eq!(names(&PIPELINE), serde_keys::<Pipeline>());
        assert_eq!(names(&ARTIFACT), serde_keys::<Artifact>());
        assert_eq!(names(&SELECTOR), serde_keys::<Selector>());
        assert_eq!(names(&HTTP), serde_keys::<HttpCheck>());
        assert_eq!(names(&TEST), serde_keys::<TestStep>());
        assert_eq!(names(&DEPLOY), serde_keys::<DeployStep>());
        assert_eq!(names(&COMMAND), serde_keys::<CommandStep>());
        assert_eq!(names(&GATE), serde_keys::<Gate>());
        assert_eq!(names(&WAVE), serde_keys::<WaveSpec>());
        assert_eq!(names(&WINDOW), serde_keys::<WindowSpec>());
        let e = serde_yaml::from_str::<Pipeline>(
            "name: p\nartifact: { kind: binary, name: a }\nsteps: [ { __probe: 1 } ]\nwaves: []\n",
        )
        .expect_err("probe step");
        let steps: Vec<String> = STEP.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(steps, backticked(&e.to_string()));
    }

    /// Every key of `sample` (which has them all) is required by `fields`
    /// exactly when serde refuses the sample without it.
    fn check_required<T: DeserializeOwned + std::fmt::Debug>(fields: &[Field], sample: &str) {
        let full: serde_yaml::Mapping = serde_yaml::from_str(sample).expect("sample");
        assert_eq!(full.len(), fields.len(), "sample {sample} lacks keys");
        serde_yaml::from_value::<T>(serde_yaml::Value::Mapping(full.clone())).expect("sample");
        for f in fields {
            let mut m = full.clone();
            m.remove(f.name);
            let r = serde_yaml::from_value::<T>(serde_yaml::Value::Mapping(m));
            assert_eq!(
                f.required,
                r.is_err(),
                "field {} of {sample}: {r:?}",
                f.name
            );
        }
    }

    #[test]
    fn required_keys_match_the_serde_types() {
        check_required::<Pipeline>(
            &PIPELINE,
            "{ name: p, artifact: { kind: binary, name: a }, cells: {}, steps: [], waves: [], on_failure: rollback_train, windows: [], env: {} }",
        );
        check_required::<Artifact>(&ARTIFACT, "{ kind: binary, name: a, args: [], health: /h }");
        check_required::<Selector>(&SELECTOR, "{ labels: {}, regions: [] }");
        check_required::<HttpCheck>(&HTTP, "{ path: /, expect_status: 200 }");
        check_required::<TestStep>(
            &TEST,
            "{ http: { path: / }, command: x, min_requests: 1, timeout: 1s, env: {} }",
        );
        check_required::<DeployStep>(&DEPLOY, "{ health_timeout: 1s, env: {} }");
        check_required::<CommandStep>(&COMMAND, "{ run: x, timeout: 1s, env: {} }");
        check_required::<Gate>(&GATE, "{ group: g, quorum: 1 }");
        check_required::<WaveSpec>(
            &WAVE,
            "{ name: a, cells: 1, per_region: 1, percent: 1, ids: [], max_parallel: 1, approval: { group: g }, after: [] }",
        );
        check_required::<WindowSpec>(&WINDOW, "{ allow: x, tz: utc }");
    }
}
