//! Following a train through the Conductor's event stream: `train watch`,
//! and `--wait` / `train wait` (which print the train's progress line each
//! time its events change it).
//!
//! The stream is read by a task of its own ([`EventStream`]) that
//! reconnects after a dropped connection with `Last-Event-ID`, so no event
//! is missed or repeated, and rides out a Conductor it cannot reach for
//! the `--unreachable-timeout` bound (then exit status 4).

use super::client::{human_std, unreachable, Patience};
use super::sse::{SseEvent, SseParser};
use super::train::{progress_line, skip_warning, status_exit};
use super::*;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Longest a stream may stay silent before it counts as dropped (the
/// Conductor sends a keep-alive comment every 15 s).
const SILENCE: Duration = Duration::from_secs(45);
/// A stream request is cut (and resumed) after this long at the latest.
const STREAM_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How often `--wait` re-reads the train while no event comes (the
/// countdown to a deploy window).
const REFRESH: Duration = Duration::from_secs(30);
/// Events arriving within this of each other are shown as one change.
const SETTLE: Duration = Duration::from_millis(50);
/// ... but a busy train is shown at least this often.
const SETTLE_AT_MOST: Duration = Duration::from_millis(500);

/// The events of one stream of the API, read by a task of its own.
pub(super) struct EventStream {
    rx: mpsc::Receiver<Result<SseEvent, CliError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventStream {
    /// Follow `path` (under `/api/v1`) from its start.
    pub(super) fn open(client: &Client, path: &str, patience: Patience) -> EventStream {
        let (tx, rx) = mpsc::channel(256);
        let url = format!("{}/api/v1{path}", client.base);
        let task = tokio::spawn(read_stream(client.clone(), url, patience, tx));
        EventStream { rx, task }
    }

    /// The next event; None once the stream has ended (after `end`).
    /// Cancel-safe.
    pub(super) async fn next(&mut self) -> Result<Option<SseEvent>, CliError> {
        self.rx.recv().await.transpose()
    }
}

/// How reading one connection ended.
enum Relay {
    /// `end` was received, or nobody reads the events any more.
    Ended,
    /// The connection went away: resume from the last id.
    Dropped(CliError),
    Failed(CliError),
}

async fn read_stream(
    client: Client,
    url: String,
    p: Patience,
    tx: mpsc::Sender<Result<SseEvent, CliError>>,
) {
    let mut last_id: Option<String> = None;
    let mut delay = p.first;
    let mut lost: Option<Instant> = None;
    loop {
        let why = match connect(&client, &url, last_id.as_deref()).await {
            Ok(resp) => {
                if lost.take().is_some() {
                    eprintln!("reached the Conductor at {} again", client.base);
                }
                delay = p.first;
                match relay(&client, resp, &mut last_id, &tx).await {
                    Relay::Ended => return,
                    Relay::Dropped(why) => why,
                    Relay::Failed(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            Err(e) if e.code == exit::UNREACHABLE => e,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let since = *lost.get_or_insert_with(|| {
            eprintln!("{}; retrying for up to {}", why.message, human_std(p.bound));
            Instant::now()
        });
        let left = p.bound.saturating_sub(since.elapsed());
        if left.is_zero() {
            let e = CliError {
                code: exit::UNREACHABLE,
                message: format!(
                    "{} (gave up after {}; --unreachable-timeout sets how long to retry)",
                    why.message,
                    human_std(p.bound)
                ),
            };
            let _ = tx.send(Err(e)).await;
            return;
        }
        tokio::time::sleep(delay.min(left)).await;
        delay = (delay * 2).min(p.max);
    }
}

async fn connect(
    client: &Client,
    url: &str,
    last_id: Option<&str>,
) -> Result<reqwest::Response, CliError> {
    let mut rb = client
        .http
        .get(url)
        .bearer_auth(&client.token)
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .timeout(STREAM_TIMEOUT);
    if let Some(id) = last_id {
        rb = rb.header("last-event-id", id);
    }
    let resp = rb.send().await.map_err(|e| {
        if e.is_connect() || e.is_timeout() || e.is_request() {
            unreachable(&client.base, &e)
        } else {
            CliError {
                code: exit::FAILED,
                message: format!("request to the Conductor at {} failed: {e}", client.base),
            }
        }
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    Err(client.http_error(status, &body))
}

async fn relay(
    client: &Client,
    mut resp: reqwest::Response,
    last_id: &mut Option<String>,
    tx: &mpsc::Sender<Result<SseEvent, CliError>>,
) -> Relay {
    let dropped = |why: String| {
        Relay::Dropped(CliError {
            code: exit::UNREACHABLE,
            message: format!(
                "lost the event stream of the Conductor at {}: {why}",
                client.base
            ),
        })
    };
    let mut parser = SseParser::default();
    loop {
        let chunk = match tokio::time::timeout(SILENCE, resp.chunk()).await {
            Err(_) => return dropped(format!("nothing received for {}", human_std(SILENCE))),
            Ok(Err(e)) => return dropped(e.to_string()),
            Ok(Ok(None)) => return dropped("the connection was closed".into()),
            Ok(Ok(Some(c))) => c,
        };
        let events = match parser.feed(&chunk) {
            Ok(v) => v,
            Err(e) => {
                return Relay::Failed(CliError {
                    code: exit::FAILED,
                    message: e.to_string(),
                })
            }
        };
        for ev in events {
            if ev.id.is_some() {
                last_id.clone_from(&ev.id);
            }
            let end = ev.event == "end";
            if tx.send(Ok(ev)).await.is_err() || end {
                return Relay::Ended;
            }
        }
    }
}

// ---- train watch ------------------------------------------------------------------

/// `conductor train watch`: each event as a line (or its JSON), until the
/// train ends; the exit status of its outcome.
pub(super) async fn watch(client: &Client, id: &str, json: bool, patience: Patience) -> CliResult {
    let mut stream = EventStream::open(client, &format!("/trains/{}/stream", enc(id)), patience);
    let mut lines = Lines::default();
    while let Some(ev) = stream.next().await? {
        let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
        if ev.event == "end" {
            if json {
                println!("{}", json!({"train": id, "end": data}));
            } else {
                println!("{}", end_line(id, &data));
            }
            return Ok(status_exit(&s(&data["status"])));
        }
        if json {
            println!("{}", ev.data);
        } else {
            println!("{}", lines.line(&data));
        }
    }
    Err(CliError {
        code: exit::FAILED,
        message: format!("the event stream of train {id} ended before the train did"),
    })
}

/// The kind of each step of a train's spec (`deploy`, `test`, ...).
fn step_kinds(spec: &Value) -> Vec<String> {
    spec["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|st| match st {
            Value::Object(m) => m.keys().next().cloned().unwrap_or_else(|| "step".into()),
            Value::String(k) => k.clone(),
            _ => "step".into(),
        })
        .collect()
}

/// What `train watch` remembers to say what an event means.
#[derive(Default)]
struct Lines {
    /// The kind of each step (from the `created` event).
    steps: Vec<String>,
    /// Per cell, the step it runs after its last finished one.
    next_step: std::collections::HashMap<String, usize>,
}

impl Lines {
    fn line(&mut self, d: &Value) -> String {
        let e = &d["event"];
        match e["type"].as_str() {
            Some("created") => self.steps = step_kinds(&e["spec"]),
            Some("step_finished") if e["ok"] == true => {
                if let (Some(cell), Some(n)) = (e["cell"].as_str(), e["step"].as_u64()) {
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    self.next_step.insert(cell.to_string(), n.saturating_add(1));
                }
            }
            _ => {}
        }
        // A cell's timer ends its bake, or the wait for its deploy window.
        let baking = e["cell"]
            .as_str()
            .and_then(|c| self.next_step.get(c))
            .and_then(|n| self.steps.get(*n))
            .is_some_and(|k| k == "bake");
        event_line(d, &self.steps, baking)
    }
}

/// `2026-11-29 19:04:05  use1-a  deploy succeeded: use1-a now runs 1.2.0`.
/// `baking`: the event's cell was baking.
fn event_line(d: &Value, steps: &[String], baking: bool) -> String {
    let at = d["at"]
        .as_str()
        .and_then(|a| DateTime::parse_from_rfc3339(a).ok())
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| s(&d["at"]));
    let e = &d["event"];
    let cell = e["cell"].as_str().unwrap_or("-");
    let by = s(&e["by"]);
    let reason = e["reason"]
        .as_str()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    let what = match e["type"].as_str().unwrap_or("") {
        "created" => format!(
            "train created: pipeline {} version {}, started by {}{}",
            s(&e["spec"]["pipeline"]),
            s(&e["spec"]["version"]),
            s(&e["spec"]["started_by"]),
            if e["queued"] == true {
                " (queued behind a running train)"
            } else {
                ""
            }
        ),
        "promoted" => "the train before it ended; this one runs now".into(),
        "superseded" => format!("superseded by train {}", s(&e["by"])),
        "lease_granted" => "lease granted: the cell is this train's until it is done".into(),
        "step_finished" => {
            let kind = e["step"]
                .as_u64()
                .and_then(|n| steps.get(usize::try_from(n).ok()?))
                .map_or("step", String::as_str);
            let attempt = e["attempt"]
                .as_u64()
                .filter(|a| *a > 1)
                .map(|a| format!(" (attempt {a})"))
                .unwrap_or_default();
            let outcome = if e["ok"] == true {
                "succeeded"
            } else {
                "failed"
            };
            format!("{kind} {outcome}{attempt}: {}", s(&e["detail"]))
        }
        "wake" if baking => "bake over".into(),
        "wake" if e["cell"].is_string() => "deploy window timer fired".into(),
        "wake" => "the train looks at what it can start".into(),
        "approved" => format!("wave {} approved by {by}{reason}", s(&e["wave"])),
        "rejected" => format!("wave {} rejected by {by}{reason}", s(&e["wave"])),
        "cancel_requested" => format!("cancel requested by {by}"),
        "rollback_requested" => format!("rollback requested by {by}"),
        "rollback_finished" if e["skipped"] == true => {
            format!("rollback skipped: {}", s(&e["detail"]))
        }
        "rollback_finished" if e["ok"] == true => format!("rolled back: {}", s(&e["detail"])),
        "rollback_finished" => format!("rollback failed: {}", s(&e["detail"])),
        other => other.to_string(),
    };
    format!("{at}  {cell:<16} {what}")
}

/// `train t1 ended: succeeded (succeeded 3)`.
fn end_line(id: &str, d: &Value) -> String {
    let summary: Vec<String> = d["summary"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    format!(
        "train {id} ended: {} ({})",
        s(&d["status"]),
        summary.join(", ")
    )
}

// ---- --wait -------------------------------------------------------------------------

/// How `wait_for` reports and when it returns.
#[derive(Default)]
pub(super) struct Follow<'a> {
    /// Progress on standard error instead of standard output.
    pub(super) quiet: bool,
    /// Return once this gated wave waits for an approval (or was approved).
    pub(super) gate: Option<&'a str>,
}

/// Has the gated wave `gate` reached its gate (waiting, or approved)?
fn gate_reached(t: &Value, gate: &str) -> Result<bool, CliError> {
    let waves = t["spec"]["plan"]["waves"].as_array();
    let Some(i) = waves
        .into_iter()
        .flatten()
        .position(|w| w["name"].as_str() == Some(gate))
    else {
        return Err(CliError::usage(format!(
            "train {} has no wave {gate:?}",
            s(&t["spec"]["id"])
        )));
    };
    if waves
        .and_then(|w| w.get(i))
        .is_none_or(|w| w["approval"].is_null())
    {
        return Err(CliError::usage(format!(
            "wave {gate:?} has no approval gate"
        )));
    }
    // Waiting at the gate, or past it (approved and running or done).
    Ok(matches!(
        t["waves"][i]["status"].as_str(),
        Some("awaiting_approval" | "running" | "done")
    ))
}

/// Follow a train until it ends (or reaches `follow.gate`); its exit
/// status. The train is read when its events say it changed (and every
/// [`REFRESH`]), and its progress line printed when that changed. While
/// the Conductor cannot be reached, reads and the stream keep retrying for
/// `patience`'s bound.
pub(super) async fn wait_for(
    client: &Client,
    id: &str,
    patience: Patience,
    follow: Follow<'_>,
) -> CliResult {
    let say = |line: &str| {
        if follow.quiet {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let path = format!("/trains/{}/stream", enc(id));
    let mut stream: Option<EventStream> = None;
    let mut last = String::new();
    loop {
        let t = client
            .get_patiently(&format!("/trains/{}", enc(id)), patience)
            .await?;
        let line = progress_line(&t, Utc::now());
        if line != last {
            say(&line);
            last = line;
        }
        if let Some(gate) = follow.gate {
            if gate_reached(&t, gate)? {
                return Ok(exit::OK);
            }
        }
        let status = s(&t["status"]);
        if !matches!(status.as_str(), "queued" | "running" | "rolling_back") {
            if let Some(f) = t["failure"].as_str() {
                say(f);
            }
            if let Some(w) = skip_warning(&t) {
                say(&w);
            }
            return Ok(status_exit(&status));
        }
        // Opened once the train was read: a Conductor that cannot be
        // reached is reported once, by the read.
        let events = stream.get_or_insert_with(|| EventStream::open(client, &path, patience));
        if !next_change(events).await? {
            // The stream ended (the train ended, then was rolled back?):
            // read the train again, and follow it anew.
            stream = None;
        }
    }
}

/// Wait until the train's events say it changed (or [`REFRESH`] passed);
/// false if the stream ended.
async fn next_change(events: &mut EventStream) -> Result<bool, CliError> {
    match tokio::time::timeout(REFRESH, events.next()).await {
        Err(_) => return Ok(true),
        Ok(r) => {
            if r?.is_none() {
                return Ok(false);
            }
        }
    }
    // Take the rest of a burst of events before reading the train.
    let until = Instant::now() + SETTLE_AT_MOST;
    while Instant::now() < until {
        match tokio::time::timeout(SETTLE, events.next()).await {
            Err(_) => break,
            Ok(r) => {
                if r?.is_none() {
                    break;
                }
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_lines() {
        let steps = step_kinds(&json!({"steps": [{"deploy": {}}, {"test": {}}, {"bake": "1s"}]}));
        assert_eq!(steps, ["deploy", "test", "bake"]);
        let d = json!({"seq": 9, "train": "t1", "at": "2026-11-29T19:04:05.123456Z",
            "event": {"type": "step_finished", "cell": "use1-a", "step": 0, "attempt": 1,
                "ok": true, "detail": "use1-a now runs 1.2.0"}});
        assert_eq!(
            event_line(&d, &steps, false),
            "2026-11-29 19:04:05  use1-a           deploy succeeded: use1-a now runs 1.2.0"
        );
        let d = json!({"at": "2026-11-29T19:04:06Z",
            "event": {"type": "approved", "wave": "rest", "by": "ana", "groups": [], "admin": false, "reason": "ok"}});
        assert_eq!(
            event_line(&d, &steps, false),
            "2026-11-29 19:04:06  -                wave rest approved by ana: ok"
        );
        // A cell's timer after its test step (the next is a bake).
        let mut lines = Lines::default();
        let spec = json!({"steps": [{"test": {}}, {"bake": "1s"}]});
        let at = "2026-11-29T19:04:05Z";
        lines.line(&json!({"at": at, "event": {"type": "created", "spec": spec, "queued": false}}));
        let wake = json!({"at": at, "event": {"type": "wake", "cell": "c1"}});
        assert!(lines
            .line(&wake)
            .ends_with("c1               deploy window timer fired"));
        lines.line(
            &json!({"at": at, "event": {"type": "step_finished", "cell": "c1",
            "step": 0, "attempt": 1, "ok": true, "detail": "ok"}}),
        );
        assert!(lines.line(&wake).ends_with("c1               bake over"));
        let end = json!({"status": "failed", "summary": {"failed": 1, "succeeded": 2}});
        assert_eq!(
            end_line("t1", &end),
            "train t1 ended: failed (failed 1, succeeded 2)"
        );
    }
}
