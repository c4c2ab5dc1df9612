//! Event streams (server-sent events): order, resuming, the end of a
//! train's stream, bad positions, the cap, and events committed by another
//! process (seen by polling).

use crate::common::TestApp;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use conductor_core::train::{Event, Train, TrainSpec};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

const GATED: &str = "name: svc\nartifact: { kind: command, name: svc }\ncells: { labels: { service: fga } }\nsteps:\n  - command: { run: \"true\" }\nwaves:\n  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100, approval: { group: release-managers } }\n";

/// One event as received.
#[derive(Debug, Clone)]
struct Ev {
    id: Option<i64>,
    kind: String,
    data: Value,
}

/// Reads events off a streaming response body.
struct Sse {
    body: axum::body::BodyDataStream,
    buf: String,
}

impl Sse {
    /// The next event (comments skipped); None when the stream ends.
    async fn next(&mut self) -> Option<Ev> {
        // One deadline for the event: keep-alive comments do not extend it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse().expect("numeric id"));
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = serde_json::from_str(&data).expect("JSON data");
                return Some(Ev { id, kind, data });
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .expect("an event within 20s");
            match chunk {
                Some(c) => self
                    .buf
                    .push_str(std::str::from_utf8(&c.expect("body")).expect("UTF-8")),
                None => return None,
            }
        }
    }

    /// Nothing arrives for `d` (the stream is served and waits).
    async fn quiet(&mut self, d: Duration) {
        if let Ok(c) = tokio::time::timeout(d, self.body.next()).await {
            panic!("unexpected {c:?}");
        }
    }

    /// Events until the train's `end` (included) and the end of the stream.
    async fn until_end(&mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            let end = e.kind == "end";
            out.push(e);
            if end {
                assert!(self.next().await.is_none(), "the stream goes on after end");
                break;
            }
        }
        out
    }
}

/// GET a stream as `role`, with an optional Last-Event-ID.
async fn open(
    app: &TestApp,
    path: &str,
    last_id: Option<&str>,
) -> Result<Sse, (StatusCode, Value)> {
    let mut b = Request::builder()
        .uri(format!("/api/v1{path}"))
        .header("authorization", format!("Bearer {}", app.token("ci")));
    if let Some(id) = last_id {
        b = b.header("last-event-id", id);
    }
    let resp = tower::ServiceExt::oneshot(app.app.clone(), b.body(Body::empty()).expect("req"))
        .await
        .expect("infallible");
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        return Err((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ));
    }
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream",
        "an event stream"
    );
    Ok(Sse {
        body: resp.into_body().into_data_stream(),
        buf: String::new(),
    })
}

async fn start(app: &TestApp, pipeline: &str) -> String {
    let (s, t) = app
        .as_role(
            "ci",
            "POST",
            "/trains",
            json!({"pipeline": pipeline, "version": "1.0"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    t["spec"]["id"].as_str().expect("id").to_string()
}

async fn app_with_pipelines() -> TestApp {
    let app = TestApp::new().await;
    for yaml in [
        GATED.to_string(),
        GATED
            .replace("name: svc", "name: plain")
            .replace(", approval: { group: release-managers }", ""),
    ] {
        let (s, v) = app
            .as_role("developer", "POST", "/pipelines", json!({ "yaml": yaml }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    app
}

/// What `/trains/{id}/events` lists: (seq, type).
async fn logged(app: &TestApp, id: &str) -> Vec<(i64, String)> {
    let (_, v) = app
        .as_role(
            "ci",
            "GET",
            &format!("/trains/{id}/events?limit=5000"),
            Value::Null,
        )
        .await;
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["seq"].as_i64().expect("seq"),
                e["event"]["type"].as_str().expect("type").to_string(),
            )
        })
        .collect()
}

fn seqs(evs: &[Ev]) -> Vec<(i64, String)> {
    evs.iter()
        .filter(|e| e.kind != "end")
        .map(|e| (e.id.expect("id"), e.kind.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trains_events_arrive_in_order_and_its_stream_ends_with_its_status() {
    let app = app_with_pipelines().await;
    let id = start(&app, "svc").await;
    let mut sse = open(&app, &format!("/trains/{id}/stream"), None)
        .await
        .expect("stream");
    // Live: events until the gate waits (the canary's step finished).
    let mut got = Vec::new();
    while !got.iter().any(|e: &Ev| e.kind == "step_finished") {
        got.push(sse.next().await.expect("an event"));
    }
    assert_eq!(got[0].kind, "created");
    // Approved while the stream is open: the rest follows, then `end`.
    let mut gate_waits = false;
    for _ in 0..500 {
        let (_, t) = app
            .as_role("ci", "GET", &format!("/trains/{id}"), Value::Null)
            .await;
        if t["gates_waiting"] == json!(["rest"]) {
            gate_waits = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gate_waits, "the train never reached its gate");
    let (s, v) = app
        .as_role(
            "approver",
            "POST",
            &format!("/trains/{id}/approve"),
            json!({"gate": "rest"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    got.extend(sse.until_end().await);

    let end = got.last().expect("events");
    assert_eq!(end.kind, "end");
    assert_eq!(end.data["status"], "succeeded", "{}", end.data);
    assert_eq!(end.data["summary"], json!({"succeeded": 4}), "{}", end.data);
    // Every event once, in order, as the log has them; each is
    // {seq, train, at, event} with its id and kind.
    assert_eq!(seqs(&got), logged(&app, &id).await);
    for e in got.iter().filter(|e| e.kind != "end") {
        assert_eq!(Some(e.data["seq"].as_i64().expect("seq")), e.id);
        assert_eq!(e.data["train"], json!(id));
        assert_eq!(e.data["event"]["type"], json!(e.kind));
        assert!(e.data["at"].is_string());
    }
    assert!(got.iter().any(|e| e.kind == "approved"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_gives_exactly_the_later_events() {
    let app = app_with_pipelines().await;
    let id = start(&app, "plain").await;
    let all = open(&app, &format!("/trains/{id}/stream"), None)
        .await
        .expect("stream")
        .until_end()
        .await;
    let all = seqs(&all);
    assert!(all.len() > 4, "{all:?}");
    let (k, _) = all[2];
    let want = all[3..].to_vec();
    // Last-Event-ID, ?after, and the header winning over the query.
    for (path, header) in [
        (format!("/trains/{id}/stream"), Some(k.to_string())),
        (format!("/trains/{id}/stream?after={k}"), None),
        (format!("/trains/{id}/stream?after=0"), Some(k.to_string())),
    ] {
        let got = open(&app, &path, header.as_deref())
            .await
            .expect("stream")
            .until_end()
            .await;
        assert_eq!(got.last().map(|e| e.kind.as_str()), Some("end"));
        assert_eq!(seqs(&got), want, "{path} {header:?}");
    }
    // Past the last event: only the end.
    let last = all.last().expect("events").0.to_string();
    let got = open(&app, &format!("/trains/{id}/stream"), Some(&last))
        .await
        .expect("stream")
        .until_end()
        .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].data["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_of_every_train_is_live_and_in_commit_order() {
    let app = app_with_pipelines().await;
    let first = start(&app, "plain").await;
    open(&app, &format!("/trains/{first}/stream"), None)
        .await
        .expect("stream")
        .until_end()
        .await;
    // Without a position: from now on (nothing of the train before).
    let mut live = open(&app, "/stream", None).await.expect("stream");
    let second = start(&app, "svc").await;
    let e = live.next().await.expect("an event");
    assert_eq!(
        (e.kind.as_str(), &e.data["train"]),
        ("created", &json!(second))
    );
    // From the start: both trains, in seq order, and it does not end.
    let mut all = open(&app, "/stream?after=0", None).await.expect("stream");
    let mut trains = std::collections::BTreeSet::new();
    let mut last = 0;
    while trains.len() < 2 {
        let e = all.next().await.expect("an event");
        let seq = e.id.expect("id");
        assert!(seq > last, "{seq} after {last}");
        last = seq;
        trains.insert(e.data["train"].as_str().expect("train").to_string());
    }
    assert_eq!(trains, [first, second].into_iter().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_another_process_commits_are_streamed_too() {
    let app = app_with_pipelines().await;
    let id = start(&app, "plain").await;
    // Once it has ended, this process's engine commits nothing more.
    open(&app, &format!("/trains/{id}/stream"), None)
        .await
        .expect("stream")
        .until_end()
        .await;
    let mut live = open(&app, "/stream", None).await.expect("stream");
    live.quiet(Duration::from_millis(300)).await;
    // Another replica's engine commits a train into the same database: this
    // process's engine does not know; its streams poll the store.
    let (_, t) = app
        .as_role("ci", "GET", &format!("/trains/{id}"), Value::Null)
        .await;
    let mut spec: TrainSpec = serde_json::from_value(t["spec"].clone()).expect("spec");
    spec.id = "elsewhere-1".into();
    let now = chrono::Utc::now();
    let train = Train::new(spec.clone(), true, now);
    let created = Event::Created {
        spec: Box::new(spec),
        queued: true,
    };
    app.store
        .commit(
            &[("elsewhere-1".to_string(), 1, created, now)],
            &[&train],
            &[],
        )
        .await
        .expect("commit");
    let e = loop {
        let e = live.next().await.expect("an event");
        if e.data["train"] == "elsewhere-1" {
            break e;
        }
    };
    assert_eq!(e.kind, "created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_positions_and_unknown_trains_are_refused() {
    let app = app_with_pipelines().await;
    let id = start(&app, "plain").await;
    for (path, header) in [
        (format!("/trains/{id}/stream?after=abc"), None),
        (format!("/trains/{id}/stream?after=-1"), None),
        ("/stream?after=1.5".to_string(), None),
        (format!("/trains/{id}/stream"), Some("seven")),
        ("/stream".to_string(), Some("-3")),
        ("/stream?from=3".to_string(), None),
    ] {
        let (s, v) = open(&app, &path, header).await.err().expect("refused");
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path} {header:?}: {v}");
        assert_eq!(v["code"], "invalid_request", "{path}: {v}");
        assert!(v["message"].is_string(), "{v}");
    }
    let (s, v) = open(&app, "/trains/nope/stream", None)
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (s, &v["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_cap_are_refused_until_one_closes() {
    let app = app_with_pipelines().await;
    let mut open_streams = Vec::new();
    for _ in 0..conductor::api::MAX_STREAMS {
        open_streams.push(open(&app, "/stream", None).await.expect("under the cap"));
    }
    let (s, v) = open(&app, "/stream", None)
        .await
        .err()
        .expect("over the cap");
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["code"], "too_many_streams", "{v}");
    assert!(v["message"].is_string(), "{v}");
    let id = start(&app, "plain").await;
    let (s, _) = open(&app, &format!("/trains/{id}/stream"), None)
        .await
        .err()
        .expect("over the cap");
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    // A client that goes away frees its place.
    drop(open_streams.pop());
    assert!(open(&app, &format!("/trains/{id}/stream"), None)
        .await
        .is_ok());
}
