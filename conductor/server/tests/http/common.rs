//! An in-process Conductor for HTTP tests: the real router over a real
//! store and engine (simulated cells), called without a socket.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use cells_inventory::{CellSpec, Shape, TargetSpec};
use chrono::Utc;
use conductor::api::{router, AppState};
use conductor::auth::hash_token;
use conductor::clock::{Clock, TestClock};
use conductor::engine::{BoxFut, Engine};
use conductor::leases::Leases;
use conductor::metrics::Metrics;
use conductor::resizer::{CapacityActuator, Resizer};
use conductor::store::Store;
use conductor::targets::{ArtifactDir, LocalRoutesFile, SimExecutor, Supervisor, Targets};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An actuator that changes nothing and says so.
struct NoActuator;
impl CapacityActuator for NoActuator {
    fn resize<'a>(
        &'a self,
        _cell: &'a CellSpec,
        shape: &'a Shape,
    ) -> BoxFut<'a, Result<String, String>> {
        Box::pin(async move { Ok(format!("{} workers (simulated)", shape.workers)) })
    }
}

pub fn cells(n: usize) -> Vec<CellSpec> {
    (0..n)
        .map(|i| CellSpec {
            id: format!("c{i:02}"),
            region: ["us-east-1", "eu-west-1"][i % 2].into(),
            shape: "small".into(),
            labels: [("service".to_string(), "fga".to_string())].into(),
            target: TargetSpec::Local,
            port: None,
            tz: None,
        })
        .collect()
}

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub engine: Engine,
    pub artifacts: ArtifactDir,
    pub clock: Arc<TestClock>,
    pub app: axum::Router,
    /// The routing table the API answers `/routes` from.
    pub routing: Arc<LocalRoutesFile>,
    /// A token per role name (`admin`, `developer`, `ci`, `approver`, `sre`).
    pub tokens: BTreeMap<String, String>,
}

impl TestApp {
    pub async fn new() -> TestApp {
        Self::with_db(None).await
    }

    /// Over a copy of an existing database (`None`: a new one).
    pub async fn with_db(db: Option<&std::path::Path>) -> TestApp {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("conductor.db");
        if let Some(src) = db {
            std::fs::copy(src, &path).expect("copy the database");
        }
        let store = Store::open(&path).await.expect("store");
        store.seed_cells(&cells(4), Utc::now()).await.expect("seed");
        let metrics = Arc::new(Metrics::default());
        let leases = Arc::new(Leases::new(metrics.clone()));
        let clock = Arc::new(TestClock::default());
        let sim = Arc::new(SimExecutor::new(Duration::from_millis(5)));
        let engine = Engine::start(
            store.clone(),
            clock.clone() as Arc<dyn Clock>,
            sim,
            leases.clone(),
            metrics.clone(),
        )
        .await
        .expect("engine");
        let shapes =
            conductor::up::load_shapes(&root().join("templates/shapes.yaml")).expect("shapes");
        let artifacts = ArtifactDir {
            root: dir.path().join("artifacts"),
        };
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        let sandbox = Arc::new(
            conductor::procs::sandbox::Sandbox::new(
                &dir.path().join("run"),
                &dir.path().join("data"),
                None,
                None,
            )
            .expect("sandbox"),
        );
        let routing = Arc::new(LocalRoutesFile::new(dir.path().join("data/routes.json")));
        let supervisor = Supervisor::with_routing(
            conductor::targets::SupervisorConfig {
                artifacts: artifacts.clone(),
                data_dir: dir.path().join("data"),
                sandbox: sandbox.clone(),
                store: store.clone(),
                workers_by_shape: shapes.iter().map(|s| (s.name.clone(), s.workers)).collect(),
                cell_env: Default::default(),
                ports: conductor::targets::ports::PortRange {
                    first: 28000,
                    last: 28999,
                },
            },
            routing.clone(),
        );
        let resizer = Resizer::start(
            store.clone(),
            leases.clone(),
            Arc::new(engine.clone()),
            clock.clone(),
            Arc::new(NoActuator),
            shapes,
        )
        .await
        .expect("resizer");
        let tpl_file = root().join("templates/cell.yaml");
        let template = cells_inventory::parse_template(
            "cell.yaml",
            &std::fs::read_to_string(&tpl_file).expect("template"),
        )
        .expect("parse template");
        let app = router(AppState {
            workflow: Arc::new(engine.clone()),
            store: store.clone(),
            clock: clock.clone(),
            leases,
            metrics,
            artifacts: Arc::new(artifacts.clone()),
            targets: Targets::local(supervisor.clone(), sandbox, store.clone(), clock.clone()),
            supervisor,
            routing: routing.clone(),
            resizer,
            planner: None,
            template: Arc::new(template),
        });
        let mut t = TestApp {
            dir,
            store,
            engine,
            artifacts,
            clock,
            app,
            routing,
            tokens: BTreeMap::new(),
        };
        for (role, groups) in [
            ("admin", vec![]),
            ("developer", vec![]),
            ("ci", vec![]),
            ("approver", vec!["release-managers".to_string()]),
            ("sre", vec![]),
        ] {
            let token = t.add_token(&format!("{role}-1"), role, &groups).await;
            t.tokens.insert(role.to_string(), token);
        }
        t
    }

    /// Create a token directly in the store; returns it.
    pub async fn add_token(&self, name: &str, role: &str, groups: &[String]) -> String {
        let token = conductor::auth::new_token();
        let audit = conductor::store::AuditEntry::new("test", "token.create", name, role);
        self.store
            .create_token(
                name,
                role,
                groups,
                &hash_token(&token),
                None,
                Utc::now(),
                &audit,
            )
            .await
            .expect("create token");
        token
    }

    pub fn token(&self, role: &str) -> &str {
        self.tokens
            .get(role)
            .map(String::as_str)
            .expect("role token")
    }

    /// Send a request; returns the status and the JSON body (Null if none).
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let (status, _, v) = self.send_full(req).await;
        (status, v)
    }

    /// Like [`TestApp::send`], with the response's headers.
    pub async fn send_full(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let resp = tower::ServiceExt::oneshot(self.app.clone(), req)
            .await
            .expect("infallible");
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = axum::body::to_bytes(resp.into_body(), 16 * 1024 * 1024)
            .await
            .expect("body");
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// `METHOD /api/v1PATH` with a JSON body (`Value::Null`: none).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(format!("/api/v1{path}"));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let body = if body.is_null() {
            Body::empty()
        } else {
            b = b.header("content-type", "application/json");
            Body::from(body.to_string())
        };
        self.send(b.body(body).expect("request")).await
    }

    /// Like [`TestApp::call`] with a role's token.
    pub async fn as_role(
        &self,
        role: &str,
        method: &str,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.call(method, path, Some(self.token(role)), body).await
    }
}
