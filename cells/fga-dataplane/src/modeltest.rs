//! `.fga.yaml` model tests (the `fga model test` format), run on an
//! embedded in-memory store.
//!
//! ```yaml
//! model: |            # or model_file: ./model.fga
//!   model
//!     schema 1.1
//!   ...
//! tuples: [ { user: user:anne, relation: viewer, object: doc:1 } ]   # and/or tuple_file(s)
//! tests:
//!   - name: viewers
//!     tuples: [ ... ]                       # extra tuples for this test
//!     check:
//!       - { user: user:anne, object: doc:1, assertions: { viewer: true } }
//!     list_objects:
//!       - { user: user:anne, type: doc, assertions: { viewer: [doc:1] } }
//!     list_users:
//!       - { object: doc:1, user_filter: [ { type: user } ], assertions: { viewer: { users: [user:anne] } } }
//! ```

use crate::engine::{Evaluator, TupleKey};
use crate::memstore::MemStore;
use crate::model::AuthorizationModel;
use crate::{dsl, validate};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Accepted for compatibility with `fga model test`; not used.
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    model_file: Option<String>,
    #[serde(default)]
    tuples: Vec<TupleKey>,
    #[serde(default)]
    tuple_file: Option<String>,
    #[serde(default)]
    tuple_files: Vec<String>,
    #[serde(default)]
    tests: Vec<Test>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Test {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    tuples: Vec<TupleKey>,
    #[serde(default)]
    check: Vec<CheckCase>,
    #[serde(default)]
    list_objects: Vec<ListObjectsCase>,
    #[serde(default)]
    list_users: Vec<ListUsersCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckCase {
    user: String,
    object: String,
    #[serde(default)]
    context: Option<serde_yaml::Value>,
    assertions: BTreeMap<String, bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListObjectsCase {
    user: String,
    #[serde(rename = "type")]
    object_type: String,
    #[serde(default)]
    context: Option<serde_yaml::Value>,
    assertions: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFilter {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    relation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersExpectation {
    #[serde(default)]
    users: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListUsersCase {
    object: String,
    user_filter: Vec<UserFilter>,
    #[serde(default)]
    context: Option<serde_yaml::Value>,
    assertions: BTreeMap<String, UsersExpectation>,
}

/// Counts of one run, and the failures in words.
#[derive(Debug, Default)]
pub struct Summary {
    pub tests: (usize, usize),
    pub checks: (usize, usize),
    pub list_objects: (usize, usize),
    pub list_users: (usize, usize),
    pub failures: Vec<String>,
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The report printed at the end of a run.
    pub fn report(&self) -> String {
        let line = |name: &str, (p, t): (usize, usize)| format!("{name} {p}/{t} passing\n");
        let mut s = String::from("# Test Summary #\n");
        s.push_str(&line("Tests", self.tests));
        if self.checks.1 > 0 {
            s.push_str(&line("Checks", self.checks));
        }
        if self.list_objects.1 > 0 {
            s.push_str(&line("ListObjects", self.list_objects));
        }
        if self.list_users.1 > 0 {
            s.push_str(&line("ListUsers", self.list_users));
        }
        s
    }
}

fn read_rel(base: &Path, file: &str) -> anyhow::Result<String> {
    let p = base.join(file);
    std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
}

fn read_tuples(base: &Path, file: &str) -> anyhow::Result<Vec<TupleKey>> {
    let text = read_rel(base, file)?;
    if file.ends_with(".json") {
        Ok(serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?)
    } else {
        Ok(serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?)
    }
}

fn no_context(ctx: &Option<serde_yaml::Value>, what: &str) -> anyhow::Result<()> {
    match ctx {
        None | Some(serde_yaml::Value::Null) => Ok(()),
        Some(_) => anyhow::bail!("{what}: `context` needs conditions, which are not supported yet"),
    }
}

/// Load a test file (model and tuples) and run every test in it.
pub async fn run_file(path: &Path) -> anyhow::Result<Summary> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let file: TestFile =
        serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let dsl_text = match (&file.model, &file.model_file) {
        (Some(m), None) => m.clone(),
        (None, Some(f)) => read_rel(base, f)?,
        _ => anyhow::bail!(
            "{}: give exactly one of `model` and `model_file`",
            path.display()
        ),
    };
    let model = dsl::parse(&dsl_text).map_err(|e| anyhow::anyhow!("model: {e}"))?;
    model
        .validate()
        .map_err(|e| anyhow::anyhow!("model: {e}"))?;
    let mut tuples = file.tuples.clone();
    for f in file.tuple_file.iter().chain(file.tuple_files.iter()) {
        tuples.extend(read_tuples(base, f)?);
    }
    run(&model, &tuples, &file.tests).await
}

async fn run(
    model: &AuthorizationModel,
    tuples: &[TupleKey],
    tests: &[Test],
) -> anyhow::Result<Summary> {
    let mut sum = Summary::default();
    for t in tests {
        let mut store = MemStore::default();
        for tk in tuples.iter().chain(t.tuples.iter()) {
            validate::tuple(model, tk).map_err(|e| anyhow::anyhow!("test {}: {e}", t.name))?;
            store.write(tk.clone());
        }
        let ev = Evaluator::new(model, &store);
        let before = sum.failures.len();
        for c in &t.check {
            no_context(&c.context, &t.name)?;
            for (rel, want) in &c.assertions {
                sum.checks.1 += 1;
                let tk = TupleKey::new(&c.object, rel, &c.user);
                let got = match validate::check_request(model, &tk) {
                    Ok(()) => ev
                        .check(&c.object, rel, &c.user)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if got.as_ref() == Ok(want) {
                    sum.checks.0 += 1;
                } else {
                    sum.failures.push(format!(
                        "test {}: check {}#{rel}@{}: expected {want}, got {}",
                        t.name,
                        c.object,
                        c.user,
                        got.map_or_else(|e| format!("error: {e}"), |b| b.to_string())
                    ));
                }
            }
        }
        for c in &t.list_objects {
            no_context(&c.context, &t.name)?;
            for (rel, want) in &c.assertions {
                sum.list_objects.1 += 1;
                let mut want = want.clone();
                want.sort();
                let got = match validate::list_objects_request(model, &c.object_type, rel, &c.user)
                {
                    Ok(()) => ev
                        .list_objects(&c.object_type, rel, &c.user, usize::MAX)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if got.as_ref() == Ok(&want) {
                    sum.list_objects.0 += 1;
                } else {
                    sum.failures.push(format!(
                        "test {}: list_objects {} {rel} for {}: expected {want:?}, got {got:?}",
                        t.name, c.object_type, c.user
                    ));
                }
            }
        }
        for c in &t.list_users {
            no_context(&c.context, &t.name)?;
            for (rel, want) in &c.assertions {
                sum.list_users.1 += 1;
                let mut want = want.users.clone();
                want.sort();
                let filters: Vec<(String, Option<String>)> = c
                    .user_filter
                    .iter()
                    .map(|f| (f.type_name.clone(), f.relation.clone()))
                    .collect();
                let got: Result<Vec<String>, String> =
                    match validate::list_users_request(model, &c.object, rel, &filters) {
                        Ok(()) => {
                            async {
                                let mut all = Vec::new();
                                for (ft, fr) in &filters {
                                    all.extend(
                                        ev.list_users(&c.object, rel, ft, fr.as_deref())
                                            .await
                                            .map_err(|e| e.to_string())?,
                                    );
                                }
                                all.sort();
                                Ok(all)
                            }
                            .await
                        }
                        Err(e) => Err(e.to_string()),
                    };
                if got.as_ref() == Ok(&want) {
                    sum.list_users.0 += 1;
                } else {
                    sum.failures.push(format!(
                        "test {}: list_users {} {rel}: expected {want:?}, got {got:?}",
                        t.name, c.object
                    ));
                }
            }
        }
        sum.tests.1 += 1;
        if sum.failures.len() == before {
            sum.tests.0 += 1;
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_a_model_test_file() {
        let dir = std::env::temp_dir().join(format!("fga-modeltest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("t.fga.yaml");
        std::fs::write(
            &f,
            "model: |\n  model\n    schema 1.1\n  type user\n  type doc\n    relations\n      define owner: [user]\n      define viewer: [user:*] or owner\ntuples:\n  - { user: user:anne, relation: owner, object: doc:1 }\ntests:\n  - name: t1\n    check:\n      - { user: user:anne, object: doc:1, assertions: { viewer: true, owner: true } }\n      - { user: user:bob, object: doc:1, assertions: { owner: true } }\n    list_objects:\n      - { user: user:anne, type: doc, assertions: { owner: [doc:1] } }\n    list_users:\n      - { object: doc:1, user_filter: [ { type: user } ], assertions: { owner: { users: [user:anne] } } }\n",
        )
        .expect("write");
        let s = run_file(&f).await.expect("runs");
        assert_eq!(s.checks, (2, 3));
        assert_eq!(s.list_objects, (1, 1));
        assert_eq!(s.list_users, (1, 1));
        assert_eq!(s.tests, (0, 1));
        assert!(s.failures[0].contains("user:bob"), "{:?}", s.failures);
        assert!(s.report().contains("Checks 2/3 passing"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
