//! The HTTP surface beyond queries: rate limits and their headers, the
//! admin endpoint, metrics, limits on input.

mod common;

use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_headers_admin_and_metrics() {
    let s = common::start_with(
        &["--rate-limit", "2", "--rate-limit-burst", "2"],
        &[("FGA_ADMIN_KEY", "adm")],
    );
    let http = reqwest::Client::new();
    let store: Value = http
        .post(format!("{}/stores", s.url))
        .json(&json!({"name": "rl"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = store["id"].as_str().expect("id").to_string();
    let get = || http.get(format!("{}/stores/{id}", s.url)).send();
    let r1 = get().await.expect("1");
    assert_eq!(r1.status().as_u16(), 200);
    assert_eq!(r1.headers()["x-ratelimit-limit"], "2");
    assert_eq!(r1.headers()["x-ratelimit-remaining"], "1");
    assert!(r1.headers().contains_key("x-ratelimit-reset"));
    assert_eq!(get().await.expect("2").status().as_u16(), 200);
    let r3 = get().await.expect("3");
    assert_eq!(r3.status().as_u16(), 429);
    assert!(r3.headers().contains_key("retry-after"));
    let body: Value = r3.json().await.expect("json");
    assert_eq!(body["code"], "rate_limit_exceeded");
    // The admin endpoint raises this store's limit at run time; it needs the key.
    let put = |key: &'static str| {
        http.put(format!("{}/admin/rate-limits/{id}", s.url))
            .bearer_auth(key)
            .json(&json!({"rate": 1000.0, "burst": 1000.0}))
            .send()
    };
    assert_eq!(put("nope").await.expect("put").status().as_u16(), 401);
    assert_eq!(put("adm").await.expect("put").status().as_u16(), 200);
    assert_eq!(
        get().await.expect("4").headers()["x-ratelimit-limit"],
        "1000"
    );
    let bad = http
        .put(format!("{}/admin/rate-limits/{id}", s.url))
        .bearer_auth("adm")
        .json(&json!({"rate": -1.0, "burst": 1.0}))
        .send()
        .await
        .expect("put");
    assert_eq!(bad.status().as_u16(), 400);
    // Metrics: per method, per store.
    let m = http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        m.contains("fga_requests_total{method=\"GetStore\",status=\"429\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(&format!("fga_store_tuples{{store=\"{id}\"}} 0")),
        "{m}"
    );
    assert!(
        m.contains("fga_request_duration_seconds_bucket{method=\"GetStore\""),
        "{m}"
    );
    assert!(
        m.contains(&format!("fga_store_throttled_total{{store=\"{id}\"}} 1")),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_openfga_errors() {
    let s = common::start(&[]);
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/stores/01ARZ3NDEKTSV4RRFFQ69G5FAV", s.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(
        r.json::<Value>().await.expect("json")["code"],
        "store_id_not_found"
    );
    let r = http
        .get(format!("{}/stores/not-a-ulid", s.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 400);
    let store: Value = http
        .post(format!("{}/stores", s.url))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = store["id"].as_str().expect("id");
    // A model referring to a missing relation is refused with the reason.
    let bad = json!({"schema_version": "1.1", "type_definitions": [{"type": "doc", "relations": {"viewer": {"computedUserset": {"relation": "owner"}}}}]});
    let r = http
        .post(format!("{}/stores/{id}/authorization-models", s.url))
        .json(&bad)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.json::<Value>().await.expect("json")["message"]
        .as_str()
        .unwrap_or("")
        .contains("owner"));
    // A check before any model: no model to use.
    let r = http
        .post(format!("{}/stores/{id}/check", s.url))
        .json(&json!({"tuple_key": {"user": "user:a", "relation": "r", "object": "doc:1"}}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        r.json::<Value>().await.expect("json")["code"],
        "latest_authorization_model_not_found"
    );
    // Oversized bodies and too many tuples.
    let big = "x".repeat(2 * 1024 * 1024);
    // Its own connection: the server closes it after refusing the body.
    let r = reqwest::Client::new()
        .post(format!("{}/stores/{id}/check", s.url))
        .body(big)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 413);
    let model = json!({"schema_version": "1.1", "type_definitions": [{"type": "user"}, {"type": "doc", "relations": {"viewer": {"this": {}}}, "metadata": {"relations": {"viewer": {"directly_related_user_types": [{"type": "user"}]}}}}]});
    let r = http
        .post(format!("{}/stores/{id}/authorization-models", s.url))
        .json(&model)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 201);
    let keys: Vec<Value> = (0..101)
        .map(|i| json!({"user": format!("user:{i}"), "relation": "viewer", "object": "doc:1"}))
        .collect();
    let r = http
        .post(format!("{}/stores/{id}/write", s.url))
        .json(&json!({"writes": {"tuple_keys": keys}}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    // Duplicates: refused by default, ignored on request; nothing half-written.
    let one = json!({"writes": {"tuple_keys": [{"user": "user:a", "relation": "viewer", "object": "doc:1"}]}});
    assert_eq!(
        http.post(format!("{}/stores/{id}/write", s.url))
            .json(&one)
            .send()
            .await
            .expect("w")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        http.post(format!("{}/stores/{id}/write", s.url))
            .json(&one)
            .send()
            .await
            .expect("w")
            .status()
            .as_u16(),
        400
    );
    let ignore = json!({"writes": {"tuple_keys": [{"user": "user:a", "relation": "viewer", "object": "doc:1"}, {"user": "user:b", "relation": "viewer", "object": "doc:1"}], "on_duplicate": "ignore"}});
    assert_eq!(
        http.post(format!("{}/stores/{id}/write", s.url))
            .json(&ignore)
            .send()
            .await
            .expect("w")
            .status()
            .as_u16(),
        200
    );
    let read: Value = http
        .post(format!("{}/stores/{id}/read", s.url))
        .json(&json!({}))
        .send()
        .await
        .expect("read")
        .json()
        .await
        .expect("json");
    assert_eq!(read["tuples"].as_array().map(Vec::len), Some(2));
    let missing = json!({"deletes": {"tuple_keys": [{"user": "user:z", "relation": "viewer", "object": "doc:1"}]}});
    assert_eq!(
        http.post(format!("{}/stores/{id}/write", s.url))
            .json(&missing)
            .send()
            .await
            .expect("d")
            .status()
            .as_u16(),
        400
    );
    let changes: Value = http
        .get(format!("{}/stores/{id}/changes", s.url))
        .send()
        .await
        .expect("changes")
        .json()
        .await
        .expect("json");
    assert_eq!(changes["changes"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_seen_by_the_next_check_through_the_cache() {
    let s = common::start(&[]);
    let http = reqwest::Client::new();
    let store: Value = http
        .post(format!("{}/stores", s.url))
        .json(&json!({"name": "c"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = store["id"].as_str().expect("id");
    let model = json!({"schema_version": "1.1", "type_definitions": [{"type": "user"}, {"type": "doc", "relations": {"viewer": {"this": {}}}, "metadata": {"relations": {"viewer": {"directly_related_user_types": [{"type": "user"}]}}}}]});
    http.post(format!("{}/stores/{id}/authorization-models", s.url))
        .json(&model)
        .send()
        .await
        .expect("model");
    let key = json!({"user": "user:a", "relation": "viewer", "object": "doc:1"});
    let check = || async {
        let v: Value = http
            .post(format!("{}/stores/{id}/check", s.url))
            .json(&json!({"tuple_key": key}))
            .send()
            .await
            .expect("check")
            .json()
            .await
            .expect("json");
        v["allowed"].as_bool().expect("allowed")
    };
    assert!(!check().await);
    http.post(format!("{}/stores/{id}/write", s.url))
        .json(&json!({"writes": {"tuple_keys": [key]}}))
        .send()
        .await
        .expect("write");
    assert!(
        check().await,
        "a write after a cached negative read is seen"
    );
    http.post(format!("{}/stores/{id}/write", s.url))
        .json(&json!({"deletes": {"tuple_keys": [key]}}))
        .send()
        .await
        .expect("delete");
    assert!(
        !check().await,
        "a delete after a cached positive read is seen"
    );
}
