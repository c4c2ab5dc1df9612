//! The `conductor` command line. clap types stay in this module; they are
//! turned into validated values before anything else sees them.

use crate::up::{load_inventory, up, PlannerMode, UpOptions};
use anyhow::Context;
use capacity_planner::report;
use clap::{Args, Parser, Subcommand};
use conductor_core::pipeline;
use conductor_core::plan::{self, Estimates};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit statuses of the CLI.
pub mod exit {
    pub const OK: i32 = 0;
    /// The train failed or was rolled back; or an error talking to the server.
    pub const FAILED: i32 = 1;
    /// Bad usage or input (also what clap uses).
    pub const USAGE: i32 = 2;
    /// The train was rejected, cancelled or superseded.
    pub const STOPPED: i32 = 3;
}

/// An error with the exit status it should end the process with.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    fn usage(m: impl Into<String>) -> CliError {
        CliError {
            code: exit::USAGE,
            message: m.into(),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> CliError {
        CliError {
            code: exit::FAILED,
            message: format!("{e:#}"),
        }
    }
}

type CliResult = Result<i32, CliError>;

#[derive(Parser)]
#[command(
    name = "conductor",
    version,
    about = "Release trains across cells: pipelines, trains, approvals, cells.",
    long_about = "The Conductor carries an artifact version to every selected cell in waves, with test gates, \
bake times, approvals and rollback on failure.\n\nServer: `conductor up`. Every other command talks to a server \
at $CONDUCTOR_URL (default http://127.0.0.1:8480) with the token in $CONDUCTOR_TOKEN."
)]
pub struct Cli {
    /// Log format for the server: text or json.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Clone)]
pub struct Conn {
    /// Conductor API URL.
    #[arg(
        long,
        env = "CONDUCTOR_URL",
        default_value = "http://127.0.0.1:8480",
        global = true
    )]
    pub url: String,
    /// Bearer token (see `conductor token create`).
    #[arg(long, env = "CONDUCTOR_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Start the Conductor and the local cells on this machine (Ctrl-C stops; trains resume on restart).
    Up {
        /// Where the database, artifacts and cell data live.
        #[arg(long, default_value = ".data")]
        data_dir: PathBuf,
        /// Address to serve the API and dashboard on.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: String,
        /// Seed inventory of cells.
        #[arg(long, default_value = "deploy/local/cells.yaml")]
        cells: PathBuf,
        /// Cell shapes.
        #[arg(long, default_value = "templates/shapes.yaml")]
        shapes: PathBuf,
        /// The template new cells are stamped from (`cells add`).
        #[arg(long, default_value = "templates/cell.yaml")]
        cell_template: PathBuf,
        /// The capacity planner: `auto` starts `capacity-planner serve` from
        /// beside this binary; `off`; or the URL of one that runs elsewhere
        /// (its token in CONDUCTOR_PLANNER_TOKEN).
        #[arg(long, default_value = "auto")]
        planner: String,
        #[arg(long, env = "CONDUCTOR_PLANNER_TOKEN", hide_env_values = true)]
        planner_token: Option<String>,
        /// Seconds between the started planner's scrapes of the cells.
        #[arg(long, default_value_t = 15.0)]
        planner_interval_secs: f64,
    },
    /// Capacity (role sre to apply): the plan per cell, rate limits, rebalancing.
    #[command(subcommand)]
    Plan(PlanCmd),
    /// Tenants: where a new one goes.
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// Validate, plan and submit pipelines.
    #[command(subcommand)]
    Pipeline(PipelineCmd),
    /// Start, watch, approve, cancel and roll back release trains.
    #[command(subcommand)]
    Train(TrainCmd),
    /// The cell inventory.
    #[command(subcommand)]
    Cells(CellsCmd),
    /// Resize operations: list, approve, reject, wait.
    #[command(subcommand)]
    Resizes(ResizesCmd),
    /// The artifact store.
    #[command(subcommand)]
    Artifact(ArtifactCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The audit log of every mutating call (admin).
    Audit {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct Offline {
    /// Cells to plan against.
    #[arg(long, default_value = "deploy/local/cells.yaml")]
    cells: PathBuf,
    /// Cell shapes.
    #[arg(long, default_value = "templates/shapes.yaml")]
    shapes: PathBuf,
}

#[derive(Subcommand)]
pub enum PipelineCmd {
    /// Check pipeline files offline; every problem is printed as FILE:LINE:COL.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        offline: Offline,
    },
    /// Print a pipeline's waves, cells and projected duration (offline).
    Plan {
        file: PathBuf,
        #[command(flatten)]
        offline: Offline,
        #[arg(long)]
        json: bool,
    },
    /// Submit a pipeline to the Conductor.
    Submit {
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// List submitted pipelines.
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum TrainCmd {
    /// Start a train. With --wait: exit 0 succeeded, 1 failed or rolled back, 3 rejected or cancelled.
    Start {
        pipeline: String,
        #[arg(long)]
        version: String,
        /// Follow the train until it ends.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a train.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List recent trains.
    List {
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Follow a train until it ends (exit status as for `start --wait`).
    Wait {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Approve the wave waiting at a gate (never your own train).
    Approve {
        id: String,
        #[arg(long)]
        gate: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Reject the wave waiting at a gate; the train stops.
    Reject {
        id: String,
        #[arg(long)]
        gate: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel a train: no new cell starts; cells in flight stop after their step.
    Cancel {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Roll back every cell the train deployed, newest wave first.
    Rollback {
        id: String,
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// The train's event log.
    Events {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Output kept from the train's command steps.
    Logs {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum CellsCmd {
    /// List cells with region, shape, workers (desired/running), labels and deployed versions.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stamp a new cell from the template for its region and shape (role sre).
    Add {
        #[arg(long)]
        region: String,
        #[arg(long)]
        shape: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop giving a cell new tenants (it keeps serving and receiving releases).
    Drain {
        cell: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Retire a drained cell: stop its processes under its lease and take it out for good.
    Retire {
        cell: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a cell's shape (role sre). The resize takes the cell's lease only
    /// while it changes the cell: a train reaching the cell waits for it,
    /// trains elsewhere never do. With --wait: exit 0 succeeded, 1 failed.
    Resize {
        cell: String,
        #[arg(long)]
        shape: String,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
        /// Follow the resize until it ends.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args)]
pub struct PolicyArgs {
    /// Stay under this fraction of every dimension at the forecast peak (default 0.7).
    #[arg(long)]
    headroom: Option<f64>,
    /// How far ahead the forecast looks, in days (default 7).
    #[arg(long)]
    horizon_days: Option<f64>,
}

impl PolicyArgs {
    fn query(&self) -> String {
        let mut q = Vec::new();
        if let Some(h) = self.headroom {
            q.push(format!("headroom={h}"));
        }
        if let Some(d) = self.horizon_days {
            q.push(format!("horizon_days={d}"));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
    fn body(&self) -> Value {
        json!({"headroom": self.headroom, "horizon_days": self.horizon_days})
    }
}

#[derive(Subcommand)]
pub enum PlanCmd {
    /// Per cell: shape, utilization now and forecast, recommended shape; fleet cost,
    /// stranded capacity and cells at risk. --apply turns the recommendations into
    /// resize operations (role sre); shrinks wait for someone else's approval.
    Capacity {
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long)]
        apply: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Per-tenant rate limits and bursts, tenants near their limit first (the
    /// early warning). --push sends them to the cells' data planes (role sre).
    Limits {
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long)]
        push: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Import tenant usage from a file (YAML or JSON, the format of
    /// deploy/local/usage.example.yaml) into the planner's history (role sre).
    Import {
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Tenant moves that relieve hot cells or free lightly used ones, each with its gain.
    Rebalance {
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum TenantsCmd {
    /// Pick the cell for a new tenant (best fit that keeps headroom) and say why;
    /// when the region has no room, name the shape of a new cell (--stamp adds it, role sre).
    Place {
        #[arg(long)]
        region: String,
        #[arg(long)]
        expected_rps: f64,
        #[arg(long)]
        expected_tuples: f64,
        #[arg(long, default_value_t = 0.0)]
        expected_connections: f64,
        #[arg(long)]
        stamp: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum ResizesCmd {
    /// List resize operations, newest first.
    List {
        /// Only unfinished ones (awaiting approval, waiting for the lease, running).
        #[arg(long)]
        open: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Approve a resize that waits for an approval (a shrink from `plan capacity --apply`); never your own.
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Reject a resize that waits for an approval, with a reason.
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Follow a resize until it ends (exit 0 succeeded, 1 failed, 3 rejected).
    Wait {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum ArtifactCmd {
    /// Upload a build (what CI does before it starts a train).
    Push {
        name: String,
        version: String,
        path: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// List pushed artifacts.
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token (admin). The token is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// developer, approver, sre, ci or admin.
        #[arg(long)]
        role: String,
        /// Approval groups the identity belongs to (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// HTTP client for the API.
struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    fn new(c: &Conn) -> Result<Client, CliError> {
        let token = c
            .token
            .clone()
            .or_else(|| {
                std::fs::read_to_string(".data/admin.token")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .ok_or_else(|| CliError::usage("no token: set CONDUCTOR_TOKEN (or pass --token)"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| CliError::from(anyhow::anyhow!("building HTTP client: {e}")))?;
        Ok(Client {
            base: c.url.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let resp = rb
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| CliError {
                code: exit::FAILED,
                message: format!("cannot reach the Conductor at {}: {e}", self.base),
            })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let msg = body["message"]
            .as_str()
            .unwrap_or("request failed")
            .to_string();
        let code = body["code"].as_str().unwrap_or("error");
        Err(CliError {
            code: if status.is_client_error() {
                exit::USAGE
            } else {
                exit::FAILED
            },
            message: format!("{msg} ({code}, HTTP {})", status.as_u16()),
        })
    }

    async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.send(self.http.get(format!("{}/api/v1{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, CliError> {
        self.send(
            self.http
                .post(format!("{}/api/v1{path}", self.base))
                .json(&body),
        )
        .await
    }
}

fn read_file(p: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(p).map_err(|e| CliError::usage(format!("{}: {e}", p.display())))
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub async fn run(cli: Cli) -> CliResult {
    match cli.cmd {
        Cmd::Up {
            data_dir,
            listen,
            cells,
            shapes,
            cell_template,
            planner,
            planner_token,
            planner_interval_secs,
        } => {
            if !(planner_interval_secs.is_finite()
                && (0.1..=3600.0).contains(&planner_interval_secs))
            {
                return Err(CliError::usage(
                    "--planner-interval-secs must be in [0.1, 3600]",
                ));
            }
            let planner = match planner.as_str() {
                "auto" => PlannerMode::Auto {
                    interval_secs: planner_interval_secs,
                },
                "off" => PlannerMode::Off,
                u if u.starts_with("http://") || u.starts_with("https://") => {
                    let t = planner_token.ok_or_else(|| {
                        CliError::usage(
                            "--planner URL needs the planner's token in CONDUCTOR_PLANNER_TOKEN",
                        )
                    })?;
                    PlannerMode::Url(u.to_string(), t)
                }
                other => {
                    return Err(CliError::usage(format!(
                        "--planner {other:?}: use auto, off or an http(s) URL"
                    )))
                }
            };
            let listen = listen.parse().map_err(|_| {
                CliError::usage(format!(
                    "--listen {listen:?} is not an address like 127.0.0.1:8480"
                ))
            })?;
            up(UpOptions {
                data_dir,
                listen,
                cells_file: cells,
                shapes_file: shapes,
                cell_template,
                planner,
            })
            .await?;
            Ok(exit::OK)
        }
        Cmd::Pipeline(c) => pipeline_cmd(c).await,
        Cmd::Train(c) => train_cmd(c).await,
        Cmd::Cells(c) => cells_cmd(c).await,
        Cmd::Resizes(c) => resizes_cmd(c).await,
        Cmd::Plan(c) => plan_cmd(c).await,
        Cmd::Tenants(c) => tenants_cmd(c).await,
        Cmd::Artifact(ArtifactCmd::Push {
            name,
            version,
            path,
            conn,
        }) => {
            let client = Client::new(&conn)?;
            let bytes = std::fs::read(&path)
                .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
            let url = format!(
                "{}/api/v1/artifacts/{}/{}",
                client.base,
                enc(&name),
                enc(&version)
            );
            let v = client.send(client.http.put(url).body(bytes)).await?;
            println!(
                "pushed {} {} ({} bytes, sha256 {})",
                name,
                version,
                v["size"],
                s(&v["sha256"])
            );
            Ok(exit::OK)
        }
        Cmd::Artifact(ArtifactCmd::List { conn }) => {
            let v = Client::new(&conn)?.get("/artifacts").await?;
            for a in v["artifacts"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<20} {:>10}  {}",
                    s(&a["name"]),
                    s(&a["version"]),
                    a["size"],
                    s(&a["pushed_at"])
                );
            }
            Ok(exit::OK)
        }
        Cmd::Token(TokenCmd::Create {
            name,
            role,
            groups,
            conn,
        }) => {
            let v = Client::new(&conn)?
                .post(
                    "/tokens",
                    json!({"name": name, "role": role, "groups": groups}),
                )
                .await?;
            println!("{}", s(&v["token"]));
            eprintln!("token for {name} (role {role}); it is shown only this once");
            Ok(exit::OK)
        }
        Cmd::Audit { conn, json } => {
            let v = Client::new(&conn)?.get("/audit?limit=5000").await?;
            if json {
                print_json(&v);
            } else {
                for a in v["audit"].as_array().into_iter().flatten() {
                    println!(
                        "{} {:<12} {:<16} {} {}",
                        s(&a["at"]),
                        s(&a["actor"]),
                        s(&a["action"]),
                        s(&a["target"]),
                        s(&a["detail"])
                    );
                }
            }
            Ok(exit::OK)
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

async fn pipeline_cmd(c: PipelineCmd) -> CliResult {
    match c {
        PipelineCmd::Validate { files, offline } => {
            let cells = load_inventory(&offline.shapes, &offline.cells)
                .map_err(|e| CliError::usage(format!("{e:#}")))?;
            let mut bad = 0;
            for f in &files {
                let text = read_file(f)?;
                let name = f.display().to_string();
                let r = pipeline::parse(&name, &text)
                    .and_then(|(p, spans)| plan::plan(&p, &spans, &cells).map(|pl| (p, pl)));
                match r {
                    Ok((p, pl)) => println!(
                        "{name}: ok ({} waves, {} cells)",
                        p.waves.len(),
                        pl.cell_count()
                    ),
                    Err(d) => {
                        bad += 1;
                        eprintln!("{d}");
                    }
                }
            }
            Ok(if bad == 0 { exit::OK } else { exit::USAGE })
        }
        PipelineCmd::Plan {
            file,
            offline,
            json,
        } => {
            let cells = load_inventory(&offline.shapes, &offline.cells)
                .map_err(|e| CliError::usage(format!("{e:#}")))?;
            let text = read_file(&file)?;
            let name = file.display().to_string();
            let (p, spans) =
                pipeline::parse(&name, &text).map_err(|d| CliError::usage(d.to_string()))?;
            let pl = plan::plan(&p, &spans, &cells).map_err(|d| CliError::usage(d.to_string()))?;
            let now = chrono::Utc::now();
            let proj = plan::project(&p, &pl, &p.parsed_windows(), now, Estimates::default());
            if json {
                print_json(&json!({"plan": pl, "projection": proj}));
                return Ok(exit::OK);
            }
            println!(
                "pipeline {} — {} cells in {} waves, on_failure {}",
                p.name,
                pl.cell_count(),
                pl.waves.len(),
                s(&json!(p.on_failure))
            );
            if !p.windows.is_empty() {
                let w: Vec<&str> = p.windows.iter().map(|w| w.allow.as_str()).collect();
                println!("deploy windows: {}", w.join("; "));
            }
            for (i, w) in pl.order.iter().zip(proj.iter()) {
                let pw = &pl.waves[*i];
                let gate = pw
                    .approval
                    .as_ref()
                    .map(|g| format!(", approval by {} (quorum {})", g.group, g.quorum))
                    .unwrap_or_default();
                let after: Vec<&str> = pw
                    .after
                    .iter()
                    .map(|a| pl.waves[*a].name.as_str())
                    .collect();
                println!(
                    "\nwave {} — {} cells, max_parallel {}{}{}\n  starts +{}, ends +{}",
                    pw.name,
                    pw.cells.len(),
                    pw.max_parallel,
                    gate,
                    if after.is_empty() {
                        String::new()
                    } else {
                        format!(", after {}", after.join(", "))
                    },
                    human(w.start - now),
                    human(w.end - now)
                );
                println!("  {}", pw.cells.join(" "));
            }
            let end = proj.iter().map(|w| w.end).max().unwrap_or(now);
            println!(
                "\nprojected duration: {} (bake times as written; deploy ~30s, test ~10s, command ~60s per cell; windows applied{})",
                human(end - now),
                if pl.waves.iter().any(|w| w.approval.is_some()) { "; approvals not counted" } else { "" }
            );
            Ok(exit::OK)
        }
        PipelineCmd::Submit { file, conn } => {
            let text = read_file(&file)?;
            let name = file.display().to_string();
            // Check locally first for the best messages; the server checks again.
            if let Err(d) = pipeline::parse(&name, &text) {
                eprintln!("{d}");
                return Ok(exit::USAGE);
            }
            let v = Client::new(&conn)?
                .post("/pipelines", json!({"yaml": text, "file": name}))
                .await?;
            println!(
                "submitted {} (revision {}, {} cells)",
                s(&v["name"]),
                v["revision"],
                v["plan"]["cells"]
            );
            Ok(exit::OK)
        }
        PipelineCmd::List { conn } => {
            let v = Client::new(&conn)?.get("/pipelines").await?;
            for p in v["pipelines"].as_array().into_iter().flatten() {
                println!(
                    "{:<28} rev {:<4} by {:<16} {}",
                    s(&p["name"]),
                    p["revision"],
                    s(&p["submitted_by"]),
                    s(&p["submitted_at"])
                );
            }
            Ok(exit::OK)
        }
    }
}

fn human(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Exit status for a finished train.
pub fn status_exit(status: &str) -> i32 {
    match status {
        "succeeded" => exit::OK,
        "failed" | "rolled_back" => exit::FAILED,
        _ => exit::STOPPED,
    }
}

fn progress_line(t: &Value) -> String {
    let summary: Vec<String> = t["summary"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let mut line = format!(
        "{} {}: {}",
        s(&t["spec"]["id"]),
        s(&t["status"]),
        summary.join(", ")
    );
    if let Some(g) = t["gates_waiting"].as_array().filter(|g| !g.is_empty()) {
        let names: Vec<String> = g.iter().map(s).collect();
        line.push_str(&format!(" — waiting for approval at {}", names.join(", ")));
    }
    line
}

async fn wait_for(client: &Client, id: &str) -> CliResult {
    let mut last = String::new();
    loop {
        let t = client.get(&format!("/trains/{}", enc(id))).await?;
        let line = progress_line(&t);
        if line != last {
            println!("{line}");
            last = line;
        }
        let status = s(&t["status"]);
        if !matches!(status.as_str(), "queued" | "running" | "rolling_back") {
            if let Some(f) = t["failure"].as_str() {
                println!("{f}");
            }
            return Ok(status_exit(&status));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn train_cmd(c: TrainCmd) -> CliResult {
    match c {
        TrainCmd::Start {
            pipeline,
            version,
            wait,
            conn,
        } => {
            let client = Client::new(&conn)?;
            let t = client
                .post("/trains", json!({"pipeline": pipeline, "version": version}))
                .await?;
            let id = s(&t["spec"]["id"]);
            println!("started train {id} ({})", s(&t["status"]));
            if wait {
                return wait_for(&client, &id).await;
            }
            Ok(exit::OK)
        }
        TrainCmd::Wait { id, conn } => wait_for(&Client::new(&conn)?, &id).await,
        TrainCmd::Status { id, json, conn } => {
            let t = Client::new(&conn)?
                .get(&format!("/trains/{}", enc(&id)))
                .await?;
            if json {
                print_json(&t);
                return Ok(exit::OK);
            }
            println!(
                "train {} — pipeline {} version {} — {}",
                s(&t["spec"]["id"]),
                s(&t["spec"]["pipeline"]),
                s(&t["spec"]["version"]),
                s(&t["status"])
            );
            println!(
                "started by {} at {}",
                s(&t["spec"]["started_by"]),
                s(&t["created_at"])
            );
            if let Some(f) = t["failure"].as_str() {
                println!("why: {f}");
            }
            let waves = t["spec"]["plan"]["waves"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for (i, w) in waves.iter().enumerate() {
                let ws = &t["waves"][i];
                let approvals: Vec<String> = ws["approvals"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| s(&a["by"]))
                    .collect();
                println!(
                    "\nwave {} — {}{}",
                    s(&w["name"]),
                    s(&ws["status"]),
                    if approvals.is_empty() {
                        String::new()
                    } else {
                        format!(" (approved by {})", approvals.join(", "))
                    }
                );
                for c in w["cells"].as_array().into_iter().flatten() {
                    let id = s(c);
                    let cell = &t["cells"][&id];
                    let last = cell["log"]
                        .as_array()
                        .and_then(|l| l.last())
                        .map(|r| s(&r["detail"]))
                        .unwrap_or_default();
                    println!("  {:<20} {:<14} {}", id, s(&cell["phase"]), last);
                }
            }
            Ok(exit::OK)
        }
        TrainCmd::List {
            pipeline,
            json,
            conn,
        } => {
            let q = pipeline
                .map(|p| format!("?pipeline={}", enc(&p)))
                .unwrap_or_default();
            let v = Client::new(&conn)?.get(&format!("/trains{q}")).await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{:<44} {:<14} {:<14} {:<12} CREATED",
                    "TRAIN", "VERSION", "STATUS", "BY"
                );
                for t in v["trains"].as_array().into_iter().flatten() {
                    println!(
                        "{:<44} {:<14} {:<14} {:<12} {}",
                        s(&t["id"]),
                        s(&t["version"]),
                        s(&t["status"]),
                        s(&t["started_by"]),
                        s(&t["created_at"])
                    );
                }
            }
            Ok(exit::OK)
        }
        TrainCmd::Approve {
            id,
            gate,
            reason,
            conn,
        } => {
            let t = Client::new(&conn)?
                .post(
                    &format!("/trains/{}/approve", enc(&id)),
                    json!({"gate": gate, "reason": reason}),
                )
                .await?;
            println!("approved {gate}; {}", progress_line(&t));
            Ok(exit::OK)
        }
        TrainCmd::Reject {
            id,
            gate,
            reason,
            conn,
        } => {
            let t = Client::new(&conn)?
                .post(
                    &format!("/trains/{}/reject", enc(&id)),
                    json!({"gate": gate, "reason": reason}),
                )
                .await?;
            println!("rejected {gate}; {}", progress_line(&t));
            Ok(exit::OK)
        }
        TrainCmd::Cancel { id, conn } => {
            let t = Client::new(&conn)?
                .post(&format!("/trains/{}/cancel", enc(&id)), json!({}))
                .await?;
            println!("cancel requested; {}", progress_line(&t));
            Ok(exit::OK)
        }
        TrainCmd::Rollback { id, wait, conn } => {
            let client = Client::new(&conn)?;
            let t = client
                .post(&format!("/trains/{}/rollback", enc(&id)), json!({}))
                .await?;
            println!("rollback requested; {}", progress_line(&t));
            if wait {
                let code = wait_for(&client, &id).await?;
                // A rollback that ends rolled back is what was asked for.
                return Ok(if code == exit::FAILED { exit::OK } else { code });
            }
            Ok(exit::OK)
        }
        TrainCmd::Events { id, conn } => {
            let v = Client::new(&conn)?
                .get(&format!("/trains/{}/events?limit=5000", enc(&id)))
                .await?;
            for e in v["events"].as_array().into_iter().flatten() {
                let mut ev = e["event"].clone();
                if ev["type"] == "created" {
                    ev = json!({"type": "created", "queued": ev["queued"]});
                }
                println!("{:>6} {} {}", e["seq"], s(&e["at"]), ev);
            }
            Ok(exit::OK)
        }
        TrainCmd::Logs { id, conn } => {
            let v = Client::new(&conn)?
                .get(&format!("/trains/{}/logs", enc(&id)))
                .await?;
            for l in v["logs"].as_array().into_iter().flatten() {
                println!(
                    "--- {} ({}) {}\n{}",
                    s(&l["key"]),
                    s(&l["cell"]),
                    s(&l["at"]),
                    s(&l["output"])
                );
            }
            Ok(exit::OK)
        }
    }
}

/// Set up logging for the server.
pub fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().try_init().map_err(|e| anyhow::anyhow!("{e}"))
    } else {
        b.try_init().map_err(|e| anyhow::anyhow!("{e}"))
    }
    .context("initialising logging")
}

async fn cells_cmd(c: CellsCmd) -> CliResult {
    match c {
        CellsCmd::List { json, conn } => {
            let v = Client::new(&conn)?.get("/cells").await?;
            if json {
                print_json(&v);
                return Ok(exit::OK);
            }
            println!(
                "{:<14} {:<16} {:<8} {:<9} {:<8} {:<24} VERSIONS",
                "CELL", "REGION", "SHAPE", "STATUS", "WORKERS", "LABELS"
            );
            for c in v["cells"].as_array().into_iter().flatten() {
                let labels: Vec<String> = c["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                let versions: Vec<String> = c["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| {
                        format!(
                            "{}={}",
                            v["artifact"].as_str().unwrap_or(""),
                            v["version"].as_str().unwrap_or("-")
                        )
                    })
                    .collect();
                // Desired workers / running workers (the most of any artifact).
                let running = c["workers"]["running"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, n)| n.as_u64())
                    .max();
                let workers = format!(
                    "{}/{}",
                    s(&c["workers"]["desired"]),
                    running.map_or("-".to_string(), |n| n.to_string())
                );
                println!(
                    "{:<14} {:<16} {:<8} {:<9} {:<8} {:<24} {}",
                    s(&c["id"]),
                    s(&c["region"]),
                    s(&c["shape"]),
                    s(&c["status"]),
                    workers,
                    labels.join(","),
                    versions.join(" ")
                );
            }
            Ok(exit::OK)
        }
        CellsCmd::Add {
            region,
            shape,
            conn,
        } => {
            let v = Client::new(&conn)?
                .post("/cells", json!({"region": region, "shape": shape}))
                .await?;
            let c = &v["cell"];
            println!(
                "added cell {} ({} {}, port {}); the next train over its labels deploys to it",
                s(&c["id"]),
                s(&c["region"]),
                s(&c["shape"]),
                s(&c["port"])
            );
            Ok(exit::OK)
        }
        CellsCmd::Drain { cell, conn } => {
            Client::new(&conn)?
                .post(&format!("/cells/{}/drain", enc(&cell)), json!({}))
                .await?;
            println!("cell {cell} is draining: it takes no new tenants; move its tenants away (conductor plan rebalance), then retire it");
            Ok(exit::OK)
        }
        CellsCmd::Retire { cell, conn } => {
            Client::new(&conn)?
                .post(&format!("/cells/{}/retire", enc(&cell)), json!({}))
                .await?;
            println!("cell {cell} is retired");
            Ok(exit::OK)
        }
        CellsCmd::Resize {
            cell,
            shape,
            reason,
            wait,
            conn,
        } => {
            let client = Client::new(&conn)?;
            let v = client
                .post(
                    &format!("/cells/{}/resize", enc(&cell)),
                    json!({"shape": shape, "reason": reason}),
                )
                .await?;
            let rz = &v["resize"];
            print_resize(rz);
            if wait {
                return wait_resize(&client, &s(&rz["id"])).await;
            }
            Ok(exit::OK)
        }
    }
}

async fn wait_resize(client: &Client, id: &str) -> CliResult {
    loop {
        let v = client.get(&format!("/resizes/{}", enc(id))).await?;
        let rz = &v["resize"];
        let status = s(&rz["status"]);
        match status.as_str() {
            "succeeded" | "failed" | "rejected" => {
                println!("resize {id} {status}: {}", s(&rz["detail"]));
                return Ok(match status.as_str() {
                    "succeeded" => exit::OK,
                    "failed" => exit::FAILED,
                    _ => exit::STOPPED,
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn resizes_cmd(c: ResizesCmd) -> CliResult {
    match c {
        ResizesCmd::List { open, json, conn } => {
            let v = Client::new(&conn)?
                .get(&format!("/resizes?open={open}"))
                .await?;
            if json {
                print_json(&v);
                return Ok(exit::OK);
            }
            println!(
                "{:<32} {:<12} {:<8} {:<8} {:<18} {:<10} DETAIL",
                "RESIZE", "CELL", "FROM", "TO", "STATUS", "BY"
            );
            for r in v["resizes"].as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:<12} {:<8} {:<8} {:<18} {:<10} {}",
                    s(&r["id"]),
                    s(&r["cell"]),
                    s(&r["from_shape"]),
                    s(&r["to_shape"]),
                    s(&r["status"]),
                    s(&r["requested_by"]),
                    s(&r["detail"])
                );
            }
            Ok(exit::OK)
        }
        ResizesCmd::Approve { id, reason, conn } => {
            decide_resize(&conn, &id, "approve", &reason).await
        }
        ResizesCmd::Reject { id, reason, conn } => {
            decide_resize(&conn, &id, "reject", &reason).await
        }
        ResizesCmd::Wait { id, conn } => wait_resize(&Client::new(&conn)?, &id).await,
    }
}

async fn decide_resize(conn: &Conn, id: &str, verb: &str, reason: &str) -> CliResult {
    let v = Client::new(conn)?
        .post(
            &format!("/resizes/{}/{verb}", enc(id)),
            json!({ "reason": reason }),
        )
        .await?;
    println!("resize {id}: {}", s(&v["resize"]["status"]));
    Ok(exit::OK)
}

fn print_resize(z: &Value) {
    println!(
        "resize {} of {}: {} -> {} ({})",
        s(&z["id"]),
        s(&z["cell"]),
        s(&z["from_shape"]),
        s(&z["to_shape"]),
        s(&z["status"])
    );
}

/// GET a capacity view with the policy in the query, or, when `act` names
/// the acting endpoint, POST the policy to it.
async fn ask_planner(
    conn: &Conn,
    policy: &PolicyArgs,
    view: &str,
    act: Option<&str>,
) -> Result<Value, CliError> {
    let client = Client::new(conn)?;
    match act {
        Some(path) => client.post(path, policy.body()).await,
        None => client.get(&format!("{view}{}", policy.query())).await,
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, CliError> {
    serde_json::from_value(v.clone())
        .map_err(|e| CliError::from(anyhow::anyhow!("unexpected answer from the Conductor: {e}")))
}

async fn plan_cmd(c: PlanCmd) -> CliResult {
    match c {
        PlanCmd::Capacity {
            policy,
            apply,
            json,
            conn,
        } => {
            let act = apply.then_some("/capacity/apply");
            let v = ask_planner(&conn, &policy, "/capacity/plan", act).await?;
            if json {
                print_json(&v);
                return Ok(exit::OK);
            }
            let r: capacity_planner::FleetReport = decode(&v["plan"])?;
            print!("{}", report::plan(&r));
            if apply {
                let resizes = v["resizes"].as_array().cloned().unwrap_or_default();
                if resizes.is_empty() {
                    println!("no resizes: every cell already has its recommended shape");
                }
                resizes.iter().for_each(print_resize);
                for k in v["skipped"].as_array().into_iter().flatten() {
                    println!("skipped {}: {}", s(&k["cell"]), s(&k["reason"]));
                }
            }
            Ok(exit::OK)
        }
        PlanCmd::Limits {
            policy,
            push,
            json,
            conn,
        } => {
            let act = push.then_some("/capacity/limits/push");
            let v = ask_planner(&conn, &policy, "/capacity/limits", act).await?;
            if json {
                print_json(&v);
                return Ok(exit::OK);
            }
            let l: Vec<capacity_planner::TenantLimit> = decode(&v["limits"])?;
            print!("{}", report::limits(&l));
            let near = l.iter().filter(|x| x.near_limit).count();
            println!("{near} of {} tenants near their limit", l.len());
            let mut failed = 0;
            for p in v["pushed"].as_array().into_iter().flatten() {
                if p["ok"] != json!(true) {
                    failed += 1;
                    eprintln!(
                        "push to {} ({}) failed: {}",
                        s(&p["cell"]),
                        s(&p["tenant"]),
                        s(&p["detail"])
                    );
                }
            }
            if push {
                let n = v["pushed"].as_array().map_or(0, Vec::len);
                println!(
                    "pushed {} limits to the data planes ({failed} failed)",
                    n - failed
                );
            }
            Ok(if failed == 0 { exit::OK } else { exit::FAILED })
        }
        PlanCmd::Import { file, conn } => {
            let text = read_file(&file)?;
            let client = Client::new(&conn)?;
            let v = client
                .send(
                    client
                        .http
                        .post(format!("{}/api/v1/capacity/usage", client.base))
                        .header("content-type", "application/yaml")
                        .body(text),
                )
                .await?;
            println!(
                "imported {} samples of {} tenants from {}",
                s(&v["imported"]),
                s(&v["tenants"]),
                file.display()
            );
            Ok(exit::OK)
        }
        PlanCmd::Rebalance { policy, json, conn } => {
            let v = Client::new(&conn)?
                .get(&format!("/capacity/rebalance{}", policy.query()))
                .await?;
            if json {
                print_json(&v);
                return Ok(exit::OK);
            }
            let m: Vec<capacity_planner::Move> = decode(&v["moves"])?;
            print!("{}", report::moves(&m));
            Ok(exit::OK)
        }
    }
}

async fn tenants_cmd(c: TenantsCmd) -> CliResult {
    match c {
        TenantsCmd::Place {
            region,
            expected_rps,
            expected_tuples,
            expected_connections,
            stamp,
            policy,
            json,
            conn,
        } => {
            let mut body = policy.body();
            body["region"] = json!(region);
            body["expected_rps"] = json!(expected_rps);
            body["expected_tuples"] = json!(expected_tuples);
            body["expected_connections"] = json!(expected_connections);
            body["stamp"] = json!(stamp);
            let v = Client::new(&conn)?.post("/tenants/place", body).await?;
            if json {
                print_json(&v);
                return Ok(exit::OK);
            }
            let p: capacity_planner::Placement = decode(&v["placement"])?;
            print!("{}", report::placement(&p));
            if let Some(c) = v.get("stamped") {
                println!(
                    "stamped new cell {} ({} {})",
                    s(&c["id"]),
                    s(&c["region"]),
                    s(&c["shape"])
                );
            } else if p.cell.is_none() {
                println!(
                    "(add it with --stamp, or: conductor cells add --region {} --shape {})",
                    p.region,
                    p.new_shape.as_deref().unwrap_or("?")
                );
            }
            Ok(exit::OK)
        }
    }
}
