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
