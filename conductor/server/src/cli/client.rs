//! The HTTP client of the API.
//!
//! A Conductor that cannot be reached (connection refused or timed out, or a
//! proxy answering 502/503/504) is exit status 4, whatever the command. Reads
//! can ride out a restart ([`Client::get_patiently`]); a write is retried
//! only when it certainly never reached the server ([`Client::post_patiently`]).

use super::*;
use tokio::time::Instant;

/// HTTP client for the API.
#[derive(Clone)]
pub(super) struct Client {
    pub(super) base: String,
    pub(super) token: String,
    pub(super) http: reqwest::Client,
}

/// How long to keep retrying while the Conductor cannot be reached, and the
/// back-off between attempts (doubling from `first` up to `max`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Patience {
    pub(super) bound: Duration,
    pub(super) first: Duration,
    pub(super) max: Duration,
}

impl Patience {
    pub(super) fn new(bound: Duration) -> Patience {
        Patience {
            bound,
            first: Duration::from_millis(250),
            max: Duration::from_secs(5),
        }
    }
}

/// A failed request, and whether it certainly never reached the server.
struct SendError {
    err: CliError,
    unsent: bool,
}

pub(super) fn unreachable(base: &str, why: impl std::fmt::Display) -> CliError {
    CliError {
        code: exit::UNREACHABLE,
        message: format!("cannot reach the Conductor at {base}: {why}"),
    }
}

impl Client {
    pub(super) fn new(c: &Conn) -> Result<Client, CliError> {
        // No fallback to a token file in the data directory: the admin
        // token is not kept there (`conductor up --write-admin-token FILE`).
        let from_file = match &c.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map(|s| s.trim().to_string())
                    .map_err(|e| CliError::usage(format!("--token-file {}: {e}", f.display())))?,
            ),
            None => None,
        };
        let token = from_file.or_else(|| c.token.clone()).ok_or_else(|| {
            CliError::usage("no token: set CONDUCTOR_TOKEN (or pass --token-file)")
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| CliError::from(anyhow::anyhow!("building HTTP client: {e}")))?;
        Ok(Client {
            base: c.url.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    async fn try_send(&self, rb: reqwest::RequestBuilder) -> Result<Value, SendError> {
        let resp = rb
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| SendError {
                unsent: e.is_connect(),
                err: if e.is_connect() || e.is_timeout() || e.is_request() {
                    unreachable(&self.base, &e)
                } else {
                    CliError {
                        code: exit::FAILED,
                        message: format!("request to the Conductor at {} failed: {e}", self.base),
                    }
                },
            })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        // Even a proxy's 502 may come after the Conductor got the request;
        // a replica's `no_leader` says that nothing was done.
        let unsent = status.as_u16() == 503 && body["code"] == "no_leader";
        Err(SendError {
            unsent,
            err: self.http_error(status, &body),
        })
    }

    /// The error of an answer that is not a success (`body`: its JSON, or
    /// Null): 502-504 (a proxy, or a Conductor that cannot serve now) is
    /// unreachable; other client errors are usage errors.
    pub(super) fn http_error(&self, status: reqwest::StatusCode, body: &Value) -> CliError {
        let msg = body["message"].as_str().unwrap_or("request failed");
        let code = body["code"].as_str().unwrap_or("error");
        match status.as_u16() {
            502..=504 => unreachable(&self.base, format!("HTTP {} ({msg})", status.as_u16())),
            _ => CliError {
                code: if status.is_client_error() {
                    exit::USAGE
                } else {
                    exit::FAILED
                },
                message: format!("{msg} ({code}, HTTP {})", status.as_u16()),
            },
        }
    }

    pub(super) async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Value, CliError> {
        self.try_send(rb).await.map_err(|e| e.err)
    }

    pub(super) async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.send(self.http.get(format!("{}/api/v1{path}", self.base)))
            .await
    }

    pub(super) async fn post(&self, path: &str, body: Value) -> Result<Value, CliError> {
        self.send(self.post_request(path, &body)).await
    }

    fn post_request(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/api/v1{path}", self.base))
            .json(body)
    }

    /// GET `path`, retrying for up to `p.bound` while the Conductor cannot
    /// be reached (a read is safe to repeat).
    pub(super) async fn get_patiently(&self, path: &str, p: Patience) -> Result<Value, CliError> {
        self.patiently(
            p,
            |_| true,
            || self.http.get(format!("{}/api/v1{path}", self.base)),
        )
        .await
    }

    /// POST `path`, retrying for up to `p.bound` only while the request
    /// certainly did not reach the Conductor (connection refused): a write
    /// that may have arrived is never sent twice.
    pub(super) async fn post_patiently(
        &self,
        path: &str,
        body: Value,
        p: Patience,
    ) -> Result<Value, CliError> {
        self.patiently(p, |unsent| unsent, || self.post_request(path, &body))
            .await
    }

    async fn patiently(
        &self,
        p: Patience,
        retry: impl Fn(bool) -> bool,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Value, CliError> {
        let mut delay = p.first;
        let mut lost: Option<Instant> = None;
        loop {
            match self.try_send(request()).await {
                Ok(v) => {
                    if lost.is_some() {
                        eprintln!("reached the Conductor at {} again", self.base);
                    }
                    return Ok(v);
                }
                Err(e) if e.err.code == exit::UNREACHABLE && retry(e.unsent) => {
                    let since = *lost.get_or_insert_with(|| {
                        eprintln!(
                            "{}; retrying for up to {}",
                            e.err.message,
                            human_std(p.bound)
                        );
                        Instant::now()
                    });
                    let left = p.bound.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        return Err(CliError {
                            code: exit::UNREACHABLE,
                            message: format!(
                                "{} (gave up after {}; --unreachable-timeout sets how long to retry)",
                                e.err.message,
                                human_std(p.bound)
                            ),
                        });
                    }
                    tokio::time::sleep(delay.min(left)).await;
                    delay = (delay * 2).min(p.max);
                }
                Err(e) => return Err(e.err),
            }
        }
    }
}

pub(super) fn human_std(d: Duration) -> String {
    human(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A loopback port nothing listens on (bound, then closed).
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        l.local_addr().expect("addr").port()
    }

    fn client(port: u16) -> Client {
        Client::new(&Conn {
            url: format!("http://127.0.0.1:{port}"),
            token: Some("t".into()),
            token_file: None,
        })
        .expect("client")
    }

    fn quick(bound: Duration) -> Patience {
        Patience {
            bound,
            first: Duration::from_millis(20),
            max: Duration::from_millis(100),
        }
    }

    /// Serve the API on `port` after `delay`, counting requests; stopped
    /// with the returned handle (loopback only).
    fn serve_later(
        port: u16,
        delay: Duration,
        hits: Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind the port again");
            let h = hits.clone();
            let app = axum::Router::new().fallback(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async { axum::Json(json!({"status": "succeeded", "spec": {"id": "t1"}})) }
            });
            let _ = axum::serve(l, app).await;
        })
    }

    #[tokio::test]
    async fn an_unreachable_conductor_is_exit_4() {
        let c = client(closed_port());
        let e = c.get("/trains").await.expect_err("nothing listens");
        assert_eq!(e.code, exit::UNREACHABLE, "{}", e.message);
        assert!(
            e.message.contains("cannot reach the Conductor"),
            "{}",
            e.message
        );
        let e = c
            .post("/trains", json!({}))
            .await
            .expect_err("nothing listens");
        assert_eq!(e.code, exit::UNREACHABLE, "{}", e.message);
    }

    #[tokio::test]
    async fn reads_ride_out_a_restart() {
        let port = closed_port();
        let hits = Arc::new(AtomicUsize::new(0));
        let server = serve_later(port, Duration::from_millis(300), hits.clone());
        let v = client(port)
            .get_patiently("/trains/t1", quick(Duration::from_secs(60)))
            .await
            .expect("reached once it is back");
        assert_eq!(v["status"], "succeeded");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        server.abort();
    }

    #[tokio::test]
    async fn a_start_that_never_arrived_is_sent_once_it_can_be() {
        let port = closed_port();
        let hits = Arc::new(AtomicUsize::new(0));
        let server = serve_later(port, Duration::from_millis(300), hits.clone());
        client(port)
            .post_patiently("/trains", json!({}), quick(Duration::from_secs(60)))
            .await
            .expect("sent once the server is back");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        server.abort();
    }

    #[tokio::test]
    async fn waiting_gives_up_after_the_bound_with_exit_4() {
        let c = client(closed_port());
        let e = c
            .get_patiently("/trains/t1", quick(Duration::from_millis(200)))
            .await
            .expect_err("never comes back");
        assert_eq!(e.code, exit::UNREACHABLE);
        assert!(e.message.contains("gave up"), "{}", e.message);
    }

    #[tokio::test]
    async fn a_write_that_may_have_arrived_is_not_sent_again() {
        // A server that takes the request and dies before answering.
        let l = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let conns = Arc::new(AtomicUsize::new(0));
        let n = conns.clone();
        let server = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                drop(s);
            }
        });
        let e = client(port)
            .post_patiently("/trains", json!({}), quick(Duration::from_secs(60)))
            .await
            .expect_err("no answer");
        assert_eq!(e.code, exit::UNREACHABLE, "{}", e.message);
        assert_eq!(conns.load(Ordering::SeqCst), 1, "the start was sent twice");
        server.abort();
    }
}
