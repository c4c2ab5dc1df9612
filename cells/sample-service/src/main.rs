//! A tiny HTTP service used as the deployable artifact of local cells in
//! tests and demos (until a real workload such as the FGA data plane is
//! deployed). It serves `/healthz` and `/version`.
//!
//! Usage: `sample-service --port N` (or `CELL_PORT=N`). The port is bound
//! with `SO_REUSEPORT`, so that a cell's workers share it; with
//! `CELL_WORKER_PORT=M` (set by the local target) the worker also answers on
//! its own port M, where it is health-checked on its own. With
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
        let worker_port = std::env::var("CELL_WORKER_PORT")
            .ok()
            .and_then(|p| p.parse::<u16>().ok());
        if let Some(wp) = worker_port {
            match tokio::net::TcpListener::bind(("127.0.0.1", wp)).await {
                Ok(l) => {
                    let app = app.clone();
                    tokio::spawn(async move {
                        let _ = axum::serve(l, app).await;
                    });
                }
                Err(e) => {
                    eprintln!("cannot listen on worker port 127.0.0.1:{wp}: {e}");
                    std::process::exit(1);
                }
            }
        }
        eprintln!("sample-service {version} for cell {cell} on 127.0.0.1:{port}");
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("server error: {e}");
            std::process::exit(1);
        }
    });
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
