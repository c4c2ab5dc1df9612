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
        /// A name for the identity; never reused, so the audit log stays unambiguous.
        #[arg(long)]
        name: String,
        /// developer, approver, sre, ci or admin.
        #[arg(long)]
        role: String,
        /// Approval groups the identity belongs to (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The token stops working after this long (`30d`, `12h`, `90m`; at
        /// most 3650d). Default: until revoked.
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List tokens (admin): name, role, groups, created, expires, status.
    List {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token (admin): it stops working at once. The last working
    /// admin token cannot be revoked.
    Revoke {
        name: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `conductor audit`: the log of every mutating call (admin).
#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    cmd: Option<AuditCmd>,
    #[command(flatten)]
    conn: Conn,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the audit log's hash chain; report the first broken link and
    /// print the head to keep as an anchor. Exit status 1 if it is broken.
    Verify {
        /// `SEQ:HASH` printed by an earlier verify: also check that this row
        /// is still in the chain (detects a chain rewritten from there on).
        #[arg(long)]
        anchor: Option<String>,
        /// Print JSON.
        #[arg(long = "json")]
        verify_json: bool,
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
            expires,
            conn,
        } => {
            let v = Client::new(&conn)?
                .post(
                    "/tokens",
                    json!({"name": name, "role": role, "groups": groups, "expires": expires}),
                )
                .await?;
            println!("{}", s(&v["token"]));
            let until = match v["expires_at"].as_str() {
                Some(t) => format!(", expires {t}"),
                None => String::new(),
            };
            eprintln!("token for {name} (role {role}{until}); it is shown only this once");
            Ok(exit::OK)
        }
        TokenCmd::List { conn, json } => {
            let v = Client::new(&conn)?.get("/tokens").await?;
            if json {
                print_json(&v);
                return Ok(exit::OK);
            }
            println!(
                "{:<20} {:<10} {:<24} {:<8} {:<28} EXPIRES",
                "NAME", "ROLE", "GROUPS", "STATUS", "CREATED"
            );
            for t in v["tokens"].as_array().into_iter().flatten() {
                let groups: Vec<String> = t["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(s)
                    .collect();
                println!(
                    "{:<20} {:<10} {:<24} {:<8} {:<28} {}",
                    s(&t["name"]),
                    s(&t["role"]),
                    if groups.is_empty() {
                        "-".to_string()
                    } else {
                        groups.join(",")
                    },
                    s(&t["status"]),
                    s(&t["created_at"]),
                    if t["expires_at"].is_null() {
                        "never".to_string()
                    } else {
                        s(&t["expires_at"])
                    }
                );
            }
            Ok(exit::OK)
        }
        TokenCmd::Revoke { name, reason, conn } => {
            Client::new(&conn)?
                .post(
                    &format!("/tokens/{}/revoke", enc(&name)),
                    json!({"reason": reason}),
                )
                .await?;
            println!("revoked token {name}");
            Ok(exit::OK)
        }
    }
}

pub(super) async fn audit_cmd(a: AuditArgs) -> CliResult {
    let client = Client::new(&a.conn)?;
    if let Some(AuditCmd::Verify {
        anchor,
        verify_json,
    }) = a.cmd
    {
        let path = match &anchor {
            Some(x) => format!("/audit/verify?anchor={}", enc(x)),
            None => "/audit/verify".to_string(),
        };
        let v = client.get(&path).await?;
        if verify_json || a.json {
            print_json(&v);
        } else {
            print_verify(&v, anchor.as_deref());
        }
        return Ok(if v["ok"] == json!(true) {
            exit::OK
        } else {
            exit::FAILED
        });
    }
    let mut after = 0;
    let mut rows = Vec::new();
    loop {
        let v = client
            .get(&format!("/audit?after={after}&limit=5000"))
            .await?;
        let page = v["audit"].as_array().cloned().unwrap_or_default();
        let n = page.len();
        if let Some(last) = page.last() {
            after = last["seq"].as_i64().unwrap_or(after);
        }
        rows.extend(page);
        if n < 5000 {
            break;
        }
    }
    if a.json {
        print_json(&json!({ "audit": rows }));
    } else {
        for a in &rows {
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

fn print_verify(v: &Value, anchor: Option<&str>) {
    let rows = &v["rows"];
    match v["first_broken"].as_object() {
        None => println!("audit log intact: {rows} rows, every link holds"),
        Some(b) => println!(
            "audit log BROKEN: {} (first broken link at row {}; {rows} rows read)",
            s(&b["problem"]),
            b["seq"]
        ),
    }
    match (anchor, &v["anchor_found"]) {
        (Some(a), Value::Bool(true)) => println!("anchor {a}: still in the chain"),
        (Some(a), _) => println!(
            "anchor {a}: NOT in the chain (that row was removed or the chain was rewritten)"
        ),
        _ => {}
    }
    if let Some(h) = v["head"].as_object() {
        let head = format!("{}:{}", h["seq"], s(&h["hash"]));
        println!("head: {head}");
        println!("keep the head elsewhere; `conductor audit verify --anchor {head}` later shows whether the log was rewritten since");
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::Cli;
    use clap::Parser;

    #[test]
    fn tokens_are_not_taken_on_the_command_line() {
        let argv = ["conductor", "pipeline", "list", "--token", "cdt_secret"];
        assert!(Cli::try_parse_from(argv).is_err());
        let argv = ["conductor", "pipeline", "list", "--token-file", "/run/t"];
        assert!(Cli::try_parse_from(argv).is_ok());
    }
}
