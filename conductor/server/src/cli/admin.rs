//! Artifacts, tokens and the audit log.

use super::*;

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

pub(super) async fn artifact_cmd(c: ArtifactCmd) -> CliResult {
    match c {
        ArtifactCmd::Push {
            name,
            version,
            path,
            conn,
        } => {
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
        ArtifactCmd::List { conn } => {
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
    }
}

pub(super) async fn token_cmd(c: TokenCmd) -> CliResult {
    match c {
        TokenCmd::Create {
            name,
            role,
            groups,
            conn,
        } => {
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
    }
}

pub(super) async fn audit_cmd(conn: Conn, json: bool) -> CliResult {
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
