//! `conductor plan` and `conductor tenants`: the capacity planner's views and actions.

use super::cells::print_resize;
use super::*;

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
        /// Move every sample by the same amount so that the newest is now
        /// (replay recorded or example usage, e.g. deploy/local/usage.example.yaml,
        /// as if it had just been measured).
        #[arg(long)]
        shift_to_now: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Tenant moves that empty draining cells, relieve hot cells or free lightly
    /// used ones, each with its gain; then every cell the moves leave at risk
    /// (or still hosting tenants while draining), with why and what to do.
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

/// GET a capacity view with the policy in the query, or, when `act` names
/// the acting endpoint, POST the policy to it.
pub(super) async fn ask_planner(
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

pub(super) fn decode<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, CliError> {
    serde_json::from_value(v.clone())
        .map_err(|e| CliError::from(anyhow::anyhow!("unexpected answer from the Conductor: {e}")))
}

pub(super) async fn plan_cmd(c: PlanCmd) -> CliResult {
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
            let (mut failed, mut skipped) = (0, 0);
            for p in v["pushed"].as_array().into_iter().flatten() {
                if p["skipped"] == json!(true) {
                    skipped += 1;
                    println!(
                        "not pushed: {} ({}): {}",
                        s(&p["tenant"]),
                        s(&p["cell"]),
                        s(&p["detail"])
                    );
                } else if p["ok"] != json!(true) {
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
                    "pushed {} limits to the data planes ({failed} failed, {skipped} not FGA stores)",
                    n - failed - skipped
                );
            }
            Ok(if failed == 0 { exit::OK } else { exit::FAILED })
        }
        PlanCmd::Import {
            file,
            shift_to_now,
            conn,
        } => {
            let text = read_file(&file)?;
            let client = Client::new(&conn)?;
            let v = client
                .send(
                    client
                        .http
                        .post(format!(
                            "{}/api/v1/capacity/usage?shift_to_now={shift_to_now}",
                            client.base
                        ))
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
            let r: capacity_planner::Rebalance = decode(&v)?;
            print!("{}", report::rebalance(&r));
            Ok(exit::OK)
        }
    }
}

pub(super) async fn tenants_cmd(c: TenantsCmd) -> CliResult {
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
