//! End-to-end: cell processes and what the Conductor starts for users —
//! confined command steps, cells that outlive the Conductor and are adopted,
//! ports of their own per artifact, private files, clean logs.

use e2e::{alive, cells_yaml, proc_stat_field, sample_pipeline, Conductor, ENV_CANARY};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const ALL: &str = "  - { name: all, percent: 100, max_parallel: 3 }\n";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The environment of a process (the tests read it as its owner or root).
fn environ(pid: u32) -> BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The capacity planner the Conductor `pid` started.
fn planner_pid(conductor: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            proc_stat_field(*p, 4) == Some(conductor.to_string())
                && std::fs::read_link(format!("/proc/{p}/exe"))
                    .is_ok_and(|x| x.ends_with("capacity-planner"))
        })
}

fn deploy_sample(c: &Conductor, name: &str, version: &str) {
    let p = c.file(
        &format!("{name}.yaml"),
        &sample_pipeline(name, ALL, "rollback_cell_and_halt", "100ms"),
    );
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);
    let id = c.start_train(&c.admin, name, version);
    c.cli_ok(&c.admin, &["train", "wait", &id], 0);
}

/// `GET /version` on a port: the version that answered.
fn version_on(port: u64) -> Option<String> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?
        .get(format!("http://127.0.0.1:{port}/version"))
        .send()
        .ok()?
        .json::<Value>()
        .ok()?["version"]
        .as_str()
        .map(String::from)
}

/// Per cell: (the artifact's port, its workers' pids).
fn served(c: &Conductor, artifact: &str) -> BTreeMap<String, (u64, BTreeSet<u64>)> {
    let routes = c.get(&c.admin, "/routes");
    routes["routes"]
        .as_object()
        .expect("routes")
        .iter()
        .map(|(cell, arts)| {
            let a = &arts[artifact];
            let pids = a["workers"]
                .as_array()
                .expect("workers")
                .iter()
                .filter_map(|w| w["pid"].as_u64())
                .collect();
            (cell.clone(), (a["port"].as_u64().expect("port"), pids))
        })
        .collect()
}

/// The inode of the socket listening on 127.0.0.1:`port`.
fn listening_inode(port: u64) -> Option<String> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (addr, p) = f.get(1)?.split_once(':')?;
        let listening = addr == "0100007F"
            && u64::from_str_radix(p, 16).ok()? == port
            && f.get(3) == Some(&"0A");
        listening.then(|| f.get(9).map(|s| s.to_string()))?
    })
}

/// Every worker of `artifact` serves its own port on the socket the
/// Conductor bound and handed over as fd 3 (so no other process could take
/// the port first).
fn workers_serve_the_handed_over_socket(routes: &Value, artifact: &str) {
    for (cell, arts) in routes.as_object().expect("routes") {
        for w in arts[artifact]["workers"].as_array().expect("workers") {
            let (pid, port) = (
                w["pid"].as_u64().expect("pid"),
                w["port"].as_u64().expect("port"),
            );
            let inode = listening_inode(port).expect("a listener on the worker port");
            let fd3 = std::fs::read_link(format!("/proc/{pid}/fd/3")).expect("fd 3");
            assert_eq!(
                fd3.display().to_string(),
                format!("socket:[{inode}]"),
                "{cell} {artifact} worker {pid}"
            );
        }
    }
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_hostile_command_step_gets_no_secret_and_changes_nothing() {
    let c = Conductor::start(&cells_yaml(23000, 1));
    deploy_sample_pushed(&c);
    let dev = c.token("dana", "developer", &[]);
    let (data, run) = (c.data_dir(), c.run_dir());
    let conductor = c.pid().expect("conductor pid");
    let planner = planner_pid(conductor).expect("the planner runs");
    let cells = c.cell_pids();
    assert_eq!(cells.len(), 3, "one worker per cell");

    // What the attacker is after (the test reads them as root).
    let fga_key = std::fs::read_to_string(data.join("fga-admin.key"))
        .expect("fga key")
        .trim()
        .to_string();
    let planner_token = environ(planner)
        .remove("CAPACITY_TOKEN")
        .expect("the planner's token");
    assert!(fga_key.len() > 16 && planner_token.len() > 16);
    assert_eq!(
        environ(cells[0]).get("FGA_ADMIN_KEY"),
        Some(&fga_key),
        "cells get the fleet key"
    );

    let mut pids: Vec<u32> = vec![conductor, planner];
    pids.extend(&cells);
    let pids = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        r#"D='{data}'; R='{run}'; T='{token}'
echo "== id: $(id)"
echo "== pwd: $(pwd)"
echo "== env"; env; echo "== end env"
for f in $(find "$D" "$R" -type f 2>/dev/null) "$D/conductor.db" "$D/conductor.db-wal" "$D/fga-admin.key" "$D/admin.token" "$D/planner.token" "$D/routes.json" "$D/server.log" "$T"; do
  echo "== cat $f"; cat "$f" 2>&1 | head -c 200000; echo
done
ls -la "$D" "$R" "$R/bin" "$R/cells" "$R/steps" 2>&1
for p in {pids}; do
  for what in environ cmdline; do echo "== $what $p"; cat /proc/$p/$what 2>&1 | tr '\000' ' '; echo; done
  echo "== mem $p"; head -c 64 /proc/$p/mem 2>&1 | od -c | head -2
  kill -0 $p 2>/dev/null && echo "SIGNALLED $p"
done
echo "== writes"
touch "$D/pwned" "$R/pwned" "$R/bin/pwned" "$R/cells/pwned" "$R/steps/pwned" 2>&1
for d in "$R"/cells/*; do touch "$d/pwned" 2>&1; done
echo x >> "$D/conductor.db" 2>&1
sqlite3 "$D/conductor.db" "INSERT INTO tokens (name, role, groups, hash, created_at) VALUES ('evil', 'admin', '[]', 'x', 'now')" 2>&1
echo "== done"
"#,
        data = data.display(),
        run = run.display(),
        token = c.admin_token_file().display(),
    );
    let sh = c.file("hostile.sh", &script);
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let yaml = format!(
        "name: probe\nartifact: {{ kind: command, name: probe }}\ncells: {{ labels: {{ service: fga }} }}\nenv: {{ GREETING: hello-from-the-pipeline }}\nsteps:\n  - command: {{ run: \"sh {sh}\", timeout: 60s }}\nwaves:\n{ALL}"
    );
    let p = c.file("probe.yaml", &yaml);
    c.cli_ok(&dev, &["pipeline", "submit", &p], 0);
    let id = c.start_train(&dev, "probe", "1");
    c.cli_ok(&dev, &["train", "wait", &id], 0);
    let logs = c.cli_ok(&dev, &["train", "logs", &id], 0);
    assert!(logs.contains("== done"), "the step ran to its end:\n{logs}");

    // It got nothing.
    for (what, secret) in [
        ("the admin token", c.admin.as_str()),
        ("the fleet's FGA admin key", fga_key.as_str()),
        ("the planner's token", planner_token.as_str()),
        ("the Conductor's environment", ENV_CANARY),
        ("the database", "SQLite format 3"),
    ] {
        assert!(!logs.contains(secret), "the step read {what}:\n{logs}");
    }
    assert!(
        !logs.contains("SIGNALLED"),
        "the step could signal:\n{logs}"
    );
    assert!(
        logs.contains("Permission denied"),
        "the attempts were made:\n{logs}"
    );
    // Its environment: the documented variables and what the pipeline declares.
    let env: Vec<&str> = logs
        .split("== env\n")
        .nth(1)
        .and_then(|r| r.split("== end env").next())
        .expect("env section")
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let allowed = [
        "CELL_ID",
        "CELL_REGION",
        "CELL_SHAPE",
        "CELL_LABEL_SERVICE",
        "ARTIFACT_NAME",
        "ARTIFACT_VERSION",
        "TRAIN_ID",
        "PIPELINE",
        "IDEMPOTENCY_KEY",
        "GREETING",
        "PATH",
        "HOME",
        "TMPDIR",
        "PWD",
        "SHLVL",
        "OLDPWD",
        "_",
    ];
    assert!(
        env.contains(&"GREETING") && env.contains(&"IDEMPOTENCY_KEY"),
        "{env:?}"
    );
    for k in &env {
        assert!(
            allowed.contains(k),
            "unexpected {k} in the step's environment:\n{logs}"
        );
    }
    assert!(logs.contains("GREETING=hello-from-the-pipeline"), "{logs}");
    let steps = run.join("steps").display().to_string();
    assert!(logs.contains(&format!("== pwd: {steps}/")), "{logs}");
    if is_root() {
        assert!(logs.contains("uid=65534(nobody)"), "{logs}");
    }
    // And changed nothing.
    for f in [
        data.join("pwned"),
        run.join("pwned"),
        run.join("bin/pwned"),
        run.join("cells/pwned"),
        run.join("steps/pwned"),
    ] {
        assert!(!f.exists(), "the step wrote {}", f.display());
    }
    for d in std::fs::read_dir(run.join("cells"))
        .expect("cells")
        .flatten()
    {
        assert!(
            !d.path().join("pwned").exists(),
            "the step wrote into {}",
            d.path().display()
        );
    }
    // No token row "evil" was slipped into the database (names are unique).
    c.token("evil", "developer", &[]);
    // The steps' working directories are gone.
    assert_eq!(
        std::fs::read_dir(run.join("steps")).expect("steps").count(),
        0
    );

    // The Conductor's files are private (item 6): the data directory 0700,
    // the database with its -wal/-shm, keys and tokens 0600, artifacts 0700.
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("artifacts")), 0o700);
    for f in [
        "conductor.db",
        "conductor.db-wal",
        "conductor.db-shm",
        "fga-admin.key",
        "routes.json",
    ] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&c.admin_token_file()), 0o600);
    assert!(!data.join("admin.token").exists() && !data.join("planner.token").exists());
}

#[test]
fn cells_keep_serving_without_the_conductor_and_are_adopted_not_restarted() {
    let cells = "cells:\n  - { id: a, region: us-east-1, shape: small, port: 23101, labels: { service: fga } }\n  - { id: b, region: eu-west-1, shape: medium, port: 23103, labels: { service: fga } }\n  - { id: c, region: ap-southeast-2, shape: small, port: 23105, labels: { service: fga } }\n";
    let mut c = Conductor::start(cells);
    c.push_sample("1.0.0");
    c.push_sample("1.1.0");
    deploy_sample(&c, "svc", "1.0.0");
    let before = served(&c, "sample-service");
    assert_eq!(before["b"].1.len(), 2, "a medium cell runs two workers");
    let started: BTreeMap<u64, Option<String>> = before
        .values()
        .flat_map(|(_, pids)| pids.iter())
        .map(|p| (*p, proc_stat_field(*p as u32, 22)))
        .collect();

    // The Conductor dies: every cell keeps answering.
    c.kill9();
    for (cell, (port, pids)) in &before {
        for _ in 0..5 {
            assert_eq!(version_on(*port).as_deref(), Some("1.0.0"), "{cell}");
        }
        assert!(pids.iter().all(|p| alive(*p as u32)), "{cell}");
    }

    // A new Conductor adopts them: same processes (pid and start time), same ports.
    c.boot();
    assert_eq!(served(&c, "sample-service"), before);
    for (pid, start) in &started {
        assert_eq!(
            &proc_stat_field(*pid as u32, 22),
            start,
            "pid {pid} was restarted"
        );
    }
    assert_eq!(c.cell_pids().len(), 4, "no second set of processes");

    // An adopted worker that crashes is restarted.
    let (port, pids) = before["a"].clone();
    let victim = *pids.iter().next().expect("pid");
    e2e::kill_pid(victim as u32);
    eventually("the adopted worker restarted", || {
        let (p, now) = served(&c, "sample-service").remove("a")?;
        (p == port && !now.contains(&victim) && now.len() == 1 && version_on(port).is_some())
            .then_some(())
    });

    // A clean stop leaves them serving too; the next start adopts again.
    let now = served(&c, "sample-service");
    assert_eq!(c.stop(), Some(0));
    for (cell, (port, _)) in &now {
        assert_eq!(version_on(*port).as_deref(), Some("1.0.0"), "{cell}");
    }
    c.boot();
    assert_eq!(served(&c, "sample-service"), now);

    // Trains go on over adopted cells: a deploy replaces them as usual.
    let id = c.start_train(&c.admin, "svc", "1.1.0");
    c.cli_ok(&c.admin, &["train", "wait", &id], 0);
    let after = served(&c, "sample-service");
    for (cell, (port, pids)) in &after {
        assert_eq!(version_on(*port).as_deref(), Some("1.1.0"), "{cell}");
        assert!(pids.is_disjoint(&now[cell].1), "{cell}");
    }
    eventually("the old processes gone", || {
        now.values()
            .flat_map(|(_, p)| p.iter())
            .all(|p| !alive(*p as u32))
            .then_some(())
    });
}

#[test]
fn two_artifacts_on_a_cell_get_their_own_ports() {
    let mut c = Conductor::start(&cells_yaml(23200, 1));
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
    c.push_sample("1.0.0");
    c.push_sample("1.1.0");
    deploy_sample(&c, "svc", "1.0.0");

    let routes = c.get(&c.admin, "/routes")["routes"].clone();
    let cell_ports: BTreeMap<String, u64> = c.get(&c.admin, "/cells")["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|x| {
            (
                x["id"].as_str().unwrap_or("").to_string(),
                x["port"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let mut all_ports = BTreeSet::new();
    let http = reqwest::blocking::Client::new();
    for (cell, arts) in routes.as_object().expect("routes") {
        let fga = &arts["fga-dataplane"];
        let svc = &arts["sample-service"];
        let base = cell_ports[cell];
        // The first artifact keeps the cell's ports; the second has its own pair.
        assert_eq!(fga["ports"], serde_json::json!([base, base + 1]), "{cell}");
        let s0 = svc["ports"][0].as_u64().expect("ports");
        assert!((23250..23299).contains(&s0), "{cell}: {svc}");
        for p in [base, base + 1, s0, s0 + 1] {
            assert!(all_ports.insert(p), "port {p} used twice");
        }
        // Each port answers for its own artifact, every time.
        let (fport, sport) = (
            fga["port"].as_u64().expect("p"),
            svc["port"].as_u64().expect("p"),
        );
        for _ in 0..10 {
            assert_eq!(version_on(sport).as_deref(), Some("1.0.0"), "{cell}");
            let stores = http
                .get(format!("http://127.0.0.1:{fport}/stores"))
                .send()
                .expect("fga")
                .json::<Value>()
                .expect("json");
            assert!(stores["stores"].is_array(), "{cell}: {stores}");
        }
    }

    workers_serve_the_handed_over_socket(&routes, "fga-dataplane");
    workers_serve_the_handed_over_socket(&routes, "sample-service");

    // Stable across restarts, and a new version of one stays within its pair.
    c.kill9();
    c.boot();
    let again = c.get(&c.admin, "/routes")["routes"].clone();
    assert_eq!(again, routes);
    let id = c.start_train(&c.admin, "svc", "1.1.0");
    c.cli_ok(&c.admin, &["train", "wait", &id], 0);
    let after = c.get(&c.admin, "/routes")["routes"].clone();
    for (cell, arts) in after.as_object().expect("routes") {
        assert_eq!(
            arts["fga-dataplane"], routes[cell]["fga-dataplane"],
            "{cell}"
        );
        let svc = &arts["sample-service"];
        assert_eq!(
            svc["ports"], routes[cell]["sample-service"]["ports"],
            "{cell}"
        );
        assert_ne!(
            svc["port"], routes[cell]["sample-service"]["port"],
            "blue/green"
        );
        assert_eq!(
            version_on(svc["port"].as_u64().expect("p")).as_deref(),
            Some("1.1.0")
        );
    }
}

#[test]
fn logs_are_plain_off_a_terminal_and_all_json_in_json_mode_without_the_token() {
    // Text: stderr goes to a file here, so no ANSI escapes.
    let mut t = Conductor::start(&cells_yaml(23300, 1));
    deploy_sample_pushed(&t);
    assert_eq!(t.stop(), Some(0));
    let text = std::fs::read_to_string(t.dir.path().join("server.log")).expect("log");
    assert!(text.contains("serving"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{text}"
    );

    // JSON: every line of stdout and stderr, the banner included; never the token.
    let mut j = Conductor::start_with(&cells_yaml(23400, 1), &["--log-format", "json"]);
    deploy_sample_pushed(&j);
    let token = j.admin.clone();
    assert_eq!(j.stop(), Some(0));
    let mut all = String::new();
    for f in ["stdout.log", "server.log"] {
        let body = std::fs::read_to_string(j.dir.path().join(f)).expect("log");
        for l in body.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                serde_json::from_str::<Value>(l).is_ok(),
                "{f}: not JSON: {l}"
            );
            assert!(!l.contains('\u{1b}'), "{f}: {l}");
            assert!(!l.contains(&token), "{f} shows the admin token: {l}");
        }
        all.push_str(&body);
    }
    for needle in ["\"url\":", "serving", "shutting down", "keep serving"] {
        assert!(all.contains(needle), "{needle} missing from\n{all}");
    }

    // The first start in JSON mode refuses to make a token it would not show.
    let dir = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(e2e::bin("conductor"))
        .args([
            "up",
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--planner",
            "off",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--cells")
        .arg(j.dir.path().join("cells.yaml"))
        .arg("--shapes")
        .arg(e2e::root().join("templates/shapes.yaml"))
        .arg("--cell-template")
        .arg(e2e::root().join("templates/cell.yaml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for l in err.lines() {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
    }
    assert!(err.contains("--write-admin-token"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
}

fn deploy_sample_pushed(c: &Conductor) {
    c.push_sample("1.0.0");
    deploy_sample(c, "svc", "1.0.0");
}

#[test]
fn a_worker_that_dies_at_start_fails_the_deploy_with_what_it_said() {
    let c = Conductor::start(&cells_yaml(23500, 1));
    c.push_sample("1.0.0");
    let yaml = "name: broken\nartifact: { kind: binary, name: sample-service, args: [\"--port\", \"not-a-port\"] }\ncells: { labels: { service: fga } }\nsteps:\n  - deploy: { health_timeout: 10s }\nwaves:\n  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100 }\n";
    let p = c.file("broken.yaml", yaml);
    c.cli_ok(&c.admin, &["pipeline", "submit", &p], 0);
    let out = c.cli_ok(
        &c.admin,
        &["train", "start", "broken", "--version", "1.0.0", "--wait"],
        1,
    );
    assert!(
        out.contains("before it was healthy: usage: sample-service --port N"),
        "{out}"
    );
    assert!(c.cell_pids().is_empty(), "nothing left running");
}

#[test]
fn a_deploy_of_the_version_a_cell_runs_restarts_nothing_and_is_logged() {
    let c = Conductor::start("cells:\n  - { id: a, region: us-east-1, shape: medium, port: 23141, labels: { service: fga } }\n");
    c.push_sample("1.0.0");
    deploy_sample(&c, "svc", "1.0.0");
    let before = served(&c, "sample-service");
    // As when a deploy runs again after a crash before the engine recorded
    // it: the cell already runs the version, so its processes stay.
    let id = c.start_train(&c.admin, "svc", "1.0.0");
    c.cli_ok(&c.admin, &["train", "wait", &id], 0);
    assert_eq!(served(&c, "sample-service"), before);
    let deploys = c.get(&c.admin, "/cells/deploys");
    let keys: Vec<&str> = deploys["deploys"]
        .as_array()
        .expect("deploys")
        .iter()
        .filter(|d| d["version"] == "1.0.0")
        .filter_map(|d| d["key"].as_str())
        .collect();
    assert_eq!(keys.len(), 2, "{deploys}");
    assert!(keys[1].starts_with(&id), "{keys:?}");
}
