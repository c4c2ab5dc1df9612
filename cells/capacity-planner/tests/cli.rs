//! The `capacity-planner` binary on the repository's shapes, the local
//! cells and the example usage file.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new(env!("CARGO_BIN_EXE_capacity-planner"))
        .current_dir(root)
        .args(args)
        .output()
        .expect("run capacity-planner");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const USAGE: &str = "deploy/local/usage.example.yaml";

#[test]
fn plan_reports_every_cell_and_the_fleet() {
    let (ok, out, err) = run(&["plan", "--usage", USAGE, "--horizon-days", "0.1", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let cells = v["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 6);
    let hot = cells
        .iter()
        .find(|c| c["cell"] == "use1-a")
        .expect("use1-a");
    assert_eq!(hot["action"], "grow");
    assert_eq!(hot["at_risk"], true);
    assert_eq!(v["at_risk"], serde_json::json!(["use1-a"]));
    assert_eq!(v["cost_now"], 11.0);
    let (ok, out, _) = run(&["plan", "--usage", USAGE, "--horizon-days", "0.1"]);
    assert!(
        ok && out.contains("AT RISK") && out.contains("fleet: cost 11 now"),
        "{out}"
    );
}

#[test]
fn place_explains_its_choice_or_stamps_a_cell() {
    let (ok, out, err) = run(&[
        "place",
        "--usage",
        USAGE,
        "--region",
        "eu-west-1",
        "--expected-rps",
        "500",
        "--expected-tuples",
        "100000",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("place on euw1-a") && out.contains("why: best fit"),
        "{out}"
    );
    let (ok, out, _) = run(&[
        "place",
        "--usage",
        USAGE,
        "--region",
        "us-west-2",
        "--expected-rps",
        "500",
        "--expected-tuples",
        "100000",
    ]);
    assert!(
        ok && out.contains("stamp a new small cell in us-west-2"),
        "{out}"
    );
}

#[test]
fn bad_input_is_refused_clearly() {
    let dir = std::env::temp_dir().join(format!("cp-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("usage.yaml");
    std::fs::write(&bad, "tenants:\n  - tenant: x\n    cel: a\n").expect("write");
    let (ok, _, err) = run(&["plan", "--usage", bad.to_str().expect("path")]);
    assert!(!ok);
    assert!(
        err.contains("usage.yaml:3:5") && err.contains("unknown field `cel`"),
        "{err}"
    );
    let (ok, _, err) = run(&["plan", "--usage", USAGE, "--headroom", "1.5"]);
    assert!(!ok && err.contains("--headroom"), "{err}");
    let (ok, _, err) = run(&[
        "place",
        "--region",
        "eu-west-1",
        "--expected-rps",
        "1e12",
        "--expected-tuples",
        "1",
    ]);
    assert!(!ok && err.contains("no shape can hold"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rebalance_names_the_cells_at_risk_it_cannot_relieve() {
    let (ok, plan, err) = run(&["plan", "--usage", USAGE]);
    assert!(ok, "{err}");
    assert!(plan.contains("at risk: use1-a, apse2-b"), "{plan}");
    let (ok, out, err) = run(&["rebalance", "--usage", USAGE]);
    assert!(ok, "{err}");
    for cell in ["use1-a", "apse2-b"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("unresolved {cell} ")) && l.contains("forecast")),
            "{cell} is at risk in the plan but not in rebalance:\n{out}"
        );
    }
    assert!(!out.contains("within its headroom"), "{out}");
}

#[test]
fn import_creates_a_private_sqlite_database_from_a_url() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("new.db");
    // sqlite:///ABSOLUTE/PATH, as the README writes it.
    let url = format!("sqlite://{}", db.display());
    let (ok, out, err) = run(&["import", "--usage", USAGE, "--database-url", &url]);
    assert!(ok, "{err}");
    assert!(out.contains("imported 8 samples of 4 tenants"), "{out}");
    let mode = std::fs::metadata(&db)
        .expect("created")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // Again: the samples replace themselves, the file is reused.
    let (ok, out, err) = run(&["import", "--usage", USAGE, "--database-url", &url]);
    assert!(ok && out.contains("imported 8 samples"), "{out}{err}");
    // A directory that does not exist is named, not created.
    let (ok, _, err) = run(&[
        "import",
        "--usage",
        USAGE,
        "--database-url",
        &format!("sqlite://{}/nope/new.db", dir.path().display()),
    ]);
    assert!(!ok && err.contains("does not exist"), "{err}");
}

#[test]
fn secrets_are_refused_on_the_command_line() {
    for args in [
        // (--interval-secs 0 makes an old build that took the token exit
        // instead of serving.)
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--interval-secs",
            "0",
            "--token",
            "0123456789abcdef0123",
        ][..],
        &["serve", "--fga-admin-key", "0123456789abcdef0123"][..],
        &[
            "import",
            "--usage",
            USAGE,
            "--database-url",
            "postgres://planner:hunter2@127.0.0.1:1/capacity",
        ][..],
    ] {
        let (ok, _, err) = run(args);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains("`ps`"), "{args:?}: {err}");
        assert!(!err.contains("0123456789abcdef0123") && !err.contains("hunter2"));
    }
}

/// The status code of `GET /v1/usage` at `addr`.
fn status(addr: &str, token: Option<&str>) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET /v1/usage HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// `serve` with its token in a file: a file others may read is refused; a
/// private one works, and the data directory and database are private.
#[test]
fn serve_takes_its_token_from_a_private_file_and_keeps_its_data_private() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("token");
    std::fs::write(&token, "file-token-0123456789\n").expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let data = dir.path().join("data");
    let serve = |extra: &[&str]| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let mut c = Command::new(env!("CARGO_BIN_EXE_capacity-planner"));
        c.current_dir(root)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .arg("--token-file")
            .arg(&token)
            .args(extra)
            .env_remove("CAPACITY_TOKEN")
            .env_remove("CAPACITY_DATABASE_URL");
        c
    };
    let out = serve(&[]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut child = serve(&[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let line = BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    let url = line
        .strip_prefix("capacity-planner listening on ")
        .and_then(|r| r.split_whitespace().next())
        .map(String::from);
    let answer = url.as_ref().map(|u| {
        let addr = u.trim_start_matches("http://");
        (
            status(addr, Some("file-token-0123456789")),
            status(addr, None),
        )
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(url.is_some(), "serve did not start: {line}");
    assert_eq!(answer, Some((Some(200), Some(401))));
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("capacity.db")), 0o600);
}
