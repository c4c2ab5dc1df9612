//! `conductor`: the server (`conductor up`) and the CLI users type.

use clap::Parser;
use conductor::cli::{exit, init_logging, print_error, run, Cli, Cmd};

fn main() {
    let cli = Cli::parse();
    // `conductor up --log-format json`: every line it prints is JSON.
    let json = matches!(cli.cmd, Cmd::Up { .. }) && cli.log_format == "json";
    if matches!(cli.cmd, Cmd::Up { .. }) {
        if let Err(e) = init_logging(&cli.log_format) {
            print_error(json, &format!("{e:#}"));
            std::process::exit(exit::FAILED);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            print_error(json, &format!("cannot start the runtime: {e}"));
            std::process::exit(exit::FAILED);
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            print_error(json, &e.message);
            e.code
        }
    };
    std::process::exit(code);
}
