//! The `conductor` command line. clap types stay in this module; they are
//! turned into validated values before anything else sees them.

use crate::targets::ports::PortRange;
use crate::up::{load_inventory, up, PlannerMode, UpOptions, Users};
use anyhow::Context;
use capacity_planner::report;
use clap::{Args, Parser, Subcommand};
use conductor_core::pipeline;
use conductor_core::plan::{self, Estimates};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod admin;
mod capacity;
mod cells;
mod client;
mod pipeline_cmd;
mod revisions;
mod sse;
mod train;
mod watch;

pub use admin::{ArtifactCmd, AuditArgs, AuditCmd, TokenCmd};
pub use capacity::{PlanCmd, PolicyArgs, TenantsCmd};
pub use cells::{CellsCmd, ResizesCmd};
use client::Client;
pub use pipeline_cmd::{Offline, PipelineCmd};
pub use train::{status_exit, TrainCmd};

/// Exit statuses of the CLI.
pub mod exit {
    pub const OK: i32 = 0;
    /// The train failed or was rolled back; or the server failed the request.
    pub const FAILED: i32 = 1;
    /// Bad usage or input (also what clap uses).
    pub const USAGE: i32 = 2;
    /// The train was rejected, cancelled or superseded.
    pub const STOPPED: i32 = 3;
    /// The Conductor could not be reached (not running, restarting, or a
    /// proxy in front of it answering 502/503/504); with `--wait`, after
    /// retrying for `--unreachable-timeout`.
    pub const UNREACHABLE: i32 = 4;
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
    /// A file holding the bearer token (see `conductor token create`).
    /// Default: the token in $CONDUCTOR_TOKEN. A token is never taken on
    /// the command line, where other users of the machine can read it.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// $CONDUCTOR_TOKEN (from the environment only).
    #[arg(skip = std::env::var("CONDUCTOR_TOKEN").ok().filter(|t| !t.is_empty()))]
    pub token: Option<String>,
}

// Parsed once per run: the size of `Up` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Cmd {
    /// Start the Conductor and the local cells on this machine (Ctrl-C stops the
    /// Conductor; the cells keep serving and the next `up` adopts them; trains resume).
    /// `serve` is the same command: with --database-url postgres://…, several
    /// replicas share one database, one leads and the others forward to it.
    #[command(visible_alias = "serve")]
    Up {
        /// Where the database, artifacts, keys and logs live (made mode 0700;
        /// steps and cells cannot read it).
        #[arg(long, default_value = ".data")]
        data_dir: PathBuf,
        /// Where cells keep their data and command steps run, outside the data
        /// directory [default: DATA-run beside the data directory].
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// When run as root: the user command steps and command targets run as
        /// (a name or UID[:GID]; never root) [default: nobody].
        #[arg(long, value_name = "USER")]
        run_as: Option<String>,
        /// When run as root: the user local cell processes run as (a name or
        /// UID[:GID]; never root) [default: 65533:65533, an id of their own].
        #[arg(long, value_name = "USER")]
        cells_run_as: Option<String>,
        /// Loopback ports for artifacts after a cell's first (each gets a pair
        /// of its own; the first keeps the cell's `port`).
        #[arg(long, default_value = "28000-28999", value_name = "LOW-HIGH")]
        artifact_ports: String,
        /// When the database is created: write the admin token to FILE (mode
        /// 0600) instead of printing it (needed with --log-format json).
        #[arg(long, value_name = "FILE")]
        write_admin_token: Option<PathBuf>,
        /// On Ctrl-C or SIGTERM, stop the cell processes too (by default they
        /// keep serving and the next `conductor up` adopts them).
        #[arg(long)]
        stop_cells_on_exit: bool,
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
        /// (its token in CONDUCTOR_PLANNER_TOKEN or --planner-token-file).
        #[arg(long, default_value = "auto")]
        planner: String,
        /// A file (mode 0600) holding the token of the planner at --planner
        /// URL; without it, CONDUCTOR_PLANNER_TOKEN.
        #[arg(long)]
        planner_token_file: Option<PathBuf>,
        /// Refused (arguments show in `ps`): use CONDUCTOR_PLANNER_TOKEN or
        /// --planner-token-file.
        #[arg(long, hide = true)]
        planner_token: Option<String>,
        /// Seconds between the started planner's scrapes of the cells.
        #[arg(long, default_value_t = 15.0)]
        planner_interval_secs: f64,
        /// The store's database: sqlite://PATH or postgres://USER@HOST/DB
        /// [default: conductor.db in the data directory; also
        /// CONDUCTOR_DATABASE_URL]. A URL with a password is refused here
        /// (the command line is public): put it in CONDUCTOR_DATABASE_URL or
        /// --database-url-file, or the password in PGPASSWORD / ~/.pgpass.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// A file holding the database URL (mode 0600), instead of --database-url.
        #[arg(long, value_name = "FILE", conflicts_with = "database_url")]
        database_url_file: Option<PathBuf>,
        /// $CONDUCTOR_DATABASE_URL (from the environment only).
        #[arg(skip = std::env::var("CONDUCTOR_DATABASE_URL").ok().filter(|u| !u.is_empty()))]
        database_url_env: Option<String>,
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
    /// The audit log of every mutating call (admin); `audit verify` checks its hash chain.
    Audit(AuditArgs),
}

pub(super) fn read_file(p: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(p).map_err(|e| CliError::usage(format!("{}: {e}", p.display())))
}

pub(super) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(super) fn enc(s: &str) -> String {
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
    let json = cli.log_format == "json";
    match cli.cmd {
        Cmd::Up {
            data_dir,
            run_dir,
            run_as,
            cells_run_as,
            artifact_ports,
            write_admin_token,
            stop_cells_on_exit,
            listen,
            cells,
            shapes,
            cell_template,
            planner,
            planner_token_file,
            planner_token,
            planner_interval_secs,
            database_url,
            database_url_file,
            database_url_env,
        } => {
            let database_url =
                database_url_of(database_url, database_url_file.as_deref(), database_url_env)?;
            if planner_token.is_some() {
                return Err(CliError::usage(
                    "--planner-token is not accepted: a secret on the command line is seen by every user in `ps`; use CONDUCTOR_PLANNER_TOKEN or --planner-token-file FILE (mode 0600)",
                ));
            }
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
                    let t = capacity_planner::secrets::secret_from(
                        planner_token_file.as_deref(),
                        "CONDUCTOR_PLANNER_TOKEN",
                    )
                    .map_err(|e| CliError::usage(e.to_string()))?
                    .ok_or_else(|| {
                        CliError::usage(
                            "--planner URL needs the planner's token in CONDUCTOR_PLANNER_TOKEN or a file named by --planner-token-file",
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
            let users = Users::resolve(run_as.as_deref(), cells_run_as.as_deref())
                .map_err(CliError::usage)?;
            let artifact_ports = PortRange::parse(&artifact_ports)
                .map_err(|e| CliError::usage(format!("--artifact-ports {e}")))?;
            up(UpOptions {
                data_dir,
                listen,
                cells_file: cells,
                shapes_file: shapes,
                cell_template,
                planner,
                run_dir,
                users,
                artifact_ports,
                write_admin_token,
                stop_cells_on_exit,
                json,
                database_url,
            })
            .await?;
            Ok(exit::OK)
        }
        Cmd::Pipeline(c) => pipeline_cmd::pipeline_cmd(c).await,
        Cmd::Train(c) => train::train_cmd(c).await,
        Cmd::Cells(c) => cells::cells_cmd(c).await,
        Cmd::Resizes(c) => cells::resizes_cmd(c).await,
        Cmd::Plan(c) => capacity::plan_cmd(c).await,
        Cmd::Tenants(c) => capacity::tenants_cmd(c).await,
        Cmd::Artifact(c) => admin::artifact_cmd(c).await,
        Cmd::Token(c) => admin::token_cmd(c).await,
        Cmd::Audit(a) => admin::audit_cmd(a).await,
    }
}

/// The store's database URL: `--database-url` (refused if it carries a
/// password: `ps` shows it), the file named by `--database-url-file` (0600),
/// or CONDUCTOR_DATABASE_URL; None: the SQLite file in the data directory.
fn database_url_of(
    flag: Option<String>,
    file: Option<&Path>,
    env: Option<String>,
) -> Result<Option<String>, CliError> {
    let url = match (flag, file) {
        (Some(u), _) if crate::store::url_has_password(&u) => {
            return Err(CliError::usage(
                "--database-url carries a password, which the command line shows in `ps`: set CONDUCTOR_DATABASE_URL, use --database-url-file FILE (mode 0600), or PGPASSWORD / ~/.pgpass",
            ))
        }
        (Some(u), _) => Some(u),
        (None, Some(f)) => Some(
            capacity_planner::secrets::read_secret_file(f)
                .map_err(|e| CliError::usage(format!("--database-url-file: {e}")))?,
        ),
        (None, None) => env,
    };
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if url.len() > 4096 {
        return Err(CliError::usage(
            "the database URL is longer than 4096 bytes",
        ));
    }
    if !(crate::store::is_postgres_url(&url) || url.starts_with("sqlite:")) {
        return Err(CliError::usage(
            "the database URL must be sqlite://PATH or postgres://USER@HOST/DATABASE",
        ));
    }
    Ok(Some(url))
}

pub(super) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Set up logging for the server (stderr): text, colored only on a
/// terminal, or one JSON object per line.
pub fn init_logging(format: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json()
            .with_ansi(false)
            .try_init()
            .map_err(|e| anyhow::anyhow!("{e}"))
    } else {
        b.with_ansi(std::io::stderr().is_terminal())
            .try_init()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
    .context("initialising logging")
}

/// How a fatal error of `conductor up` is printed: a JSON line with
/// `--log-format json`, else `error: ...`.
pub fn print_error(json: bool, message: &str) {
    if json {
        eprintln!(
            "{}",
            serde_json::json!({"level": "ERROR", "fields": {"message": message}})
        );
    } else {
        eprintln!("error: {message}");
    }
}

pub(super) fn human(d: chrono::Duration) -> String {
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

#[cfg(test)]
mod database_url_tests {
    use super::database_url_of;

    #[test]
    fn a_password_on_the_command_line_is_refused_and_the_env_var_named() {
        let err = database_url_of(Some("postgres://u:secret@db/c".into()), None, None)
            .expect_err("refused");
        assert!(
            err.message.contains("CONDUCTOR_DATABASE_URL"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("--database-url-file"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("secret"), "{}", err.message);
        let err = database_url_of(Some("postgres://u@db/c?password=x".into()), None, None)
            .expect_err("refused");
        assert!(err.message.contains("password"), "{}", err.message);
        // Without a password, or from the environment: accepted.
        assert_eq!(
            database_url_of(Some("postgres://u@db/c".into()), None, None)
                .expect("ok")
                .as_deref(),
            Some("postgres://u@db/c")
        );
        assert_eq!(
            database_url_of(None, None, Some("postgres://u:pw@db/c".into()))
                .expect("env")
                .as_deref(),
            Some("postgres://u:pw@db/c")
        );
        assert_eq!(database_url_of(None, None, None).expect("default"), None);
        assert!(database_url_of(Some("mysql://db/c".into()), None, None).is_err());
    }

    #[test]
    fn the_url_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("url");
        std::fs::write(&f, "postgres://u:pw@db/c\n").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(database_url_of(None, Some(&f), None).is_err());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            database_url_of(None, Some(&f), Some("sqlite://x".into()))
                .expect("file")
                .as_deref(),
            Some("postgres://u:pw@db/c")
        );
    }
}
