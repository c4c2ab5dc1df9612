//! `conductor cells` and `conductor resizes`.

use super::*;

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
    /// Refused while the cell still hosts tenants (it names them) or when the
    /// planner cannot tell.
    Retire {
        cell: String,
        /// Retire even so (role admin; audited with the tenants lost).
        #[arg(long)]
        force: bool,
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

#[derive(Subcommand)]
pub enum ResizesCmd {
    /// List resize operations, newest first.
    List {
        /// Only unfinished ones (awaiting approval, waiting for the lease, running).
        #[arg(long)]
        open: bool,
        /// Only those in this state: awaiting_approval, waiting_for_lease,
        /// running, succeeded, failed or rejected.
        #[arg(long, value_parser = ["awaiting_approval", "waiting_for_lease", "running", "succeeded", "failed", "rejected"])]
        status: Option<String>,
        /// Print only their ids, one per line (for scripts).
        #[arg(long, short)]
        quiet: bool,
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

pub(super) async fn cells_cmd(c: CellsCmd) -> CliResult {
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
        CellsCmd::Retire { cell, force, conn } => {
            let v = Client::new(&conn)?
                .post(
                    &format!("/cells/{}/retire", enc(&cell)),
                    json!({ "force": force }),
                )
                .await?;
            let lost: Vec<String> = v["tenants_lost"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            if lost.is_empty() {
                println!("cell {cell} is retired");
            } else {
                println!(
                    "cell {cell} is retired (forced); tenants lost: {}",
                    lost.join(", ")
                );
            }
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

pub(super) async fn wait_resize(client: &Client, id: &str) -> CliResult {
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

pub(super) async fn resizes_cmd(c: ResizesCmd) -> CliResult {
    match c {
        ResizesCmd::List {
            open,
            status,
            quiet,
            json,
            conn,
        } => {
            let mut v = Client::new(&conn)?
                .get(&format!("/resizes?open={open}"))
                .await?;
            if let (Some(want), Some(list)) = (&status, v["resizes"].as_array_mut()) {
                list.retain(|r| r["status"].as_str() == Some(want.as_str()));
            }
            if quiet {
                for r in v["resizes"].as_array().into_iter().flatten() {
                    println!("{}", s(&r["id"]));
                }
                return Ok(exit::OK);
            }
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

pub(super) async fn decide_resize(conn: &Conn, id: &str, verb: &str, reason: &str) -> CliResult {
    let v = Client::new(conn)?
        .post(
            &format!("/resizes/{}/{verb}", enc(id)),
            json!({ "reason": reason }),
        )
        .await?;
    println!("resize {id}: {}", s(&v["resize"]["status"]));
    Ok(exit::OK)
}

pub(super) fn print_resize(z: &Value) {
    println!(
        "resize {} of {}: {} -> {} ({})",
        s(&z["id"]),
        s(&z["cell"]),
        s(&z["from_shape"]),
        s(&z["to_shape"]),
        s(&z["status"])
    );
}
