//! End to end under a real, booted systemd (Debian bookworm in systemd-nspawn; see
//! tests/e2e/README.md): `corral init`, socket activation on the first connection, Type=notify
//! READY/STATUS, `systemctl reload` succeeding and failing, journald fields, clean stop.
//! The scenarios are tests/e2e/inside*.sh; images are built once by tests/e2e/image.sh. A second
//! scenario runs on Debian trixie (systemd 257) with `Type=notify-reload`.

mod common;

use std::process::Command;

use common::*;

/// Boot `suite` with `scenario` as /e2e/run; returns the scenario's log, or None when not root.
fn boot(suite: &str, scenario: &str) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (systemd-nspawn)");
        return None;
    }
    let here = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e");
    let image = Command::new("bash").arg(format!("{here}/image.sh")).arg(suite).output().expect("run image.sh");
    assert!(image.status.success(), "building the image failed:\n{}", String::from_utf8_lossy(&image.stderr));
    let image = String::from_utf8_lossy(&image.stdout).trim().to_string();

    let dir = TempDir::new(&format!("e2e-{suite}"));
    let (inp, out) = (dir.join("in"), dir.join("out"));
    std::fs::create_dir_all(&inp).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(CORRAL, inp.join("corral")).unwrap();
    std::fs::copy(worker_py(), inp.join("worker.py")).unwrap();
    std::fs::copy(format!("{here}/{scenario}"), inp.join("run")).unwrap();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/units/corral@.service"), inp.join("corral@.service")).unwrap();

    // A private mount namespace with its own /run and a private network (its own loopback), so
    // the container touches neither the host nor another test's container;
    // --volatile=overlay keeps the cached image pristine. Bounded: it powers off by itself.
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd && exec systemd-nspawn --boot --register=no --keep-unit --private-network -q \
         --volatile=overlay --bind-ro={}:/e2e --bind={}:/results -D {image}",
        inp.display(),
        out.display()
    );
    let run = Command::new("timeout").args(["-k", "10", "300", "unshare", "-m", "sh", "-c", &script]).output().unwrap();
    let log = std::fs::read_to_string(out.join("log")).unwrap_or_default();
    eprintln!("{log}");
    assert!(
        log.lines().last() == Some("E2E PASSED") && !log.contains("FAIL:"),
        "E2E scenario {scenario} on {suite}:\n{log}\n--- nspawn (exit {:?}) ---\n{}",
        run.status.code(),
        String::from_utf8_lossy(&run.stderr)
    );
    Some(log)
}

#[test]
fn the_users_story_under_a_booted_systemd() {
    boot("bookworm", "inside.sh");
}

#[test]
fn type_notify_reload_under_systemd_257() {
    if let Some(log) = boot("trixie", "inside-notify-reload.sh") {
        assert!(log.contains("systemd 257"), "{log}");
    }
}
