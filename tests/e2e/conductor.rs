//! End-to-end: the real `conductor` binary, local cells as child processes
//! on loopback, driven through the CLI and the HTTP API.

use e2e::{cells_yaml, sample_pipeline, spans, Conductor};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const WAVES: &str = "  - { name: canary, cells: 1 }\n  - { name: first-per-region, per_region: 1, max_parallel: 3 }\n  - { name: rest, percent: 100, max_parallel: 3 }\n";

fn phase(t: &Value, cell: &str) -> String {
    t["cells"][cell]["phase"].as_str().unwrap_or("").to_string()
}

#[test]
fn success_then_failure_rolls_back_the_cell_and_halts() {
    let c = Conductor::start(&cells_yaml(21000, 2));
    let dev = c.token("dev", "developer", &[]);
    c.push_sample("1.0.0");
    c.push_sample("2.0.0-bad");
    let p = c.file(
        "p.yaml",
        &sample_pipeline("svc", WAVES, "rollback_cell_and_halt", "1s"),
    );
    c.cli_ok(&dev, &["pipeline", "submit", &p], 0);

    let out = c.cli_ok(
        &dev,
        &["train", "start", "svc", "--version", "1.0.0", "--wait"],
        0,
    );
    assert!(out.contains("succeeded"), "{out}");
    assert!(
        c.versions().values().all(|v| v.as_deref() == Some("1.0.0")),
        "{:?}",
        c.versions()
    );

    // A version whose health check fails: the canary is rolled back, nothing else is touched.
    let out = c.cli_ok(
        &dev,
        &["train", "start", "svc", "--version", "2.0.0-bad", "--wait"],
        1,
    );
    assert!(out.contains("failed"), "{out}");
    assert!(
        c.versions().values().all(|v| v.as_deref() == Some("1.0.0")),
        "{:?}",
        c.versions()
    );
    let trains = c.get(&dev, "/trains?pipeline=svc");
    let bad = trains["trains"][0]["id"].as_str().expect("id").to_string();
    let t = c.train(&bad);
    assert_eq!(t["status"], "failed");
    let canary = t["spec"]["plan"]["waves"][0]["cells"][0]
        .as_str()
        .expect("canary")
        .to_string();
    assert_eq!(phase(&t, &canary), "rolled_back");
    let others: Vec<String> = t["cells"]
        .as_object()
        .expect("cells")
        .keys()
        .filter(|k| **k != canary)
        .cloned()
        .collect();
    assert!(others.iter().all(|k| phase(&t, k) == "pending"), "{t:#}");

    // The live route still serves 1.0.0 on every cell.
    let routes = c.get(&dev, "/routes");
    for (cell, arts) in routes["routes"].as_object().expect("routes") {
        let port = arts["sample-service"]["port"].as_u64().expect("port");
        let v: Value = reqwest::blocking::get(format!("http://127.0.0.1:{port}/version"))
            .expect("cell")
            .json()
            .expect("json");
        assert_eq!(v["version"], "1.0.0", "{cell}");
    }

    // Rolling back the first train restores what ran before it: nothing.
    let first = trains["trains"][1]["id"].as_str().expect("id").to_string();
    c.cli_ok(&dev, &["train", "rollback", &first, "--wait"], 0);
    assert_eq!(c.train(&first)["status"], "rolled_back");
    assert!(
        c.versions().values().all(Option::is_none),
        "{:?}",
        c.versions()
    );
}

#[test]
fn rollback_train_goes_newest_wave_first() {
    let c = Conductor::start(&cells_yaml(21100, 2));
    c.push_sample("1.0.0");
    // Two good waves, then a wave whose command test fails on one cell.
    let yaml = "name: wide\nartifact: { kind: binary, name: sample-service, args: [\"--port\", \"{port}\"] }\ncells: { labels: { service: fga } }\nsteps:\n  - deploy: { health_timeout: 5s }\n  - test: { command: \"test $CELL_ID != ue1-1\", timeout: 10s }\nwaves:\n  - { name: one, ids: [as2-0] }\n  - { name: two, ids: [ew1-0, ew1-1], max_parallel: 2 }\n  - { name: three, percent: 100, max_parallel: 1 }\non_failure: rollback_train\n";
    let p = c.file("wide.yaml", yaml);
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);
    let out = c.cli_ok(
        &c.admin,
        &["train", "start", "wide", "--version", "1.0.0", "--wait"],
        1,
    );
    assert!(out.contains("rolled_back"), "{out}");
    let deploys = c.get(&c.admin, "/cells/deploys");
    let rollbacks: Vec<String> = deploys["deploys"]
        .as_array()
        .expect("deploys")
        .iter()
        .filter(|d| d["kind"] == "rollback")
        .map(|d| d["cell_id"].as_str().unwrap_or("").to_string())
        .collect();
    let wave_of = |cell: &str| match cell {
        "as2-0" => 0,
        "ew1-0" | "ew1-1" => 1,
        _ => 2,
    };
    let order: Vec<i32> = rollbacks.iter().map(|c| wave_of(c)).collect();
    let mut sorted = order.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, sorted, "rollback order {rollbacks:?}");
    assert!(order.contains(&0) && order.contains(&1), "{rollbacks:?}");
    assert!(
        c.versions().values().all(Option::is_none),
        "{:?}",
        c.versions()
    );
    // The failing command's output is kept in the train's log.
    let id = c.get(&c.admin, "/trains")["trains"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let t = c.train(&id);
    assert_eq!(t["status"], "rolled_back");
    assert!(
        t["failure"].as_str().unwrap_or("").contains("ue1-1"),
        "{}",
        t["failure"]
    );
}

#[test]
fn approvals_need_a_quorum_of_others_and_rejection_stops() {
    let c = Conductor::start(&cells_yaml(21200, 1));
    let lead = c.token("lead", "admin", &[]);
    let alice = c.token("alice", "approver", &["release-managers"]);
    let bob = c.token("bob", "approver", &["release-managers"]);
    let eve = c.token("eve", "approver", &["other"]);
    let dev = c.token("dev", "developer", &[]);
    c.push_sample("1.0.0");
    c.push_sample("1.1.0");
    let waves = "  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100, max_parallel: 2, approval: { group: release-managers, quorum: 2 } }\n";
    let p = c.file(
        "g.yaml",
        &sample_pipeline("gated", waves, "rollback_cell_and_halt", "200ms"),
    );
    c.cli_ok(&lead, &["pipeline", "submit", &p], 0);

    let id = c.start_train(&lead, "gated", "1.0.0");
    c.wait_train(&id, "the gate", |t| {
        t["gates_waiting"] == serde_json::json!(["rest"])
    });
    // The starter may not approve their own train, even as admin.
    let o = c.cli(&lead, &["train", "approve", &id, "--gate", "rest"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot approve"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A developer may not approve at all; an approver outside the group may not either.
    assert_eq!(
        c.cli(&dev, &["train", "approve", &id, "--gate", "rest"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        c.cli(&eve, &["train", "approve", &id, "--gate", "rest"])
            .status
            .code(),
        Some(2)
    );
    // Quorum counts distinct people: alice twice is still one.
    c.cli_ok(
        &alice,
        &[
            "train",
            "approve",
            &id,
            "--gate",
            "rest",
            "--reason",
            "canary looks fine",
        ],
        0,
    );
    assert_eq!(
        c.cli(&alice, &["train", "approve", &id, "--gate", "rest"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(c.train(&id)["gates_waiting"], serde_json::json!(["rest"]));
    c.cli_ok(&bob, &["train", "approve", &id, "--gate", "rest"], 0);
    c.cli_ok(&lead, &["train", "wait", &id], 0);

    // A rejection stops the train: exit status 3.
    let id = c.start_train(&dev, "gated", "1.1.0");
    c.wait_train(&id, "the gate", |t| {
        t["gates_waiting"] == serde_json::json!(["rest"])
    });
    c.cli_ok(
        &bob,
        &[
            "train",
            "reject",
            &id,
            "--gate",
            "rest",
            "--reason",
            "error budget spent",
        ],
        0,
    );
    c.cli_ok(&dev, &["train", "wait", &id], 3);
    assert_eq!(c.train(&id)["status"], "rejected");

    // Every mutating call is in the audit log.
    let audit = c.cli_ok(&c.admin, &["audit"], 0);
    for needle in [
        "train.approve",
        "train.reject",
        "train.start",
        "pipeline.submit",
        "artifact.push",
        "token.create",
    ] {
        assert!(
            audit.contains(needle),
            "{needle} missing from audit:\n{audit}"
        );
    }
    assert!(
        !audit.contains("cdt_"),
        "the audit log must not contain tokens"
    );
}

#[test]
fn kill_9_mid_train_then_restart_completes_without_double_deploys() {
    let mut c = Conductor::start(&cells_yaml(21300, 2));
    c.push_sample("1.0.0");
    let waves =
        "  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100, max_parallel: 2 }\n";
    let p = c.file(
        "k.yaml",
        &sample_pipeline("slow", waves, "rollback_cell_and_halt", "2s"),
    );
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);
    let id = c.start_train(&c.admin, "slow", "1.0.0");
    c.wait_train(&id, "two cells done", |t| {
        t["summary"]["succeeded"].as_u64().unwrap_or(0) >= 2
    });
    c.kill9();
    c.boot();
    c.cli_ok(&c.admin, &["train", "wait", &id], 0);
    let t = c.train(&id);
    assert_eq!(t["status"], "succeeded");
    assert!(c.versions().values().all(|v| v.as_deref() == Some("1.0.0")));
    // Each cell was deployed exactly once by this train's deploy step.
    let deploys = c.get(&c.admin, "/cells/deploys");
    let mut per_key: BTreeMap<String, u32> = BTreeMap::new();
    for d in deploys["deploys"].as_array().expect("deploys") {
        *per_key
            .entry(d["key"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(per_key.len(), 6, "{per_key:?}");
    assert!(
        per_key.values().all(|n| *n == 1),
        "a step attempt deployed twice: {per_key:?}"
    );
    // The cells came back after the restart and serve the version.
    let routes = c.get(&c.admin, "/routes");
    assert_eq!(routes["routes"].as_object().map(|m| m.len()), Some(6));
}

#[test]
fn concurrent_trains_on_overlapping_cells_serialize_per_cell() {
    let c = Conductor::start(&cells_yaml(21400, 2));
    c.push_sample("1.0.0");
    c.push_sample("2.0.0");
    let a = c.file(
        "a.yaml",
        &sample_pipeline(
            "alpha",
            "  - { name: all, percent: 100, max_parallel: 3 }\n",
            "rollback_cell_and_halt",
            "1s",
        ),
    );
    let b = c.file(
        "b.yaml",
        &sample_pipeline(
            "beta",
            "  - { name: all, percent: 100, max_parallel: 6 }\n",
            "rollback_cell_and_halt",
            "1s",
        ),
    );
    c.cli_ok(&c.admin, &["pipeline", "submit", &a], 0);
    c.cli_ok(&c.admin, &["pipeline", "submit", &b], 0);
    let ta = c.start_train(&c.admin, "alpha", "1.0.0");
    let tb = c.start_train(&c.admin, "beta", "2.0.0");
    c.cli_ok(&c.admin, &["train", "wait", &ta], 0);
    c.cli_ok(&c.admin, &["train", "wait", &tb], 0);
    let (sa, sb) = (spans(&c, &ta), spans(&c, &tb));
    assert_eq!(sa.len(), 6);
    for (cell, (a0, a1)) in &sa {
        let (b0, b1) = &sb[cell];
        // RFC 3339 UTC timestamps compare as strings.
        assert!(
            a1 <= b0 || b1 <= a0,
            "{cell}: alpha {a0}..{a1} overlaps beta {b0}..{b1}"
        );
    }
    // Every cell ends on the version of whichever train held it last.
    for (cell, v) in c.versions() {
        let last = if sa[&cell].1 > sb[&cell].1 {
            "1.0.0"
        } else {
            "2.0.0"
        };
        assert_eq!(v.as_deref(), Some(last), "{cell}");
    }
}

#[test]
fn a_second_train_queues_and_a_third_supersedes_it() {
    let c = Conductor::start(&cells_yaml(21500, 1));
    for v in ["1.0.0", "1.0.1", "1.0.2"] {
        c.push_sample(v);
    }
    let p = c.file(
        "q.yaml",
        &sample_pipeline(
            "queue",
            "  - { name: all, percent: 100 }\n",
            "rollback_cell_and_halt",
            "2s",
        ),
    );
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);
    let t1 = c.start_train(&c.admin, "queue", "1.0.0");
    let t2 = c.start_train(&c.admin, "queue", "1.0.1");
    assert_eq!(c.train(&t2)["status"], "queued");
    let t3 = c.start_train(&c.admin, "queue", "1.0.2");
    assert_eq!(c.train(&t2)["status"], "superseded");
    c.cli_ok(&c.admin, &["train", "wait", &t2], 3);
    c.cli_ok(&c.admin, &["train", "wait", &t1], 0);
    c.cli_ok(&c.admin, &["train", "wait", &t3], 0);
    assert!(c.versions().values().all(|v| v.as_deref() == Some("1.0.2")));
    // Cancel: the train stops and reports exit status 3.
    c.push_sample("1.0.3");
    let t4 = c.start_train(&c.admin, "queue", "1.0.3");
    c.cli_ok(&c.admin, &["train", "cancel", &t4], 0);
    c.cli_ok(&c.admin, &["train", "wait", &t4], 3);
    let t = c.train(&t4);
    assert_eq!(t["status"], "cancelled");
    for (cell, run) in t["cells"].as_object().expect("cells") {
        let ph = run["phase"].as_str().unwrap_or("");
        assert!(
            ["pending", "stopped", "succeeded"].contains(&ph),
            "{cell} left in {ph}"
        );
    }
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let c = Conductor::start(&cells_yaml(21600, 1));
    let dev = c.token("dev", "developer", &[]);
    // Validation errors name FILE:LINE:COL, all at once, exit status 2.
    let bad = c.file(
        "bad.yaml",
        "name: bad\nartifact: { kind: binary, name: sample-service }\ncells: { labels: { service: fga } }\nsteps:\n  - deploy: {}\n  - bake: 10 minutes\nwaves:\n  - { name: all, percent: 100 }\n",
    );
    let o = c.cli(
        &dev,
        &[
            "pipeline",
            "validate",
            &bad,
            "--shapes",
            &e2e::root()
                .join("templates/shapes.yaml")
                .display()
                .to_string(),
            "--cells",
            &c.dir.path().join("cells.yaml").display().to_string(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.yaml:6:"), "{err}");
    let o = c.cli(&dev, &["pipeline", "submit", &bad]);
    assert_eq!(o.status.code(), Some(2));
    // Unknown pipeline, missing artifact: 4xx with a reason, exit status 2.
    let o = c.cli(&dev, &["train", "start", "nope", "--version", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no pipeline"));
    let p = c.file(
        "p.yaml",
        &sample_pipeline(
            "svc",
            "  - { name: all, percent: 100 }\n",
            "rollback_cell_and_halt",
            "1s",
        ),
    );
    c.cli_ok(&dev, &["pipeline", "submit", &p], 0);
    let o = c.cli(&dev, &["train", "start", "svc", "--version", "9.9.9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has not been pushed"));
    let o = c.cli(&dev, &["train", "start", "svc", "--version", "../../etc"]);
    assert_eq!(o.status.code(), Some(2));
    // No token, a wrong token: 401 with a JSON reason.
    let http = reqwest::blocking::Client::new();
    let r = http
        .get(format!("{}/api/v1/trains", c.url))
        .send()
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().expect("json");
    assert_eq!(body["code"], "unauthenticated");
    let r = http
        .get(format!("{}/api/v1/trains", c.url))
        .bearer_auth("cdt_nope")
        .send()
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    // A developer may not create tokens; an oversized body gets 413.
    let r = http
        .post(format!("{}/api/v1/tokens", c.url))
        .bearer_auth(&dev)
        .json(&serde_json::json!({"name": "x", "role": "admin"}))
        .send()
        .expect("post");
    assert_eq!(r.status().as_u16(), 403);
    let big = "x".repeat(2 * 1024 * 1024);
    let r = http
        .post(format!("{}/api/v1/pipelines", c.url))
        .bearer_auth(&dev)
        .json(&serde_json::json!({"yaml": big}))
        .send()
        .expect("post");
    assert_eq!(r.status().as_u16(), 413);
    let r = http
        .post(format!("{}/api/v1/trains", c.url))
        .bearer_auth(&dev)
        .body("{not json")
        .send()
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    // Nothing was stored by the refused calls.
    let pipelines = c.get(&dev, "/pipelines");
    let names: BTreeSet<&str> = pipelines["pipelines"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["svc"]));
    assert_eq!(
        c.get(&dev, "/trains")["trains"].as_array().map(Vec::len),
        Some(0)
    );
    // Metrics are served.
    let m = http
        .get(format!("{}/metrics", c.url))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    assert!(
        m.contains("conductor_trains{state=\"running\"}")
            && m.contains("conductor_events_persisted_total"),
        "{m}"
    );
}

#[test]
fn command_targets_and_steps_run_with_cell_environment() {
    let dir = tempfile::tempdir().expect("tmp");
    // Command targets run as an unprivileged user (when the tests run as root).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let marks = dir.path().display().to_string();
    let cells = format!(
        "cells:\n  - {{ id: ext-1, region: eu-west-1, shape: small, labels: {{ service: fga }}, target: {{ command: {{ deploy: \"echo $TO_VERSION > {marks}/$CELL_ID.deployed\", rollback: \"echo rolled > {marks}/$CELL_ID.deployed\" }} }} }}\n  - {{ id: ext-2, region: us-east-1, shape: small, labels: {{ service: fga }}, target: {{ command: {{ deploy: \"echo $TO_VERSION > {marks}/$CELL_ID.deployed\", rollback: \"true\" }} }} }}\n"
    );
    let c = Conductor::start(&cells);
    let yaml = "name: ext\nartifact: { kind: command, name: cfg }\ncells: { labels: { service: fga } }\nsteps:\n  - deploy: {}\n  - command: { run: \"echo configured $CELL_ID in $CELL_REGION\", timeout: 10s }\nwaves:\n  - { name: all, percent: 100, max_parallel: 2 }\n";
    let p = c.file("ext.yaml", yaml);
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);
    let id = c.start_train(&c.admin, "ext", "7.1");
    c.cli_ok(&c.admin, &["train", "wait", &id], 0);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ext-1.deployed"))
            .expect("marker")
            .trim(),
        "7.1"
    );
    let logs = c.cli_ok(&c.admin, &["train", "logs", &id], 0);
    assert!(
        logs.contains("configured ext-1 in eu-west-1")
            && logs.contains("configured ext-2 in us-east-1"),
        "{logs}"
    );
}

#[test]
fn the_supervisor_restarts_a_crashed_cell_process() {
    let c = Conductor::start(&cells_yaml(21700, 1));
    c.push_sample("1.0.0");
    let p = c.file(
        "p.yaml",
        &sample_pipeline(
            "svc",
            "  - { name: all, percent: 100, max_parallel: 3 }\n",
            "rollback_cell_and_halt",
            "100ms",
        ),
    );
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);
    let id = c.start_train(&c.admin, "svc", "1.0.0");
    c.cli_ok(&c.admin, &["train", "wait", &id], 0);
    let routes = c.get(&c.admin, "/routes");
    let r = &routes["routes"]["ue1-0"]["sample-service"];
    let (pid, port) = (
        r["pid"].as_u64().expect("pid"),
        r["port"].as_u64().expect("port"),
    );
    assert!(pid > 0);
    // SAFETY: plain kill(2) of the child process the Conductor started for this test.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let routes = c.get(&c.admin, "/routes");
        let now = routes["routes"]["ue1-0"]["sample-service"]["pid"]
            .as_u64()
            .unwrap_or(0);
        let up = reqwest::blocking::get(format!("http://127.0.0.1:{port}/version"))
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if now != pid && now != 0 && up {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cell process was not restarted"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_train_ships_the_fga_data_plane_to_the_cells() {
    let c = Conductor::start(&cells_yaml(21800, 1));
    let bin = e2e::bin("fga-dataplane").display().to_string();
    c.cli_ok(
        &c.admin,
        &["artifact", "push", "fga-dataplane", "0.1.0", &bin],
        0,
    );
    let yaml = "name: fga\nartifact: { kind: binary, name: fga-dataplane, args: [serve, --addr, \"127.0.0.1:{port}\", --data-dir, \"{data_dir}\"], health: /healthz }\ncells: { labels: { service: fga } }\nsteps:\n  - deploy: { health_timeout: 20s }\n  - test: { http: { path: /healthz }, min_requests: 5 }\nwaves:\n  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100, max_parallel: 2 }\n";
    let p = c.file("fga.yaml", yaml);
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);
    c.cli_ok(
        &c.admin,
        &["train", "start", "fga", "--version", "0.1.0", "--wait"],
        0,
    );
    let routes = c.get(&c.admin, "/routes");
    let http = reqwest::blocking::Client::new();
    for (cell, arts) in routes["routes"].as_object().expect("routes") {
        let port = arts["fga-dataplane"]["port"].as_u64().expect("port");
        let store: Value = http
            .post(format!("http://127.0.0.1:{port}/stores"))
            .json(&serde_json::json!({ "name": cell }))
            .send()
            .expect("create store")
            .json()
            .expect("json");
        assert_eq!(store["name"], cell.as_str(), "{store}");
    }
}
