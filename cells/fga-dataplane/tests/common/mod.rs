//! Start `fga-dataplane serve` from the built binary for a test.
//! (Each test binary uses part of this module.)
#![allow(dead_code)]

use std::io::BufRead;
use std::process::{Command, Stdio};

/// A running server; killed when dropped.
pub struct Server {
    child: std::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start with these extra `serve` arguments, on a free loopback port.
pub fn start(args: &[&str]) -> Server {
    start_with(args, &[])
}

/// Start with extra `serve` arguments and environment variables (secrets
/// go there, never on the command line).
pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fga-dataplane"));
    cmd.args(["serve", "--addr", "127.0.0.1:0"]);
    if !args.contains(&"--data-dir") {
        cmd.arg("--data-dir").arg(dir.path().join("data"));
    }
    let mut child = cmd
        .args(args)
        .env_remove("FGA_ADMIN_KEY")
        .env_remove("FGA_AUTHN_PRESHARED_KEYS")
        .env_remove("FGA_DATABASE_URL")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fga-dataplane");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("banner");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    Server {
        child,
        url,
        _dir: dir,
    }
}

/// The PostgreSQL server for the PostgreSQL half of the store tests
/// (`FGA_TEST_DATABASE_URL`, which `tests/run` sets). Without one the test
/// is skipped, except in CI, where it fails.
pub fn postgres_url() -> Option<String> {
    match std::env::var("FGA_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var_os("CI").is_some() => {
            panic!("FGA_TEST_DATABASE_URL is not set; CI runs the PostgreSQL store tests (tests/run starts a server)")
        }
        _ => {
            eprintln!(
                "FGA_TEST_DATABASE_URL is not set: skipping the PostgreSQL half (run ./tests/run)"
            );
            None
        }
    }
}
