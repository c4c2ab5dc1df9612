//! The `.fga.yaml` regression cases (found by the differential test, with
//! OpenFGA's answers as expectations) pass on our engine.

#[tokio::test]
async fn regression_files_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("regressions dir").flatten() {
        let s = fga_dataplane::modeltest::run_file(&e.path())
            .await
            .expect("runs");
        assert!(s.passed(), "{}: {:?}", e.path().display(), s.failures);
        n += 1;
    }
    assert!(n >= 2, "expected the regression files in {}", dir.display());
}

#[test]
fn implicit_tuples_are_refused_like_openfga() {
    let m = fga_dataplane::dsl::parse("model\n  schema 1.1\ntype user\ntype group\n  relations\n    define member: [user, group#member]\n").expect("model");
    let t = fga_dataplane::engine::TupleKey::new("group:a", "member", "group:a#member");
    let e = fga_dataplane::validate::tuple(&m, &t).expect_err("implicit");
    assert!(e.message.contains("implicit"), "{e}");
    let ok = fga_dataplane::engine::TupleKey::new("group:a", "member", "group:b#member");
    assert!(fga_dataplane::validate::tuple(&m, &ok).is_ok());
}
