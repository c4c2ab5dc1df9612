//! Several Conductor replicas on one PostgreSQL database: one leads (runs
//! the engine and the cells), the others serve the API; kill -9 of the
//! leader hands the train to another replica, which carries it on from the
//! committed log with no step attempt deploying twice.

use e2e::{cells_yaml, fresh_postgres, sample_pipeline, Conductor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn health(url: &str) -> Option<Value> {
    reqwest::blocking::Client::new()
        .get(format!("{url}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .ok()?
        .json()
        .ok()
}

/// Wait until the replica at `url` says it leads; returns how long it took.
fn wait_leader(url: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        if health(url).is_some_and(|h| h["role"] == "leader") {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{url} did not take over"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Read the train from `url` every 100 ms until stopped; every answer that
/// is not a 200 with the train is recorded.
fn keep_reading(
    url: String,
    token: String,
    id: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u32, Vec<String>)> {
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::new();
        let (mut ok, mut bad) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match client
                .get(format!("{url}/api/v1/trains/{id}"))
                .bearer_auth(&token)
                .timeout(Duration::from_secs(5))
                .send()
            {
                Ok(r) if r.status().is_success() => match r.json::<Value>() {
                    Ok(t) if t["spec"]["id"] == id.as_str() => ok += 1,
                    Ok(t) => bad.push(format!("another train: {}", t["spec"]["id"])),
                    Err(e) => bad.push(format!("unreadable train: {e}")),
                },
                Ok(r) => bad.push(format!("{}: {}", r.status(), r.text().unwrap_or_default())),
                Err(e) => bad.push(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (ok, bad)
    })
}

#[test]
fn the_train_survives_kill_9_of_two_leaders_in_turn() {
    let Some(db) = fresh_postgres("e2e_replicas") else {
        return;
    };
    let args = ["--database-url", db.as_str(), "--planner", "off"];
    let mut a = Conductor::start_with(&cells_yaml(25000, 3), &args);
    assert_eq!(health(&a.url).expect("healthz")["role"], "leader");
    let mut b = a.replica(&args);
    assert_eq!(health(&b.url).expect("healthz")["role"], "follower");

    // Everything goes through the follower: it forwards to the leader.
    b.push_sample("1.0.0");
    let waves =
        "  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100, max_parallel: 2 }\n";
    let p = b.file(
        "r.yaml",
        &sample_pipeline("replicated", waves, "rollback_cell_and_halt", "2s"),
    );
    b.cli_ok(&b.admin, &["pipeline", "submit", &p], 0);
    let id = b.start_train(&b.admin, "replicated", "1.0.0");

    let stop = Arc::new(AtomicBool::new(false));
    let reader = keep_reading(b.url.clone(), b.admin.clone(), id.clone(), stop.clone());
    b.wait_train(&id, "two cells done", |t| {
        t["summary"]["succeeded"].as_u64().unwrap_or(0) >= 2
    });
    let failovers = Mutex::new(Vec::new());
    a.kill9();
    failovers.lock().expect("lock").push(wait_leader(&b.url));
    stop.store(true, Ordering::Relaxed);
    let (ok, bad) = reader.join().expect("reader");
    assert!(
        ok > 0 && bad.is_empty(),
        "the surviving replica did not answer every read: {bad:?}"
    );

    // The first leader comes back as a follower; then the second dies too.
    a.boot();
    assert_eq!(health(&a.url).expect("healthz")["role"], "follower");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = keep_reading(a.url.clone(), a.admin.clone(), id.clone(), stop.clone());
    let before = b.train(&id)["summary"]["succeeded"].as_u64().unwrap_or(0);
    b.wait_train(&id, "another cell done under the second leader", |t| {
        t["summary"]["succeeded"].as_u64().unwrap_or(0) > before
    });
    b.kill9();
    failovers.lock().expect("lock").push(wait_leader(&a.url));
    a.cli_ok(&a.admin, &["train", "wait", &id], 0);
    stop.store(true, Ordering::Relaxed);
    let (ok, bad) = reader.join().expect("reader");
    assert!(
        ok > 0 && bad.is_empty(),
        "the surviving replica did not answer every read: {bad:?}"
    );
    eprintln!("fail-over times: {:?}", failovers.lock().expect("lock"));

    let t = a.train(&id);
    assert_eq!(t["status"], "succeeded", "{t:#}");
    assert!(a.versions().values().all(|v| v.as_deref() == Some("1.0.0")));
    // Each cell was deployed exactly once by this train's deploy step.
    let deploys = a.get(&a.admin, "/cells/deploys");
    let mut per_key: BTreeMap<String, u32> = BTreeMap::new();
    for d in deploys["deploys"].as_array().expect("deploys") {
        *per_key
            .entry(d["key"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(per_key.len(), 9, "{per_key:?}");
    assert!(
        per_key.values().all(|n| *n == 1),
        "a step attempt deployed twice: {per_key:?}"
    );
    // The new leader adopted the cells: every one serves.
    let routes = a.get(&a.admin, "/routes");
    assert_eq!(routes["routes"].as_object().map(|m| m.len()), Some(9));
}

#[test]
fn a_follower_refuses_writes_while_no_replica_leads_and_a_second_sqlite_conductor_is_refused() {
    let Some(db) = fresh_postgres("e2e_noleader") else {
        return;
    };
    let args = ["--database-url", db.as_str(), "--planner", "off"];
    let mut a = Conductor::start_with(&cells_yaml(25100, 1), &args);
    let b = a.replica(&args);
    a.kill9();
    // Until b has taken over, a write is refused with no_leader (nothing
    // done) or, once it leads, carried out; never anything else.
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/tokens", b.url))
        .bearer_auth(&b.admin)
        .json(&serde_json::json!({"name": "ci-bot", "role": "ci"}))
        .send()
        .expect("POST");
    let status = r.status().as_u16();
    let body: Value = r.json().expect("json");
    assert!(
        status == 200 || status == 201 || (status == 503 && body["code"] == "no_leader"),
        "{status} {body}"
    );
    wait_leader(&b.url);

    // On SQLite a database has one Conductor: a second one is refused.
    let c = Conductor::start(&cells_yaml(25200, 1));
    let out = std::process::Command::new(e2e::bin("conductor"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--planner",
            "off",
            "--data-dir",
        ])
        .arg(c.data_dir())
        .args(["--cells"])
        .arg(e2e::root().join("deploy/local/cells.yaml"))
        .current_dir(e2e::root())
        .output()
        .expect("run a second conductor");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another Conductor already uses"), "{err}");
}
