//! `corral upgrade` with real processes: the master re-executes the binary now at its path,
//! keeping its pid and every worker, under load; refusals leave the pool untouched; what happens
//! around the exec (a worker dying, a watchdog deadline) is handled by the new image.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use nix::sys::signal::Signal;

/// A pool started from a copy of the binary at `DIR/corral`, the path an upgrade executes.
struct Pool {
    pool: TestPool,
    exe: PathBuf,
}

impl std::ops::Deref for Pool {
    type Target = TestPool;
    fn deref(&self) -> &TestPool {
        &self.pool
    }
}

impl std::ops::DerefMut for Pool {
    fn deref_mut(&mut self) -> &mut TestPool {
        &mut self.pool
    }
}

fn start(tag: &str, args: &str, extra: &str) -> Pool {
    let dir = TempDir::new(&format!("{tag}-bin"));
    let exe = dir.join("corral");
    copy_executable(Path::new(CORRAL), &exe);
    let opts = Options { binary: Some(exe.to_string_lossy().into_owned()), ..Options::default() };
    let pool = TestPool::start_with(tag, args, extra, opts);
    std::mem::forget(dir); // the binary's folder lives as long as the test process
    Pool { pool, exe }
}

impl Pool {
    /// Replace the binary at the master's path the way a package does (a new file renamed over
    /// the old one), with `content`.
    fn install(&self, content: &[u8], mode: u32) {
        let tmp = self.exe.with_extension("new");
        write_executable(&tmp, content, mode);
        std::fs::rename(&tmp, &self.exe).unwrap();
    }
    /// The file the master's process runs is the one now at its path.
    fn runs_current_file(&self) -> bool {
        let running = std::fs::metadata(format!("/proc/{}/exe", self.m.pid())).unwrap();
        let current = std::fs::metadata(&self.exe).unwrap();
        (running.dev(), running.ino()) == (current.dev(), current.ino())
    }
}

fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

/// Two different binaries: the build under test, and the same with a marker appended (ELF
/// loaders ignore trailing bytes), so that every upgrade really switches files.
fn builds() -> (Vec<u8>, Vec<u8>) {
    let a = std::fs::read(CORRAL).unwrap();
    let mut b = a.clone();
    b.extend_from_slice(b"\n-- corral upgrade test build B --\n");
    (a, b)
}

fn upgrade_under_load(keep_alive: bool) {
    let mut p = start(if keep_alive { "upka" } else { "upnew" }, "", "");
    let workers = p.m.wait_workers(2);
    let master = p.m.pid();
    // A status request samples the workers' processes, which opens the files the sampler keeps
    // (each process's statm and children list): count from there.
    p.status();
    let fds = fd_count(master);
    let first_watcher = watcher_of(master);
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(p.addr, 4, keep_alive, stop.clone());
    let (a, b) = builds();
    for i in 0..20 {
        p.install(if i % 2 == 0 { &b } else { &a }, 0o755);
        let (code, out, err) = p.m.cli(&["upgrade", "pool"]);
        assert_eq!(code, Some(0), "upgrade {i}: {out}{err}\n{}", p.m.log_text());
        assert!(out.contains("upgraded in place") && out.contains("2 of 2 workers kept"), "{out}");
        assert!(p.runs_current_file(), "upgrade {i}: the master does not run the new file");
        assert_eq!(p.m.pid(), master);
        assert_eq!(p.m.workers(), workers, "upgrade {i}: the workers changed");
    }
    stop.store(true, Ordering::SeqCst);
    let r = load.join().unwrap();
    eprintln!("20 upgrades, keep-alive {keep_alive}: {} ok, {} failed, {:?}", r.ok, r.failed, r.errors);
    assert!(r.ok > 100, "too little load: {r:?}");
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert_eq!(p.status()["upgrades"], 20);
    // A control connection of the last status request may still be closing: wait for it.
    wait_until(&format!("the master's descriptors back to {fds}"), TIMEOUT, || fd_count(master) <= fds);
    // The two workers and the one watcher of the master's death, handed over by every upgrade.
    let watcher = children(master).into_iter().filter(|c| is_watcher(*c)).collect::<Vec<_>>();
    assert_eq!(children(master).len(), 3, "the master's children are not flat: {:?}", children(master));
    assert_eq!(watcher, [first_watcher], "one watcher, kept across upgrades");
    // The new image still supervises: it reloads and stops cleanly.
    let (code, _, err) = p.m.cli(&["reload", "pool"]);
    assert_eq!(code, Some(0), "{err}");
    p.m.signal(Signal::SIGTERM);
    assert_eq!(p.m.wait_exit(), Some(0));
}

#[test]
fn twenty_upgrades_under_load_with_new_connections_keep_every_worker() {
    upgrade_under_load(false);
}

#[test]
fn twenty_upgrades_under_load_with_keep_alive_clients_keep_every_worker() {
    upgrade_under_load(true);
}

#[test]
fn sigusr2_upgrades_too() {
    let p = start("usr2", "", "");
    let workers = p.m.wait_workers(2);
    let mut p = p;
    p.m.signal(Signal::SIGUSR2);
    wait_until("the new image answers", TIMEOUT, || p.status()["upgrades"] == 1);
    // systemd heard it: RELOADING=1, "upgrading", then READY=1 and the new version.
    p.m.systemd().wait("RELOADING=1");
    p.m.systemd().wait("STATUS=upgrading: corral");
    p.m.systemd().wait_status(&format!("upgraded to corral {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(p.m.wait_workers(2), workers);
    assert!(p.m.log_text().contains("took over from corral"), "{}", p.m.log_text());
}

#[test]
fn refusals_leave_the_pool_untouched() {
    let p = start("refuse", ", \"--ready-after\", \"4000\"", "[ready]\ntimeout = \"30s\"\n");
    let workers = p.m.wait_workers(2);
    wait_until("ready", TIMEOUT, || p.status()["ready"] == 2);
    let before = ino(&p.exe);
    let untouched = |why: &str| {
        assert_eq!(p.m.workers(), workers, "{why}: workers changed");
        assert_eq!(p.status()["upgrades"], 0, "{why}");
        assert!(get(p.addr).is_ok(), "{why}: the pool stopped answering");
    };
    // A binary that cannot read the state (an incompatible version says so and exits 1).
    let original = std::fs::read(&p.exe).unwrap();
    p.install(b"#!/bin/sh\necho \"this corral cannot read state format 1\" >&2\nexit 1\n", 0o755);
    let (code, _, err) = p.m.cli(&["upgrade", "pool"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("upgrade refused") && err.contains("this corral cannot read state format 1"), "{err}");
    untouched("incompatible binary");
    // Not executable.
    p.install(&original, 0o644);
    let (code, _, err) = p.m.cli(&["upgrade", "pool"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot run the new binary") && err.contains("Permission denied"), "{err}");
    untouched("non-executable binary");
    // Missing.
    std::fs::remove_file(&p.exe).unwrap();
    let (code, _, err) = p.m.cli(&["upgrade", "pool"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("No such file or directory"), "{err}");
    untouched("missing binary");
    // During a reload (new workers take 4s to be ready).
    p.install(&original, 0o755);
    assert_ne!(ino(&p.exe), before);
    let (code, _, err) = p.m.cli(&["reload", "pool", "--no-wait"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = p.m.cli(&["upgrade", "pool"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("a reload to generation 2 is in progress"), "{err}");
    assert_eq!(p.status()["upgrades"], 0);
    // After it, the upgrade goes through.
    wait_until("the reload done", TIMEOUT, || p.status()["generation"] == 2 && p.status()["reloading"] == false);
    let (code, out, err) = p.m.cli(&["upgrade", "pool"]);
    assert_eq!(code, Some(0), "{out}{err}");
}

#[test]
fn a_worker_that_dies_around_the_exec_is_reaped_and_replaced_by_the_new_image() {
    let p = start("upkill", "", "");
    let workers = p.m.wait_workers(2);
    let (_, b) = builds();
    p.install(&b, 0o755);
    // Killed right before the upgrade: its exit is reaped by one image or the other.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(workers[0]), Signal::SIGKILL).unwrap();
    let (code, out, err) = p.m.cli(&["upgrade", "pool"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_until("the dead worker replaced", TIMEOUT, || {
        let now = p.m.workers();
        now.len() == 2 && !now.contains(&workers[0]) && now.contains(&workers[1])
    });
    wait_until("no zombie", TIMEOUT, || children(p.m.pid()).iter().all(|c| proc_state(*c) != Some('Z')));
    assert_eq!(p.status()["restarts_by_reason"]["crash"], 1);
}

#[test]
fn a_watchdog_deadline_and_the_counters_survive_the_upgrade() {
    // Slot workers ping, then stop pinging 1.5s after ready: the watchdog (1s) must fire in the
    // new image, from the deadline the old one set.
    let p = start("upwd", ", \"--watchdog\", \"--stop-pinging-after\", \"1500\"", "[watchdog]\ntimeout = \"1s\"\n");
    p.m.wait_workers(2);
    let (code, out, err) = p.m.cli(&["upgrade", "pool"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_until("the silent workers aborted by the new image", TIMEOUT, || {
        p.status()["restarts_by_reason"]["watchdog"].as_u64().unwrap_or(0) >= 2
    });
    let s = p.status();
    assert_eq!(s["upgrades"], 1);
    assert!(p.m.log_text().contains("no WATCHDOG=1 for 1s"), "{}", p.m.log_text());
}
