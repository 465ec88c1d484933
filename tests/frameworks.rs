//! Every framework recipe of docs/frameworks.md under corral, through rolling reloads with a
//! new-connection client and a keep-alive client that never retries: no recipe loses a
//! request. The work is in tests/frameworks/run.py (it installs pinned framework versions into
//! target/frameworks-cache/ and reports the stock shutdown code next to each recipe).
//!
//! `CORRAL_FRAMEWORKS=express,go` narrows it; `CORRAL_FRAMEWORKS=none` skips it (for quick
//! local runs: CI and the README's test command run it whole).

use std::process::Command;

#[test]
fn every_framework_recipe_loses_no_request_through_rolling_reloads() {
    let only = std::env::var("CORRAL_FRAMEWORKS").unwrap_or_default();
    if only == "none" {
        eprintln!("CORRAL_FRAMEWORKS=none: skipped");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let json = format!("{root}/target/frameworks/results.json");
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{root}/tests/frameworks/run.py")).args([
        "--corral",
        env!("CARGO_BIN_EXE_corral"),
        "--json",
        &json,
    ]);
    if !only.is_empty() {
        cmd.args(["--only", &only]);
    }
    let status = cmd.status().expect("run tests/frameworks/run.py");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the script writes its results")).expect("JSON");
    let rows = results["rows"].as_array().expect("rows");
    assert!(!rows.is_empty());
    for row in rows.iter().filter(|r| r["variant"] == "recipe") {
        assert!(row.get("error").is_none(), "{row}");
        assert_eq!(row["reloads_ok"], row["reloads"], "{row}");
        for mode in ["close", "keepalive"] {
            assert!(row[mode]["requests"].as_u64().unwrap_or(0) > 0, "{row}");
            assert_eq!(row[mode]["failed"], 0, "{row}");
        }
    }
    assert!(status.success(), "tests/frameworks/run.py failed: see its output above");
}
