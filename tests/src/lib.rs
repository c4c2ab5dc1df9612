//! Harness for end-to-end tests: start the real `conductor` binary on
//! loopback with its own data directory and cells, and drive it through its
//! CLI and HTTP API.
//!
//! Cell processes outlive the Conductor (they keep serving and the next
//! Conductor adopts them), so when a test ends the harness kills the
//! Conductor and then every process running one of the test's installed
//! artifacts, by pid. The test process is a child subreaper, so orphaned
//! cell processes become its children and are reaped here.

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
    /// The data directory (a replica shares its first Conductor's).
    data: PathBuf,
    /// Extra arguments to `conductor up`.
    extra: Vec<String>,
}

/// The value of a variable in every test Conductor's environment, which no
/// step or cell may ever see.
pub const ENV_CANARY: &str = "e2e-canary-in-the-conductors-environment-5f1c";

/// Ports for artifacts after a cell's first, of this test's own: 50 above
/// the lowest cell port of the cells file (tests keep their cells 100
/// ports apart), so that concurrent tests never pick the same pair.
fn artifact_ports_for(cells: &str) -> Option<String> {
    let lowest = cells
        .match_indices("port: ")
        .filter_map(|(i, m)| {
            cells[i + m.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse::<u16>().ok())
        })
        .min()?;
    Some(format!(
        "{}-{}",
        lowest.checked_add(50)?,
        lowest.checked_add(99)?
    ))
}

/// Make this process the reaper of orphaned descendants (cell processes
/// whose Conductor was killed), so that they can be reaped when killed.
#[allow(unsafe_code)]
fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Pids of the processes whose executable lies under `dir`.
pub fn pids_running_from(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(dir))
                && !is_zombie(*pid)
        })
        .collect()
}

/// The process's state letter is Z (exited, not reaped) or it is gone.
pub fn is_zombie(pid: u32) -> bool {
    proc_stat_field(pid, 3).is_none_or(|s| s == "Z" || s == "X")
}

/// Field `n` (1-based, as in proc(5)) of /proc/<pid>/stat.
pub fn proc_stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace()
        .nth(n.checked_sub(3)?)
        .map(String::from)
}

/// Is `pid` a live (not zombie) process?
pub fn alive(pid: u32) -> bool {
    !is_zombie(pid)
}

/// SIGKILL `pid` and reap it if it is our child.
#[allow(unsafe_code)]
pub fn kill_pid(pid: u32) {
    let Ok(p) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) and waitpid(2) on a pid this test started (directly or
    // through its Conductor); waitpid on a non-child fails harmlessly.
    unsafe {
        libc::kill(p, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(p, &mut status, 0);
    }
}

/// A fresh, empty PostgreSQL database on the test server
/// (`FGA_TEST_DATABASE_URL`, which `tests/run` starts); None (and a note)
/// when there is none, outside CI. Under CI a missing server fails.
pub fn fresh_postgres(prefix: &str) -> Option<String> {
    let Some(server) = std::env::var("FGA_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs PostgreSQL: set FGA_TEST_DATABASE_URL (tests/run does)"
        );
        eprintln!("skipped: no PostgreSQL (set FGA_TEST_DATABASE_URL)");
        return None;
    };
    let mut b = [0u8; 6];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, x) in b.iter_mut().enumerate() {
        *x = (seed >> (i * 8)) as u8 ^ (std::process::id() >> (i % 4)) as u8;
    }
    let name = format!(
        "{prefix}_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    );
    let out = Command::new("psql")
        .arg(&server)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("run psql (apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "creating the database: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
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
        use std::os::unix::fs::PermissionsExt;
        become_subreaper();
        let dir = tempfile::tempdir().expect("tempdir");
        // Steps and cells run as other users when the tests run as root:
        // they must reach the run directory inside (not read anything else).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod tempdir");
        let cells_file = dir.path().join("cells.yaml");
        std::fs::write(&cells_file, cells).expect("write cells");
        let token_file = dir.path().join("admin.token");
        let mut all: Vec<String> = vec![
            "--write-admin-token".into(),
            token_file.display().to_string(),
        ];
        if !extra.contains(&"--artifact-ports") {
            if let Some(r) = artifact_ports_for(cells) {
                all.extend(["--artifact-ports".to_string(), r]);
            }
        }
        all.extend(extra.iter().map(|s| s.to_string()));
        let data = dir.path().join("data");
        let mut c = Conductor {
            dir,
            url: String::new(),
            admin: String::new(),
            child: None,
            cells_file,
            data,
            extra: all,
        };
        c.boot();
        c.admin = std::fs::read_to_string(&token_file)
            .expect("admin token (--write-admin-token)")
            .trim()
            .to_string();
        c
    }

    /// Another replica of this Conductor (same database, data and run
    /// directories, cells), with `extra` arguments to `conductor up` (the
    /// database URL among them); its logs go to a directory of its own.
    pub fn replica(&self, extra: &[&str]) -> Conductor {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod tempdir");
        let mut all: Vec<String> = Vec::new();
        if let Some(i) = self.extra.iter().position(|a| a == "--artifact-ports") {
            all.extend(self.extra[i..].iter().take(2).cloned());
        }
        all.extend(extra.iter().map(|s| s.to_string()));
        let mut c = Conductor {
            dir,
            url: String::new(),
            admin: self.admin.clone(),
            child: None,
            cells_file: self.cells_file.clone(),
            data: self.data.clone(),
            extra: all,
        };
        c.boot();
        c
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// The run directory (cells' data and binaries, steps' directories).
    pub fn run_dir(&self) -> PathBuf {
        let mut d = self.data.clone().into_os_string();
        d.push("-run");
        PathBuf::from(d)
    }

    /// The admin token file `--write-admin-token` wrote.
    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.path().join("admin.token")
    }

    /// The Conductor's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Pids of the cell processes that run now (this test's artifacts).
    pub fn cell_pids(&self) -> Vec<u32> {
        pids_running_from(&self.run_dir().join("bin"))
    }

    /// Stop the server cleanly (SIGTERM) and wait for it; returns its exit code.
    #[allow(unsafe_code)]
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        if let Ok(pid) = i32::try_from(c.id()) {
            // SAFETY: kill(2) of the Conductor process this harness started.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        c.wait().ok().and_then(|s| s.code())
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
            .arg(&self.data)
            .args(&self.extra)
            .env("RUST_LOG", "info")
            // A secret in the Conductor's environment that nothing it starts may see.
            .env("E2E_CONDUCTOR_SECRET", ENV_CANARY)
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
        let mut keep = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stdout.log"))
            .expect("stdout log");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "conductor did not come up");
            match lines.next() {
                Some(Ok(l)) => {
                    use std::io::Write;
                    let _ = writeln!(keep, "{l}");
                    // Text: "Conductor is up at URL/ ..."; JSON: {"url": URL, ...}.
                    let url = match l.strip_prefix("Conductor is up at ") {
                        Some(rest) => rest.split_whitespace().next().map(String::from),
                        None => serde_json::from_str::<Value>(&l)
                            .ok()
                            .and_then(|v| v["url"].as_str().map(String::from)),
                    };
                    if let Some(u) = url {
                        self.url = u.trim_end_matches('/').to_string();
                        break;
                    }
                }
                _ => panic!(
                    "conductor exited during start; see {}",
                    self.dir.path().join("server.log").display()
                ),
            }
        }
        // Keep draining stdout (into stdout.log) so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            use std::io::Write;
            for l in lines.map_while(Result::ok) {
                let _ = writeln!(keep, "{l}");
            }
        });
        self.child = Some(child);
    }

    /// kill -9 the server (its cell processes keep serving).
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
        // Cells outlive the Conductor: stop this test's by pid.
        for _ in 0..3 {
            let pids = self.cell_pids();
            if pids.is_empty() {
                break;
            }
            pids.into_iter().for_each(kill_pid);
        }
        // E2E_KEEP=1 keeps the test's directory (logs, data) for a post-mortem.
        if std::env::var_os("E2E_KEEP").is_some() {
            if let Ok(fresh) = tempfile::tempdir() {
                let kept = std::mem::replace(&mut self.dir, fresh).keep();
                eprintln!("kept {}", kept.display());
            }
        }
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
