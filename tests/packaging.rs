//! Versions: `packaging/bump` changes everything that carries the version at once (Cargo.toml,
//! Cargo.lock, both changelogs), and `packaging/build` stops before building anything when
//! Cargo.toml was changed alone, naming the step that fixes it. Run on a copy of the files
//! those scripts and cargo read, so the checkout is never touched.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A copy of what cargo needs to read the manifest, and the packaging scripts.
fn checkout_copy() -> TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = TempDir::new("bump");
    for file in ["Cargo.toml", "Cargo.lock", "README.md", "examples/frameworks/axum.rs"] {
        let to = dir.join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root.join(file), to).unwrap();
    }
    for folder in ["src", "packaging", "units"] {
        copy_dir(&root.join(folder), &dir.join(folder));
    }
    dir
}

fn run(dir: &TempDir, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).current_dir(dir.path()).output().expect(program);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn read(dir: &TempDir, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

/// Cargo accepts the lock as it is (what `cargo build --locked` needs).
fn lock_agrees(dir: &TempDir) -> (bool, String) {
    run(dir, "cargo", &["tree", "--locked", "--offline", "--depth", "0"])
}

#[test]
fn a_version_bump_updates_everything_that_carries_the_version() {
    if Command::new("dpkg-parsechangelog").arg("--version").output().is_err() {
        eprintln!("skipped: needs dpkg-parsechangelog (dpkg-dev; scripts/test.sh installs it)");
        return;
    }
    let dir = checkout_copy();
    let (toml, lock) = (read(&dir, "Cargo.toml"), read(&dir, "Cargo.lock"));
    let current = env!("CARGO_PKG_VERSION");
    assert!(lock_agrees(&dir).0, "the copy starts consistent");

    // Cargo.toml changed by hand: the lock no longer agrees, and packaging/build says so before
    // building anything.
    let by_hand = toml.replacen(&format!("version = \"{current}\""), "version = \"9.9.9\"", 1);
    assert_ne!(by_hand, toml);
    std::fs::write(dir.join("Cargo.toml"), &by_hand).unwrap();
    assert!(!lock_agrees(&dir).0, "a stale lock is refused by --locked");
    let (ok, out) = run(&dir, "bash", &["packaging/build", "--no-lint", "--no-repo"]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("Cargo.toml says corral 9.9.9 but Cargo.lock records {current}")), "{out}");
    assert!(out.contains("packaging/bump VERSION") && out.contains("cargo update --workspace"), "{out}");
    assert!(!dir.join("target").exists(), "nothing was built");
    std::fs::write(dir.join("Cargo.toml"), &toml).unwrap();

    // One step bumps all four files, to the next minor version (NEXT) of the current one.
    let mut parts = current.split('.').map(|p| p.parse::<u64>().unwrap());
    let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
    let next = format!("{major}.{}.0", minor + 1);
    let older = format!("{major}.{minor}.9999");
    let (ok, out) = run(&dir, "bash", &["packaging/bump", &next, "A release made by the test suite."]);
    assert!(ok, "{out}");
    let bumped = read(&dir, "Cargo.toml");
    assert_eq!(bumped, toml.replacen(&format!("version = \"{current}\""), &format!("version = \"{next}\""), 1));
    let new_lock = read(&dir, "Cargo.lock");
    let changed: Vec<(&str, &str)> = lock.lines().zip(new_lock.lines()).filter(|(a, b)| a != b).collect();
    assert_eq!(
        changed,
        vec![(&*format!("version = \"{current}\""), &*format!("version = \"{next}\""))],
        "only corral's entry"
    );
    assert_eq!(lock.lines().count(), new_lock.lines().count());
    let (ok, out) = lock_agrees(&dir);
    assert!(ok, "the lock agrees after the bump: {out}");

    let debian = dir.join("packaging/debian/changelog");
    let field = |f: &str| {
        let (ok, out) = run(&dir, "dpkg-parsechangelog", &["-l", debian.to_str().unwrap(), "-S", f]);
        assert!(ok, "dpkg-parsechangelog: {out}");
        out.trim().to_string()
    };
    assert_eq!(field("Version"), format!("{next}-1"));
    assert!(field("Changes").contains("A release made by the test suite."), "{}", field("Changes"));
    // Every entry parses without a warning, and the older ones stay.
    let (ok, all) = run(&dir, "dpkg-parsechangelog", &["-l", debian.to_str().unwrap(), "--all"]);
    assert!(ok && !all.contains("warning"), "{all}");
    assert!(read(&dir, "packaging/debian/changelog").contains(&format!("\ncorral ({current}-1) ")), "{all}");

    let rpm = read(&dir, "packaging/rpm/changelog");
    let first = rpm.lines().next().unwrap();
    assert!(first.starts_with("* ") && first.ends_with(&format!(" - {next}-1")), "{first}");
    // rpmbuild rejects a %changelog whose weekday does not match its date.
    let date: Vec<&str> = first.split_whitespace().skip(1).take(4).collect();
    let (ok, weekday) = run(&dir, "date", &["-d", &date[1..].join(" "), "+%a"]);
    assert!(ok && weekday.trim() == date[0], "{first}: {weekday}");
    assert!(rpm.contains("- A release made by the test suite."), "{rpm}");
    assert!(rpm.contains(&format!(" - {current}-1\n")), "the older entries stay: {rpm}");

    // Refused: the same version again, an older one, something that is not a version.
    let (ok, out) = run(&dir, "bash", &["packaging/bump", &next]);
    assert!(!ok && out.contains(&format!("already says {next}")), "{out}");
    let (ok, out) = run(&dir, "bash", &["packaging/bump", &older]);
    assert!(!ok && out.contains(&format!("older than the current {next}")), "{out}");
    let (ok, out) = run(&dir, "bash", &["packaging/bump", "1.2"]);
    assert!(!ok && out.contains("not a version like 1.2.3"), "{out}");
    assert_eq!(read(&dir, "Cargo.toml"), bumped, "a refused bump changes nothing");
}
