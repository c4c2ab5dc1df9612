//! End-to-end: identities and audit through the real `conductor` binary —
//! least-privilege roles, the token life cycle, the audit chain's verify,
//! pipeline revisions that wait for an approver, and uploads refused
//! before their body is read.

use e2e::{cells_yaml, Conductor};
use serde_json::json;
use std::io::{Read, Write};
use std::time::Duration;

const GATED: &str = "name: svc\nartifact: { kind: command, name: svc }\ncells: { labels: { service: fga } }\nsteps:\n  - command: { run: \"true\" }\nwaves:\n  - { name: canary, cells: 1 }\n  - { name: rest, percent: 100, approval: { group: release-managers } }\n";

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn tokens_roles_revisions_and_the_audit_chain_from_the_cli() {
    // No cell is deployed to: the ports are never bound.
    let c = Conductor::start_with(&cells_yaml(23900, 1), &["--planner", "off"]);
    let dana = c.token("dana", "developer", &[]);
    let dev2 = c.token("dev2", "developer", &[]);
    let alice = c.token("alice", "approver", &["release-managers"]);
    let out = c.cli(
        &c.admin,
        &[
            "token",
            "create",
            "--name",
            "build",
            "--role",
            "ci",
            "--expires",
            "30d",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ci = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(stderr(&out).contains("expires"), "{}", stderr(&out));

    // CI starts trains; it may not stop them.
    let p = c.file("svc.yaml", GATED);
    c.cli_ok(&dana, &["pipeline", "submit", &p], 0);
    let id = c.start_train(&ci, "svc", "1.0");
    let o = c.cli(&ci, &["train", "cancel", &id]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("role ci may not"), "{}", stderr(&o));
    c.cli_ok(&dana, &["train", "cancel", &id], 0);

    // Removing the gate waits for an approver of release-managers.
    let open = c.file(
        "open.yaml",
        &GATED.replace(", approval: { group: release-managers }", ""),
    );
    let out = c.cli_ok(&dev2, &["pipeline", "submit", &open], 0);
    assert!(
        out.contains("revision 2: waiting for an approval; trains still use revision 1"),
        "{out}"
    );
    assert!(out.contains("release-managers"), "{out}");
    let diff = c.cli_ok(&dana, &["pipeline", "diff", "svc"], 0);
    assert!(diff.contains("pending"), "{diff}");
    assert!(
        diff.contains("-  - { name: rest, percent: 100, approval: { group: release-managers } }")
            && diff.contains("+  - { name: rest, percent: 100 }"),
        "{diff}"
    );
    let o = c.cli(&dev2, &["pipeline", "approve", "svc", "2"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a developer (and the author) may not approve"
    );
    let out = c.cli_ok(
        &alice,
        &["pipeline", "approve", "svc", "2", "--reason", "ok"],
        0,
    );
    assert!(out.contains("in effect"), "{out}");
    let revs = c.cli_ok(&dana, &["pipeline", "revisions", "svc"], 0);
    assert!(revs.contains("2*") && revs.contains("approved"), "{revs}");

    // Tokens: listed, revoked.
    let list = c.cli_ok(&c.admin, &["token", "list"], 0);
    for name in ["dana", "dev2", "alice", "build"] {
        assert!(list.contains(name), "{list}");
    }
    assert!(!list.contains("cdt_"), "{list}");
    c.cli_ok(
        &c.admin,
        &["token", "revoke", "dana", "--reason", "left the team"],
        0,
    );
    let o = c.cli(&dana, &["pipeline", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("revoked"), "{}", stderr(&o));
    let log = std::fs::read_to_string(c.dir.path().join("server.log")).unwrap_or_default();
    assert!(
        log.contains("refused authentication") && log.contains("dana"),
        "{log}"
    );
    assert!(!log.contains(&dana), "a token in the server log");

    // The audit chain verifies; its head is an anchor; a wrong anchor fails.
    let out = c.cli_ok(&c.admin, &["audit", "verify"], 0);
    assert!(out.contains("audit log intact"), "{out}");
    let head = out
        .lines()
        .find_map(|l| l.strip_prefix("head: "))
        .expect("head")
        .to_string();
    c.cli_ok(&c.admin, &["audit", "verify", "--anchor", &head], 0);
    let forged = format!(
        "{}:{}",
        head.split(':').next().unwrap_or("1"),
        "0".repeat(64)
    );
    let out = c.cli_ok(&c.admin, &["audit", "verify", "--anchor", &forged], 1);
    assert!(out.contains("NOT in the chain"), "{out}");
    let audit = c.cli_ok(&c.admin, &["audit"], 0);
    for needle in [
        "token.revoke",
        "pipeline.approve",
        "train.cancel",
        "train.start",
    ] {
        assert!(audit.contains(needle), "{needle}: {audit}");
    }
    // CI may not read it.
    assert_eq!(c.cli(&ci, &["audit"]).status.code(), Some(2));
}

/// Send a PUT that announces 300 MiB, send 1 MiB of it, and read the
/// answer: the server answers without waiting for the rest.
fn announce_upload(url: &str, token: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    // A liveness bound, not a timing assertion: a server that waited for
    // the whole body would never answer.
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let head = format!(
        "PUT /api/v1/artifacts/big/1.0 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        300 * 1024 * 1024
    );
    s.write_all(head.as_bytes()).expect("head");
    let _ = s.write_all(&vec![0u8; 1024 * 1024]);
    let mut buf = [0u8; 512];
    let n = s
        .read(&mut buf)
        .expect("an answer before the body was sent");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn an_upload_by_a_role_that_may_not_push_is_refused_unread() {
    let c = Conductor::start_with(&cells_yaml(23800, 1), &["--planner", "off"]);
    let approver = c.token("alice", "approver", &["release-managers"]);
    let answer = announce_upload(&c.url, &approver);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = announce_upload(&c.url, "cdt_unknown");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // Nothing was stored.
    let v = c.get(&c.admin, "/artifacts");
    assert_eq!(v["artifacts"], json!([]));
}
