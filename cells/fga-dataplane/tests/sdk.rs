//! The official OpenFGA Python SDK (PyPI `openfga-sdk`) against the server:
//! it sends `context` with every query, and expects OpenFGA's errors. The
//! script is `tests/sdk/openfga_sdk_client.py`. Without the SDK the test is
//! skipped, except in CI (`.ci/run` installs it), where it fails.

mod common;

use std::process::Command;

fn sdk_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import openfga_sdk"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_python_sdk_works_against_the_server() {
    if !sdk_installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the SDK test: python3 -m pip install openfga-sdk"
        );
        eprintln!("openfga-sdk is not installed (pip install openfga-sdk): skipping");
        return;
    }
    let key = "sdk-test-key";
    let s = common::start_with(&[], &[("FGA_AUTHN_PRESHARED_KEYS", key)]);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openfga_sdk_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("FGA_API_URL", &s.url)
        .env("FGA_API_TOKEN", key)
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("sdk: ok"), "{text}");
}
