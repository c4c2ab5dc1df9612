//! End-to-end, release trains: `--wait` riding out a Conductor restart (and
//! exit 4 when it stays away), `train watch` following the event stream
//! across a restart (every event once), rolling back an old train without undoing
//! newer deploys, and what `pipeline validate` and `plan` tell a developer.

use e2e::{bin, cells_yaml, root, sample_pipeline, Conductor};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `conductor up` this test started itself (on a fixed address, to come
/// back where the CLI looks for it); killed by its pid when dropped.
struct Restarted(Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the Conductor again on `c`'s data directory and address.
fn restart_at_same_address(c: &Conductor) -> Restarted {
    let listen = c.url.trim_start_matches("http://").to_string();
    let dir = c.dir.path();
    let mut child = Command::new(bin("conductor"))
        .args(["up", "--listen", &listen, "--shapes"])
        .arg(root().join("templates/shapes.yaml"))
        .arg("--cell-template")
        .arg(root().join("templates/cell.yaml"))
        .arg("--cells")
        .arg(dir.join("cells.yaml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("server.log"))
                .expect("log file"),
        ))
        .spawn()
        .expect("start conductor");
    let out = child.stdout.take().expect("stdout");
    let guard = Restarted(child);
    let mut lines = BufReader::new(out).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "conductor did not come back");
        match lines.next() {
            Some(Ok(l)) if l.starts_with("Conductor is up at ") => break,
            Some(Ok(_)) => {}
            _ => panic!(
                "conductor exited during restart; see {}/server.log",
                dir.display()
            ),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    guard
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn start_wait_rides_out_a_conductor_restart_and_exit_4_when_it_stays_away() {
    let mut c = Conductor::start(&cells_yaml(24400, 1));
    c.push_sample("1.0.0");
    let waves = "  - { name: all, percent: 100, max_parallel: 3 }\n";
    let p = c.file(
        "slow.yaml",
        &sample_pipeline("slow", waves, "rollback_cell_and_halt", "4s"),
    );
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);

    // What CI runs: it starts the train and waits for it.
    let ci = Command::new(bin("conductor"))
        .args(["train", "start", "slow", "--version", "1.0.0", "--wait"])
        .args(["--unreachable-timeout", "2m"])
        .env("CONDUCTOR_URL", &c.url)
        .env("CONDUCTOR_TOKEN", &c.admin)
        .current_dir(c.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the CLI");
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let trains = c.get(&c.admin, "/trains?pipeline=slow");
        if let Some(t) = trains["trains"].as_array().and_then(|a| a.first()) {
            let id = t["id"].as_str().expect("id").to_string();
            if c.train(&id)["summary"]["baking"].as_u64().unwrap_or(0) > 0 {
                break id;
            }
        }
        assert!(Instant::now() < deadline, "the train never got to its bake");
        std::thread::sleep(Duration::from_millis(100));
    };

    // The Conductor dies mid-train and is restarted a moment later.
    c.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    let server = restart_at_same_address(&c);
    let o = ci.wait_with_output().expect("CLI ends");
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("succeeded"), "{out}");
    assert!(err.contains("retrying for up to 2m"), "{err}");
    assert!(err.contains("again"), "{err}");
    assert_eq!(c.train(&id)["status"], "succeeded");

    // Gone for good: waiting gives up with 4 (not 1, which means a failed
    // train), and so does any command that cannot reach it.
    drop(server);
    let o = c.cli(
        &c.admin,
        &["train", "wait", &id, "--unreachable-timeout", "1s"],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(4), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("cannot reach the Conductor"), "{err}");
    assert!(err.contains("gave up after 1s"), "{err}");
    let o = c.cli(&c.admin, &["train", "list"]);
    assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));
    let o = c.cli(
        &c.admin,
        &[
            "train",
            "start",
            "slow",
            "--version",
            "1.0.0",
            "--wait",
            "--unreachable-timeout",
            "1s",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));
}

#[test]
fn watch_prints_every_event_once_across_a_restart_and_exits_with_the_outcome() {
    let mut c = Conductor::start(&cells_yaml(24900, 1));
    c.push_sample("1.0.0");
    c.push_sample("2.0.0-bad");
    let waves = "  - { name: all, percent: 100, max_parallel: 1 }\n";
    let p = c.file(
        "w.yaml",
        &sample_pipeline("w", waves, "rollback_cell_and_halt", "3s"),
    );
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);
    let id = c.start_train(&c.admin, "w", "1.0.0");
    let watch = |args: &[&str]| {
        Command::new(bin("conductor"))
            .args(["train", "watch"])
            .args(args)
            .args(["--unreachable-timeout", "2m"])
            .env("CONDUCTOR_URL", &c.url)
            .env("CONDUCTOR_TOKEN", &c.admin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the CLI")
    };
    let human = watch(&[&id]);
    let json = watch(&[&id, "--json"]);
    c.wait_train(&id, "the first bake", |t| {
        t["summary"]["baking"].as_u64().unwrap_or(0) > 0
    });
    // The Conductor dies while they watch, and comes back.
    c.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    let _server = restart_at_same_address(&c);

    let o = human.wait_with_output().expect("watch ends");
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("retrying for up to 2m"), "{err}");
    assert!(err.contains("again"), "{err}");
    let events = c.get(&c.admin, &format!("/trains/{id}/events?limit=5000"))["events"]
        .as_array()
        .expect("events")
        .clone();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        events.len() + 1,
        "one line per event, then the end:\n{out}"
    );
    assert!(
        lines[0].contains("train created: pipeline w version 1.0.0"),
        "{out}"
    );
    for cell in ["ue1-0", "ew1-0", "as2-0"] {
        for step in ["deploy succeeded", "test succeeded", "bake over"] {
            let want = format!("{cell:<16} {step}");
            assert!(out.contains(&want), "{want:?} not in:\n{out}");
        }
    }
    assert!(
        out.ends_with(&format!("train {id} ended: succeeded (succeeded 3)\n")),
        "{out}"
    );

    // As JSON: exactly the events of the log, in order, then the end.
    let o = json.wait_with_output().expect("watch ends");
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let got: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let seqs = |v: &[Value]| -> Vec<i64> { v.iter().filter_map(|e| e["seq"].as_i64()).collect() };
    assert_eq!(seqs(&got), seqs(&events), "{out}");
    let end = got.last().expect("lines");
    assert_eq!(end["end"]["status"], "succeeded", "{end}");
    assert_eq!(end["train"], id.as_str(), "{end}");

    // A train that fails: its deploy fails and the watch exits 1.
    let bad = c.start_train(&c.admin, "w", "2.0.0-bad");
    let out = c.cli_ok(&c.admin, &["train", "watch", &bad], 1);
    assert!(out.contains("deploy failed"), "{out}");
    assert!(out.contains(&format!("train {bad} ended: failed")), "{out}");
}

fn phase(t: &Value, cell: &str) -> String {
    t["cells"][cell]["phase"].as_str().unwrap_or("").to_string()
}

#[test]
fn rolling_back_an_old_train_skips_cells_a_newer_train_changed() {
    let mut c = Conductor::start(&cells_yaml(24500, 1));
    let dev = c.token("dev", "developer", &[]);
    c.push_sample("1.0.0");
    c.push_sample("1.1.0");
    let waves = "  - { name: all, percent: 100, max_parallel: 3 }\n";
    let all = c.file(
        "all.yaml",
        &sample_pipeline("all", waves, "rollback_cell_and_halt", "200ms"),
    );
    let eu = sample_pipeline("eu", waves, "rollback_cell_and_halt", "200ms").replace(
        "cells: { labels: { service: fga } }",
        "cells: { labels: { service: fga }, regions: [eu-west-1] }",
    );
    let eu = c.file("eu.yaml", &eu);
    c.cli_ok(&dev, &["pipeline", "submit", &all], 0);
    c.cli_ok(&dev, &["pipeline", "submit", &eu], 0);

    let old = c.start_train(&dev, "all", "1.0.0");
    c.cli_ok(&dev, &["train", "wait", &old], 0);
    c.cli_ok(
        &dev,
        &["train", "start", "eu", "--version", "1.1.0", "--wait"],
        0,
    );
    assert_eq!(c.versions()["ew1-0"].as_deref(), Some("1.1.0"));

    // Roll back the old train: the cell the newer train changed stays.
    let out = c.cli_ok(&dev, &["train", "rollback", &old, "--wait"], 0);
    assert!(
        out.contains("warning: the rollback left 1 cell(s) as they were") && out.contains("ew1-0"),
        "{out}"
    );
    let v = c.versions();
    assert_eq!(v["ew1-0"].as_deref(), Some("1.1.0"), "{v:?}");
    assert_eq!(v["ue1-0"], None, "{v:?}");
    assert_eq!(v["as2-0"], None, "{v:?}");

    let check = |c: &Conductor| {
        let t = c.train(&old);
        assert_eq!(t["status"], "rolled_back", "{t:#}");
        assert_eq!(phase(&t, "ew1-0"), "rollback_skipped", "{t:#}");
        assert_eq!(phase(&t, "ue1-0"), "rolled_back", "{t:#}");
        assert_eq!(t["summary"]["rollback_skipped"], 1, "{t:#}");
        let status = c.cli_ok(&dev, &["train", "status", &old], 0);
        assert!(
            status.contains("rollback_skipped skipped: ew1-0 runs 1.1.0 now, not 1.0.0"),
            "{status}"
        );
        assert!(
            status.contains("warning: the rollback left 1 cell(s)"),
            "{status}"
        );
        let events = c.cli_ok(&dev, &["train", "events", &old], 0);
        let skip = events
            .lines()
            .find(|l| l.contains("\"rollback_finished\"") && l.contains("ew1-0"))
            .unwrap_or_default();
        assert!(skip.contains("\"skipped\":true"), "{events}");
    };
    check(&c);
    // The same after a crash and restart.
    c.kill9();
    c.boot();
    check(&c);

    // Rolling back the newer train restores what it replaced.
    let newer = c.get(&dev, "/trains?pipeline=eu")["trains"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let out = c.cli_ok(&dev, &["train", "rollback", &newer, "--wait"], 0);
    assert!(!out.contains("warning"), "{out}");
    assert_eq!(c.versions()["ew1-0"].as_deref(), Some("1.0.0"));
}

#[test]
fn pipeline_validate_and_plan_tell_everything_at_once() {
    let c = Conductor::start(&cells_yaml(24600, 1));
    c.push_sample("1.0.0");
    let cells = c.dir.path().join("cells.yaml").display().to_string();
    let shapes = root().join("templates/shapes.yaml").display().to_string();
    let offline = ["--cells", cells.as_str(), "--shapes", shapes.as_str()];
    let waves = "  - { name: all, percent: 100, max_parallel: 3 }\n";
    let good = sample_pipeline("svc", waves, "rollback_cell_and_halt", "200ms");

    // Three problems, three diagnostics, each at its value.
    let bad = good
        .replace("min_requests: 5", "min_request: 5")
        .replace("bake: 200ms", "bake: 200 ms")
        .replace("on_failure: rollback_cell_and_halt", "on_failure: undo");
    let f = c.file("bad.yaml", &bad);
    let mut args = vec!["pipeline", "validate", f.as_str()];
    args.extend(offline);
    let o = c.cli(&c.admin, &args);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for want in [
        format!("{f}:6:39: unknown field `min_request`"),
        format!("{f}:7:11: invalid duration"),
        format!("{f}:10:13: unknown variant `undo`"),
    ] {
        assert!(err.contains(&want), "{want} not in:\n{err}");
    }

    // Latin-1 bytes where UTF-8 is expected.
    let latin1 = c.dir.path().join("latin1.yaml");
    let mut bytes = good.clone().into_bytes();
    let at = good.find("name: svc").expect("name") + "name: sv".len();
    bytes[at] = 0xE9;
    std::fs::write(&latin1, bytes).expect("write");
    let latin1 = latin1.display().to_string();
    let mut args = vec!["pipeline", "validate", latin1.as_str()];
    args.extend(offline);
    let o = c.cli(&c.admin, &args);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{latin1}:1:9: invalid UTF-8: byte(s) 0xE9")),
        "{err}"
    );

    // Offline, durations are assumed; from the server, measured once a train ran.
    let f = c.file("svc.yaml", &good);
    let mut args = vec!["pipeline", "plan", f.as_str()];
    args.extend(offline);
    let out = c.cli_ok(&c.admin, &args, 0);
    assert!(out.contains("deploy ~30s (assumed)"), "{out}");
    assert!(out.contains("durations: offline"), "{out}");
    c.cli_ok(&c.admin, &["pipeline", "submit", &f], 0);
    let out = c.cli_ok(&c.admin, &["pipeline", "plan", &f, "--server"], 0);
    assert!(out.contains("durations: assumed"), "{out}");
    c.cli_ok(
        &c.admin,
        &["train", "start", "svc", "--version", "1.0.0", "--wait"],
        0,
    );
    let out = c.cli_ok(&c.admin, &["pipeline", "plan", &f, "--server"], 0);
    assert!(out.contains("deploy ~"), "{out}");
    assert!(out.contains("(measured: median of 3 runs)"), "{out}");
    assert!(
        out.contains("durations: measured by the last 1 train(s) of svc"),
        "{out}"
    );
    let plan = c.get(&c.admin, "/pipelines/svc/plan");
    assert_eq!(plan["step_durations"][0]["basis"], "measured", "{plan:#}");
    assert_eq!(plan["step_durations"][2]["basis"], "written", "{plan:#}");
    assert_eq!(plan["trains_measured"], 1, "{plan:#}");
}

#[test]
fn scripts_get_the_train_id_and_can_wait_for_a_gate() {
    let c = Conductor::start(&cells_yaml(24700, 1));
    let dev = c.token("dev", "developer", &[]);
    let alice = c.token("alice", "approver", &["release-managers"]);
    c.push_sample("1.0.0");
    let waves = "  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100, max_parallel: 2, approval: { group: release-managers } }\n";
    let p = c.file(
        "g.yaml",
        &sample_pipeline("gated", waves, "rollback_cell_and_halt", "200ms"),
    );
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);

    // --quiet: the id alone, ready for TRAIN=$(...).
    let out = c.cli_ok(
        &dev,
        &["train", "start", "gated", "--version", "1.0.0", "--quiet"],
        0,
    );
    let id = out.trim().to_string();
    assert!(
        !id.contains(char::is_whitespace) && c.train(&id)["spec"]["id"] == id.as_str(),
        "{out:?}"
    );
    // A wave without a gate is a usage error.
    assert_eq!(
        c.cli(&dev, &["train", "wait", &id, "--gate", "canary"])
            .status
            .code(),
        Some(2)
    );
    // Returns once the gate waits, and the approval is then accepted.
    c.cli_ok(&dev, &["train", "wait", &id, "--gate", "rest"], 0);
    assert_eq!(c.train(&id)["gates_waiting"], serde_json::json!(["rest"]));
    c.cli_ok(&alice, &["train", "approve", &id, "--gate", "rest"], 0);
    // Past the gate it returns at once; the train then succeeds.
    c.cli_ok(&dev, &["train", "wait", &id, "--gate", "rest"], 0);
    c.cli_ok(&dev, &["train", "wait", &id], 0);
}
