//! Conditions fail closed: until conditions are evaluated, a tuple or a
//! contextual tuple that carries one is refused everywhere (400
//! `validation_error` naming the condition), nothing is stored, and no
//! answer is given without it. A request's `context` is accepted and
//! ignored (models here have no conditions), as OpenFGA does; fields the
//! API does not know are refused.

mod common;

use serde_json::{json, Value};

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A store with `doc#viewer: [user]` and `doc:1#viewer@user:anne`.
    async fn store(&self) -> String {
        let (_, s) = self.post("/stores", json!({"name": "cond"})).await;
        let id = s["id"].as_str().expect("id").to_string();
        let model = json!({"schema_version": "1.1", "type_definitions": [{"type": "user"}, {"type": "doc", "relations": {"viewer": {"this": {}}}, "metadata": {"relations": {"viewer": {"directly_related_user_types": [{"type": "user"}]}}}}]});
        let (st, _) = self
            .post(&format!("/stores/{id}/authorization-models"), model)
            .await;
        assert_eq!(st, 201);
        let (st, _) = self
            .post(
                &format!("/stores/{id}/write"),
                json!({"writes": {"tuple_keys": [{"user": "user:anne", "relation": "viewer", "object": "doc:1"}]}}),
            )
            .await;
        assert_eq!(st, 200);
        id
    }
}

fn refused(what: &str, (status, body): (u16, Value), condition: &str) {
    assert_eq!(status, 400, "{what}: {body}");
    assert_eq!(body["code"], "validation_error", "{what}: {body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("'{condition}'"))),
        "{what}: the message names the condition: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuples_with_conditions_are_refused_everywhere() {
    let s = common::start(&[]);
    let api = Api {
        http: reqwest::Client::new(),
        base: s.url.clone(),
    };
    let id = api.store().await;
    let bob = json!({"user": "user:bob", "relation": "viewer", "object": "doc:1", "condition": {"name": "in_office", "context": {"ip": "10.0.0.1"}}});
    refused(
        "Write",
        api.post(
            &format!("/stores/{id}/write"),
            json!({"writes": {"tuple_keys": [bob]}}),
        )
        .await,
        "in_office",
    );
    // Nothing was stored, and Check does not answer as if it had been.
    let (_, read) = api.post(&format!("/stores/{id}/read"), json!({})).await;
    assert_eq!(read["tuples"].as_array().map(Vec::len), Some(1), "{read}");
    let (st, c) = api
        .post(
            &format!("/stores/{id}/check"),
            json!({"tuple_key": {"user": "user:bob", "relation": "viewer", "object": "doc:1"}}),
        )
        .await;
    assert_eq!((st, &c["allowed"]), (200, &json!(false)), "{c}");
    let ctx = json!({"tuple_keys": [bob]});
    let bob_key = json!({"user": "user:bob", "relation": "viewer", "object": "doc:1"});
    refused(
        "Check",
        api.post(
            &format!("/stores/{id}/check"),
            json!({"tuple_key": bob_key, "contextual_tuples": ctx}),
        )
        .await,
        "in_office",
    );
    refused(
        "BatchCheck",
        api.post(
            &format!("/stores/{id}/batch-check"),
            json!({"checks": [{"tuple_key": bob_key, "correlation_id": "1"}, {"tuple_key": bob_key, "contextual_tuples": ctx, "correlation_id": "2"}]}),
        )
        .await,
        "in_office",
    );
    refused(
        "ListObjects",
        api.post(
            &format!("/stores/{id}/list-objects"),
            json!({"type": "doc", "relation": "viewer", "user": "user:bob", "contextual_tuples": ctx}),
        )
        .await,
        "in_office",
    );
    refused(
        "ListUsers",
        api.post(
            &format!("/stores/{id}/list-users"),
            json!({"object": {"type": "doc", "id": "1"}, "relation": "viewer", "user_filters": [{"type": "user"}], "contextual_tuples": [bob]}),
        )
        .await,
        "in_office",
    );
    refused(
        "Expand",
        api.post(
            &format!("/stores/{id}/expand"),
            json!({"tuple_key": {"relation": "viewer", "object": "doc:1"}, "contextual_tuples": ctx}),
        )
        .await,
        "in_office",
    );
    // A delete names no condition either.
    let (st, body) = api
        .post(
            &format!("/stores/{id}/write"),
            json!({"deletes": {"tuple_keys": [{"user": "user:anne", "relation": "viewer", "object": "doc:1", "condition": {"name": "x"}}]}}),
        )
        .await;
    assert_eq!(st, 400, "{body}");
    let (_, read) = api.post(&format!("/stores/{id}/read"), json!({})).await;
    assert_eq!(read["tuples"].as_array().map(Vec::len), Some(1), "{read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_is_accepted_and_ignored() {
    let s = common::start(&[]);
    let api = Api {
        http: reqwest::Client::new(),
        base: s.url.clone(),
    };
    let id = api.store().await;
    let context = json!({"ip": "10.0.0.1", "now": "2024-01-01T00:00:00Z"});
    let anne = json!({"user": "user:anne", "relation": "viewer", "object": "doc:1"});
    let (st, c) = api
        .post(
            &format!("/stores/{id}/check"),
            json!({"tuple_key": anne, "context": context}),
        )
        .await;
    assert_eq!((st, &c["allowed"]), (200, &json!(true)), "{c}");
    let (st, b) = api
        .post(
            &format!("/stores/{id}/batch-check"),
            json!({"checks": [{"tuple_key": anne, "context": context, "correlation_id": "a"}]}),
        )
        .await;
    assert_eq!(
        (st, &b["result"]["a"]["allowed"]),
        (200, &json!(true)),
        "{b}"
    );
    let (st, lo) = api
        .post(
            &format!("/stores/{id}/list-objects"),
            json!({"type": "doc", "relation": "viewer", "user": "user:anne", "context": context}),
        )
        .await;
    assert_eq!((st, &lo["objects"]), (200, &json!(["doc:1"])), "{lo}");
    let (st, lu) = api
        .post(
            &format!("/stores/{id}/list-users"),
            json!({"object": {"type": "doc", "id": "1"}, "relation": "viewer", "user_filters": [{"type": "user"}], "context": context}),
        )
        .await;
    assert_eq!(st, 200, "{lu}");
    // A context that is not an object is malformed.
    let (st, bad) = api
        .post(
            &format!("/stores/{id}/check"),
            json!({"tuple_key": anne, "context": "ip=10.0.0.1"}),
        )
        .await;
    assert_eq!(
        (st, &bad["code"]),
        (400, &json!("validation_error")),
        "{bad}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_refused() {
    let s = common::start(&[]);
    let api = Api {
        http: reqwest::Client::new(),
        base: s.url.clone(),
    };
    let id = api.store().await;
    let anne = json!({"user": "user:anne", "relation": "viewer", "object": "doc:1"});
    for (path, body, field) in [
        (
            "check",
            json!({"tuple_key": anne, "contextual_tuple": {"tuple_keys": []}}),
            "contextual_tuple",
        ),
        (
            "check",
            json!({"tuple_key": {"user": "user:anne", "relation": "viewer", "object": "doc:1", "condition": {"name": "c"}}}),
            "condition",
        ),
        (
            "list-objects",
            json!({"type": "doc", "relation": "viewer", "user": "user:anne", "filter": "x"}),
            "filter",
        ),
        (
            "write",
            json!({"writes": {"tuple_keys": [anne], "on_missing": "ignore"}}),
            "on_missing",
        ),
        ("read", json!({"tuple_key": anne, "limit": 1}), "limit"),
    ] {
        let (st, b) = api.post(&format!("/stores/{id}/{path}"), body).await;
        assert_eq!(st, 400, "{path}: {b}");
        assert_eq!(b["code"], "validation_error", "{path}: {b}");
        assert!(
            b["message"].as_str().is_some_and(|m| m.contains(field)),
            "{path}: names `{field}`: {b}"
        );
    }
}
