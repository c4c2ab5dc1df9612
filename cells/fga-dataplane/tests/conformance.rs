//! OpenFGA's own consolidated 1.1 test suite, evaluated in process (the
//! HTTP run against the server is the next step; see the README).

use fga_dataplane::engine::{EvalError, Evaluator, TupleKey, WithContext};
use fga_dataplane::memstore::MemStore;
use fga_dataplane::validate::{self, FgaError};
use fga_dataplane::{dsl, model::AuthorizationModel};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Suite {
    tests: Vec<Test>,
}
#[derive(Deserialize)]
struct Test {
    name: String,
    stages: Vec<Stage>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stage {
    model: String,
    #[serde(default)]
    tuples: Vec<TupleKey>,
    #[serde(default)]
    check_assertions: Vec<CheckA>,
    #[serde(default)]
    list_objects_assertions: Vec<ListObjectsA>,
    #[serde(default)]
    list_users_assertions: Vec<ListUsersA>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CheckA {
    tuple: TupleKey,
    #[serde(default)]
    expectation: Option<bool>,
    #[serde(default)]
    error_code: Option<u32>,
    #[serde(default)]
    contextual_tuples: Vec<TupleKey>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoReq {
    user: String,
    #[serde(rename = "type")]
    object_type: String,
    relation: String,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListObjectsA {
    request: LoReq,
    #[serde(default)]
    contextual_tuples: Vec<TupleKey>,
    #[serde(default)]
    expectation: Option<Vec<String>>,
    #[serde(default)]
    error_code: Option<u32>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LuReq {
    filters: Vec<String>,
    object: String,
    relation: String,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListUsersA {
    request: LuReq,
    #[serde(default)]
    contextual_tuples: Vec<TupleKey>,
    #[serde(default)]
    expectation: Option<Vec<String>>,
    #[serde(default)]
    error_code: Option<u32>,
}

fn suite_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/openfga/consolidated_1_1_tests.yaml")
}

fn code(e: &EvalError) -> u32 {
    match e {
        EvalError::TooComplex => 2002,
        EvalError::Storage(_) => 4000,
    }
}

fn context<'a>(
    m: &AuthorizationModel,
    store: &'a MemStore,
    ctx: &[TupleKey],
) -> Result<WithContext<'a>, FgaError> {
    for t in ctx {
        validate::tuple(m, t)?;
    }
    Ok(WithContext {
        inner: store,
        extra: ctx.to_vec(),
    })
}

async fn check(m: &AuthorizationModel, store: &MemStore, a: &CheckA) -> Result<bool, u32> {
    validate::check_request(m, &a.tuple).map_err(|e| e.code)?;
    let r = context(m, store, &a.contextual_tuples).map_err(|e| e.code)?;
    Evaluator::new(m, &r)
        .check(&a.tuple.object, &a.tuple.relation, &a.tuple.user)
        .await
        .map_err(|e| code(&e))
}

async fn list_objects(
    m: &AuthorizationModel,
    store: &MemStore,
    q: &LoReq,
    ctx: &[TupleKey],
) -> Result<Vec<String>, u32> {
    validate::list_objects_request(m, &q.object_type, &q.relation, &q.user).map_err(|e| e.code)?;
    let r = context(m, store, ctx).map_err(|e| e.code)?;
    Evaluator::new(m, &r)
        .list_objects(&q.object_type, &q.relation, &q.user, 1000)
        .await
        .map_err(|e| code(&e))
}

async fn list_users(
    m: &AuthorizationModel,
    store: &MemStore,
    q: &LuReq,
    ctx: &[TupleKey],
) -> Result<Vec<String>, u32> {
    let filters: Vec<(String, Option<String>)> = q
        .filters
        .iter()
        .map(|f| match f.split_once('#') {
            Some((t, r)) => (t.to_string(), Some(r.to_string())),
            None => (f.clone(), None),
        })
        .collect();
    validate::list_users_request(m, &q.object, &q.relation, &filters).map_err(|e| e.code)?;
    let r = context(m, store, ctx).map_err(|e| e.code)?;
    let ev = Evaluator::new(m, &r);
    let mut out = Vec::new();
    for (t, rel) in &filters {
        out.extend(
            ev.list_users(&q.object, &q.relation, t, rel.as_deref())
                .await
                .map_err(|e| code(&e))?,
        );
    }
    out.sort();
    Ok(out)
}

#[tokio::test]
async fn consolidated_1_1_in_process() {
    let path = suite_path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        panic!(
            "conformance suite not found at {} (shared/ must be beside the clone)",
            path.display()
        );
    };
    let suite: Suite = serde_yaml::from_str(&text).expect("suite parses");
    let (mut pass, mut fail) = (0, 0);
    let mut failures = Vec::new();
    for t in &suite.tests {
        let mut store = MemStore::default();
        for (si, s) in t.stages.iter().enumerate() {
            let model = match dsl::parse(&s.model)
                .map_err(|e| e.to_string())
                .and_then(|m| m.validate().map(|_| m).map_err(|e| e.to_string()))
            {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("{} stage {si}: model rejected: {e}", t.name));
                    fail += s.check_assertions.len()
                        + s.list_objects_assertions.len()
                        + s.list_users_assertions.len();
                    continue;
                }
            };
            for tk in &s.tuples {
                if let Err(e) = validate::tuple(&model, tk) {
                    failures.push(format!("{} stage {si}: tuple rejected: {e}", t.name));
                }
                store.write(tk.clone());
            }
            for a in &s.check_assertions {
                let got = check(&model, &store, a).await;
                let want = match (a.expectation, a.error_code) {
                    (_, Some(c)) => Err(c),
                    (Some(b), None) => Ok(b),
                    (None, None) => Ok(false),
                };
                if got == want {
                    pass += 1
                } else {
                    fail += 1;
                    failures.push(format!(
                        "{} stage {si}: check {:?} ctx {}: got {got:?}, want {want:?}",
                        t.name,
                        a.tuple,
                        a.contextual_tuples.len()
                    ));
                }
            }
            for a in &s.list_objects_assertions {
                let got = list_objects(&model, &store, &a.request, &a.contextual_tuples).await;
                let want = match (&a.expectation, a.error_code) {
                    (_, Some(c)) => Err(c),
                    (e, None) => {
                        let mut v = e.clone().unwrap_or_default();
                        v.sort();
                        Ok(v)
                    }
                };
                if got == want {
                    pass += 1
                } else {
                    fail += 1;
                    failures.push(format!(
                        "{} stage {si}: list_objects {} {} {}: got {got:?}, want {want:?}",
                        t.name, a.request.user, a.request.object_type, a.request.relation
                    ));
                }
            }
            for a in &s.list_users_assertions {
                let got = list_users(&model, &store, &a.request, &a.contextual_tuples).await;
                let want = match (&a.expectation, a.error_code) {
                    (_, Some(c)) => Err(c),
                    (e, None) => {
                        let mut v = e.clone().unwrap_or_default();
                        v.sort();
                        Ok(v)
                    }
                };
                if got == want {
                    pass += 1
                } else {
                    fail += 1;
                    failures.push(format!(
                        "{} stage {si}: list_users {:?} {} {}: got {got:?}, want {want:?}",
                        t.name, a.request.filters, a.request.object, a.request.relation
                    ));
                }
            }
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    eprintln!("conformance: {pass} passed, {fail} failed");
    assert!(
        failures.is_empty(),
        "{} failures (first: {})",
        failures.len(),
        failures.first().map(String::as_str).unwrap_or("")
    );
}
