//! End-to-end: the capacity planner and the SRE's commands are safe for
//! real users (issue 9): no secret on a command line, no body buffered for a
//! caller who may not send it, no tenant placed on a cell without the data
//! plane, no cell retired under its tenants, and limit pushes audited with
//! their real outcome.

use e2e::{bin, cells_yaml, root, Conductor};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Run `f` until it returns Some, or panic after a minute.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn json_out(c: &Conductor, token: &str, args: &[&str]) -> Value {
    let out = c.cli_ok(token, args, 0);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// POST the headers of a request whose body is declared `declared` bytes
/// long and the first 4 KiB of that body, then, the body unfinished, wait
/// for the status line. A server that reads the body before refusing never
/// answers: the 60 s read timeout only turns that hang into a failure.
fn status_while_sending(url: &str, path: &str, token: Option<&str>, declared: u64) -> u16 {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/yaml\r\nContent-Length: {declared}\r\n\r\n"
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b'#', 4096));
    s.write_all(&req)
        .expect("send the headers and the start of the body");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "{path}: no answer while the body was unfinished ({e}): the server waits for the body before refusing"
            ),
        }
    }
    let line = String::from_utf8_lossy(&got).to_string();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{path}: no status line: {line:?}"))
}

#[test]
fn usage_uploads_are_refused_before_the_body_is_read() {
    let c = Conductor::start(&cells_yaml(23700, 1));
    let dev = c.token("dev", "developer", &[]);
    let sre = c.token("sam", "sre", &[]);
    let path = "/api/v1/capacity/usage";
    // 60 MiB declared (under the 64 MiB limit): refused on the headers.
    assert_eq!(status_while_sending(&c.url, path, None, 60 << 20), 401);
    assert_eq!(
        status_while_sending(&c.url, path, Some(&dev), 60 << 20),
        403
    );
    // Allowed, but declared over the limit: refused before reading too.
    assert_eq!(
        status_while_sending(&c.url, path, Some(&sre), 100 << 20),
        413
    );
    // The same upload, whole, from someone allowed: imported.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let usage = c.file(
        "usage.yaml",
        &format!("tenants:\n  - tenant: t\n    cell: ue1-0\n    samples: [ {{ at: {now}, check_rps: 5, tuples: 10 }} ]\n"),
    );
    let out = c.cli_ok(&sre, &["plan", "import", &usage], 0);
    assert!(out.contains("imported 1 samples"), "{out}");
    // The planner `up` started keeps its data private.
    let mode = |p: &str| {
        std::fs::metadata(c.dir.path().join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("data/planner"), 0o700);
    assert_eq!(mode("data/planner/capacity.db"), 0o600);
}

/// A child process killed (by its pid) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `conductor up` with `args`: its exit status, or None if it kept running
/// for a minute (then it is stopped).
fn up_exit(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let cells = dir.join("cells.yaml");
    std::fs::write(&cells, cells_yaml(23710, 1)).expect("cells");
    let mut g = Guard(
        Command::new(bin("conductor"))
            .args(["up", "--listen", "127.0.0.1:0", "--shapes"])
            .arg(root().join("templates/shapes.yaml"))
            .arg("--cell-template")
            .arg(root().join("templates/cell.yaml"))
            .arg("--cells")
            .arg(&cells)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(args)
            .env_remove("CONDUCTOR_PLANNER_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start conductor"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = g.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = g.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (st.code(), err);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (None, String::new())
}

#[test]
fn the_planner_token_comes_from_the_environment_or_a_private_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let token = "planner-e2e-token-0123456789";
    let file = dir.path().join("planner.token");
    std::fs::write(&file, format!("{token}\n")).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // On the command line: refused, and the secret is not echoed.
    let (code, err) = up_exit(
        dir.path(),
        &["--planner", "http://127.0.0.1:9", "--planner-token", token],
    );
    assert_eq!(code, Some(2), "--planner-token must be refused: {err}");
    assert!(err.contains("`ps`") && !err.contains(token), "{err}");
    // A token file others may read: refused.
    let open = dir.path().join("open.token");
    std::fs::write(&open, token).expect("write");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let open = open.display().to_string();
    let (code, err) = up_exit(
        dir.path(),
        &[
            "--planner",
            "http://127.0.0.1:9",
            "--planner-token-file",
            &open,
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("chmod 600"), "{err}");

    // A planner of its own, token from its file; the Conductor uses it
    // with the token from its file.
    let mut planner = Guard(
        Command::new(bin("capacity-planner"))
            .current_dir(root())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("planner"))
            .arg("--token-file")
            .arg(&file)
            .env_remove("CAPACITY_TOKEN")
            .env_remove("CAPACITY_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the planner"),
    );
    let line = BufReader::new(planner.0.stdout.take().expect("stdout"))
        .lines()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    let url = line
        .strip_prefix("capacity-planner listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("the planner did not start: {line}"))
        .to_string();
    let file = file.display().to_string();
    let c = Conductor::start_with(
        &cells_yaml(23720, 1),
        &["--planner", &url, "--planner-token-file", &file],
    );
    let plan = json_out(&c, &c.admin, &["plan", "capacity", "--json"]);
    assert_eq!(plan["plan"]["cells"].as_array().map(Vec::len), Some(3));
}

/// The workers' port of `cell`'s data plane.
fn fga_port(c: &Conductor, cell: &str) -> u64 {
    let routes = c.get(&c.admin, "/routes");
    routes["routes"][cell]["fga-dataplane"]["workers"][0]["port"]
        .as_u64()
        .unwrap_or_else(|| panic!("no data plane on {cell}: {routes:#}"))
}

fn audit_detail(c: &Conductor, action: &str) -> Vec<(String, String)> {
    c.get(&c.admin, "/audit?limit=1000")["audit"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == action)
        .map(|e| {
            (
                e["target"].as_str().unwrap_or("").to_string(),
                e["detail"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn tenants_go_only_where_the_data_plane_runs_and_retiring_never_loses_them_quietly() {
    // use1-x is a command-target cell labelled like the others: the FGA
    // train "deploys" to it through its script, but no data plane runs
    // there. It is the tightest fit for a small tenant.
    let cells = "cells:\n  - { id: use1-a, region: us-east-1, shape: large, port: 23731, labels: { service: fga } }\n  - { id: use1-b, region: us-east-1, shape: medium, port: 23733, labels: { service: fga } }\n  - { id: use1-x, region: us-east-1, shape: small, labels: { service: fga }, target: { command: { deploy: \"true\", rollback: \"true\" } } }\n";
    let c = Conductor::start_with(cells, &["--planner-interval-secs", "0.3"]);
    let sam = c.token("sam", "sre", &[]);
    let fga = bin("fga-dataplane").display().to_string();
    c.cli_ok(
        &c.admin,
        &["artifact", "push", "fga-dataplane", "0.1.0", &fga],
        0,
    );
    let yaml = "name: fga\nartifact: { kind: binary, name: fga-dataplane, args: [serve, --addr, \"127.0.0.1:{port}\", --data-dir, \"{data_dir}\"], health: /healthz }\ncells: { labels: { service: fga } }\nsteps:\n  - deploy: { health_timeout: 20s }\nwaves:\n  - { name: all, percent: 100, max_parallel: 3 }\n";
    let p = c.file("fga.yaml", yaml);
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);
    c.cli_ok(
        &c.admin,
        &["train", "start", "fga", "--version", "0.1.0", "--wait"],
        0,
    );

    // A tenant (a store with a tuple) on use1-b, with traffic.
    let http = reqwest::blocking::Client::new();
    let base = format!("http://127.0.0.1:{}", fga_port(&c, "use1-b"));
    let store: Value = http
        .post(format!("{base}/stores"))
        .json(&serde_json::json!({"name": "acme"}))
        .send()
        .expect("store")
        .json()
        .expect("json");
    let sid = store["id"].as_str().expect("store id").to_string();
    let model: Value = http
        .post(format!("{base}/stores/{sid}/authorization-models"))
        .json(&serde_json::json!({"schema_version": "1.1", "type_definitions": [
            {"type": "user"},
            {"type": "doc", "relations": {"viewer": {"this": {}}},
             "metadata": {"relations": {"viewer": {"directly_related_user_types": [{"type": "user"}]}}}}]}))
        .send()
        .expect("model")
        .json()
        .expect("json");
    assert!(model["authorization_model_id"].is_string(), "{model}");
    let w = http
        .post(format!("{base}/stores/{sid}/write"))
        .json(&serde_json::json!({"writes": {"tuple_keys": [{"user": "user:ann", "relation": "viewer", "object": "doc:1"}]}}))
        .send()
        .expect("write");
    assert!(w.status().is_success());
    eventually("the tenant in the plan", || {
        for _ in 0..10 {
            let _ = http
                .post(format!("{base}/stores/{sid}/check"))
                .json(&serde_json::json!({"tuple_key": {"user": "user:ann", "relation": "viewer", "object": "doc:1"}}))
                .send();
        }
        let plan = json_out(&c, &sam, &["plan", "capacity", "--json"]);
        plan["plan"]["cells"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["cell"] == "use1-b"))
            .filter(|x| x["tenants"] == 1)
            .map(|_| ())
    });

    // (`--horizon-days 0`: the forecast is the peak seen. A trend drawn
    // from a few seconds of scrapes and stretched over a week would make
    // these answers depend on the timing of the checks above.)
    // Placement: never the command-target cell, and it says why.
    let placed = json_out(
        &c,
        &sam,
        &[
            "tenants",
            "place",
            "--region",
            "us-east-1",
            "--expected-rps",
            "50",
            "--expected-tuples",
            "1000",
            "--horizon-days",
            "0",
            "--json",
        ],
    );
    assert_eq!(placed["placement"]["cell"], "use1-b", "{placed:#}");
    let why = placed["placement"]["reason"].as_str().unwrap_or("");
    assert!(
        why.contains("take no new tenants") && why.contains("use1-x"),
        "{why}"
    );

    // A limits push where one tenant's cell has no data plane: partly,
    // and the audit says so and what failed.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // (A store id: a tenant named otherwise is no FGA store, and is skipped.)
    let ghost_id = "01JDQ6Z0ZXJ7V8Q9R2S3T4V5W6";
    let ghost = c.file(
        "ghost.yaml",
        &format!("tenants:\n  - tenant: {ghost_id}\n    cell: use1-x\n    samples: [ {{ at: {now}, check_rps: 5, tuples: 10 }} ]\n"),
    );
    c.cli_ok(&sam, &["plan", "import", &ghost], 0);
    let o = c.cli(&sam, &["plan", "limits", "--push", "--horizon-days", "0"]);
    assert_eq!(o.status.code(), Some(1), "a push that partly failed");
    let pushes = audit_detail(&c, "capacity.limits.push");
    let last = pushes.last().map(|p| p.1.clone()).unwrap_or_default();
    assert!(
        last.starts_with("partly: 1 of 2 limits pushed")
            && last.contains(&format!("{ghost_id} on use1-x")),
        "{pushes:?}"
    );

    // Retire refuses while the tenant is there, and names it; an SRE may
    // not force it.
    c.cli_ok(&sam, &["cells", "drain", "use1-b"], 0);
    let o = c.cli(&sam, &["cells", "retire", "use1-b"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("still hosts 1 tenant") && err.contains(&sid),
        "{err}"
    );
    let o = c.cli(&sam, &["cells", "retire", "use1-b", "--force"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("only an admin"), "{err}");
    let listed = c.get(&c.admin, "/cells");
    let status = |id: &str| {
        listed["cells"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["id"] == id))
            .map(|x| x["status"].clone())
    };
    assert_eq!(status("use1-b"), Some(Value::from("draining")));
    assert!(fga_port(&c, "use1-b") > 0, "the data plane still runs");

    // Rebalancing empties the draining cell, onto the cell with the data plane.
    let out = c.cli_ok(&sam, &["plan", "rebalance", "--horizon-days", "0"], 0);
    assert!(
        out.contains(&format!("move {sid} use1-b -> use1-a: empties use1-b")),
        "{out}"
    );

    // An admin forces it: retired, and audited with the tenant lost.
    let out = c.cli_ok(&c.admin, &["cells", "retire", "use1-b", "--force"], 0);
    assert!(out.contains("tenants lost") && out.contains(&sid), "{out}");
    let forced = audit_detail(&c, "cell.retire.force");
    assert!(
        forced
            .iter()
            .any(|(cell, d)| cell == "use1-b" && d.contains(&sid)),
        "{forced:?}"
    );

    // A push where everything failed is audited as failed.
    let o = c.cli(&sam, &["plan", "limits", "--push", "--horizon-days", "0"]);
    assert_eq!(o.status.code(), Some(1));
    let pushes = audit_detail(&c, "capacity.limits.push");
    let last = pushes.last().map(|p| p.1.clone()).unwrap_or_default();
    assert!(
        last.starts_with("failed: 0 of 1 limits pushed"),
        "{pushes:?}"
    );
}
