//! `conductor up`: everything on one machine, no other service.

use crate::api::{router, AppState};
use crate::auth::{hash_token, new_token};
use crate::engine::{Clock, Engine, SystemClock};
use crate::leases::Leases;
use crate::metrics::Metrics;
use crate::planner::Planner;
use crate::procs::sandbox::{self, RunAs, Sandbox};
use crate::replica::front::Front;
use crate::replica::{Elector, Me};
use crate::resizer::{Actuators, Resizer};
use crate::store::Store;
use crate::targets::ports::PortRange;
use crate::targets::{
    ArtifactDir, ArtifactStore, CellExecutor, CellRouting, LocalRoutesFile, Supervisor,
    SupervisorConfig, Targets,
};
use crate::workflow::Workflow;
use anyhow::{Context, Result};
use cells_inventory::Shape;
use conductor_core::pipeline::{self, Artifact};
use std::collections::HashMap;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod banner;
use banner::Banner;
mod setup;
use setup::*;
pub use setup::{load_inventory, load_shapes, secure_data_dir};

pub struct UpOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub cells_file: PathBuf,
    pub shapes_file: PathBuf,
    /// The template new cells are stamped from.
    pub cell_template: PathBuf,
    pub planner: PlannerMode,
    /// Where cells and steps run (default: `<data dir>-run` beside it).
    pub run_dir: Option<PathBuf>,
    /// Users for command steps and for cells (root only).
    pub users: Users,
    /// Where extra artifacts on a cell get their ports.
    pub artifact_ports: PortRange,
    /// Write the admin token (when it is created) to this file, mode 0600.
    pub write_admin_token: Option<PathBuf>,
    /// Stop the cells on a clean stop too (default: they keep serving).
    pub stop_cells_on_exit: bool,
    /// JSON output (`--log-format json`): the banner is a JSON line too.
    pub json: bool,
    /// The store's database (`sqlite://PATH` or `postgres://…`); default:
    /// `conductor.db` in the data directory.
    pub database_url: Option<String>,
}

/// Who command steps and cells run as.
#[derive(Debug, Clone, Default)]
pub struct Users {
    pub steps: Option<RunAs>,
    pub cells: Option<RunAs>,
}

/// The user command steps run as by default when the Conductor is root.
pub const DEFAULT_STEPS_USER: &str = "nobody";
/// The user cells run as by default when the Conductor is root: an id of
/// their own, so that steps cannot read their environment, signal them or
/// read their data. 65533 lies above regular users (up to 60000) and
/// systemd's dynamic service users (61184-65519), in the block Debian
/// reserves (65000-65533), below `nobody`; name a real user with
/// `--cells-run-as` to own it instead.
pub const DEFAULT_CELLS_USER: &str = "65533:65533";

impl Users {
    /// Resolve `--run-as` and `--cells-run-as`: defaults apply when root;
    /// when not root, everything runs as this user and giving one is an error.
    pub fn resolve(steps: Option<&str>, cells: Option<&str>) -> std::result::Result<Users, String> {
        if !sandbox::is_root() {
            if steps.is_some() || cells.is_some() {
                return Err(
                    "--run-as and --cells-run-as need root (steps and cells otherwise run as the Conductor's user)"
                        .into(),
                );
            }
            return Ok(Users::default());
        }
        let steps = sandbox::resolve_user(steps.unwrap_or(DEFAULT_STEPS_USER))
            .map_err(|e| format!("--run-as {e}"))?;
        let cells = sandbox::resolve_user(cells.unwrap_or(DEFAULT_CELLS_USER))
            .map_err(|e| format!("--cells-run-as {e}"))?;
        Ok(Users {
            steps: Some(steps),
            cells: Some(cells),
        })
    }
}

/// Where the capacity planner is.
pub enum PlannerMode {
    /// Start `capacity-planner serve` (found beside this binary) as a child.
    Auto {
        interval_secs: f64,
    },
    Off,
    /// A planner that runs elsewhere, with its token.
    Url(String, String),
}

/// A secret kept (mode 0600) in the data dir, created on first use.
pub async fn up(opts: UpOptions) -> Result<()> {
    protect_process()?;
    let shapes = load_shapes(&opts.shapes_file)?;
    let cells = load_inventory(&opts.shapes_file, &opts.cells_file)?;
    secure_data_dir(&opts.data_dir)
        .with_context(|| format!("preparing the data directory {}", opts.data_dir.display()))?;
    let data_dir = opts
        .data_dir
        .canonicalize()
        .context("resolving the data directory")?;
    let run_dir = match &opts.run_dir {
        Some(d) => d.clone(),
        None => default_run_dir(&data_dir)?,
    };
    if opts.users.steps.is_some() && opts.users.steps == opts.users.cells {
        tracing::warn!(
            "steps and cells run as the same user: a step can read the cells' environment and data"
        );
    }
    let sb = Arc::new(
        Sandbox::new(
            &run_dir,
            &data_dir,
            opts.users.steps.clone(),
            opts.users.cells.clone(),
        )
        .map_err(|e| anyhow::anyhow!("preparing the run directory: {e}"))?,
    );
    // The planner's token is no longer kept in a file.
    let _ = std::fs::remove_file(data_dir.join("planner.token"));
    if data_dir.join("admin.token").exists() {
        tracing::warn!(file = %data_dir.join("admin.token").display(), "an earlier release left the admin token in this file: keep it somewhere safe and delete the file");
    }
    // One Conductor per SQLite database (refused before anything is read
    // or written); replicas on PostgreSQL elect their leader.
    let elector = match &opts.database_url {
        Some(url) if crate::store::is_postgres_url(url) => Elector::Postgres { url: url.clone() },
        Some(url) => Elector::single(Path::new(crate::store::sqlite_path(url)?))?,
        None => Elector::single(&data_dir.join("conductor.db"))?,
    };
    let store = match &opts.database_url {
        Some(url) => Store::connect(url).await,
        None => Store::open(&data_dir.join("conductor.db")).await,
    }
    .context("opening the database")?;
    secure_data_dir(&data_dir).context("securing the database files")?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let added = store
        .seed_cells(&cells, clock.now())
        .await
        .context("seeding cells")?;
    let token = admin_token(
        &store,
        opts.write_admin_token.as_deref(),
        opts.json,
        clock.now(),
    )
    .await?;

    let metrics = Arc::new(Metrics::default());
    let leases = Arc::new(Leases::new(metrics.clone()));
    let artifacts = ArtifactDir {
        root: data_dir.join("artifacts"),
    };
    let workers = shapes.iter().map(|s| (s.name.clone(), s.workers)).collect();
    // The fleet's data plane admin key: local cells get it, and so does the
    // planner, which pushes rate limits with it.
    let fga_admin_key = secret(&data_dir, "fga-admin.key")?;
    let cell_env = [("FGA_ADMIN_KEY".to_string(), fga_admin_key.clone())].into();
    // The routing table: the supervisor publishes to it, the API reads it.
    let routing: Arc<dyn CellRouting> =
        Arc::new(LocalRoutesFile::new(data_dir.join("routes.json")));
    let supervisor = Supervisor::with_routing(
        SupervisorConfig {
            artifacts: artifacts.clone(),
            data_dir: data_dir.clone(),
            sandbox: sb.clone(),
            store: store.clone(),
            workers_by_shape: workers,
            cell_env,
            ports: opts.artifact_ports,
        },
        routing.clone(),
    );
    let template_name = opts.cell_template.display().to_string();
    let template = cells_inventory::parse_template(&template_name, &read(&opts.cell_template)?)
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    move_legacy_cell_data(&data_dir, &sb)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let targets = Targets::local(supervisor.clone(), sb.clone(), store.clone(), clock.clone());
    let executor = Arc::new(CellExecutor {
        store: store.clone(),
        clock: clock.clone(),
        targets: targets.clone(),
        supervisor: supervisor.clone(),
        http,
        sandbox: sb.clone(),
    });
    let actuator = Arc::new(Actuators::local(
        supervisor.clone(),
        Duration::from_secs(60),
    ));
    let template = Arc::new(template);
    let artifact_store: Arc<dyn ArtifactStore> = Arc::new(artifacts);

    // Serve at once: until this replica leads, it forwards to the leader
    // (or answers reads from the database while none can be reached).
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let me = Me::new(&format!("http://{addr}"));
    let idle_engine = Engine::follower(
        store.clone(),
        clock.clone(),
        executor.clone(),
        leases.clone(),
        metrics.clone(),
    );
    let idle: Arc<dyn Workflow> = Arc::new(idle_engine);
    let follower = AppState {
        workflow: idle.clone(),
        store: store.clone(),
        clock: clock.clone(),
        leases: leases.clone(),
        metrics: metrics.clone(),
        artifacts: artifact_store.clone(),
        supervisor: supervisor.clone(),
        routing: routing.clone(),
        targets: targets.clone(),
        resizer: Resizer::idle(
            store.clone(),
            leases.clone(),
            idle,
            clock.clone(),
            actuator.clone(),
            shapes.clone(),
        ),
        planner: None,
        template: template.clone(),
    };
    let front = Front::follower(store.clone(), me.clone(), router(follower))?;
    let server = tokio::spawn(
        axum::serve(listener, front.service())
            .with_graceful_shutdown(shutdown())
            .into_future(),
    );
    let banner = Banner {
        url: format!("http://{addr}"),
        data_dir: &data_dir,
        run_dir: sb.run_dir(),
        cells: cells.len(),
        added,
        planner: None,
        token: token.as_deref(),
        token_file: opts.write_admin_token.as_deref(),
    };
    let followed = std::sync::atomic::AtomicBool::new(false);
    let waiting = || {
        tracing::info!("another replica leads: following it until it stops");
        banner.print(opts.json, true);
        followed.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let now = || clock.now();
    let mut server = server;
    let leadership = tokio::select! {
        l = elector.campaign(&store, &me, now, waiting) => l.context("running for leadership")?,
        r = &mut server => {
            r.context("serving HTTP")?.context("serving HTTP")?;
            stopped_message(opts.json, false, &supervisor).await;
            return Ok(());
        }
    };
    tracing::info!(epoch = leadership.epoch, "leading: starting the engine");

    // Leader from here on: the cells (adopted if they kept running), so
    // that resumed steps find them; then trains and resizes carry on.
    supervisor.restore(&artifact_specs(&store).await?).await;
    let engine = Engine::start(
        store.clone(),
        clock.clone(),
        executor,
        leases.clone(),
        metrics.clone(),
    )
    .await
    .context("starting the engine")?;
    let workflow: Arc<dyn Workflow> = Arc::new(engine.clone());
    let resizer = Resizer::start(
        store.clone(),
        leases.clone(),
        workflow.clone(),
        clock.clone(),
        actuator,
        shapes,
    )
    .await
    .context("resuming resize operations")?;
    let (planner, _planner_child) = match opts.planner {
        PlannerMode::Off => (None, None),
        PlannerMode::Url(url, token) => (Some(Planner::new(&url, &token)), None),
        PlannerMode::Auto { interval_secs } => {
            match start_planner(&data_dir, &opts.shapes_file, &fga_admin_key, interval_secs).await?
            {
                Some((url, token, child)) => (Some(Planner::new(&url, &token)), Some(child)),
                None => (None, None),
            }
        }
    };
    let planner_url = planner.as_ref().map(|p| p.url.clone());
    front.lead(
        router(AppState {
            workflow,
            store,
            clock,
            leases,
            metrics,
            artifacts: artifact_store,
            supervisor: supervisor.clone(),
            routing,
            targets,
            resizer,
            planner: planner.map(Arc::new),
            template,
        }),
        leadership.epoch,
    );
    if followed.load(std::sync::atomic::Ordering::Relaxed) {
        let line = format!(
            "Conductor at {} now leads (epoch {})",
            me.address, leadership.epoch
        );
        if opts.json {
            println!(
                "{}",
                serde_json::json!({ "message": line, "role": "leader", "epoch": leadership.epoch })
            );
        } else {
            println!("{line}");
        }
    } else {
        Banner {
            planner: planner_url.as_deref(),
            ..banner
        }
        .print(opts.json, false);
    }
    tracing::info!(%addr, "serving");
    tokio::select! {
        r = &mut server => {
            r.context("serving HTTP")?.context("serving HTTP")?;
        }
        () = engine.stopped() => {
            // A leader that cannot commit must not hold the leadership.
            anyhow::bail!("the engine stopped: it cannot commit events (see the log above)");
        }
    }
    stopped_message(opts.json, opts.stop_cells_on_exit, &supervisor).await;
    Ok(())
}

/// Say how the Conductor stopped (and stop the cells if asked).
async fn stopped_message(json: bool, stop_cells: bool, supervisor: &Supervisor) {
    let stopped = if stop_cells {
        supervisor.stop_all().await;
        "Conductor stopped, and its cells; trains resume on the next `conductor up`."
    } else {
        "Conductor stopped; the cells keep serving, and the next `conductor up` adopts them and resumes trains."
    };
    if json {
        println!("{}", serde_json::json!({ "message": stopped }));
    } else {
        println!("{stopped}");
    }
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn the_data_directory_is_made_private_including_an_old_one() {
        let t = tempfile::tempdir().expect("tmp");
        let d = t.path().join("data");
        std::fs::create_dir(&d).expect("dir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for f in [
            "conductor.db",
            "conductor.db-wal",
            "conductor.db-shm",
            "fga-admin.key",
            "routes.json",
        ] {
            std::fs::write(d.join(f), "x").expect("write");
            std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        std::fs::create_dir(d.join("cells")).expect("cells");
        secure_data_dir(&d).expect("secure");
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("artifacts")), 0o700);
        assert_eq!(mode(&d.join("cells")), 0o700);
        for f in [
            "conductor.db",
            "conductor.db-wal",
            "conductor.db-shm",
            "fga-admin.key",
            "routes.json",
        ] {
            assert_eq!(mode(&d.join(f)), 0o600, "{f}");
        }
    }

    #[test]
    fn private_files_are_0600_and_never_written_through_a_link() {
        let t = tempfile::tempdir().expect("tmp");
        let f = t.path().join("admin.token");
        std::fs::write(&f, "old").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&f, "new").expect("write");
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read_to_string(&f).expect("read"), "new");
        let target = t.path().join("elsewhere");
        std::fs::write(&target, "keep").expect("write");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("link");
        assert!(write_private(&link, "x").is_err());
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep");
    }

    #[tokio::test]
    async fn json_output_never_shows_the_admin_token_so_the_first_start_needs_a_file() {
        let t = tempfile::tempdir().expect("tmp");
        let store = Store::open(&t.path().join("c.db")).await.expect("open");
        let e = admin_token(&store, None, true, chrono::Utc::now())
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("--write-admin-token"), "{e}");
        assert_eq!(store.count_tokens().await.expect("count"), 0);
        let f = t.path().join("admin.token");
        let tok = admin_token(&store, Some(&f), true, chrono::Utc::now())
            .await
            .expect("made")
            .expect("new");
        assert_eq!(std::fs::read_to_string(&f).expect("file"), tok);
        assert_eq!(mode(&f), 0o600);
        // Only its hash is stored, and it is made once.
        assert!(admin_token(&store, Some(&f), true, chrono::Utc::now())
            .await
            .expect("again")
            .is_none());
    }
}
