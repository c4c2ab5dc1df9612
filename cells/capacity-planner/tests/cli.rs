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
