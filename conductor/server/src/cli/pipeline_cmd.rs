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
        /// Pipeline files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        offline: Offline,
    },
    /// Print a pipeline's waves, cells and projected times. Offline by
    /// default (step durations assumed); with --server, planned by the
    /// Conductor against its inventory, with the step durations measured by
    /// the pipeline's recent trains.
    Plan {
        /// A pipeline file.
        file: PathBuf,
        #[command(flatten)]
        offline: Offline,
        /// Ask the Conductor at --url (CONDUCTOR_URL) for the plan.
        #[arg(long)]
        server: bool,
        /// Print the plan as JSON (the same as the server's plan endpoint).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Submit a pipeline to the Conductor. A revision that weakens the
    /// pipeline's safety (an approval gate removed or loosened, deploy
    /// windows removed or widened, on_failure rolling back less) waits for
    /// an approver; until then trains use the revision in effect.
    Submit {
        /// A pipeline file.
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

/// A pipeline file's bytes.
fn read_bytes(p: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(p).map_err(|e| CliError::usage(format!("{}: {e}", p.display())))
}

/// Read and check a pipeline file offline (no inventory): its text and the
/// pipeline, or every problem at once.
fn read_pipeline(f: &Path) -> Result<(String, pipeline::Pipeline, yamlspan::Spans), CliError> {
    let bytes = read_bytes(f)?;
    let name = f.display().to_string();
    let (p, spans) =
        pipeline::parse_bytes(&name, &bytes).map_err(|d| CliError::usage(d.to_string()))?;
    // parse_bytes succeeded, so the bytes are UTF-8.
    let text = String::from_utf8(bytes).map_err(|e| CliError::usage(format!("{name}: {e}")))?;
    Ok((text, p, spans))
}

pub(super) async fn pipeline_cmd(c: PipelineCmd) -> CliResult {
    match c {
        PipelineCmd::Validate { files, offline } => {
            let cells = load_inventory(&offline.shapes, &offline.cells)
                .map_err(|e| CliError::usage(format!("{e:#}")))?;
            let mut bad = 0;
            for f in &files {
                let bytes = read_bytes(f)?;
                let name = f.display().to_string();
                let r = pipeline::parse_bytes(&name, &bytes)
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
            server,
            json,
            conn,
        } => {
            // Checked here first for the best messages; the server checks again.
            let (text, p, spans) = read_pipeline(&file)?;
            let (report, source) = if server {
                let v = Client::new(&conn)?
                    .post(
                        "/pipelines/validate",
                        json!({"yaml": text, "file": file.display().to_string()}),
                    )
                    .await?;
                let r: plan::PlanReport =
                    serde_json::from_value(v["plan"].clone()).map_err(|e| {
                        CliError::from(anyhow::anyhow!("reading the server's plan: {e}"))
                    })?;
                (r, Source::Server(conn.url.clone()))
            } else {
                let cells = load_inventory(&offline.shapes, &offline.cells)
                    .map_err(|e| CliError::usage(format!("{e:#}")))?;
                let pl =
                    plan::plan(&p, &spans, &cells).map_err(|d| CliError::usage(d.to_string()))?;
                let now = chrono::Utc::now();
                (
                    plan::report(&p, &pl, &[], now, Estimates::default()),
                    Source::Offline,
                )
            };
            if json {
                print_json(&json!(report));
            } else {
                print!("{}", plan_text(&report, &source));
            }
            Ok(exit::OK)
        }
        PipelineCmd::Submit { file, conn } => {
            let name = file.display().to_string();
            // Check locally first for the best messages; the server checks again.
            let text = match read_pipeline(&file) {
                Ok((text, ..)) => text,
                Err(e) if e.code == exit::USAGE => {
                    eprintln!("{}", e.message);
                    return Ok(exit::USAGE);
                }
                Err(e) => return Err(e),
            };
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

/// `10m`, `1h30m`, `4s`, `250ms`: whole seconds from one second up.
fn short(d: conductor_core::duration::Dur) -> String {
    let ms = d.0.as_millis();
    if ms < 1000 {
        return d.to_string();
    }
    let secs = u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX);
    conductor_core::duration::Dur::secs(secs).to_string()
}

/// Where a plan was made.
pub(super) enum Source {
    Offline,
    Server(String),
}

/// What `pipeline plan` prints.
pub(super) fn plan_text(r: &plan::PlanReport, source: &Source) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "pipeline {} — {} cells in {} waves, on_failure {}",
        r.pipeline,
        r.cells,
        r.waves.len(),
        s(&json!(r.on_failure))
    );
    if !r.windows.is_empty() {
        let _ = writeln!(
            o,
            "deploy windows: {} (each cell in its own time zone unless `tz: utc`)",
            r.windows.join("; ")
        );
    }
    for w in &r.waves {
        let gate = w
            .approval
            .as_ref()
            .map(|g| format!(", approval by {} (quorum {})", g.group, g.quorum))
            .unwrap_or_default();
        let after = if w.after.is_empty() {
            String::new()
        } else {
            format!(", after {}", w.after.join(", "))
        };
        let _ = writeln!(
            o,
            "\nwave {} — {} cells, max_parallel {}{gate}{after}\n  starts +{}, ends +{}",
            w.name,
            w.cells.len(),
            w.max_parallel,
            human(w.projected_start - r.start),
            human(w.projected_end - r.start)
        );
        let _ = writeln!(o, "  {}", w.cells.join(" "));
        for x in &w.window_waits {
            let _ = writeln!(
                o,
                "  {} waits {} for its deploy window ({}), which opens at +{}",
                x.cell,
                human(x.opens - x.ready),
                x.tz,
                human(x.opens - r.start)
            );
        }
    }
    let end = r.projected_end.unwrap_or(r.start);
    let steps: Vec<String> = r
        .step_durations
        .iter()
        .map(|e| {
            let d = short(e.duration);
            match e.basis {
                plan::Basis::Written => format!("{} {d} (written)", e.kind),
                plan::Basis::Measured => format!(
                    "{} ~{d} (measured: median of {} run{})",
                    e.kind,
                    e.samples,
                    if e.samples == 1 { "" } else { "s" }
                ),
                plan::Basis::Assumed => format!("{} ~{d} (assumed)", e.kind),
            }
        })
        .collect();
    let _ = writeln!(
        o,
        "\nprojected duration: {}{}",
        human(end - r.start),
        if r.waves.iter().any(|w| w.approval.is_some()) {
            " (approvals not counted)"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "per cell: {}", steps.join(", "));
    let measured = r
        .step_durations
        .iter()
        .any(|e| e.basis == plan::Basis::Measured);
    let _ = writeln!(
        o,
        "{}",
        match (source, measured) {
            (Source::Offline, _) => "durations: offline, nothing measured; `--server` plans with the durations the pipeline's recent trains measured".to_string(),
            (Source::Server(url), true) => format!(
                "durations: measured by the last {} train(s) of {} on {url} where they ran the step",
                r.trains_measured, r.pipeline
            ),
            (Source::Server(url), false) => format!(
                "durations: assumed; no recent train of {} on {url} ran these steps to the end",
                r.pipeline
            ),
        }
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use cells_inventory::CellSpec;

    fn cell(id: &str, region: &str) -> CellSpec {
        CellSpec {
            id: id.into(),
            region: region.into(),
            shape: "small".into(),
            labels: Default::default(),
            target: Default::default(),
            port: None,
            tz: None,
        }
    }

    #[test]
    fn the_plan_says_where_durations_come_from_and_who_waits_for_a_window() {
        let yaml = "name: p\nartifact: { kind: binary, name: a }\nsteps:\n  - deploy: {}\n  - bake: 10m\nwaves:\n  - { name: all, percent: 100, max_parallel: 2 }\nwindows: [ { allow: \"daily 08:00-20:00\" } ]\n";
        let (p, spans) = pipeline::parse("p.yaml", yaml).expect("valid");
        let cells = [cell("euw1-a", "eu-west-1"), cell("use1-a", "us-east-1")];
        let pl = plan::plan(&p, &spans, &cells).expect("plan");
        let start = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let r = plan::report(&p, &pl, &[], start, Estimates::default());
        let text = plan_text(&r, &Source::Offline);
        assert!(
            text.contains("use1-a waits 3h00m for its deploy window (America/New_York), which opens at +3h00m"),
            "{text}"
        );
        assert!(text.contains("ends +3h10m"), "{text}");
        assert!(
            text.contains("per cell: deploy ~30s (assumed), bake 10m (written)"),
            "{text}"
        );
        assert!(
            text.contains("durations: offline, nothing measured"),
            "{text}"
        );
        let mut measured = r.clone();
        measured.trains_measured = 4;
        measured.step_durations[0].basis = plan::Basis::Measured;
        measured.step_durations[0].samples = 12;
        let text = plan_text(&measured, &Source::Server("http://c".into()));
        assert!(
            text.contains("deploy ~30s (measured: median of 12 runs)"),
            "{text}"
        );
        assert!(
            text.contains("durations: measured by the last 4 train(s) of p on http://c"),
            "{text}"
        );
    }
}
