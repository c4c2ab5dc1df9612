//! `fga-dataplane`: the FGA data plane's command line.
//!
//! `fga-dataplane test --tests FILE.fga.yaml` runs model tests on an
//! embedded store, like `fga model test`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "fga-dataplane",
    version,
    about = "Relationship-based authorization (OpenFGA-compatible) for one cell"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the OpenFGA-compatible HTTP API for this cell.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Where the SQLite database lives.
        #[arg(long, default_value = ".fga-data")]
        data_dir: PathBuf,
        /// Pre-shared keys clients must send as `Authorization: Bearer KEY`
        /// (comma separated; none: no authentication). Also FGA_AUTHN_PRESHARED_KEYS.
        #[arg(
            long,
            env = "FGA_AUTHN_PRESHARED_KEYS",
            value_delimiter = ',',
            hide_env_values = true
        )]
        authn_preshared_keys: Vec<String>,
        /// Most objects a ListObjects call returns.
        #[arg(long, default_value_t = 1000)]
        list_objects_max_results: usize,
    },
    /// Run `.fga.yaml` model tests (the `fga model test` format) on an embedded store.
    Test {
        /// Test files (repeat, or pass several).
        #[arg(long = "tests", required = true, num_args = 1..)]
        tests: Vec<PathBuf>,
        /// Print every failure (default: the first 20 per file).
        #[arg(long)]
        verbose: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async {
        match cli.cmd {
            Cmd::Serve {
                addr,
                data_dir,
                authn_preshared_keys,
                list_objects_max_results,
            } => {
                match serve(
                    &addr,
                    &data_dir,
                    authn_preshared_keys,
                    list_objects_max_results,
                )
                .await
                {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        1
                    }
                }
            }
            Cmd::Test { tests, verbose } => {
                let mut ok = true;
                for f in &tests {
                    match fga_dataplane::modeltest::run_file(f).await {
                        Ok(s) => {
                            let shown = if verbose { s.failures.len() } else { 20 };
                            for line in s.failures.iter().take(shown) {
                                println!("FAIL {line}");
                            }
                            if s.failures.len() > shown {
                                println!(
                                    "... and {} more failures (--verbose shows all)",
                                    s.failures.len() - shown
                                );
                            }
                            print!("{}", s.report());
                            ok &= s.passed();
                        }
                        Err(e) => {
                            eprintln!("error: {}: {e:#}", f.display());
                            return 2;
                        }
                    }
                }
                i32::from(!ok)
            }
        }
    });
    std::process::exit(code);
}

async fn serve(
    addr: &str,
    data_dir: &std::path::Path,
    keys: Vec<String>,
    list_max: usize,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let keys: Vec<String> = keys
        .into_iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let db = fga_dataplane::store::Db::open(&data_dir.join("fga.db"))
        .await
        .context("opening the database")?;
    let app = fga_dataplane::api::router(fga_dataplane::api::AppState {
        db,
        keys: std::sync::Arc::new(keys.clone()),
        list_objects_max: list_max.max(1),
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    println!(
        "fga-dataplane listening on http://{local} (authentication: {})",
        if keys.is_empty() {
            "none"
        } else {
            "pre-shared keys"
        }
    );
    tracing::info!(%local, "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving HTTP")
}
