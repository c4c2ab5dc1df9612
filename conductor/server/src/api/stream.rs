//! Live event streams (server-sent events): `GET /stream` (every train) and
//! `GET /trains/{id}/stream` (one train, ending with `event: end`).
//!
//! Each event is `id: SEQ`, `event: KIND` (the train event's `type`),
//! `data: {"seq", "train", "at", "event"}`. The position is the global
//! event seq, so a client resumes where it was with `Last-Event-ID` (or
//! `?after=SEQ`) on either stream. Streams read the store: on this process
//! they wake as soon as the engine commits ([`Engine::committed`]), and
//! they also poll every [`POLL_EVERY`], because the engine that commits
//! may run in another replica.

use super::*;
use crate::store::{Store, StreamEvent};
use crate::workflow::{Workflow, WorkflowError};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Extension;
use conductor_core::train::TrainStatus;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most streams served at once (per router); beyond it 503 `too_many_streams`.
pub const MAX_STREAMS: usize = 256;
/// How often a stream reads the store when nothing woke it.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// Most events read from the store at a time.
pub const PAGE: i64 = 500;
/// A comment line this often keeps idle connections (and proxies) open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Clone)]
struct Streams(Arc<Semaphore>);

impl Streams {
    fn permit(&self) -> ApiResult<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                format!("this Conductor already serves {MAX_STREAMS} event streams; retry later"),
            )
        })
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/stream", get(all_trains))
        .route("/trains/{id}/stream", get(one_train))
        .layer(Extension(Streams(Arc::new(Semaphore::new(MAX_STREAMS)))))
}

/// `?after=SEQ`: start after this event seq.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    after: Option<String>,
}

fn parse_seq(what: &str, s: &str) -> ApiResult<i64> {
    match s.trim().parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => {
            let shown: String = s.chars().take(40).collect();
            Err(ApiError::bad_request(format!(
                "{what} must be an event seq (a whole number, 0 or more), not {shown:?}"
            )))
        }
    }
}

/// Where to start: `Last-Event-ID` (what a reconnecting client knows
/// last) wins over `?after`; None if neither is given.
fn position(headers: &HeaderMap, q: &StreamQuery) -> ApiResult<Option<i64>> {
    if let Some(h) = headers.get("last-event-id") {
        let s = h
            .to_str()
            .map_err(|_| ApiError::bad_request("Last-Event-ID must be an event seq"))?;
        if !s.trim().is_empty() {
            return parse_seq("Last-Event-ID", s).map(Some);
        }
    }
    q.after
        .as_deref()
        .map(|a| parse_seq("after", a))
        .transpose()
}

/// Every train's events; without a position, from now on.
async fn all_trains(
    State(st): State<AppState>,
    _id: Identity,
    Extension(streams): Extension<Streams>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Response> {
    let after = match position(&headers, &q)? {
        Some(n) => n,
        None => st.store.last_event_seq().await?,
    };
    let permit = streams.permit()?;
    Ok(respond(Follow::new(&st, None, after, permit)))
}

/// One train's events, from its first unless a position is given; ends
/// with `event: end` (`{status, summary}`) once the train has finished and
/// every event was sent.
async fn one_train(
    State(st): State<AppState>,
    _id: Identity,
    Extension(streams): Extension<Streams>,
    Path(tid): Path<String>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Response> {
    let after = position(&headers, &q)?.unwrap_or(0);
    if st.store.train_status(&tid).await?.is_none() {
        return Err(ApiError::not_found(format!("no train {tid:?}")));
    }
    let permit = streams.permit()?;
    Ok(respond(Follow::new(&st, Some(tid), after, permit)))
}

fn respond(f: Follow) -> Response {
    let events = futures::stream::unfold(f, |mut f| async move {
        f.next().await.map(|e| (Ok::<_, Infallible>(e), f))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// One stream's state: its position, what is read but not yet sent, and
/// the slot it holds until the client goes away.
struct Follow {
    store: Store,
    workflow: Arc<dyn Workflow>,
    train: Option<String>,
    after: i64,
    committed: tokio::sync::watch::Receiver<i64>,
    queue: VecDeque<SseEvent>,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl Follow {
    fn new(st: &AppState, train: Option<String>, after: i64, permit: OwnedSemaphorePermit) -> Self {
        Follow {
            store: st.store.clone(),
            workflow: st.workflow.clone(),
            committed: st.workflow.committed(),
            train,
            after,
            queue: VecDeque::new(),
            done: false,
            _permit: permit,
        }
    }

    /// The next event to send; None ends the stream (after `end`, or on
    /// a store error: the client resumes from the last id it got).
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            match self.fill().await {
                Ok(true) => continue,
                Ok(false) => self.idle().await,
                Err(e) => {
                    tracing::warn!(error = %e, train = ?self.train, "event stream ended by an error");
                    return None;
                }
            }
        }
    }

    /// Wait for a commit of this process's engine or the next poll.
    async fn idle(&mut self) {
        tokio::select! {
            r = self.committed.changed() => {
                if r.is_err() {
                    // No engine here any more: polling only.
                    tokio::time::sleep(POLL_EVERY).await;
                }
            }
            _ = tokio::time::sleep(POLL_EVERY) => {}
        }
    }

    /// Read the next page; true if there is something to send.
    async fn fill(&mut self) -> Result<bool, WorkflowError> {
        let store = &self.store;
        // Status first, then events: a train's finished status is committed
        // with the events that finished it, so once it reads finished, the
        // page read after it holds every event left.
        let finished = match &self.train {
            Some(id) => store
                .train_status(id)
                .await?
                .and_then(|s| TrainStatus::ALL.into_iter().find(|x| x.as_str() == s))
                .is_some_and(TrainStatus::is_terminal),
            None => false,
        };
        let page = store
            .events_after(self.after, self.train.as_deref(), PAGE)
            .await?;
        let full = i64::try_from(page.len()).unwrap_or(i64::MAX) >= PAGE;
        for e in page {
            self.after = e.seq;
            self.queue.push_back(sse_event(e));
        }
        if finished && !full {
            if let Some(id) = &self.train {
                if let Some(t) = self.workflow.train(id).await? {
                    if t.status.is_terminal() {
                        let data =
                            json!({"status": t.status.as_str(), "summary": t.cell_summary()});
                        self.queue
                            .push_back(SseEvent::default().event("end").data(data.to_string()));
                        self.done = true;
                    }
                }
            }
        }
        Ok(!self.queue.is_empty())
    }
}

/// `id: SEQ`, `event: KIND`, `data: {seq, train, at, event}`.
fn sse_event(e: StreamEvent) -> SseEvent {
    // The kind is the event's own `type`; anything else (never written by
    // this build) is sent as `event` rather than breaking the stream.
    let kind = e.event["type"]
        .as_str()
        .filter(|k| !k.is_empty() && k.len() <= 64)
        .filter(|k| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or("event")
        .to_string();
    let data = json!({"seq": e.seq, "train": e.train_id, "at": e.at, "event": e.event});
    SseEvent::default()
        .id(e.seq.to_string())
        .event(kind)
        .data(data.to_string())
}
