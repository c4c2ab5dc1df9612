//! `conductor train`: start, watch, approve, reject, cancel, roll back.

use super::client::Patience;
use super::watch::{wait_for, watch, Follow};
use super::*;
use chrono::{DateTime, Utc};
use conductor_core::duration::Dur;
use std::collections::BTreeMap;

/// How `--wait` copes with a Conductor it cannot reach.
#[derive(Args, Clone, Copy)]
pub struct WaitOpts {
    /// While following a train: how long to keep retrying while the Conductor cannot be
    /// reached (e.g. while it restarts) before giving up with exit status 4.
    /// A duration such as 90s, 5m or 1h.
    #[arg(long, default_value = "5m", value_parser = parse_bound)]
    unreachable_timeout: Dur,
}

fn parse_bound(s: &str) -> Result<Dur, String> {
    conductor_core::duration::parse(s)
}

impl WaitOpts {
    fn patience(self) -> Patience {
        Patience::new(self.unreachable_timeout.0)
    }
}

#[derive(Subcommand)]
pub enum TrainCmd {
    /// Start a train. With --wait: exit 0 succeeded, 1 failed or rolled back,
    /// 3 rejected, cancelled or superseded, 4 the Conductor could not be reached.
    Start {
        /// A submitted pipeline's name.
        pipeline: String,
        /// The artifact version to ship (pushed first for binary artifacts).
        #[arg(long)]
        version: String,
        /// Follow the train until it ends, riding out a Conductor restart.
        #[arg(long)]
        wait: bool,
        /// Print only the train's id on standard output (for scripts:
        /// `TRAIN=$(conductor train start ... --quiet)`); with --wait,
        /// progress goes to standard error.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        patience: WaitOpts,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a train.
    Status {
        /// The train's id (see `conductor train list`).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List recent trains.
    List {
        /// Only trains of this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Follow a train until it ends (exit status as for `start --wait`), or
    /// with --gate until that gate waits for an approval.
    Wait {
        /// The train's id (see `conductor train list`).
        id: String,
        /// Return (exit 0) as soon as this gated wave waits for an approval,
        /// or has been approved already; a train that ends first exits as
        /// for `start --wait`.
        #[arg(long)]
        gate: Option<String>,
        #[command(flatten)]
        patience: WaitOpts,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the train's events as they happen (from its first), until it
    /// ends; exit status as for `start --wait`. Reconnects after a dropped
    /// connection without missing or repeating an event.
    Watch {
        /// The train's id (see `conductor train list`).
        id: String,
        /// One JSON object per line (`{seq, train, at, event}`; at the end
        /// `{train, end: {status, summary}}`) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        patience: WaitOpts,
        #[command(flatten)]
        conn: Conn,
    },
    /// Approve the wave waiting at a gate (never your own train).
    Approve {
        /// The train's id (see `conductor train list`).
        id: String,
        /// The gated wave's name.
        #[arg(long)]
        gate: String,
        /// Why (kept in the train and the audit log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Reject the wave waiting at a gate; the train stops.
    Reject {
        /// The train's id (see `conductor train list`).
        id: String,
        /// The gated wave's name.
        #[arg(long)]
        gate: String,
        /// Why (kept in the train and the audit log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel a train: no new cell starts; cells in flight stop after their step.
    Cancel {
        /// The train's id (see `conductor train list`).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Roll back every cell the train deployed, newest wave first. A cell
    /// that no longer runs this train's version (a newer train changed it)
    /// is left as it is and reported as skipped.
    Rollback {
        /// The train's id (see `conductor train list`).
        id: String,
        /// Follow the rollback until it ends (exit 0 rolled back, 1 failed, 4 unreachable).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        patience: WaitOpts,
        #[command(flatten)]
        conn: Conn,
    },
    /// The train's event log.
    Events {
        /// The train's id (see `conductor train list`).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Output kept from the train's command steps.
    Logs {
        /// The train's id (see `conductor train list`).
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

pub(super) fn progress_line(t: &Value, now: DateTime<Utc>) -> String {
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
    if let Some((cell, at)) = windows_waited(t).into_iter().min_by_key(|(_, at)| *at) {
        line.push_str(&format!(
            " — next deploy window opens {} for {cell}",
            when(at, now)
        ));
    }
    line
}

/// Cells waiting for their deploy window, with when it opens.
fn windows_waited(t: &Value) -> Vec<(String, DateTime<Utc>)> {
    t["cells"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, c)| c["phase"] == "waiting_window")
        .filter_map(|(id, c)| {
            let at = DateTime::parse_from_rfc3339(c["until"].as_str()?).ok()?;
            Some((id.clone(), at.with_timezone(&Utc)))
        })
        .collect()
}

/// `2026-11-24 08:00:00 UTC (in 13h02m)`.
fn when(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{} (in {})",
        at.format("%Y-%m-%d %H:%M:%S UTC"),
        human(at - now)
    )
}

/// Cells a rollback left as they were, each with why.
fn rollback_skips(t: &Value) -> Vec<(String, String)> {
    t["cells"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, c)| c["phase"] == "rollback_skipped")
        .map(|(id, c)| {
            let why = c["log"]
                .as_array()
                .and_then(|l| l.last())
                .map(|r| s(&r["detail"]))
                .unwrap_or_default();
            (id.clone(), why)
        })
        .collect()
}

pub(super) fn skip_warning(t: &Value) -> Option<String> {
    let skips = rollback_skips(t);
    if skips.is_empty() {
        return None;
    }
    let ids: Vec<&str> = skips.iter().map(|(id, _)| id.as_str()).collect();
    Some(format!(
        "warning: the rollback left {} cell(s) as they were, because a newer deploy changed them after this train: {}",
        skips.len(),
        ids.join(", ")
    ))
}

/// What `train status` prints.
pub(super) fn status_text(t: &Value, now: DateTime<Utc>) -> String {
    let mut out = vec![
        format!(
            "train {} — pipeline {} version {} — {}",
            s(&t["spec"]["id"]),
            s(&t["spec"]["pipeline"]),
            s(&t["spec"]["version"]),
            s(&t["status"])
        ),
        format!(
            "started by {} at {}",
            s(&t["spec"]["started_by"]),
            s(&t["created_at"])
        ),
    ];
    if let Some(f) = t["failure"].as_str() {
        out.push(format!("why: {f}"));
    }
    let waits: BTreeMap<String, DateTime<Utc>> = windows_waited(t).into_iter().collect();
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
        out.push(format!(
            "\nwave {} — {}{}",
            s(&w["name"]),
            s(&ws["status"]),
            if approvals.is_empty() {
                String::new()
            } else {
                format!(" (approved by {})", approvals.join(", "))
            }
        ));
        for c in w["cells"].as_array().into_iter().flatten() {
            let id = s(c);
            let cell = &t["cells"][&id];
            let last = match waits.get(&id) {
                Some(at) => format!(
                    "deploy window opens {} ({} time)",
                    when(*at, now),
                    s(&t["spec"]["plan"]["cell_tz"][&id])
                ),
                None => cell["log"]
                    .as_array()
                    .and_then(|l| l.last())
                    .map(|r| s(&r["detail"]))
                    .unwrap_or_default(),
            };
            out.push(format!("  {:<20} {:<16} {}", id, s(&cell["phase"]), last));
        }
    }
    if let Some(w) = skip_warning(t) {
        out.push(format!("\n{w}"));
    }
    out.join("\n")
}

/// Approve or reject (`verb`) the gate `gate` of train `id`.
async fn decide(
    conn: &Conn,
    id: &str,
    verb: &str,
    gate: &str,
    reason: Option<String>,
) -> CliResult {
    let t = Client::new(conn)?
        .post(
            &format!("/trains/{}/{verb}", enc(id)),
            json!({"gate": gate, "reason": reason}),
        )
        .await?;
    println!("{verb}d {gate}; {}", progress_line(&t, Utc::now()));
    Ok(exit::OK)
}

pub(super) async fn train_cmd(c: TrainCmd) -> CliResult {
    match c {
        TrainCmd::Start {
            pipeline,
            version,
            wait,
            quiet,
            patience,
            conn,
        } => {
            let client = Client::new(&conn)?;
            let body = json!({"pipeline": pipeline, "version": version});
            // With --wait, a Conductor that is restarting is waited for too
            // (the start is re-sent only if it never reached the server).
            let t = if wait {
                client
                    .post_patiently("/trains", body, patience.patience())
                    .await?
            } else {
                client.post("/trains", body).await?
            };
            let id = s(&t["spec"]["id"]);
            if quiet {
                println!("{id}");
            } else {
                println!("started train {id} ({})", s(&t["status"]));
            }
            if wait {
                let follow = Follow { quiet, gate: None };
                return wait_for(&client, &id, patience.patience(), follow).await;
            }
            Ok(exit::OK)
        }
        TrainCmd::Wait {
            id,
            gate,
            patience,
            conn,
        } => {
            let follow = Follow {
                quiet: false,
                gate: gate.as_deref(),
            };
            wait_for(&Client::new(&conn)?, &id, patience.patience(), follow).await
        }
        TrainCmd::Watch {
            id,
            json,
            patience,
            conn,
        } => watch(&Client::new(&conn)?, &id, json, patience.patience()).await,
        TrainCmd::Status { id, json, conn } => {
            let t = Client::new(&conn)?
                .get(&format!("/trains/{}", enc(&id)))
                .await?;
            if json {
                print_json(&t);
                return Ok(exit::OK);
            }
            println!("{}", status_text(&t, Utc::now()));
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
        } => decide(&conn, &id, "approve", &gate, reason).await,
        TrainCmd::Reject {
            id,
            gate,
            reason,
            conn,
        } => decide(&conn, &id, "reject", &gate, reason).await,
        TrainCmd::Cancel { id, conn } => {
            let t = Client::new(&conn)?
                .post(&format!("/trains/{}/cancel", enc(&id)), json!({}))
                .await?;
            println!("cancel requested; {}", progress_line(&t, Utc::now()));
            Ok(exit::OK)
        }
        TrainCmd::Rollback {
            id,
            wait,
            patience,
            conn,
        } => {
            let client = Client::new(&conn)?;
            let t = client
                .post(&format!("/trains/{}/rollback", enc(&id)), json!({}))
                .await?;
            println!("rollback requested; {}", progress_line(&t, Utc::now()));
            if wait {
                let code = wait_for(&client, &id, patience.patience(), Follow::default()).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .expect("time")
    }

    fn train() -> Value {
        json!({
            "spec": {"id": "t1", "pipeline": "p", "version": "2", "started_by": "dana",
                "plan": {"waves": [{"name": "all", "cells": ["euw1-a", "use1-a", "use1-b"]}],
                    "cell_tz": {"euw1-a": "Europe/Dublin", "use1-a": "America/New_York", "use1-b": "America/New_York"}}},
            "status": "running",
            "created_at": "2026-11-23T19:00:00Z",
            "waves": [{"status": "running", "approvals": []}],
            "cells": {
                "euw1-a": {"phase": "waiting_window", "until": "2026-11-24T08:00:00Z", "log": []},
                "use1-a": {"phase": "running", "log": [{"detail": "use1-a now runs 2"}]},
                "use1-b": {"phase": "pending", "log": []},
            },
            "summary": {"pending": 1, "running": 1, "waiting_window": 1},
            "gates_waiting": [],
        })
    }

    #[test]
    fn a_waiting_cell_says_when_its_window_opens() {
        let now = at("2026-11-23T19:00:00Z");
        let text = status_text(&train(), now);
        assert!(
            text.contains("euw1-a               waiting_window   deploy window opens 2026-11-24 08:00:00 UTC (in 13h00m) (Europe/Dublin time)"),
            "{text}"
        );
        assert!(text.contains("use1-a now runs 2"), "{text}");
        let line = progress_line(&train(), now);
        assert!(
            line.ends_with(
                "next deploy window opens 2026-11-24 08:00:00 UTC (in 13h00m) for euw1-a"
            ),
            "{line}"
        );
    }

    #[test]
    fn a_rollback_skip_is_shown_and_warned_about() {
        let mut t = train();
        t["status"] = json!("rolled_back");
        t["cells"]["euw1-a"] =
            json!({"phase": "rolled_back", "log": [{"detail": "euw1-a now runs 1"}]});
        t["cells"]["use1-a"] = json!({"phase": "rollback_skipped", "log": [
            {"detail": "use1-a now runs 2"},
            {"detail": "skipped: use1-a runs 3 now, not 2 (changed after this train deployed it); left as it is"}]});
        let text = status_text(&t, at("2026-11-23T19:00:00Z"));
        assert!(
            text.contains("use1-a               rollback_skipped skipped: use1-a runs 3 now"),
            "{text}"
        );
        assert!(
            text.ends_with("warning: the rollback left 1 cell(s) as they were, because a newer deploy changed them after this train: use1-a"),
            "{text}"
        );
        assert!(skip_warning(&train()).is_none());
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(status_exit("succeeded"), exit::OK);
        assert_eq!(status_exit("rolled_back"), exit::FAILED);
        assert_eq!(status_exit("superseded"), exit::STOPPED);
        assert_eq!(exit::UNREACHABLE, 4);
    }
}
