//! `corral init` writes a config that `corral check` accepts and units that systemd's own
//! verifier accepts; the shipped templates verify too.

mod common;

use std::process::Command;

use common::*;

fn init(root: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args =
        vec!["init", "myapi", "--listen", "3000", "--listen", "unix:/run/myapi/http.sock", "--instances", "4"];
    args.extend_from_slice(extra);
    let root = root.to_str().unwrap();
    args.extend_from_slice(&["--root", root, "--", "node", "/srv/myapi/index.js"]);
    corral(&args)
}

fn verify(files: &[std::path::PathBuf]) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(files)
        .output()
        .expect("systemd-analyze is installed by scripts/test.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify: {text}");
}

#[test]
fn init_writes_a_valid_config_and_units_systemd_accepts() {
    let root = TempDir::new("init");
    let out = init(root.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("systemctl enable --now myapi.socket") && stdout.contains("corral status myapi"),
        "{stdout}"
    );
    let cfg = root.join("etc/corral/myapi.toml");
    let check = corral(&["check", "-c", cfg.to_str().unwrap()]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(String::from_utf8_lossy(&check.stdout).contains("pool \"myapi\", 4 workers of `node /srv/myapi/index.js`"));
    let units = root.join("etc/systemd/system");
    let socket = std::fs::read_to_string(units.join("myapi.socket")).unwrap();
    assert!(socket.contains("ListenStream=3000\nListenStream=/run/myapi/http.sock\n"), "{socket}");
    let service = std::fs::read_to_string(units.join("myapi.service")).unwrap();
    assert!(service.contains(&format!("ExecReload={} reload myapi", std::fs::canonicalize(CORRAL).unwrap().display())));
    verify(&[units.join("myapi.socket"), units.join("myapi.service")]);

    // Never overwrites without --force; --dry-run writes nothing.
    let again = init(root.path(), &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists; use --force"));
    assert!(init(root.path(), &["--force"]).status.success());
    let dry = TempDir::new("init-dry");
    let out = init(dry.path(), &["--dry-run"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("[Socket]"));
    assert!(!dry.join("etc").exists());
}

#[test]
fn bad_init_arguments_are_explained() {
    let root = TempDir::new("init-bad");
    let out = corral(&["init", "myapi", "--listen", "nowhere", "--root", root.path().to_str().unwrap(), "--", "node"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid listen address \"nowhere\""));
}

#[test]
fn the_shipped_unit_templates_verify() {
    let dir = TempDir::new("units");
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/units");
    // The verifier wants ExecStart's binary to exist: point it at the one just built.
    let service =
        std::fs::read_to_string(format!("{units}/corral@.service")).unwrap().replace("/usr/bin/corral", CORRAL);
    std::fs::write(dir.join("corral@.service"), service).unwrap();
    std::fs::copy(format!("{units}/corral@.socket"), dir.join("corral@.socket")).unwrap();
    verify(&[dir.join("corral@myapi.socket"), dir.join("corral@myapi.service")]);
}
