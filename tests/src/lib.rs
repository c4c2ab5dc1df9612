//! Harness for end-to-end tests: start the real `conductor` binary on
//! loopback with its own data directory and cells, and drive it through its
//! CLI and HTTP API.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Directory holding the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("debug");
    assert!(
        dir.join("conductor").is_file() && dir.join("sample-service").is_file(),
        "build the binaries first: cargo build --workspace --bins (looked in {})",
        dir.display()
    );
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The workspace root (for shapes and pipelines).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running Conductor with its own data dir and cells.
pub struct Conductor {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub admin: String,
    child: Option<Child>,
    cells_file: PathBuf,
    /// Extra arguments to `conductor up`.
    extra: Vec<String>,
}

/// A cells file with `n_per_region` local cells in each of three regions,
/// ports starting at `base`.
pub fn cells_yaml(base: u16, n_per_region: usize) -> String {
    let mut s = String::from("cells:\n");
    let mut port = base;
    for r in ["us-east-1", "eu-west-1", "ap-southeast-2"] {
        for i in 0..n_per_region {
            let short: String = r
                .split('-')
                .map(|p| p.chars().next().unwrap_or('x'))
                .collect();
            s.push_str(&format!(
                "  - {{ id: {short}-{i}, region: {r}, shape: small, port: {port}, labels: {{ service: fga }} }}\n"
            ));
            port += 2;
        }
    }
    s
}

impl Conductor {
    /// Start on a fresh data directory with the given cells file text.
    pub fn start(cells: &str) -> Conductor {
        Conductor::start_with(cells, &[])
    }

    /// Like [`Conductor::start`], with extra arguments to `conductor up`.
    pub fn start_with(cells: &str, extra: &[&str]) -> Conductor {
        let dir = tempfile::tempdir().expect("tempdir");
        let cells_file = dir.path().join("cells.yaml");
        std::fs::write(&cells_file, cells).expect("write cells");
        let mut c = Conductor {
            dir,
            url: String::new(),
            admin: String::new(),
            child: None,
            cells_file,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        c.boot();
        c.admin = std::fs::read_to_string(c.dir.path().join("data/admin.token"))
            .expect("admin token")
            .trim()
            .to_string();
        c
    }

    /// (Re)start the server process on the same data directory.
    pub fn boot(&mut self) {
        let mut child = Command::new(bin("conductor"))
            .args(["up", "--listen", "127.0.0.1:0", "--shapes"])
            .arg(root().join("templates/shapes.yaml"))
            .arg("--cell-template")
            .arg(root().join("templates/cell.yaml"))
            .arg("--cells")
            .arg(&self.cells_file)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("server.log"))
                    .expect("log file"),
            ))
            .spawn()
            .expect("start conductor");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "conductor did not come up");
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(rest) = l.strip_prefix("Conductor is up at ") {
                        self.url = rest
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .trim_end_matches('/')
                            .to_string();
                        break;
                    }
                }
                _ => panic!(
                    "conductor exited during start; see {}",
                    self.dir.path().join("server.log").display()
                ),
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    /// kill -9 the server (its cell processes die with it).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run the CLI with `token`; returns the process output.
    pub fn cli(&self, token: &str, args: &[&str]) -> Output {
        Command::new(bin("conductor"))
            .args(args)
            .env("CONDUCTOR_URL", &self.url)
            .env("CONDUCTOR_TOKEN", token)
            .current_dir(self.dir.path())
            .output()
            .expect("run conductor cli")
    }

    /// Run the CLI and require exit status `code`; returns stdout.
    pub fn cli_ok(&self, token: &str, args: &[&str], code: i32) -> String {
        let o = self.cli(token, args);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert_eq!(
            o.status.code(),
            Some(code),
            "conductor {args:?}\nstdout:\n{out}\nstderr:\n{err}"
        );
        out.into_owned()
    }

    pub fn token(&self, name: &str, role: &str, groups: &[&str]) -> String {
        let mut args = vec!["token", "create", "--name", name, "--role", role];
        for g in groups {
            args.push("--group");
            args.push(g);
        }
        self.cli_ok(&self.admin, &args, 0).trim().to_string()
    }

    pub fn get(&self, token: &str, path: &str) -> Value {
        let r = reqwest::blocking::Client::new()
            .get(format!("{}/api/v1{path}", self.url))
            .bearer_auth(token)
            .send()
            .expect("GET");
        r.json().expect("json")
    }

    /// Write a file in the test's directory and return its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p.display().to_string()
    }

    pub fn push_sample(&self, version: &str) {
        let b = bin("sample-service").display().to_string();
        self.cli_ok(
            &self.admin,
            &["artifact", "push", "sample-service", version, &b],
            0,
        );
    }

    pub fn train(&self, id: &str) -> Value {
        self.get(&self.admin, &format!("/trains/{id}"))
    }

    /// Poll until `f(train)` holds.
    pub fn wait_train(&self, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let t = self.train(id);
            if f(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; train: {t:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start a train and return its id.
    pub fn start_train(&self, token: &str, pipeline: &str, version: &str) -> String {
        let out = self.cli_ok(
            token,
            &["train", "start", pipeline, "--version", version],
            0,
        );
        out.split_whitespace()
            .nth(2)
            .expect("train id in output")
            .to_string()
    }

    /// Versions each cell runs, by cell id.
    pub fn versions(&self) -> std::collections::BTreeMap<String, Option<String>> {
        let v = self.get(&self.admin, "/cells");
        v["cells"]
            .as_array()
            .expect("cells")
            .iter()
            .map(|c| {
                let ver = c["versions"]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(|x| x["version"].as_str())
                    .map(String::from);
                (c["id"].as_str().unwrap_or("").to_string(), ver)
            })
            .collect()
    }
}

impl Drop for Conductor {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A pipeline for the sample service with quick steps.
pub fn sample_pipeline(name: &str, waves: &str, on_failure: &str, bake: &str) -> String {
    format!(
        "name: {name}\nartifact: {{ kind: binary, name: sample-service, args: [\"--port\", \"{{port}}\"] }}\ncells: {{ labels: {{ service: fga }} }}\nsteps:\n  - deploy: {{ health_timeout: 5s }}\n  - test: {{ http: {{ path: /version }}, min_requests: 5 }}\n  - bake: {bake}\nwaves:\n{waves}on_failure: {on_failure}\n"
    )
}

/// Per cell, the time spans during which each train held it.
pub fn spans(c: &Conductor, id: &str) -> std::collections::BTreeMap<String, (String, String)> {
    let ev = c.get(&c.admin, &format!("/trains/{id}/events?limit=5000"));
    let mut m: std::collections::BTreeMap<String, (String, String)> = Default::default();
    for e in ev["events"].as_array().expect("events") {
        let at = e["at"].as_str().unwrap_or("").to_string();
        let cell = match e["event"]["type"].as_str() {
            Some("lease_granted") | Some("step_finished") | Some("wake") => {
                e["event"]["cell"].as_str().map(String::from)
            }
            _ => None,
        };
        if let Some(cell) = cell {
            let s = m.entry(cell).or_insert_with(|| (at.clone(), at.clone()));
            s.1 = at;
        }
    }
    m
}

/// An RFC 3339 UTC timestamp in a form that compares as a string whatever
/// its number of fractional digits (`...:SS.nnnnnnnnnZ`).
pub fn norm_ts(s: &str) -> String {
    let s = s.trim_end_matches('Z');
    let (main, frac) = s.split_once('.').unwrap_or((s, ""));
    format!("{main}.{frac:0<9}Z")
}

impl Conductor {
    /// Wait for a resize to end; returns it.
    pub fn wait_resize(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = self.get(&self.admin, &format!("/resizes/{id}"))["resize"].clone();
            if matches!(
                r["status"].as_str(),
                Some("succeeded" | "failed" | "rejected")
            ) {
                return r;
            }
            assert!(Instant::now() < deadline, "resize {id} did not end: {r:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
