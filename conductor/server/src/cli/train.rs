//! `conductor train`: start, watch, approve, reject, cancel, roll back.

use super::*;

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

/// Exit status for a finished train.
pub fn status_exit(status: &str) -> i32 {
    match status {
        "succeeded" => exit::OK,
        "failed" | "rolled_back" => exit::FAILED,
        _ => exit::STOPPED,
    }
}

pub(super) fn progress_line(t: &Value) -> String {
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

pub(super) async fn wait_for(client: &Client, id: &str) -> CliResult {
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

pub(super) async fn train_cmd(c: TrainCmd) -> CliResult {
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
