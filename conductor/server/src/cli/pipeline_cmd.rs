//! `conductor pipeline`: validate, plan, submit, list; revisions (diff,
//! approve, reject) in `revisions`.

use super::*;

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
    /// Submit a pipeline to the Conductor. A revision that weakens the
    /// pipeline's safety (an approval gate removed or loosened, deploy
    /// windows removed or widened, on_failure rolling back less) waits for
    /// an approver; until then trains use the revision in effect.
    Submit {
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// List submitted pipelines (and revisions waiting for an approval).
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show what a revision changes: what it weakens, who may approve it,
    /// and its YAML against the revision it was reviewed against.
    Diff {
        name: String,
        /// The revision (default: the newest pending one, else the one in effect).
        #[arg(long)]
        revision: Option<i64>,
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
    /// List a pipeline's revisions and their status.
    Revisions {
        name: String,
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending revision (an approver of the pipeline's gate
    /// groups, or an admin; never its author): it takes effect.
    Approve {
        name: String,
        revision: i64,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Reject a pending revision (same approvers); a reason is required.
    Reject {
        name: String,
        revision: i64,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub(super) async fn pipeline_cmd(c: PipelineCmd) -> CliResult {
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
            if v["status"] == "pending" {
                println!(
                    "submitted {} revision {}: waiting for an approval; trains still use {}",
                    s(&v["name"]),
                    v["revision"],
                    match v["in_effect"].as_i64() {
                        Some(r) => format!("revision {r}"),
                        None => "nothing (the pipeline cannot start trains yet)".into(),
                    }
                );
                revisions::print_findings(&json!({
                    "findings": v["findings"],
                    "approver_groups": v["approver_groups"],
                    "submitted_by": "you",
                }));
                println!(
                    "see `conductor pipeline diff {} --revision {}`",
                    s(&v["name"]),
                    v["revision"]
                );
            } else {
                println!(
                    "submitted {} (revision {}, {} cells)",
                    s(&v["name"]),
                    v["revision"],
                    v["plan"]["cells"]
                );
            }
            Ok(exit::OK)
        }
        PipelineCmd::Diff {
            name,
            revision,
            conn,
            json,
        } => revisions::diff(name, revision, conn, json).await,
        PipelineCmd::Revisions { name, conn, json } => revisions::list(name, conn, json).await,
        PipelineCmd::Approve {
            name,
            revision,
            reason,
            conn,
        } => revisions::decide(name, revision, reason, true, conn).await,
        PipelineCmd::Reject {
            name,
            revision,
            reason,
            conn,
        } => revisions::decide(name, revision, Some(reason), false, conn).await,
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
            for p in v["pending"].as_array().into_iter().flatten() {
                println!(
                    "{:<28} rev {:<4} by {:<16} {}  (waiting for an approval: conductor pipeline diff {})",
                    s(&p["name"]),
                    p["revision"],
                    s(&p["submitted_by"]),
                    s(&p["submitted_at"]),
                    s(&p["name"])
                );
            }
            Ok(exit::OK)
        }
    }
}
