//! `conductor`: the server (`conductor up`) and the CLI users type.

use clap::Parser;
use conductor::cli::{exit, init_logging, run, Cli, Cmd};

fn main() {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Up { .. }) {
        if let Err(e) = init_logging(&cli.log_format) {
            eprintln!("error: {e:#}");
            std::process::exit(exit::FAILED);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(exit::FAILED);
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    };
    std::process::exit(code);
}
