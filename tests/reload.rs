//! Rolling reloads with real processes: zero failed requests under load, rollback of a broken
//! release, refusal of a bad config, new releases behind a `current` symlink, coalescing.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use nix::sys::signal::Signal;

fn reload_under_load(keep_alive: bool) {
    let mut p = TestPool::start(if keep_alive { "loadka" } else { "loadnew" }, "", "[reload]\nbatch = 1\n");
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(p.addr, 4, keep_alive, stop.clone());
    for release in 2..=4 {
        p.rewrite("instances = 2\n", &format!("instances = 2\nenv = {{ RELEASE = \"{release}\" }}\n"));
        p.reload();
        p.m.systemd().wait_status(&format!("2/2 workers ready · generation {release}"));
        p.rewrite(&format!("env = {{ RELEASE = \"{release}\" }}\n"), "");
    }
    stop.store(true, Ordering::SeqCst);
    let r = load.join().unwrap();
    eprintln!("keep_alive={keep_alive}: {r:?}");
    assert_eq!(r.failed, 0, "failed requests during 3 rolling reloads: {:?}", r.errors);
    assert!(r.ok > 100, "the load loop ran ({} requests)", r.ok);
    assert!(r.pids.len() >= 4, "requests were served by several generations of workers: {:?}", r.pids);
    // The reload is done once the old workers were told to stop; each stops accepting a few
    // milliseconds later. Once they are gone, the new release answers.
    p.m.wait_workers(2);
    assert!(get(p.addr).unwrap().contains("generation 4 release 4"));
}

#[test]
fn reload_under_load_fails_no_request_with_a_new_connection_per_request() {
    reload_under_load(false);
}

#[test]
fn reload_under_load_fails_no_request_with_keep_alive_clients() {
    reload_under_load(true);
}

#[test]
fn reload_tells_systemd_reloading_then_ready() {
    let mut p = TestPool::start("notify", "", "");
    p.rewrite("instances = 2\n", "instances = 2\nenv = { RELEASE = \"2\" }\n");
    p.reload();
    let msg = p.m.systemd().wait("RELOADING=1");
    assert!(msg.lines().any(|l| l.starts_with("MONOTONIC_USEC=") && l[15..].parse::<u64>().is_ok()), "{msg}");
    assert!(p.answers().iter().all(|a| a.contains("generation 2 release 2")));
}

#[test]
fn a_broken_release_is_rolled_back_and_the_old_generation_keeps_serving() {
    let mut p = TestPool::start("broken", ", \"--fail-if-env\", \"BROKEN\"", "");
    let old = p.m.wait_workers(2);
    p.rewrite("instances = 2\n", "instances = 2\nenv = { BROKEN = \"yes\" }\n");
    p.reload();
    let status = p.m.systemd().wait_status("last reload failed");
    assert!(status.starts_with("2/2 workers ready · generation 1 · "), "{status}");
    assert!(status.contains("of generation 2 exited with exit code 4 before it was ready"), "{status}");
    assert_eq!(p.m.wait_workers(2), old, "the same workers keep serving");
    assert!(p.answers().iter().all(|a| a.contains("generation 1")));
    assert!(p.m.log_text().contains("pool[0]: broken release: BROKEN is set"));
}

#[test]
fn an_invalid_config_on_reload_changes_nothing() {
    let mut p = TestPool::start("invalid", "", "");
    let old = p.m.wait_workers(2);
    p.rewrite("instances = 2\n", "instances = 0\n");
    p.reload();
    let status = p.m.systemd().wait_status("last reload failed");
    assert!(status.contains("pool.toml:3:13: instances must be at least 1"), "{status}");
    assert!(status.starts_with("2/2 workers ready · generation 1"), "{status}");
    assert_eq!(p.m.wait_workers(2), old);
    assert!(p.m.running());
    p.answers();
}

#[test]
fn a_reload_follows_a_current_symlink_to_the_new_release() {
    let dir = TempDir::new("releases");
    for r in ["r1", "r2"] {
        std::fs::create_dir_all(dir.join(r)).unwrap();
        std::fs::copy(worker_py(), dir.join(r).join("worker.py")).unwrap();
        std::fs::write(dir.join(r).join("RELEASE"), r).unwrap();
    }
    let current = dir.join("current");
    std::os::unix::fs::symlink(dir.join("r1"), &current).unwrap();
    let port = free_port();
    let cfg = format!(
        "command = [\"python3\", \"worker.py\"]\nworkdir = \"{}\"\nlisten = [\"127.0.0.1:{port}\"]\ninstances = 2\n",
        current.display()
    );
    let mut m = Master::start("symlink", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(get(addr).unwrap().contains("release r1"));
    // Deploy: switch the symlink atomically, then reload with an unchanged config.
    std::os::unix::fs::symlink(dir.join("r2"), dir.join("current.new")).unwrap();
    std::fs::rename(dir.join("current.new"), &current).unwrap();
    let p = TestPool { m, addr };
    let mut p = p;
    p.reload();
    assert!(p.answers().iter().all(|a| a.contains("generation 2 release r2")), "{:?}", p.answers());
}

#[test]
fn reloads_requested_during_a_reload_coalesce_into_one_more() {
    let mut p = TestPool::start("coalesce", ", \"--ready-after\", \"600\"", "");
    p.m.signal(Signal::SIGHUP);
    p.m.wait_log("reloading: generation 1 → 2");
    p.m.signal(Signal::SIGHUP);
    wait_until("first queued request", TIMEOUT, || {
        p.m.log_text().matches("it will follow the current one").count() == 1
    });
    p.m.signal(Signal::SIGHUP);
    wait_until("second queued request", TIMEOUT, || {
        p.m.log_text().matches("it will follow the current one").count() == 2
    });
    p.m.systemd().wait_status_eq("2/2 workers ready · generation 3 · 0 restarts");
    let log = p.m.log_text();
    assert!(log.contains("reloading: generation 2 → 3"), "{log}");
    assert!(!log.contains("generation 3 → 4"), "two queued requests make one reload: {log}");
    assert!(p.answers().iter().all(|a| a.contains("generation 3")));
}

#[test]
fn a_reload_applies_a_changed_instance_count_and_command() {
    let mut p = TestPool::start("resize", "", "");
    p.rewrite("instances = 2\n", "instances = 3\nenv = { RELEASE = \"big\" }\n");
    p.reload();
    p.m.systemd().wait_status("3/3 workers ready · generation 2");
    p.m.wait_workers(3);
    assert!(p.answers().iter().all(|a| a.contains("release big")));
}

/// The nice value of `pid` (field 19 of /proc/PID/stat).
fn nice_of(pid: i32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(16)?.parse().ok()
}

/// `reload.start_nice`: a reload's new worker and every process of its group (here a wrapper
/// shell and the server it runs) start at the lower priority while the old generation serves,
/// and get the master's back once ready; the first generation starts at the master's.
#[test]
fn a_reload_starts_new_workers_at_a_lower_priority_until_they_are_ready() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (raising a priority back)");
        return;
    }
    let port = free_port();
    let cfg = format!(
        "command = [\"sh\", \"-c\", \"python3 {{worker}} --any-listen-pid --never-ready & wait\"]\nlisten = [\"127.0.0.1:{port}\"]\n\
         instances = 1\n[ready]\nmode = \"delay\"\ndelay = \"2s\"\n[reload]\nstart_nice = 7\n"
    );
    let mut m = Master::start("nice", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let master_nice = nice_of(m.pid()).unwrap();
    let first = m.wait_workers(1);
    let group = |leader: i32| -> Vec<i32> {
        let mut all = vec![leader];
        all.extend(descendants(leader));
        all
    };
    wait_until("the first worker's server runs", TIMEOUT, || group(first[0]).len() >= 2);
    for pid in group(first[0]) {
        assert_eq!(nice_of(pid), Some(master_nice), "the first generation starts at the master's priority");
    }
    m.signal(Signal::SIGHUP);
    let new = wait_for("the new worker", TIMEOUT, || m.workers().into_iter().find(|p| !first.contains(p)));
    wait_until("the new worker's server runs", TIMEOUT, || group(new).len() >= 2);
    for pid in group(new) {
        assert_eq!(nice_of(pid), Some((master_nice + 7).min(19)), "pid {pid} of the new worker's group while starting");
    }
    m.systemd().wait_status("1/1 workers ready · generation 2");
    wait_until("the new worker's group back at the master's priority", TIMEOUT, || {
        group(new).iter().all(|p| nice_of(*p).is_none_or(|n| n == master_nice))
    });
}
