//! A tiny HTTP service used as the deployable artifact of local cells in
//! tests and demos (until a real workload such as the FGA data plane is
//! deployed). It serves `/healthz` and `/version`.
//!
//! Usage: `sample-service --port N` (or `CELL_PORT=N`). The port is bound
//! with `SO_REUSEPORT`, so that a cell's workers share it. The worker also
//! answers on its own port, where it is health-checked on its own: the
//! listening socket the local target hands over on the fd `CELL_WORKER_FD`
//! names (bound by the Conductor, so no other process can take the port
//! first), or else `CELL_WORKER_PORT=M`, bound here. With
//! `SAMPLE_UNHEALTHY=1` in the environment, or when the version it is started
//! as (`ARTIFACT_VERSION`) ends in `-bad`, `/healthz` answers 503, which lets
//! tests exercise failed deploys and rollbacks.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("CELL_PORT").ok())
        .and_then(|p| p.parse::<u16>().ok());
    let Some(port) = port else {
        eprintln!("usage: sample-service --port N (or set CELL_PORT)");
        std::process::exit(2);
    };
    let version = std::env::var("ARTIFACT_VERSION").unwrap_or_else(|_| "dev".into());
    let cell = std::env::var("CELL_ID").unwrap_or_else(|_| "none".into());
    let unhealthy =
        std::env::var("SAMPLE_UNHEALTHY").is_ok_and(|v| v == "1") || version.ends_with("-bad");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let v = version.clone();
        let c = cell.clone();
        let app = Router::new()
            .route(
                "/healthz",
                get(move || async move {
                    if unhealthy {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
                    } else {
                        (axum::http::StatusCode::OK, "ok")
                    }
                }),
            )
            .route(
                "/version",
                get(move || async move { Json(json!({"version": v, "cell": c})) }),
            );
        let listener = match shared_listener(port) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
                std::process::exit(1);
            }
        };
        match worker_listener().await {
            Ok(Some(l)) => {
                let app = app.clone();
                tokio::spawn(async move {
                    let _ = axum::serve(l, app).await;
                });
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        eprintln!("sample-service {version} for cell {cell} on 127.0.0.1:{port}");
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("server error: {e}");
            std::process::exit(1);
        }
    });
}

/// This worker's own listener: the socket handed over on `CELL_WORKER_FD`,
/// else `CELL_WORKER_PORT` bound here, else none.
async fn worker_listener() -> Result<Option<tokio::net::TcpListener>, String> {
    if let Ok(fd) = std::env::var("CELL_WORKER_FD") {
        let fd: i32 = fd
            .parse()
            .map_err(|_| format!("CELL_WORKER_FD={fd:?} is not a file descriptor"))?;
        let l = inherited_listener(fd)
            .map_err(|e| format!("CELL_WORKER_FD={fd} is not a listening socket: {e}"))?;
        return tokio::net::TcpListener::from_std(l)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    let Some(wp) = std::env::var("CELL_WORKER_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    else {
        return Ok(None);
    };
    tokio::net::TcpListener::bind(("127.0.0.1", wp))
        .await
        .map(Some)
        .map_err(|e| format!("cannot listen on worker port 127.0.0.1:{wp}: {e}"))
}

/// Take the listening TCP socket inherited on `fd`.
#[allow(unsafe_code)]
fn inherited_listener(fd: i32) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::{FromRawFd, OwnedFd};
    if fd < 3 {
        return Err(std::io::Error::other("stdio is not a socket"));
    }
    // SAFETY: the fd was open when this process started (the Conductor
    // hands it over), so nothing in the process opened or owns it; it is
    // taken once, here, and checked below.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let l = std::net::TcpListener::from(owned);
    l.local_addr()?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Listen on `port` with `SO_REUSEPORT`: every worker of a cell binds the
/// same port and the kernel spreads connections over them.
fn shared_listener(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))?;
    sock.listen(1024)
}
