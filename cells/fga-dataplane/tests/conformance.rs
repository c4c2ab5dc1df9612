//! OpenFGA's own consolidated 1.1 test suite: every assertion, evaluated in
//! process and against the running `fga-dataplane serve` over HTTP.

mod common;

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

/// OpenFGA's numeric error codes by name (those the suite expects).
fn code_of(name: &str) -> u32 {
    match name {
        "validation_error" => 2000,
        "authorization_model_resolution_too_complex" => 2002,
        "type_not_found" => 2021,
        "relation_not_found" => 2022,
        "invalid_tuple" => 2027,
        _ => 9999,
    }
}

fn filters(f: &[String]) -> Vec<(String, Option<String>)> {
    f.iter()
        .map(|f| match f.split_once('#') {
            Some((t, r)) => (t.to_string(), Some(r.to_string())),
            None => (f.clone(), None),
        })
        .collect()
}

/// Where the assertions are evaluated.
enum Backend {
    InProcess {
        store: Box<MemStore>,
        model: Option<AuthorizationModel>,
    },
    Http {
        http: reqwest::Client,
        base: String,
        store: String,
    },
}

impl Backend {
    async fn stage(&mut self, dsl_text: &str, tuples: &[TupleKey]) -> Result<(), String> {
        let m = dsl::parse(dsl_text).map_err(|e| e.to_string())?;
        m.validate().map_err(|e| e.to_string())?;
        match self {
            Backend::InProcess { store, model } => {
                for t in tuples {
                    validate::tuple(&m, t).map_err(|e| e.to_string())?;
                    store.write(t.clone());
                }
                *model = Some(m);
            }
            Backend::Http { http, base, store } => {
                let r = http
                    .post(format!("{base}/stores/{store}/authorization-models"))
                    .json(&m)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!(
                        "model write: {}",
                        r.text().await.unwrap_or_default()
                    ));
                }
                for chunk in tuples.chunks(100) {
                    let body = serde_json::json!({ "writes": { "tuple_keys": chunk, "on_duplicate": "ignore" } });
                    let r = http
                        .post(format!("{base}/stores/{store}/write"))
                        .json(&body)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if !r.status().is_success() {
                        return Err(format!(
                            "tuple write: {}",
                            r.text().await.unwrap_or_default()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, u32> {
        let Backend::Http { http, base, store } = self else {
            return Err(9998);
        };
        let r = http
            .post(format!("{base}/stores/{store}/{path}"))
            .json(&body)
            .send()
            .await
            .map_err(|_| 9997u32)?;
        let ok = r.status().is_success();
        let v: serde_json::Value = r.json().await.map_err(|_| 9996u32)?;
        if ok {
            Ok(v)
        } else {
            Err(code_of(v["code"].as_str().unwrap_or("")))
        }
    }

    async fn check(&self, a: &CheckA) -> Result<bool, u32> {
        match self {
            Backend::InProcess {
                store,
                model: Some(m),
            } => {
                validate::check_request(m, &a.tuple).map_err(|e| e.code)?;
                let r = context(m, store, &a.contextual_tuples).map_err(|e| e.code)?;
                Evaluator::new(m, &r)
                    .check(&a.tuple.object, &a.tuple.relation, &a.tuple.user)
                    .await
                    .map_err(|e| code(&e))
            }
            Backend::InProcess { .. } => Err(9995),
            Backend::Http { .. } => {
                let body = serde_json::json!({ "tuple_key": a.tuple, "contextual_tuples": { "tuple_keys": a.contextual_tuples } });
                Ok(self.post("check", body).await?["allowed"]
                    .as_bool()
                    .unwrap_or(false))
            }
        }
    }

    async fn list_objects(&self, q: &LoReq, ctx: &[TupleKey]) -> Result<Vec<String>, u32> {
        let mut v = match self {
            Backend::InProcess {
                store,
                model: Some(m),
            } => {
                validate::list_objects_request(m, &q.object_type, &q.relation, &q.user)
                    .map_err(|e| e.code)?;
                let r = context(m, store, ctx).map_err(|e| e.code)?;
                Evaluator::new(m, &r)
                    .list_objects(&q.object_type, &q.relation, &q.user, 1000)
                    .await
                    .map_err(|e| code(&e))?
            }
            Backend::InProcess { .. } => return Err(9995),
            Backend::Http { .. } => {
                let body = serde_json::json!({ "type": q.object_type, "relation": q.relation, "user": q.user, "contextual_tuples": { "tuple_keys": ctx } });
                let v = self.post("list-objects", body).await?;
                v["objects"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|o| o.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            }
        };
        v.sort();
        Ok(v)
    }

    async fn list_users(&self, q: &LuReq, ctx: &[TupleKey]) -> Result<Vec<String>, u32> {
        let fs = filters(&q.filters);
        let mut out = Vec::new();
        match self {
            Backend::InProcess {
                store,
                model: Some(m),
            } => {
                validate::list_users_request(m, &q.object, &q.relation, &fs).map_err(|e| e.code)?;
                let r = context(m, store, ctx).map_err(|e| e.code)?;
                let ev = Evaluator::new(m, &r);
                for (t, rel) in &fs {
                    out.extend(
                        ev.list_users(&q.object, &q.relation, t, rel.as_deref())
                            .await
                            .map_err(|e| code(&e))?,
                    );
                }
            }
            Backend::InProcess { .. } => return Err(9995),
            Backend::Http { .. } => {
                let (ot, oid) = q.object.split_once(':').unwrap_or((&q.object, ""));
                for (t, rel) in &fs {
                    let body = serde_json::json!({
                        "object": { "type": ot, "id": oid },
                        "relation": q.relation,
                        "user_filters": [ { "type": t, "relation": rel.clone().unwrap_or_default() } ],
                        "contextual_tuples": ctx,
                    });
                    let v = self.post("list-users", body).await?;
                    for u in v["users"].as_array().into_iter().flatten() {
                        let s = if let Some(o) = u.get("object") {
                            format!(
                                "{}:{}",
                                o["type"].as_str().unwrap_or(""),
                                o["id"].as_str().unwrap_or("")
                            )
                        } else if let Some(w) = u.get("wildcard") {
                            format!("{}:*", w["type"].as_str().unwrap_or(""))
                        } else {
                            let us = &u["userset"];
                            format!(
                                "{}:{}#{}",
                                us["type"].as_str().unwrap_or(""),
                                us["id"].as_str().unwrap_or(""),
                                us["relation"].as_str().unwrap_or("")
                            )
                        };
                        out.push(s);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
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

fn want_list(e: &Option<Vec<String>>, c: Option<u32>) -> Result<Vec<String>, u32> {
    match c {
        Some(c) => Err(c),
        None => {
            let mut v = e.clone().unwrap_or_default();
            v.sort();
            Ok(v)
        }
    }
}

/// Run the whole suite; `fresh` gives a new backend (an empty store) per test.
async fn run_suite<F, Fut>(mut fresh: F) -> (usize, Vec<String>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Backend>,
{
    let path = suite_path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        panic!(
            "conformance suite not found at {} (shared/ must be beside the clone)",
            path.display()
        );
    };
    let suite: Suite = serde_yaml::from_str(&text).expect("suite parses");
    let mut pass = 0;
    let mut failures = Vec::new();
    for t in &suite.tests {
        let mut b = fresh().await;
        for (si, s) in t.stages.iter().enumerate() {
            if let Err(e) = b.stage(&s.model, &s.tuples).await {
                failures.push(format!("{} stage {si}: {e}", t.name));
                continue;
            }
            for a in &s.check_assertions {
                let got = b.check(a).await;
                let want = match (a.expectation, a.error_code) {
                    (_, Some(c)) => Err(c),
                    (Some(x), None) => Ok(x),
                    (None, None) => Ok(false),
                };
                if got == want {
                    pass += 1;
                } else {
                    failures.push(format!(
                        "{} stage {si}: check {:?}: got {got:?}, want {want:?}",
                        t.name, a.tuple
                    ));
                }
            }
            for a in &s.list_objects_assertions {
                let got = b.list_objects(&a.request, &a.contextual_tuples).await;
                let want = want_list(&a.expectation, a.error_code);
                if got == want {
                    pass += 1;
                } else {
                    failures.push(format!(
                        "{} stage {si}: list_objects {} {} {}: got {got:?}, want {want:?}",
                        t.name, a.request.user, a.request.object_type, a.request.relation
                    ));
                }
            }
            for a in &s.list_users_assertions {
                let got = b.list_users(&a.request, &a.contextual_tuples).await;
                let want = want_list(&a.expectation, a.error_code);
                if got == want {
                    pass += 1;
                } else {
                    failures.push(format!(
                        "{} stage {si}: list_users {:?} {} {}: got {got:?}, want {want:?}",
                        t.name, a.request.filters, a.request.object, a.request.relation
                    ));
                }
            }
        }
    }
    (pass, failures)
}

fn report(what: &str, pass: usize, failures: &[String]) {
    for f in failures {
        eprintln!("{f}");
    }
    eprintln!(
        "conformance ({what}): {pass} passed, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures (first: {})",
        failures.len(),
        failures[0]
    );
    assert!(pass >= 900, "only {pass} assertions ran");
}

#[tokio::test]
async fn consolidated_1_1_in_process() {
    let (pass, failures) = run_suite(|| async {
        Backend::InProcess {
            store: Box::default(),
            model: None,
        }
    })
    .await;
    report("in process", pass, &failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consolidated_1_1_over_http() {
    over_http("HTTP, SQLite", &[]).await;
}

/// The same suite with the server on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consolidated_1_1_over_http_postgres() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    over_http("HTTP, PostgreSQL", &["--database-url", &url]).await;
}

async fn over_http(what: &str, args: &[&str]) {
    let key = "conformance-key";
    let server = common::start_with(args, &[("FGA_AUTHN_PRESHARED_KEYS", key)]);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().expect("header"),
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client");
    let base = server.url.clone();
    // Without the key nothing is served.
    let r = reqwest::Client::new()
        .get(format!("{base}/stores"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    let (pass, failures) = run_suite(|| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let v: serde_json::Value = http
                .post(format!("{base}/stores"))
                .json(&serde_json::json!({ "name": "conformance" }))
                .send()
                .await
                .expect("create store")
                .json()
                .await
                .expect("json");
            let store = v["id"].as_str().expect("store id").to_string();
            Backend::Http { http, base, store }
        }
    })
    .await;
    report(what, pass, &failures);
}
