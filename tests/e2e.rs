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
    boot_with(suite, scenario, |_| {})
}

/// As [`boot`], with `extra` adding files to the folder the container sees as /e2e.
fn boot_with(suite: &str, scenario: &str, extra: impl FnOnce(&std::path::Path)) -> Option<String> {
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
    copy_executable(std::path::Path::new(CORRAL), &inp.join("corral"));
    std::fs::copy(worker_py(), inp.join("worker.py")).unwrap();
    copy_executable(std::path::Path::new(&format!("{here}/{scenario}")), &inp.join("run"));
    std::fs::copy(format!("{here}/lib.sh"), inp.join("lib.sh")).unwrap();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/units/corral@.service"), inp.join("corral@.service")).unwrap();
    for (from, to) in [
        ("units/corral-alert@.service", "corral-alert@.service"),
        ("packaging/alert/alert", "alert"),
        ("packaging/alert/50-webhook", "50-webhook"),
    ] {
        std::fs::copy(format!("{}/{from}", env!("CARGO_MANIFEST_DIR")), inp.join(to)).unwrap();
    }
    extra(&inp);

    // A private mount namespace with its own /run and a private network (its own loopback), so
    // the container touches neither the host nor another test's container;
    // --volatile=overlay keeps the cached image pristine. Bounded: it powers off by itself.
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd && exec systemd-nspawn --boot --register=no --keep-unit --private-network -q \
         --volatile=overlay --bind-ro={}:/e2e --bind={}:/results -D {image}",
        inp.display(),
        out.display()
    );
    let run = Command::new("timeout").args(["-k", "10", "600", "unshare", "-m", "sh", "-c", &script]).output().unwrap();
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

/// Two tests that need the same image at once, into an empty cache (a fresh machine's first run):
/// one builds it under the lock, the other waits and uses it; neither removes what the other is
/// building, and nothing but the image and the lock is left in the cache.
#[test]
fn two_image_builds_at_once_into_an_empty_cache_both_succeed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (mmdebstrap)");
        return;
    }
    let cache = TempDir::new("e2e-cache");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/image.sh");
    let build = || {
        Command::new("bash")
            .arg(script)
            .arg("bookworm")
            .env("CORRAL_E2E_CACHE", cache.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run image.sh")
    };
    let (first, second) = (build(), build());
    let (first, second) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    for out in [&first, &second] {
        assert!(out.status.success(), "a build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let image = String::from_utf8_lossy(&first.stdout).trim().to_string();
    assert_eq!(image, String::from_utf8_lossy(&second.stdout).trim(), "both builds name the same image");
    let image = std::path::Path::new(&image);
    assert_eq!(image.parent(), Some(cache.path()), "the image is in CORRAL_E2E_CACHE");
    assert!(image.join(".complete").exists() && image.join("usr/lib/systemd/systemd").exists(), "{image:?}");
    // A link to /etc/systemd/system/e2e.service inside the image: not followed on the host.
    let enabled = image.join("etc/systemd/system/multi-user.target.wants/e2e.service");
    assert!(std::fs::symlink_metadata(&enabled).is_ok(), "e2e.service enabled in the image");
    let mut left: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let want = vec![".bookworm.lock".to_string(), image.file_name().unwrap().to_string_lossy().into_owned()];
    assert_eq!(left, want, "only the image and its lock are left");
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

/// The packages of two versions, built once for every package test: `v1` holds the current
/// version as signed apt and dnf repositories, `v2` holds it and a newer one (so an upgrade is
/// offered). Each folder has a VERSION file. Built with `packaging/build`, as users would.
fn packages() -> &'static (std::path::PathBuf, std::path::PathBuf) {
    static BUILT: std::sync::OnceLock<(std::path::PathBuf, std::path::PathBuf)> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let host_keys = rpm_keys();
        let dir = root.join("target/e2e-packages");
        let _ = std::fs::remove_dir_all(&dir);
        let (v1, v2) = (dir.join("v1"), dir.join("v2"));
        let version = env!("CARGO_PKG_VERSION");
        let next = format!("{version}.1~e2e");
        let build = |args: &[&str]| {
            let out =
                Command::new("bash").arg(root.join("packaging/build")).args(args).output().expect("packaging/build");
            assert!(
                out.status.success(),
                "packaging/build {args:?} failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        build(&["--out", v1.to_str().unwrap()]);
        std::fs::create_dir_all(&v2).unwrap();
        for entry in std::fs::read_dir(&v1).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".deb") || name.ends_with(".rpm") {
                std::fs::copy(entry.path(), v2.join(&name)).unwrap();
            }
        }
        // The newer version is the same code reporting another version: what an upgrade must
        // show is which binary serves afterwards.
        build(&["--version", &next, "--out", v2.to_str().unwrap(), "--no-lint"]);
        std::fs::write(v1.join("VERSION"), version).unwrap();
        std::fs::write(v2.join("VERSION"), &next).unwrap();
        // The build keeps its tools' state to itself: no key in the host's rpm database, no
        // gpg-agent left running for its keyring.
        assert_eq!(rpm_keys(), host_keys, "packaging/build changed the host's rpm keyring");
        let keyring = root.join("target/packaging-gpg");
        wait_until("no gpg-agent left running by packaging/build", TIMEOUT, || agents_for(&keyring).is_empty());
        (v1, v2)
    })
}

/// The public keys in the host's rpm database (none when rpm is not installed).
fn rpm_keys() -> String {
    Command::new("rpm")
        .args(["-q", "gpg-pubkey", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}\\n"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Live gpg-agent processes serving `homedir`.
fn agents_for(homedir: &std::path::Path) -> Vec<i32> {
    let want = homedir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_agent = args.first().is_some_and(|a| a.ends_with("gpg-agent"));
        if is_agent && args.contains(&want) && proc_state(pid) != Some('Z') {
            pids.push(pid);
        }
    }
    pids
}

fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().expect("run sh");
    assert!(out.status.success(), "{script}:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn only(dir: &std::path::Path, prefix: &str, suffix: &str) -> std::path::PathBuf {
    let found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .collect();
    assert_eq!(found.len(), 1, "{prefix}*{suffix} in {dir:?}: {found:?}");
    found[0].clone()
}

/// What a careful admin checks of a package: the .deb's Depends (dpkg-shlibdeps: libgcc-s1 too),
/// md5sums for `dpkg --verify` and debsums, a changelog entry for the version it carries; the
/// rpm's description as full as the .deb's, Requires(post/preun/postun) on systemd, the folders
/// it owns (so an erase leaves none behind), its changelog; an apt Release that lists only
/// files that exist, with their true hashes.
#[test]
fn the_packages_carry_what_package_managers_check() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (packaging/build installs its tools)");
        return;
    }
    let (v1, v2) = packages();
    let version = env!("CARGO_PKG_VERSION");
    let next = std::fs::read_to_string(v2.join("VERSION")).unwrap();
    let description = {
        let manifest: toml::Value =
            toml::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap())
                .unwrap();
        manifest["package"]["metadata"]["deb"]["extended-description"].as_str().unwrap().to_string()
    };
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    for (dir, v) in [(v1, version), (v2, next.as_str())] {
        let deb = only(dir, &format!("corral_{v}-1_"), ".deb");
        let deb = deb.display();
        let depends = sh(&format!("dpkg-deb -f {deb} Depends"));
        assert!(depends.contains("libc6 (>= ") && depends.contains("libgcc-s1"), "{v}: Depends: {depends}");
        // md5sums: every regular file but the conffiles, each with its true sum.
        let sums = sh(&format!("dpkg-deb -I {deb} md5sums"));
        let conffiles = sh(&format!("dpkg-deb -I {deb} conffiles"));
        let files = sh(&format!("dpkg-deb -c {deb} | awk '/^-/ {{ sub(/^\\.\\//, \"\", $6); print $6 }}' | sort"));
        let mut listed: Vec<&str> = sums.lines().map(|l| l.split_once("  ").expect("md5sum line").1).collect();
        listed.sort();
        let want: Vec<&str> =
            files.lines().filter(|f| !conffiles.lines().any(|c| c.trim_start_matches('/') == *f)).collect();
        assert_eq!(listed, want, "{v}: md5sums lists every file but the conffiles");
        assert!(conffiles.contains("/etc/corral/alert.env"), "{conffiles}");
        let tree = TempDir::new("deb-tree");
        sh(&format!("dpkg-deb -x {deb} {}", tree.path().display()));
        sh(&format!("cd {} && printf '%s' '{sums}' | md5sum --check --quiet", tree.path().display()));
        let changelog = sh(&format!("zcat {}/usr/share/doc/corral/changelog.Debian.gz", tree.path().display()));
        assert!(changelog.starts_with(&format!("corral ({v}-1) ")), "{v}: {changelog}");
        if v != version {
            assert!(words(&changelog).contains("not a release of its own"), "{changelog}");
            assert!(changelog.contains(&format!("\ncorral ({version}-1) ")), "the entries before it stay: {changelog}");
        }

        let rpm = only(&dir.join("dnf"), &format!("corral-{v}-1."), ".rpm");
        let rpm = rpm.display();
        let q = |fmt: &str| sh(&format!("rpm -qp --nosignature --qf '{fmt}' {rpm}"));
        assert_eq!(words(&q("%{DESCRIPTION}")), words(&description), "{v}: the rpm's description is the .deb's");
        let requires = q("[%{REQUIREFLAGS:deptype} %{REQUIRENAME}\\n]");
        for phase in ["post", "preun", "postun", "posttrans"] {
            assert!(requires.lines().any(|l| l == format!("{phase} systemd")), "{v}: Requires({phase}): {requires}");
        }
        let owned = q("[%{FILEMODES:perms} %{FILENAMES}\\n]");
        for folder in [
            "/etc/corral",
            "/etc/corral/alert.d",
            "/usr/libexec/corral",
            "/usr/share/doc/corral",
            "/usr/share/doc/corral/examples",
            "/usr/share/licenses/corral",
        ] {
            assert!(
                owned.lines().any(|l| l.starts_with('d') && l.ends_with(&format!(" {folder}"))),
                "{v}: {folder} not owned:\n{owned}"
            );
        }
        let changelog = sh(&format!("rpm -qp --nosignature --changelog {rpm}"));
        assert!(changelog.lines().next().unwrap_or("").ends_with(&format!(" - {v}-1")), "{v}: {changelog}");
    }
    // The apt repository's Release: the index files, not itself nor its signatures, each hash true.
    for dir in [v1, v2] {
        let apt = dir.join("apt");
        let release = std::fs::read_to_string(apt.join("Release")).unwrap();
        let section = release.split("SHA256:\n").nth(1).expect("a SHA256 section");
        let mut names = Vec::new();
        for line in section.lines().take_while(|l| l.starts_with(' ')) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (hash, size, name) = (fields[0], fields[1], fields[2]);
            let data = std::fs::read(apt.join(name)).unwrap_or_else(|e| panic!("Release lists {name}: {e}"));
            assert_eq!(data.len().to_string(), size, "{name}");
            let sum = sh(&format!("sha256sum {}", apt.join(name).display()));
            assert!(sum.starts_with(hash), "{name}: Release says {hash}, the file is {sum}");
            names.push(name.to_string());
        }
        assert!(names.iter().any(|n| n == "Packages"), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("Release")), "Release lists itself: {names:?}");
    }
}

/// Install from the signed apt repository, init a Node pool and a template instance, reload,
/// upgrade under load, postinst twice, remove, reinstall, purge; then the same with the rpm.
fn package_story(suite: &str) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (systemd-nspawn)");
        return;
    }
    let (v1, v2) = packages();
    let log = boot_with(suite, "inside-package.sh", |inp| {
        copy_dir(v1, &inp.join("v1"));
        copy_dir(v2, &inp.join("v2"));
    });
    if let Some(log) = log {
        for figure in log.lines().filter(|l| l.starts_with("FIGURE:")) {
            eprintln!("{suite}: {figure}");
        }
    }
}

#[test]
fn the_package_on_debian_12() {
    package_story("bookworm");
}

#[test]
fn the_package_on_debian_13() {
    package_story("trixie");
}

/// Debian's dnf against the signed dnf repository: it imports the key, verifies the repository
/// metadata's signature and offers both versions, newest first. Installing cannot work on a
/// Debian host: glibc, libgcc and /bin/sh belong to dpkg, no rpm repository provides them, and
/// dnf has no --nodeps (the booted E2E installs the rpm with `rpm -i --nodeps` instead).
#[test]
fn dnf_reads_the_signed_repository() {
    if !nix::unistd::geteuid().is_root() || Command::new("dnf").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and dnf");
        return;
    }
    let (_, v2) = packages();
    let repo = v2.join("dnf");
    let root = TempDir::new("dnfroot");
    let dnf = |verb: &[&str]| {
        Command::new("dnf")
            .args(["-y", "--releasever=1", "--setopt=reposdir=/dev/null", "--repo=corral"])
            .arg(format!("--installroot={}", root.path().display()))
            .arg(format!("--repofrompath=corral,file://{}", repo.display()))
            .args(["--setopt=corral.gpgcheck=1", "--setopt=corral.repo_gpgcheck=1"])
            .arg(format!("--setopt=corral.gpgkey=file://{}", repo.join("RPM-GPG-KEY-corral").display()))
            .args(verb)
            .output()
            .expect("run dnf")
    };
    let list = dnf(&["list", "--showduplicates", "corral"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{text}{}", String::from_utf8_lossy(&list.stderr));
    let next = std::fs::read_to_string(v2.join("VERSION")).unwrap();
    assert!(
        text.contains(&format!("{}-1", env!("CARGO_PKG_VERSION"))) && text.contains(&format!("{next}-1")),
        "{text}"
    );
    let install = dnf(&["install", "corral"]);
    let out = format!("{}{}", String::from_utf8_lossy(&install.stdout), String::from_utf8_lossy(&install.stderr));
    assert!(!install.status.success() && out.contains("nothing provides libc.so.6"), "{out}");
}

/// examples/docker/Dockerfile built and run with podman: corral as the container's PID 1
/// (tests/e2e/podman.sh: orphans reaped, one worker per CPU of the quota, drain on `podman stop`,
/// exit 0, JSON logs).
#[test]
fn the_docker_example_runs_under_podman_as_pid_1() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (podman)");
        return;
    }
    let (port, metrics) = (free_port(), free_port());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/podman.sh");
    let out = Command::new("timeout")
        .args(["-k", "10", "2400", "bash", script, &port.to_string(), &metrics.to_string()])
        .output()
        .expect("run tests/e2e/podman.sh");
    let log = String::from_utf8_lossy(&out.stdout);
    eprintln!("{log}");
    assert!(
        log.lines().last() == Some("E2E PASSED") && !log.contains("FAIL:"),
        "podman scenario:\n{log}\n--- stderr (exit {:?}) ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}
