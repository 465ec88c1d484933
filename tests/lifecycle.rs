//! A pool's life with real processes and signals: readiness, crashes and backoff, giving up,
//! stopping (graceful, escalated, forced), the master dying, scaling, and cleanup of everything.

mod common;

use std::os::unix::net::UnixDatagram;

use common::*;
use nix::sys::signal::Signal;

fn pool(args: &str, extra: &str) -> String {
    let port = free_port();
    format!(
        r#"command = ["python3", "{{worker}}"{args}]
listen = ["127.0.0.1:{port}"]
{extra}"#
    )
}

fn no_zombies(pid: i32) -> bool {
    children(pid).iter().all(|c| proc_state(*c) != Some('Z'))
}

#[test]
fn a_crashed_worker_is_restarted_with_growing_backoff() {
    let cfg = pool(
        ", \"--crash-after\", \"200\"",
        "instances = 1\n[restart]\ndelay = \"50ms\"\nmax_delay = \"10s\"\nmin_uptime = \"30s\"\nmax_restarts = 100\n",
    );
    let mut m = Master::start("crash", &cfg, Options::default());
    let first = m.wait_workers(1)[0];
    m.systemd().wait_status("3 restarts");
    assert!(m.running());
    assert!(!alive(first));
    let log = m.log_text();
    assert!(log.contains("worker exited unexpectedly (exit code 3)"), "{log}");
    for d in ["restarting worker in 50ms", "restarting worker in 100ms", "restarting worker in 200ms"] {
        assert!(log.contains(d), "missing {d:?}:\n{log}");
    }
    assert!(log.contains("pool[0]: crashing on purpose"), "worker stderr is forwarded");
    wait_until("no zombie children", TIMEOUT, || no_zombies(m.pid()));
}

#[test]
fn gives_up_after_too_many_restarts_without_a_ready_worker() {
    let cfg = pool(
        ", \"--exit\", \"1\"",
        "instances = 2\n[restart]\ndelay = \"10ms\"\nmax_delay = \"20ms\"\nmax_restarts = 3\n",
    );
    let mut m = Master::start("giveup", &cfg, Options::default());
    assert_eq!(m.wait_exit(), Some(1), "exits non-zero so systemd's Restart= takes over");
    assert!(m.log_text().contains("giving up: 4 failed starts in a row and no worker is ready"), "{}", m.log_text());
    assert_eq!(m.systemd().count("STOPPING=1"), 1);
    assert!(descendants(m.pid()).is_empty());
}

#[test]
fn sigterm_stops_workers_gracefully_and_exits_0() {
    let mut m = Master::start("stop", &pool("", "instances = 2\n"), Options::default());
    m.systemd().wait("READY=1");
    let workers = m.wait_workers(2);
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(), Some(0));
    assert_eq!(m.systemd().count("STOPPING=1"), 1);
    let log = m.log_text();
    assert!(log.contains("pool[0]: stopped gracefully") && log.contains("pool[1]: stopped gracefully"), "{log}");
    assert!(workers.iter().all(|w| !alive(*w)));
}

#[test]
fn a_worker_that_ignores_the_stop_signal_is_killed_after_the_timeout() {
    let cfg = pool(", \"--ignore-term\"", "instances = 1\n[stop]\ntimeout = \"300ms\"\n");
    let mut m = Master::start("escalate", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let w = m.wait_workers(1)[0];
    m.signal(Signal::SIGTERM);
    assert_eq!(m.wait_exit(), Some(0));
    assert!(m.log_text().contains("did not stop in time, sending SIGKILL"), "{}", m.log_text());
    assert!(!alive(w));
}

#[test]
fn a_second_stop_signal_stops_at_once() {
    // stop.timeout is far longer than the test's patience: only the second signal can end it.
    let cfg = pool(", \"--ignore-term\"", "instances = 2\n[stop]\ntimeout = \"1h\"\n");
    let mut m = Master::start("twice", &cfg, Options::default());
    m.systemd().wait("READY=1");
    m.signal(Signal::SIGTERM);
    m.systemd().wait("STOPPING=1");
    assert!(m.systemd().count("EXTEND_TIMEOUT_USEC=3605000000") == 1, "asks systemd to wait for the drain");
    m.signal(Signal::SIGINT);
    assert_eq!(m.wait_exit(), Some(0));
    assert!(m.log_text().contains("stopping now"), "{}", m.log_text());
}

#[test]
fn workers_die_with_a_killed_master() {
    let mut m = Master::start("orphan", &pool(", \"--spawn-child\"", "instances = 3\n"), Options::default());
    m.systemd().wait("READY=1");
    let workers = m.wait_workers(3);
    m.signal(Signal::SIGKILL);
    m.wait_exit();
    wait_until("every worker gone after kill -9 of the master", TIMEOUT, || workers.iter().all(|w| !alive(*w)));
}

#[test]
fn a_worker_not_ready_in_time_is_replaced_and_foreign_ready_is_ignored() {
    let cfg = pool(", \"--never-ready\"", "instances = 1\n[ready]\ntimeout = \"700ms\"\n[restart]\ndelay = \"10ms\"\n");
    let mut m = Master::start("notready", &cfg, Options::default());
    let first = m.wait_workers(1)[0];
    // Someone who is not a worker claims readiness on the workers' notify socket.
    let notify = m.dir.join("run/pool/notify.sock");
    wait_until("notify socket", TIMEOUT, || notify.exists());
    UnixDatagram::unbound().unwrap().send_to(b"READY=1\n", &notify).unwrap();
    m.systemd().wait_status("1 restart");
    m.wait_log("not ready after 700ms");
    m.wait_log("not ready after 700ms: with ready.mode = \"notify\" it must send READY=1");
    m.wait_log("can use mode = \"delay\"");
    wait_until("the first worker is gone", TIMEOUT, || !alive(first));
    assert_eq!(m.systemd().count("READY=1"), 0, "no worker ever said READY=1");
    assert!(m.systemd().last_status().unwrap().starts_with("0/1 workers ready"));
}

#[test]
fn sigttin_and_sigttou_scale_the_pool() {
    let mut m = Master::start("scale", &pool("", "instances = 2\n"), Options::default());
    m.systemd().wait("READY=1");
    m.wait_workers(2);
    m.signal(Signal::SIGTTIN);
    m.systemd().wait_status("3/3 workers ready");
    m.wait_workers(3);
    // Signals of one kind coalesce while pending: send one, wait for its effect.
    m.signal(Signal::SIGTTOU);
    m.systemd().wait_status("2/2 workers ready");
    m.signal(Signal::SIGTTOU);
    m.systemd().wait_status("1/1 workers ready");
    m.signal(Signal::SIGTTOU);
    m.wait_log("scaling from 1 to 1 workers");
    m.wait_workers(1);
    assert!(m.log_text().contains("pool[2]: stopped gracefully"), "scale-down is graceful");
}

/// A worker behind a wrapper (`npm start`, a shell): the wrapper forks the server and waits.
/// The wrapper dies with the master (its parent-death signal); the server would not.
fn wrapped_server(port: u16) -> String {
    format!(
        "command = [\"sh\", \"-c\", \"python3 {{worker}} --any-listen-pid & wait\"]\n\
         listen = [\"127.0.0.1:{port}\"]\ninstances = 2\n[ready]\nmode = \"listen\"\n"
    )
}

/// The servers behind the wrappers: the children of the master's workers.
fn servers(m: &Master) -> Vec<i32> {
    wait_for("a server under each wrapper", TIMEOUT, || {
        let s: Vec<i32> = m.workers().into_iter().flat_map(children).collect();
        (s.len() == 2).then_some(s)
    })
}

fn refused(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[test]
fn a_killed_masters_wrapped_servers_are_stopped_by_its_watcher() {
    let port = free_port();
    let mut m =
        Master::start("watcher", &wrapped_server(port), Options { default_ready_mode: true, ..Default::default() });
    m.systemd().wait("READY=1");
    let servers = servers(&m);
    let watcher = watcher_of(m.pid());
    assert!(get(std::net::SocketAddr::from(([127, 0, 0, 1], port))).is_ok());
    m.signal(Signal::SIGKILL);
    m.wait_exit();
    wait_until("the servers behind the wrappers gone after kill -9 of the master", TIMEOUT, || {
        servers.iter().all(|s| !alive(*s))
    });
    wait_until("the port closed", TIMEOUT, || refused(port));
    wait_until("the watcher gone too", TIMEOUT, || !alive(watcher));
    let record = m.dir.join(&format!("run/pool/workers.{}", m.pid()));
    wait_until("the watcher removes the record it acted on", TIMEOUT, || !record.exists());
}

#[test]
fn what_a_killed_master_left_is_stopped_at_the_pools_next_start() {
    let port = free_port();
    let mut first =
        Master::start("leftover", &wrapped_server(port), Options { default_ready_mode: true, ..Default::default() });
    first.systemd().wait("READY=1");
    let servers = servers(&first);
    let record = first.dir.join(&format!("run/pool/workers.{}", first.pid()));
    assert!(std::fs::read_to_string(&record).unwrap_or_default().lines().count() >= 2);
    // A watcher that cannot act (stopped; a killed one the master would replace at once).
    let watcher = watcher_of(first.pid());
    let watcher_pid = nix::unistd::Pid::from_raw(watcher);
    nix::sys::signal::kill(watcher_pid, Signal::SIGSTOP).unwrap();
    wait_until("the watcher stopped", TIMEOUT, || proc_state(watcher) == Some('T'));
    first.signal(Signal::SIGKILL);
    first.wait_exit();
    wait_until("the wrappers gone with the master", TIMEOUT, || first.workers().is_empty());
    assert!(servers.iter().all(|s| alive(*s)), "the servers outlive a master that had no watcher");
    let root = first.dir.join("run").to_string_lossy().into_owned();
    let mut second = Master::start(
        "leftover",
        &wrapped_server(port),
        Options { default_ready_mode: true, env: vec![("CORRAL_RUNTIME_ROOT".into(), root)], ..Default::default() },
    );
    second.systemd().wait("READY=1");
    assert!(servers.iter().all(|s| !alive(*s)), "the previous servers are stopped before the pool binds");
    second.wait_log("a previous master of this pool died without stopping its workers: stopped 2 processes");
    let fresh = self::servers(&second);
    assert!(fresh.iter().all(|s| !servers.contains(s)));
    assert!(get(std::net::SocketAddr::from(([127, 0, 0, 1], port))).is_ok());
    let _ = nix::sys::signal::kill(watcher_pid, Signal::SIGKILL);
    second.signal(Signal::SIGTERM);
    assert_eq!(second.wait_exit(), Some(0));
    wait_until("the new servers stopped with their pool", TIMEOUT, || fresh.iter().all(|s| !alive(*s)));
}

#[test]
fn a_dead_workers_leftover_children_are_killed_and_reaped() {
    let mut m = Master::start("grandchild", &pool(", \"--spawn-child\"", "instances = 1\n"), Options::default());
    m.systemd().wait("READY=1");
    let w = m.wait_workers(1)[0];
    let grandchild = wait_for("the worker's child", TIMEOUT, || children(w).first().copied());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(w), Signal::SIGKILL).unwrap();
    wait_until("the leftover child is gone (not even a zombie)", TIMEOUT, || proc_state(grandchild).is_none());
    m.systemd().wait_status("1 restart");
    wait_until("no zombies", TIMEOUT, || no_zombies(m.pid()));
}

#[test]
fn instances_max_follows_the_cpu_affinity() {
    let opts = Options { wrapper: vec!["taskset".into(), "-c".into(), "0".into()], ..Options::default() };
    let mut m = Master::start("max", &pool("", "instances = \"max\"\n"), opts);
    m.systemd().wait_status("1/1 workers ready");
    let cpus = std::thread::available_parallelism().unwrap().get();
    let mut m2 = Master::start("max2", &pool("", "instances = \"max\"\n"), Options::default());
    m2.systemd().wait_status(&format!("{cpus}/{cpus} workers ready"));
    drop(m);
}

#[test]
fn workers_start_with_default_signal_state() {
    let cfg = format!(
        r#"command = ["sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status > {{dir}}/sig.txt; exec python3 {{worker}}"]
listen = ["127.0.0.1:{}"]
"#,
        free_port()
    );
    let mut m = Master::start("signals", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let text = std::fs::read_to_string(m.dir.join("sig.txt")).unwrap();
    assert_eq!(text, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
}

#[test]
fn the_master_leaks_no_fds_over_many_restarts() {
    let cfg = pool(
        ", \"--crash-after\", \"50\"",
        "instances = 2\n[restart]\ndelay = \"10ms\"\nmax_delay = \"10ms\"\nmax_restarts = 1000\n",
    );
    let mut m = Master::start("fdleak", &cfg, Options::default());
    m.systemd().wait("READY=1");
    // Sample the workers' processes first (a status request does): the sampler keeps each
    // one's statm and children list open, a bounded set the count starts from.
    m.cli(&["status", "pool"]);
    let before = fd_count(m.pid());
    m.systemd().wait_status("12 restarts");
    // Output pipes close at EOF; allow the loop to catch up, then the count must be back.
    wait_until("master fd count back to its start value", TIMEOUT, || fd_count(m.pid()) <= before);
    wait_until("no zombies", TIMEOUT, || no_zombies(m.pid()));
    assert_eq!(threads(m.pid()), 1);
}

#[test]
fn workers_drop_to_the_configured_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // /tmp is writable for nobody; the test's own temp dir is not.
    let out = TempDir::new("user-report");
    std::fs::set_permissions(out.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let report_path = out.join("report.json");
    // Debian's python3 (the one the machine image puts under /root is not reachable for nobody),
    // and a copy of the worker where nobody can read it, wherever the checkout lives.
    let copies = ForOtherUsers::new();
    let worker = copies.worker();
    let cfg = pool(&format!(", \"--report\", \"{}\"", report_path.display()), "instances = 1\nuser = \"nobody\"\n")
        .replace("\"python3\"", "\"/usr/bin/python3\"")
        .replace("{worker}", worker.to_str().unwrap());
    let mut m = Master::start("user", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let report = read_report(&report_path);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(report["uid"].as_u64(), Some(nobody.uid.as_raw() as u64));
    assert_eq!(report["gid"].as_u64(), Some(nobody.gid.as_raw() as u64));
    assert!(!report["groups"].as_array().unwrap().iter().any(|g| g.as_u64() == Some(0)), "root group dropped");
    assert_eq!(report["env"]["USER"].as_str(), Some("nobody"));
    assert_eq!(report["argv"][0].as_str(), Some(worker.to_str().unwrap()), "ran the copy");
}

#[test]
fn the_master_pings_the_systemd_watchdog_at_half_the_interval() {
    let opts = Options { env: vec![("WATCHDOG_USEC".into(), "200000".into())], ..Options::default() };
    let mut m = Master::start("sdwatchdog", &pool("", "instances = 1\n"), opts);
    m.systemd().wait("READY=1");
    wait_until("several WATCHDOG=1", TIMEOUT, || m.systemd().count("WATCHDOG=1") >= 5);
    // Meant for another process: not ours to answer.
    let opts = Options {
        env: vec![("WATCHDOG_USEC".into(), "100000".into()), ("WATCHDOG_PID".into(), "1".into())],
        ..Options::default()
    };
    let mut other = Master::start("sdwatchdog2", &pool("", "instances = 1\n"), opts);
    other.systemd().wait("READY=1");
    let t = std::time::Instant::now();
    wait_until("half a second of running", TIMEOUT, || t.elapsed() > std::time::Duration::from_millis(500));
    assert_eq!(other.systemd().count("WATCHDOG=1"), 0);
}

#[test]
fn a_worker_flooding_its_output_does_not_stall_the_master() {
    // Slot 0 writes lines as fast as it can for as long as the test runs; slot 1 is a normal
    // worker. The master's stderr (where the lines go) is discarded, so nothing fills the disk.
    let cfg = format!(
        r#"command = ["sh", "-c", "if [ \"$CORRAL_WORKER\" = 0 ]; then exec yes flooding-the-master-with-output; else exec python3 {{worker}}; fi"]
listen = ["127.0.0.1:{}"]
instances = 2
[ready]
mode = "spawn"
"#,
        free_port()
    );
    let m = Master::start("flood", &cfg, Options { discard_log: true, ..Options::default() });
    let flooder = wait_for("the flooding worker", TIMEOUT, || m.workers().into_iter().find(|p| comm(*p) == "yes"));
    wait_until("10 MB of output under way", TIMEOUT, || written(flooder) > 10_000_000);
    // While it floods, the master still answers the control socket and signals.
    let before = written(flooder);
    let out = std::process::Command::new(CORRAL)
        .args(["status", "pool", "--json"])
        .env("CORRAL_RUNTIME_ROOT", m.dir.join("run"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    m.signal(Signal::SIGTTIN);
    wait_until("scaled up during the flood", TIMEOUT, || m.workers().len() == 3);
    assert!(written(flooder) > before, "the flood went on meanwhile: the master kept reading it");
    assert!(alive(flooder));
}

#[test]
fn binary_junk_in_worker_output_breaks_nothing() {
    let cfg = format!(
        r#"command = ["sh", "-c", "printf 'before\\n\\377\\376\\000junk\\033[31m\\001after-no-newline'; exec python3 {{worker}} --crash-after 100"]
listen = ["127.0.0.1:{}"]
instances = 1
[restart]
delay = "10ms"
max_restarts = 100
"#,
        free_port()
    );
    let mut m = Master::start("junk", &cfg, Options::default());
    m.systemd().wait_status("2 restarts");
    let raw = std::fs::read(&m.log).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("pool[0]: before\n"), "{text}");
    // Invalid UTF-8 becomes U+FFFD, control characters (an escape sequence among them) are made
    // visible rather than sent to the operator's terminal, and the line without a newline arrives.
    assert!(text.contains("\u{fffd}\u{fffd}\\x00junk\\x1b[31m\\x01after-no-newline"), "{text}");
    assert!(!text.contains('\x1b'), "a raw escape reached the master's stderr: {text}");
    assert!(m.running());
}

/// A worker whose child records whether corral sent it the stop signal directly.
fn stop_mode_pool(tag: &str, mode: &str) -> Master {
    let cfg = format!(
        r#"command = ["sh", "-c", "python3 -c 'import signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: open(sys.argv[1], \"w\").write(\"x\")); time.sleep(300)' {{dir}}/child-got-term & trap 'sleep 0.5; exit 0' TERM; while :; do sleep 0.05; done"]
listen = ["127.0.0.1:{}"]
[ready]
mode = "spawn"
[stop]
mode = "{mode}"
timeout = "5s"
"#,
        free_port()
    );
    let mut m = Master::start(tag, &cfg, Options::default());
    m.systemd().wait("READY=1");
    let worker = m.wait_workers(1)[0];
    wait_until("the child started", TIMEOUT, || descendants(worker).iter().any(|p| comm(*p) == "python3"));
    m
}

#[test]
fn stop_mode_main_signals_only_the_main_process_and_kills_the_rest_after() {
    let mut group = stop_mode_pool("stopgroup", "group");
    let mut main = stop_mode_pool("stopmain", "main");
    for m in [&mut group, &mut main] {
        m.signal(Signal::SIGTERM);
        assert_eq!(m.wait_exit(), Some(0), "{}", m.log_text());
    }
    // Group (the default): SIGTERM reaches every process of the worker, the child included.
    assert!(group.dir.join("child-got-term").exists(), "group mode: the child got no SIGTERM");
    // Main: only the main process got it; its leftover child got SIGKILL, never SIGTERM.
    assert!(!main.dir.join("child-got-term").exists(), "main mode: corral signalled the child");
    assert!(main.log_text().contains("reaped a stray process (signal SIGKILL)"), "{}", main.log_text());
}

#[test]
fn a_worker_that_exits_right_away_gets_its_last_words_and_a_hint_logged() {
    // Express 5's app.listen(3000) on a port corral already holds fails and exits 0.
    let cfg = format!(
        r#"command = ["sh", "-c", "echo starting; echo 'Error: listen EADDRINUSE: address already in use :::3000' >&2; sleep 0.2; exit 0"]
listen = ["127.0.0.1:{}"]
[restart]
delay = "1s"
"#,
        free_port()
    );
    let m = Master::start("earlyexit", &cfg, Options::default());
    m.wait_log("usual causes: it binds its own port instead of taking the socket at fd 3 (LISTEN_FDS)");
    m.wait_log("its last output: \"starting\", \"Error: listen EADDRINUSE: address already in use :::3000\"");
}
