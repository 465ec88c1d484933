//! examples/kubernetes: valid against the Kubernetes schemas (kubernetes-validate, strict), and
//! its timings, probes and ports agree with the corral config it carries (tests/kubernetes/check.py).

#[test]
fn the_kubernetes_example_is_valid_and_consistent() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("python3")
        .arg(format!("{root}/tests/kubernetes/check.py"))
        .args(["--corral", env!("CARGO_BIN_EXE_corral")])
        .output()
        .expect("run tests/kubernetes/check.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok: 4 objects valid for Kubernetes"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
}
