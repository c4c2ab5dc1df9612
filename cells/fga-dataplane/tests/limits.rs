//! A store's rate limit holds however its id is spelled in the path, and
//! only live stores get per-store metric series.

mod common;

use serde_json::{json, Value};

async fn create(http: &reqwest::Client, base: &str, name: &str) -> String {
    let v: Value = http
        .post(format!("{base}/stores"))
        .json(&json!({ "name": name }))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    v["id"].as_str().expect("id").to_string()
}

async fn metrics(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_store_id_is_the_same_store() {
    let s = common::start(&["--rate-limit", "1", "--rate-limit-burst", "3"]);
    let http = reqwest::Client::new();
    let id = create(&http, &s.url, "enc").await;
    // `%30` is `0`: the same store, spelled differently (every ULID here
    // starts with `0`).
    assert!(id.starts_with('0'), "{id}");
    let encoded = format!("%{:02X}{}", id.as_bytes()[0], &id[1..]);
    let mut statuses = Vec::new();
    for i in 0..8 {
        let path = if i % 2 == 0 { &id } else { &encoded };
        let r = http
            .get(format!("{}/stores/{path}", s.url))
            .send()
            .await
            .expect("get");
        statuses.push(r.status().as_u16());
    }
    // One bucket of 3 for both spellings (a token may come back meanwhile).
    let ok = statuses.iter().filter(|&&c| c == 200).count();
    assert!((3..=4).contains(&ok), "{statuses:?}");
    assert!(
        statuses.iter().all(|&c| c == 200 || c == 429),
        "{statuses:?}"
    );
    // Another spelling that is not an id of ours is refused, not limited
    // apart: lower case is not how OpenFGA writes ids.
    let r = http
        .get(format!("{}/stores/{}", s.url, id.to_lowercase()))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 400);
    let m = metrics(&http, &s.url).await;
    let series: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("fga_store_requests_total{"))
        .collect();
    assert_eq!(
        series,
        vec![format!("fga_store_requests_total{{store=\"{id}\"}} 8")],
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_store_ids_add_no_series() {
    let s = common::start(&["--rate-limit", "1000"]);
    let http = reqwest::Client::new();
    let live = create(&http, &s.url, "live").await;
    let gone = create(&http, &s.url, "gone").await;
    for id in [&live, &gone] {
        let r = http
            .post(format!("{}/stores/{id}/read", s.url))
            .json(&json!({}))
            .send()
            .await
            .expect("read");
        assert_eq!(r.status().as_u16(), 200);
    }
    // 300 requests to stores that do not exist (valid ids and others).
    for i in 0..300u32 {
        let id = if i % 2 == 0 {
            format!("01ARZ3NDEKTSV4RRFF{i:08}")
        } else {
            format!("no-such-store-{i}")
        };
        let r = http
            .post(format!("{}/stores/{id}/check", s.url))
            .json(&json!({}))
            .send()
            .await
            .expect("check");
        let want = if i % 2 == 0 { 404 } else { 400 };
        assert_eq!(r.status().as_u16(), want, "{id}");
        assert!(r.headers().get("x-ratelimit-limit").is_none());
    }
    // A deleted store's series goes too.
    let r = http
        .delete(format!("{}/stores/{gone}", s.url))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 204);
    let m = metrics(&http, &s.url).await;
    let stores: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("fga_store_requests_total{"))
        .collect();
    assert_eq!(
        stores,
        vec![format!("fga_store_requests_total{{store=\"{live}\"}} 1")],
        "{m}"
    );
    // The refusals are still counted per method.
    assert!(
        m.contains("fga_requests_total{method=\"Check\",status=\"404\"} 150"),
        "{m}"
    );
}
