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

/// Run `f` until it returns Some, or panic after a minute.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn json_out(c: &Conductor, token: &str, args: &[&str]) -> Value {
    let out = c.cli_ok(token, args, 0);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn report_cell<'a>(plan: &'a Value, id: &str) -> &'a Value {
    plan["plan"]["cells"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["cell"] == id))
        .unwrap_or_else(|| panic!("{id} not in the plan: {plan:#}"))
}

#[test]
fn the_sre_tour_scrape_plan_limits_apply_place_stamp_and_retire() {
    let cells = "cells:\n  - { id: use1-a, region: us-east-1, shape: small, port: 22301, labels: { service: fga } }\n  - { id: use1-b, region: us-east-1, shape: large, port: 22303, labels: { service: fga } }\n  - { id: euw1-a, region: eu-west-1, shape: small, port: 22305, labels: { service: fga } }\n";
    let c = Conductor::start_with(cells, &["--planner-interval-secs", "0.3"]);
    let sam = c.token("sam", "sre", &[]);
    let ana = c.token("ana", "sre", &[]);
    let dev = c.token("dev", "developer", &[]);

    // The FGA data plane on every cell.
    let bin = e2e::bin("fga-dataplane").display().to_string();
    c.cli_ok(
        &c.admin,
        &["artifact", "push", "fga-dataplane", "0.1.0", &bin],
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

    // A tenant (a store) on use1-a, checked continuously.
    let http = reqwest::blocking::Client::new();
    let base = "http://127.0.0.1:22301";
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
    let check = || {
        for _ in 0..20 {
            let _ = http
                .post(format!("{base}/stores/{sid}/check"))
                .json(&serde_json::json!({"tuple_key": {"user": "user:ann", "relation": "viewer", "object": "doc:1"}}))
                .send();
        }
    };

    // The planner scrapes it: the plan shows the tenant and its load.
    let plan = eventually("the scraped tenant in the plan", || {
        check();
        let plan = json_out(&c, &sam, &["plan", "capacity", "--json"]);
        let cell = report_cell(&plan, "use1-a");
        (cell["tenants"] == 1 && cell["utilization_now"][0].as_f64() > Some(0.0)).then_some(plan)
    });
    assert_eq!(report_cell(&plan, "use1-a")["shape"], "small");

    // Rate limits: pushed to the cell's data plane, then in force.
    c.cli_ok(&dev, &["plan", "limits"], 0);
    let o = c.cli(&dev, &["plan", "limits", "--push"]);
    assert_eq!(o.status.code(), Some(2), "a developer may not push limits");
    c.cli_ok(&sam, &["plan", "limits", "--push"], 0);
    let key = std::fs::read_to_string(c.dir.path().join("data/fga-admin.key")).expect("key");
    let routes = c.get(&c.admin, "/routes");
    let wport = routes["routes"]["use1-a"]["fga-dataplane"]["workers"][0]["port"]
        .as_u64()
        .expect("worker port");
    let limits: Value = http
        .get(format!("http://127.0.0.1:{wport}/admin/rate-limits"))
        .bearer_auth(key.trim())
        .send()
        .expect("limits")
        .json()
        .expect("json");
    assert!(
        limits["stores"][&sid]["rate"].as_f64() > Some(0.0),
        "{limits:#}"
    );
    let listed = json_out(&c, &sam, &["plan", "limits", "--json"]);
    let mine = listed["limits"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["tenant"] == sid.as_str()))
        .expect("tenant listed");
    assert!(mine["in_force"].as_f64() > Some(0.0), "{mine}");

    // Imported usage makes euw1-a hot; use1-b (large) is idle.
    let usage = c.file(
        "usage.yaml",
        "tenants:\n  - tenant: bigco\n    cell: euw1-a\n    samples:\n      - { at: 1000000000, check_rps: 1800, tuples: 100000, connections: 10 }\n      - { at: 1000003600, check_rps: 1800, tuples: 100000, connections: 10 }\n",
    );
    // (Old timestamps are outside the planning window: import now-ish ones.)
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let text = std::fs::read_to_string(&usage)
        .expect("usage")
        .replace("1000000000", &(now - 3600).to_string())
        .replace("1000003600", &now.to_string());
    let usage = c.file("usage.yaml", &text);
    c.cli_ok(&sam, &["plan", "import", &usage], 0);
    let bad = c.file("bad.yaml", "tenants:\n  - tenant: x\n    cell: euw1-a\n    samples: [ { at: 1, check_rps: -5, tuples: 0 } ]\n");
    let o = c.cli(&sam, &["plan", "import", &bad]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("negative"));
    let old = c.file("old.yaml", "tenants:\n  - tenant: x\n    cell: euw1-a\n    samples: [ { at: 0, check_rps: 5, tuples: 0 } ]\n");
    let o = c.cli(&sam, &["plan", "import", &old]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("retention"));

    let plan = json_out(&c, &sam, &["plan", "capacity", "--json"]);
    let hot = report_cell(&plan, "euw1-a");
    assert_eq!(
        (hot["recommended"].as_str(), hot["action"].as_str()),
        (Some("medium"), Some("grow")),
        "{hot}"
    );
    let idle = report_cell(&plan, "use1-b");
    assert_eq!(
        (idle["recommended"].as_str(), idle["action"].as_str()),
        (Some("small"), Some("shrink")),
        "{idle}"
    );

    // --apply: the grow runs now, the shrink waits for someone else.
    let applied = json_out(&c, &sam, &["plan", "capacity", "--apply", "--json"]);
    let rz = |cell: &str| {
        applied["resizes"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["cell"] == cell))
            .unwrap_or_else(|| panic!("no resize of {cell}: {applied:#}"))
            .clone()
    };
    let (grow, shrink) = (rz("euw1-a"), rz("use1-b"));
    assert_eq!(shrink["status"], "awaiting_approval");
    let grow_id = grow["id"].as_str().unwrap_or("");
    let shrink_id = shrink["id"].as_str().unwrap_or("");
    assert_eq!(c.wait_resize(grow_id)["status"], "succeeded");
    let o = c.cli(&sam, &["resizes", "approve", shrink_id]);
    assert_eq!(o.status.code(), Some(2), "self-approval must be refused");
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot approve"));
    c.cli_ok(&ana, &["resizes", "approve", shrink_id], 0);
    c.cli_ok(&ana, &["resizes", "wait", shrink_id], 0);
    let listed = c.get(&c.admin, "/cells");
    assert_eq!(cell(&listed, "euw1-a")["shape"], "medium");
    assert_eq!(
        cell(&listed, "euw1-a")["workers"]["running"]["fga-dataplane"],
        2
    );
    assert_eq!(cell(&listed, "use1-b")["shape"], "small");
    assert_eq!(
        cell(&listed, "use1-b")["workers"]["running"]["fga-dataplane"],
        1
    );

    // Placement: room in us-east-1; none in eu-west-1, so stamp a new cell.
    let out = c.cli_ok(
        &dev,
        &[
            "tenants",
            "place",
            "--region",
            "us-east-1",
            "--expected-rps",
            "50",
            "--expected-tuples",
            "1000",
        ],
        0,
    );
    assert!(out.starts_with("place on use1-"), "{out}");
    assert!(out.contains("why:"), "{out}");
    let o = c.cli(
        &dev,
        &[
            "tenants",
            "place",
            "--region",
            "eu-west-1",
            "--expected-rps",
            "3000",
            "--expected-tuples",
            "1000",
            "--stamp",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "a developer may not stamp cells");
    let placed = json_out(
        &c,
        &sam,
        &[
            "tenants",
            "place",
            "--region",
            "eu-west-1",
            "--expected-rps",
            "3000",
            "--expected-tuples",
            "1000",
            "--stamp",
            "--json",
        ],
    );
    assert!(placed["placement"]["cell"].is_null(), "{placed:#}");
    let new_id = placed["stamped"]["id"]
        .as_str()
        .expect("stamped")
        .to_string();
    assert_eq!(new_id, "euw1-b");
    let listed = c.get(&c.admin, "/cells");
    assert_eq!(cell(&listed, &new_id)["status"], "active");
    assert_eq!(cell(&listed, &new_id)["region"], "eu-west-1");

    // Lifecycle: add, drain, retire (retire needs a drain first).
    let out = c.cli_ok(
        &sam,
        &["cells", "add", "--region", "us-east-1", "--shape", "medium"],
        0,
    );
    assert!(out.contains("added cell use1-c"), "{out}");
    let o = c.cli(
        &sam,
        &["cells", "add", "--region", "mars-1", "--shape", "small"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no template for region"));
    let o = c.cli(&sam, &["cells", "retire", &new_id]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("drain"));
    c.cli_ok(&sam, &["cells", "drain", &new_id], 0);
    c.cli_ok(&sam, &["cells", "retire", &new_id], 0);
    let listed = c.get(&c.admin, "/cells");
    assert_eq!(cell(&listed, &new_id)["status"], "retired");
    // A retired cell is out of the plan.
    let plan = json_out(&c, &sam, &["plan", "capacity", "--json"]);
    assert!(plan["plan"]["cells"]
        .as_array()
        .is_some_and(|a| a.iter().all(|x| x["cell"] != new_id.as_str())));
}
