//! OpenFGA parity of the HTTP surface: error codes and statuses as OpenFGA
//! gives them, the model-id response header, the store-list name filter,
//! ReadChanges from a start time, Expand with contextual tuples, the
//! `consistency` preference, and query-string errors as `{code, message}`.

mod common;

use serde_json::{json, Value};

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn send(&self, r: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = r.send().await.expect("send");
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        let text = r.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "not json": text }));
        (status, headers, v)
    }
    async fn post(&self, path: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }
    async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }
}

const MODEL: &str = r#"{"schema_version": "1.1", "type_definitions": [{"type": "user"}, {"type": "doc", "relations": {"viewer": {"this": {}}}, "metadata": {"relations": {"viewer": {"directly_related_user_types": [{"type": "user"}]}}}}]}"#;

async fn store(api: &Api, name: &str) -> (String, String) {
    let (_, _, s) = api.post("/stores", json!({ "name": name })).await;
    let id = s["id"].as_str().expect("id").to_string();
    let model: Value = serde_json::from_str(MODEL).expect("model");
    let (_, _, m) = api
        .post(&format!("/stores/{id}/authorization-models"), model)
        .await;
    let mid = m["authorization_model_id"]
        .as_str()
        .expect("model id")
        .to_string();
    (id, mid)
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_those_of_openfga() {
    let s = common::start(&[]);
    let api = Api {
        http: reqwest::Client::new(),
        base: s.url.clone(),
    };
    let (id, _) = store(&api, "errors").await;
    // An unknown model id: 400 authorization_model_not_found (not 404).
    let unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let (st, _, b) = api
        .get(&format!("/stores/{id}/authorization-models/{unknown}"))
        .await;
    assert_eq!(
        (st, code(&b)),
        (400, "authorization_model_not_found"),
        "{b}"
    );
    let (st, _, b) = api
        .post(
            &format!("/stores/{id}/check"),
            json!({"tuple_key": {"user": "user:a", "relation": "viewer", "object": "doc:1"}, "authorization_model_id": unknown}),
        )
        .await;
    assert_eq!(
        (st, code(&b)),
        (400, "authorization_model_not_found"),
        "{b}"
    );
    // A Write's invalid tuple is a validation_error.
    let (st, _, b) = api
        .post(
            &format!("/stores/{id}/write"),
            json!({"writes": {"tuple_keys": [{"user": "user:a", "relation": "editor", "object": "doc:1"}]}}),
        )
        .await;
    assert_eq!((st, code(&b)), (400, "validation_error"), "{b}");
    // Check and Expand of an unknown type: validation_error.
    let (st, _, b) = api
        .post(
            &format!("/stores/{id}/check"),
            json!({"tuple_key": {"user": "user:a", "relation": "viewer", "object": "folder:1"}}),
        )
        .await;
    assert_eq!((st, code(&b)), (400, "validation_error"), "{b}");
    let (st, _, b) = api
        .post(
            &format!("/stores/{id}/expand"),
            json!({"tuple_key": {"relation": "viewer", "object": "folder:1"}}),
        )
        .await;
    assert_eq!((st, code(&b)), (400, "validation_error"), "{b}");
    // ListObjects keeps type_not_found (OpenFGA's own suite says so).
    let (st, _, b) = api
        .post(
            &format!("/stores/{id}/list-objects"),
            json!({"type": "folder", "relation": "viewer", "user": "user:a"}),
        )
        .await;
    assert_eq!((st, code(&b)), (400, "type_not_found"), "{b}");
    // An invalid consistency preference is refused; the valid ones work.
    let key = json!({"user": "user:a", "relation": "viewer", "object": "doc:1"});
    for (c, want) in [
        (json!("HIGHER_CONSISTENCY"), 200),
        (json!("MINIMIZE_LATENCY"), 200),
        (json!("STRONGEST"), 400),
    ] {
        let (st, _, b) = api
            .post(
                &format!("/stores/{id}/check"),
                json!({"tuple_key": key, "consistency": c}),
            )
            .await;
        assert_eq!(st, want, "consistency {c}: {b}");
    }
    // Query-string errors are JSON like every other error.
    for q in ["/stores?page_size=many", "/stores?nmae=x"] {
        let (st, _, b) = api.get(q).await;
        assert_eq!((st, code(&b)), (400, "validation_error"), "{q}: {b}");
    }
    let (st, _, b) = api
        .get(&format!("/stores/{id}/changes?start_time=yesterday"))
        .await;
    assert_eq!((st, code(&b)), (400, "invalid_start_time"), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_id_header_name_filter_start_time_and_expand_context() {
    let s = common::start(&[]);
    let api = Api {
        http: reqwest::Client::new(),
        base: s.url.clone(),
    };
    let name = "parity-named";
    let (id, mid) = store(&api, name).await;
    let (other, _) = store(&api, "parity-other").await;
    // Every evaluated request says which model answered it.
    let key = json!({"user": "user:a", "relation": "viewer", "object": "doc:1"});
    for (path, body) in [
        ("write", json!({"writes": {"tuple_keys": [key]}})),
        ("check", json!({"tuple_key": key})),
        (
            "batch-check",
            json!({"checks": [{"tuple_key": key, "correlation_id": "c"}]}),
        ),
        (
            "list-objects",
            json!({"type": "doc", "relation": "viewer", "user": "user:a"}),
        ),
        (
            "list-users",
            json!({"object": {"type": "doc", "id": "1"}, "relation": "viewer", "user_filters": [{"type": "user"}]}),
        ),
        (
            "expand",
            json!({"tuple_key": {"relation": "viewer", "object": "doc:1"}}),
        ),
    ] {
        let (st, h, b) = api.post(&format!("/stores/{id}/{path}"), body).await;
        assert_eq!(st, 200, "{path}: {b}");
        assert_eq!(
            h.get("openfga-authorization-model-id")
                .and_then(|v| v.to_str().ok()),
            Some(mid.as_str()),
            "{path}"
        );
    }
    // ListStores by exact name.
    let (st, _, b) = api.get(&format!("/stores?name={name}")).await;
    assert_eq!(st, 200, "{b}");
    let ids: Vec<&str> = b["stores"]
        .as_array()
        .expect("stores")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()], "{b}");
    assert_ne!(id, other);
    // ReadChanges from a start time (the stamps the server wrote; no clock).
    let b2 = json!({"user": "user:b", "relation": "viewer", "object": "doc:2"});
    let (st, _, _) = api
        .post(
            &format!("/stores/{id}/write"),
            json!({"writes": {"tuple_keys": [b2]}}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, _, all) = api.get(&format!("/stores/{id}/changes")).await;
    let changes = all["changes"].as_array().expect("changes").clone();
    assert_eq!(changes.len(), 2, "{all}");
    let last = changes[1]["timestamp"].as_str().expect("timestamp");
    let enc = last.replace(':', "%3A").replace('+', "%2B");
    let (st, _, since) = api
        .get(&format!("/stores/{id}/changes?start_time={enc}"))
        .await;
    assert_eq!(st, 200, "{since}");
    let got = since["changes"].as_array().expect("changes");
    assert!(!got.is_empty() && got.len() <= 2, "{since}");
    assert_eq!(got.last(), changes.last(), "{since}");
    assert!(got
        .iter()
        .all(|c| c["timestamp"].as_str().is_some_and(|t| t >= last)));
    let (_, _, none) = api
        .get(&format!(
            "/stores/{id}/changes?start_time=9999-01-01T00:00:00Z"
        ))
        .await;
    assert_eq!(none["changes"], json!([]), "{none}");
    let (_, _, old) = api
        .get(&format!(
            "/stores/{id}/changes?start_time=2000-01-01T00:00:00Z"
        ))
        .await;
    assert_eq!(old["changes"].as_array().map(Vec::len), Some(2), "{old}");
    // Expand with contextual tuples.
    let (st, _, e) = api
        .post(
            &format!("/stores/{id}/expand"),
            json!({"tuple_key": {"relation": "viewer", "object": "doc:1"}, "contextual_tuples": {"tuple_keys": [{"user": "user:ctx", "relation": "viewer", "object": "doc:1"}]}}),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(
        e["tree"]["root"]["leaf"]["users"]["users"],
        json!(["user:a", "user:ctx"]),
        "{e}"
    );
}
