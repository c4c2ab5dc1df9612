//! End-to-end: resizes through the Conductor beside a running release train,
//! with the real binaries (conductor, sample-service) on loopback.

use e2e::{cells_yaml, norm_ts, sample_pipeline, spans, Conductor};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The version each worker of `cell` answers with on its own port.
fn worker_versions(c: &Conductor, cell: &str) -> Vec<String> {
    let routes = c.get(&c.admin, "/routes");
    let http = reqwest::blocking::Client::new();
    routes["routes"][cell]["sample-service"]["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| {
            let port = w["port"].as_u64().expect("worker port");
            let v: Value = http
                .get(format!("http://127.0.0.1:{port}/version"))
                .send()
                .expect("worker answers")
                .json()
                .expect("json");
            v["version"].as_str().unwrap_or("").to_string()
        })
        .collect()
}

fn cell<'a>(cells: &'a Value, id: &str) -> &'a Value {
    cells["cells"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == id))
        .expect("cell listed")
}

#[test]
fn resizes_run_beside_a_train_without_lockstep() {
    let c = Conductor::start(&cells_yaml(22100, 2));
    let sre = c.token("sam", "sre", &[]);
    c.push_sample("1.0.0");
    c.push_sample("2.0.0");
    let p = c.file(
        "p.yaml",
        &sample_pipeline(
            "svc",
            "  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100, max_parallel: 2 }\n",
            "rollback_cell_and_halt",
            "2s",
        ),
    );
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);
    let first = c.start_train(&c.admin, "svc", "1.0.0");
    c.cli_ok(&c.admin, &["train", "wait", &first], 0);

    // A train over all six cells; the canary (ue1-0) is being deployed.
    let train = c.start_train(&c.admin, "svc", "2.0.0");
    c.wait_train(&train, "the canary to start", |t| {
        matches!(
            t["cells"]["ue1-0"]["phase"].as_str(),
            Some("running" | "baking")
        )
    });
    // Resize the cell the train holds now, and one it has not reached yet.
    let out = c.cli_ok(
        &sre,
        &[
            "cells", "resize", "ue1-0", "--shape", "medium", "--reason", "growth",
        ],
        0,
    );
    let r1 = out
        .split_whitespace()
        .nth(1)
        .expect("resize id")
        .to_string();
    let out = c.cli_ok(&sre, &["cells", "resize", "as2-1", "--shape", "large"], 0);
    let r2 = out
        .split_whitespace()
        .nth(1)
        .expect("resize id")
        .to_string();

    // While they are open, any lease a train waits for is one of theirs.
    let resized: BTreeSet<&str> = ["ue1-0", "as2-1"].into();
    let mut waits = Vec::new();
    loop {
        let open = c.get(&c.admin, "/resizes?open=true");
        for l in c.get(&c.admin, "/leases")["leases"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if !l["waiting"].as_array().is_none_or(|w| w.is_empty()) {
                waits.push((l["cell"].as_str().unwrap_or("").to_string(), l.clone()));
            }
        }
        if open["resizes"].as_array().is_none_or(|a| a.is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for (cell, l) in &waits {
        assert!(resized.contains(cell.as_str()), "a wait on {cell}: {l}");
    }

    let (z1, z2) = (c.wait_resize(&r1), c.wait_resize(&r2));
    assert_eq!(z1["status"], "succeeded", "{z1:#}");
    assert_eq!(z2["status"], "succeeded", "{z2:#}");
    c.cli_ok(&c.admin, &["train", "wait", &train], 0);

    // The resize and the train never held a cell at the same time.
    let held = spans(&c, &train);
    for z in [&z1, &z2] {
        let cell = z["cell"].as_str().unwrap_or("");
        let (r0, r1) = (
            norm_ts(z["started_at"].as_str().unwrap_or("")),
            norm_ts(z["updated_at"].as_str().unwrap_or("")),
        );
        let (t0, t1) = (norm_ts(&held[cell].0), norm_ts(&held[cell].1));
        assert!(
            r1 <= t0 || t1 <= r0,
            "{cell}: resize {r0}..{r1} overlaps the train's {t0}..{t1}"
        );
    }

    // Version and shape are both right afterwards, on every worker.
    let cells = c.get(&c.admin, "/cells");
    let want: BTreeMap<&str, (&str, usize)> =
        [("ue1-0", ("medium", 2)), ("as2-1", ("large", 4))].into();
    for id in ["ue1-0", "ue1-1", "ew1-0", "ew1-1", "as2-0", "as2-1"] {
        let (shape, n) = want.get(id).copied().unwrap_or(("small", 1));
        let cv = cell(&cells, id);
        assert_eq!(cv["shape"], shape, "{id}");
        assert_eq!(cv["workers"]["desired"], n, "{id}");
        let versions = worker_versions(&c, id);
        assert_eq!(versions, vec!["2.0.0".to_string(); n], "{id}");
    }

    // The resizes are in the audit log with their outcome.
    let audit = c.get(&c.admin, "/audit?limit=1000");
    let actions: Vec<(String, String)> = audit["audit"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["target"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for cell in ["ue1-0", "as2-1"] {
        for a in ["cell.resize", "resize.succeeded"] {
            assert!(
                actions.contains(&(a.to_string(), cell.to_string())),
                "{a} {cell} not audited: {actions:?}"
            );
        }
    }
}

#[test]
fn resizes_refuse_bad_input_and_the_wrong_roles() {
    let c = Conductor::start(&cells_yaml(22200, 1));
    let sre = c.token("sam", "sre", &[]);
    let dev = c.token("dev", "developer", &[]);
    let err = |token: &str, args: &[&str], code: i32, needle: &str| {
        let o = c.cli(token, args);
        let text = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {text}");
    };
    err(
        &sre,
        &["cells", "resize", "ue1-0", "--shape", "huge"],
        2,
        "no shape \"huge\"",
    );
    err(
        &sre,
        &["cells", "resize", "ue1-0", "--shape", "small"],
        2,
        "already small",
    );
    err(
        &sre,
        &["cells", "resize", "nope", "--shape", "large"],
        2,
        "no cell",
    );
    err(
        &dev,
        &["cells", "resize", "ue1-0", "--shape", "large"],
        2,
        "may not",
    );
    err(&sre, &["resizes", "approve", "rz-none"], 2, "no resize");
    // A cell that runs nothing yet is resized at once; the next deploy
    // starts the shape's workers.
    c.cli_ok(
        &sre,
        &["cells", "resize", "ue1-0", "--shape", "large", "--wait"],
        0,
    );
    let cells = c.get(&c.admin, "/cells");
    assert_eq!(cell(&cells, "ue1-0")["shape"], "large");
    assert_eq!(cell(&cells, "ew1-0")["shape"], "small");
    // Nothing else changed: one resize, succeeded.
    let all = c.get(&c.admin, "/resizes");
    assert_eq!(all["resizes"].as_array().map(Vec::len), Some(1));
}
