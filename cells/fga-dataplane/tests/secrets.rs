//! Secrets come from the environment or private files, never the command
//! line; the data directory and the database files are private.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run `fga-dataplane serve` expecting it to refuse to start: its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fga-dataplane"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(args)
        .env_remove("FGA_ADMIN_KEY")
        .env_remove("FGA_AUTHN_PRESHARED_KEYS")
        .env_remove("FGA_DATABASE_URL")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(!status.success(), "{args:?} should be refused");
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
                .expect("stderr");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} started instead of being refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn secrets_on_the_command_line_are_refused() {
    let e = refused(&["--admin-key", "k"], &[]);
    assert!(
        e.contains("FGA_ADMIN_KEY") && e.contains("--admin-key-file"),
        "{e}"
    );
    let e = refused(&["--authn-preshared-keys", "k"], &[]);
    assert!(e.contains("FGA_AUTHN_PRESHARED_KEYS"), "{e}");
    let e = refused(
        &["--database-url", "postgres://fga:hunter2@127.0.0.1:1/fga"],
        &[],
    );
    assert!(
        e.contains("password") && e.contains("FGA_DATABASE_URL"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "the password is not repeated: {e}");
    // --help shows the file options, not the removed ones.
    let help = Command::new(env!("CARGO_BIN_EXE_fga-dataplane"))
        .args(["serve", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--admin-key-file") && help.contains("--authn-preshared-keys-file"));
    assert!(
        !help.contains("--admin-key ") && !help.contains("--authn-preshared-keys "),
        "{help}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_private_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = dir.path().join("keys");
    let admin = dir.path().join("admin.key");
    std::fs::write(&keys, "client-1\nclient-2\n").expect("write");
    std::fs::write(&admin, "adm-from-file\n").expect("write");
    // Readable by others: refused.
    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = refused(&["--admin-key-file", &admin.display().to_string()], &[]);
    assert!(e.contains("chmod 600"), "{e}");
    // Both the variable and the file: ambiguous, refused.
    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let e = refused(
        &["--admin-key-file", &admin.display().to_string()],
        &[("FGA_ADMIN_KEY", "other")],
    );
    assert!(e.contains("not both"), "{e}");
    let s = common::start(&[
        "--admin-key-file",
        &admin.display().to_string(),
        "--authn-preshared-keys-file",
        &keys.display().to_string(),
    ]);
    let http = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();
    let get = |key: &'static str| {
        http.get(format!("{}/stores", s.url))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(status(get("client-2").await.expect("get")), 200);
    assert_eq!(status(get("client-3").await.expect("get")), 401);
    let admin = |key: &'static str| {
        http.get(format!("{}/admin/rate-limits", s.url))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(status(admin("adm-from-file").await.expect("admin")), 200);
    assert_eq!(status(admin("client-1").await.expect("admin")), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_database_are_private() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    // An existing directory and database from before (too open): tightened.
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let db = data.join("fga.db");
    std::fs::write(&db, "").expect("db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let s = common::start(&["--data-dir", &data.display().to_string()]);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/stores", s.url))
        .json(&serde_json::json!({"name": "private"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(mode(&data), 0o700);
    for f in ["fga.db", "fga.db-wal", "fga.db-shm"] {
        let p = data.join(f);
        assert!(p.exists(), "{f} exists in WAL mode");
        assert_eq!(mode(&p), 0o600, "{f}");
    }
}
