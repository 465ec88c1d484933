//! Trust: what `corral check` accepts runs, bad input never takes a running pool down, runtime
//! directories are never followed through links nor trusted when someone else owns them, and
//! counts and names are bounded. Each test here failed on the code before the fix it guards.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use common::*;

fn pool(tag: &str, extra: &str) -> (Master, std::net::SocketAddr) {
    let port = free_port();
    let cfg =
        format!("command = [\"python3\", \"{{worker}}\"]\nlisten = [\"127.0.0.1:{port}\"]\ninstances = 2\n{extra}");
    let mut m = Master::start(tag, &cfg, Options::default());
    m.systemd().wait("READY=1");
    (m, format!("127.0.0.1:{port}").parse().unwrap())
}

/// Run `corral run -c CONFIG` with `root` as its runtime root, expecting it to refuse to start.
/// Start `corral run` (the copy in `copies`, which any user can run) under `wrapper`.
fn refused_start(dir: &TempDir, root: &std::path::Path, wrapper: &[&str]) -> (Option<i32>, String) {
    let copies = ForOtherUsers::new();
    let corral = copies.corral();
    let cfg = dir.join("pool.toml");
    std::fs::write(&cfg, format!("command = [\"python3\", \"{}\"]\nlisten = [\"127.0.0.1:0\"]\n", worker_py()))
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut argv: Vec<&str> = wrapper.to_vec();
    argv.push(corral.to_str().expect("a temp path is UTF-8"));
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("CORRAL_RUNTIME_ROOT", root)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let status = wait_for("the master to refuse to start", TIMEOUT, || child.try_wait().ok().flatten());
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

use std::os::unix::process::CommandExt;

#[test]
fn a_symlinked_runtime_directory_is_refused_and_its_target_untouched() {
    let dir = TempDir::new("symlink");
    let root = dir.join("run");
    let target = dir.join("elsewhere");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir_all(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&target, root.join("pool")).unwrap();
    let (code, err) = refused_start(&dir, &root, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("refusing to use") && err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o755, "the link's target was chmod'ed");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "sockets were created behind the link");

    // The runtime root itself as a link is refused too.
    let root2 = dir.join("run2");
    std::os::unix::fs::symlink(&target, &root2).unwrap();
    let (code, err) = refused_start(&dir, &root2, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
}

#[test]
fn a_runtime_root_someone_else_owns_or_may_write_is_refused() {
    let dir = TempDir::new("foreign");
    // Root made it world-writable (like a pre-created /tmp/corral-UID): a user's master refuses.
    let open_root = dir.join("open");
    std::fs::create_dir_all(&open_root).unwrap();
    std::fs::set_permissions(&open_root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) =
        refused_start(&dir, &open_root, &["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("others may write to it"), "{err}");
    assert!(std::fs::read_dir(&open_root).unwrap().next().is_none(), "something was created in it");

    // Owned by another user (daemon, uid 1), private: not ours, refused.
    let theirs = dir.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(theirs.join("pool")).unwrap();
    nix::unistd::chown(&theirs.join("pool"), Some(nix::unistd::Uid::from_raw(1)), None).unwrap();
    let (code, err) = refused_start(&dir, &theirs, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("belongs to uid 1"), "{err}");

    // The CLI does not talk to a control socket in a directory it cannot trust either.
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(CORRAL).args(["status", "pool"]).env("CORRAL_RUNTIME_ROOT", &theirs).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("others may write to it"), "{:?}", out);
    let copies = ForOtherUsers::new();
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(copies.corral())
        .args(["status", "pool"])
        .env("CORRAL_RUNTIME_ROOT", &open_root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("others may write to it"), "{:?}", out);
}

#[test]
fn unsafe_pool_names_are_refused_everywhere() {
    for name in ["..", ".", "a/b", ".hidden"] {
        for args in [vec!["status", name], vec!["reload", name], vec!["scale", name, "2"], vec!["check", name]] {
            let out = corral(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("invalid pool name"), "{args:?}: {out:?}");
        }
        let dir = TempDir::new("initname");
        let out = corral(&["init", name, "--listen", "3000", "--root", dir.path().to_str().unwrap(), "--", "x"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }
    let dir = TempDir::new("dotdot");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "name = \"..\"\ncommand = [\"x\"]\n").unwrap();
    let out = corral(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("c.toml:1:8: invalid pool name \"..\""), "{out:?}");
}

#[test]
fn check_refuses_a_fifo_a_device_and_a_huge_file_without_hanging() {
    let dir = TempDir::new("fifo");
    let fifo = dir.join("cfg.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let huge = dir.join("huge.toml");
    std::fs::write(&huge, vec![b'#'; 2 * 1024 * 1024]).unwrap();
    for (path, want) in [
        (fifo.to_str().unwrap(), "not a regular file"),
        ("/dev/urandom", "not a regular file"),
        ("/dev/zero", "not a regular file"),
        (huge.to_str().unwrap(), "more than the 1048576 a config may have"),
    ] {
        let mut child = Command::new(CORRAL)
            .args(["check", "-c", path])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_for(&format!("check -c {path} to return"), TIMEOUT, || child.try_wait().ok().flatten());
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(78), "{path}: {err}");
        assert!(err.contains(want), "{path}: {err}");
    }
}

#[test]
fn a_reload_into_a_config_the_runtime_cannot_represent_keeps_the_pool_serving() {
    let (m, addr) = pool("hugereload", "");
    let pids = m.wait_workers(2);
    for (table, key) in [("ready", "timeout"), ("stop", "timeout"), ("restart", "max_delay"), ("recycle", "after")] {
        let text = std::fs::read_to_string(&m.config).unwrap();
        let line = format!("{key} = \"18446744073709551615s\"\n");
        let header = format!("[{table}]\n");
        let bad = match text.contains(&header) {
            true => text.replacen(&header, &format!("{header}{line}"), 1),
            false => format!("{text}{header}{line}"),
        };
        std::fs::write(m.dir.join("bad.toml"), &bad).unwrap();
        let out = corral(&["check", "-c", m.dir.join("bad.toml").to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(78), "check accepted [{table}] {key}: {out:?}");
        std::fs::write(&m.config, &bad).unwrap();
        let (code, _, err) = m.cli(&["reload", "pool"]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("is too long"), "{err}");
        std::fs::write(&m.config, text).unwrap();
        assert!(get(addr).is_ok(), "the pool stopped answering after a reload into [{table}] {key}");
    }
    assert_eq!(m.wait_workers(2), pids, "the workers were touched");
}

#[test]
fn scale_past_the_limit_is_refused_and_changes_nothing() {
    let (m, _) = pool("scalehuge", "");
    m.wait_workers(2);
    let (code, _, err) = m.cli(&["scale", "pool", "+9223372036854775807"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("a pool runs at most 1024 workers"), "{err}");
    let (code, _, err) = m.cli(&["scale", "pool", "5000"]);
    assert_eq!(code, Some(1), "{err}");
    let (code, out, err) = m.cli(&["status", "pool", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["desired"], 2);
}

#[test]
fn a_pool_that_never_gets_ready_gives_up_with_the_default_settings() {
    // Defaults for [restart]: the worker exits at once, every time. Give-up must come (exit 1)
    // so systemd's Restart=/OnFailure= take over; with the defaults, within about a minute.
    let cfg = format!("command = [\"sh\", \"-c\", \"exit 3\"]\nlisten = [\"127.0.0.1:{}\"]\n", free_port());
    let mut m = Master::start("giveup", &cfg, Options::default());
    let t = std::time::Instant::now();
    let status =
        wait_for("the pool to give up", std::time::Duration::from_secs(120), || m.child.try_wait().ok().flatten());
    m.exit = Some(status);
    assert_eq!(status.code(), Some(1), "{}", m.log_text());
    assert!(m.log_text().contains("giving up: 11 failed starts in a row and no worker is ready"), "{}", m.log_text());
    eprintln!("gave up after {:?}", t.elapsed());
}

#[test]
fn a_workers_status_text_cannot_drive_the_operators_terminal() {
    let evil = "\\u001b]0;owned\\u0007\\u001b[2Jhidden";
    let port = free_port();
    let cfg =
        format!("command = [\"python3\", \"{{worker}}\", \"--status\", \"{evil}\"]\nlisten = [\"127.0.0.1:{port}\"]\n");
    let mut m = Master::start("escapes", &cfg, Options::default());
    m.systemd().wait("READY=1");
    m.wait_workers(1);
    let table = wait_for("the worker's STATUS= in the table", TIMEOUT, || {
        let (code, out, _) = m.cli(&["status", "pool"]);
        (code == Some(0) && out.contains("hidden")).then_some(out)
    });
    assert!(!table.contains('\x1b') && !table.contains('\x07'), "raw control characters: {table:?}");
    assert!(table.contains("\\x1b]0;owned\\x07\\x1b[2Jhidden"), "{table}");
    // JSON keeps the exact text.
    let (_, json, _) = m.cli(&["status", "pool", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["workers"][0]["status"], "\x1b]0;owned\x07\x1b[2Jhidden");
}

/// Utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn soft_nofile(pid: i32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Raise this test process's own soft descriptor limit so it can hold many connections.
fn raise_own_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

#[test]
fn a_flood_of_idle_connections_does_not_stop_supervision() {
    raise_own_nofile();
    let (port, mport) = (free_port(), free_port());
    let cfg = format!(
        "command = [\"python3\", \"{{worker}}\", \"--report\", \"{{dir}}/report-{{slot}}.json\"]\nlisten = [\"127.0.0.1:{port}\"]\ninstances = 2\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"
    );
    // systemd's default soft limit for services is 1024; here lower still, with room above it.
    let opts = Options { wrapper: vec!["prlimit".into(), "--nofile=256:8192".into()], ..Options::default() };
    let mut m = Master::start("fdflood", &cfg, opts);
    m.systemd().wait("READY=1");
    let pids = m.wait_workers(2);
    assert_eq!(soft_nofile(m.pid()), 8192, "the master raises its soft limit to the hard one");
    let report = read_report(&m.dir.join("report-0.json"));
    assert_eq!(report["nofile"], serde_json::json!([256, 8192]), "workers get the original limit back");

    // More idle connections than the master's original limit, to both listeners.
    let mut held = Vec::new();
    for _ in 0..600 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", mport)) {
            held.push(s);
        }
    }
    let control = m.dir.join("run/pool/control.sock");
    let mut held_unix = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&control) {
            held_unix.push(s);
        }
    }
    assert!(held.len() >= 300, "only {} connections", held.len());
    // A killed worker is still replaced, and the CLI still gets answers.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("the killed worker replaced", TIMEOUT, || {
        let now = m.workers();
        now.len() == 2 && !now.contains(&pids[0])
    });
    drop(held_unix);
    let (code, _, err) = m.cli(&["status", "pool"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!m.log_text().contains("Too many open files"), "{}", m.log_text());
}

#[test]
fn out_of_descriptors_the_master_pauses_accepting_instead_of_spinning() {
    raise_own_nofile();
    let (port, mport) = (free_port(), free_port());
    let cfg = format!(
        "command = [\"python3\", \"{{worker}}\"]\nlisten = [\"127.0.0.1:{port}\"]\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"
    );
    // A hard limit the connections can exhaust: accept() fails with EMFILE.
    let opts = Options { wrapper: vec!["prlimit".into(), "--nofile=48:48".into()], ..Options::default() };
    let mut m = Master::start("emfile", &cfg, opts);
    m.systemd().wait("READY=1");
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", mport)) {
            held.push(s);
        }
    }
    m.wait_log("metrics listener: cannot accept a connection: Too many open files");
    let (ticks, t) = (cpu_ticks(m.pid()), std::time::Instant::now());
    wait_until("3s of holding the connections", TIMEOUT, || t.elapsed() > std::time::Duration::from_secs(3));
    let used = cpu_ticks(m.pid()) - ticks;
    let warnings = m.log_text().matches("cannot accept").count();
    drop(held);
    assert!(used < 100, "the master spun: {used} ticks of CPU in 3s");
    assert!(warnings <= 2, "{warnings} warnings: not rate-limited");
    assert!(m.running());
}

/// At `RLIMIT_NOFILE` 64 with 32 instances wanted, the master starts the workers whose
/// descriptors fit, says once how many and which limit to raise, and keeps its way in open:
/// `corral status`, /health and a reload all work; a scale beyond the limit is refused.
#[test]
fn a_low_descriptor_limit_starts_what_fits_and_keeps_the_way_in_open() {
    raise_own_nofile();
    let (port, mport) = (free_port(), free_port());
    let cfg = format!(
        "command = [\"python3\", \"{{worker}}\", \"--stop-delay\", \"1000\"]\ninstances = 32\nlisten = [\"127.0.0.1:{port}\"]\n\
         [metrics]\nlisten = \"127.0.0.1:{mport}\"\n[limits]\ninterval = \"200ms\"\n"
    );
    let opts = Options { wrapper: vec!["prlimit".into(), "--nofile=64:64".into()], ..Options::default() };
    let mut m = Master::start("nofile64", &cfg, opts);
    // READY=1 once the workers that fit are ready: systemd is not left waiting for 32.
    m.systemd().wait("READY=1");
    m.wait_log("workers wanted, but only");
    let log = m.log_text();
    let line = log.lines().find(|l| l.contains("workers wanted, but only")).unwrap().to_string();
    assert!(line.contains("32 workers wanted") && line.contains("RLIMIT_NOFILE 64") && line.contains("LimitNOFILE="));
    let fit: usize =
        line.split("but only ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!((1..32).contains(&fit), "{line}");
    let workers = m.wait_workers(fit);
    // The operator's way in answers, again and again (the sampler keeps files open meanwhile).
    for _ in 0..20 {
        let (code, out, err) = m.cli(&["status", "pool", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let st: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(st["ready"].as_u64(), Some(fit as u64));
        get_path(std::net::SocketAddr::from(([127, 0, 0, 1], mport)), "/health").expect("/health answers");
    }
    assert_eq!(log.matches("workers wanted, but only").count(), 1, "one message, no storm:\n{log}");
    let (code, _, err) = m.cli(&["scale", "pool", "+1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("LimitNOFILE="), "{err}");
    // A reload rolls through in the room kept for one replacement, the next one waiting for
    // the worker it replaced to drain (1s) and give its descriptors back: never more worker
    // processes than the limit holds.
    let (most, (code, out, err)) = std::thread::scope(|s| {
        let reload = s.spawn(|| m.cli(&["reload", "pool"]));
        let mut most = 0;
        while !reload.is_finished() {
            most = most.max(m.workers().len());
            std::thread::yield_now();
        }
        (most, reload.join().expect("the reload thread"))
    });
    assert_eq!(code, Some(0), "{err}");
    assert!(most <= fit + 1, "{most} worker processes during the reload, {fit} fit and one more for a replacement");
    assert!(out.contains(&format!("serving with {fit} of 32 workers")) && out.contains("RLIMIT_NOFILE 64"), "{out}");
    let now = m.wait_workers(fit);
    assert!(now.iter().all(|p| !workers.contains(p)), "every worker replaced");
    let log = m.log_text();
    assert_eq!(log.matches("Too many open files").count(), 0, "{log}");
    assert_eq!(log.matches("workers wanted, but only").count(), 1, "not again at the reload:\n{log}");
}

#[test]
fn a_stalled_stderr_reader_does_not_stall_the_master() {
    // The master's stderr is a pipe nobody reads; a worker floods its output into it.
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let port = free_port();
    let cfg = format!(
        "command = [\"sh\", \"-c\", \"if [ \\\"$CORRAL_WORKER\\\" = 0 ]; then exec yes flooding-the-master-stderr; else exec python3 {{worker}}; fi\"]\nlisten = [\"127.0.0.1:{port}\"]\ninstances = 2\n[ready]\nmode = \"spawn\"\n[logs]\ntarget = \"stderr\"\n"
    );
    let opts = Options { stderr: Some(write_end), ..Options::default() };
    let mut m = Master::start("stderrstall", &cfg, opts);
    m.systemd().wait("READY=1");
    let pids = m.wait_workers(2);
    // The pipe is full (64 KiB) and the master's buffer behind it too; the loop goes on.
    wait_until("the pipe to fill", TIMEOUT, || {
        let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&read_end), nix::poll::PollFlags::POLLIN)];
        nix::poll::poll(&mut fds, 0u16).unwrap_or(0) > 0
    });
    let (code, out, err) = m.cli(&["status", "pool", "--json"]);
    assert_eq!(code, Some(0), "status got no answer: {err}");
    assert!(out.contains("\"log_messages_dropped\""), "{out}");
    // A killed worker is replaced while stderr stays stalled, and the master's own messages
    // about it are dropped and counted rather than waited for.
    let python = *pids.iter().max_by_key(|p| comm(**p) == "python3").unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(python), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("the killed worker replaced", TIMEOUT, || {
        let now = m.workers();
        now.len() == 2 && !now.contains(&python)
    });
    let dropped = wait_for("dropped messages counted", TIMEOUT, || {
        let (_, out, _) = m.cli(&["status", "pool", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["log_messages_dropped"].as_u64().filter(|n| *n > 0)
    });
    eprintln!("{dropped} messages dropped while stderr was stalled");
    // Reading again: the stream resumes.
    let mut reader = std::fs::File::from(read_end);
    let mut buf = vec![0u8; 1 << 20];
    let n = std::io::Read::read(&mut reader, &mut buf).unwrap();
    assert!(n > 0);
    m.signal(nix::sys::signal::Signal::SIGTERM);
    // Keep draining so the master can finish; it exits 0.
    let t = std::thread::spawn(move || while std::io::Read::read(&mut reader, &mut buf).is_ok_and(|n| n > 0) {});
    assert_eq!(m.wait_exit(), Some(0));
    let _ = t.join();
}

#[test]
fn a_master_stopped_longer_than_the_watchdog_keeps_its_healthy_workers() {
    let port = free_port();
    let cfg = format!(
        "command = [\"python3\", \"{{worker}}\", \"--watchdog\"]\nlisten = [\"127.0.0.1:{port}\"]\ninstances = 2\n[watchdog]\ntimeout = \"500ms\"\n"
    );
    let mut m = Master::start("sigstop", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let pids = m.wait_workers(2);
    m.signal(nix::sys::signal::Signal::SIGSTOP);
    wait_until("the master stopped", TIMEOUT, || proc_state(m.pid()) == Some('T'));
    let t = std::time::Instant::now();
    wait_until("4 watchdog timeouts of stop", TIMEOUT, || t.elapsed() > std::time::Duration::from_secs(2));
    m.signal(nix::sys::signal::Signal::SIGCONT);
    let t = std::time::Instant::now();
    wait_until("4 more watchdog timeouts of running", TIMEOUT, || t.elapsed() > std::time::Duration::from_secs(2));
    assert_eq!(m.wait_workers(2), pids, "healthy workers were killed after the master resumed");
    let (_, out, _) = m.cli(&["status", "pool", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["restarts_by_reason"]["watchdog"], 0, "{out}");
}

#[test]
fn a_daemonized_grandchild_is_stopped_with_the_pool() {
    let port = free_port();
    // `( setsid sleep & )`: the subshell exits at once, so the sleep is orphaned, in its own
    // session (out of the worker's process group), holding the listening socket.
    let cfg = format!(
        "command = [\"sh\", \"-c\", \"( setsid sleep 300 & ); exec python3 {{worker}}\"]\nlisten = [\"127.0.0.1:{port}\"]\n[stop]\ntimeout = \"2s\"\n"
    );
    let mut m = Master::start("daemonized", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let stray = wait_for("the daemonized sleep, re-parented to the master", TIMEOUT, || {
        children(m.pid()).into_iter().find(|p| comm(*p) == "sleep")
    });
    assert_ne!(nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(stray))).unwrap().as_raw(), m.workers()[0]);
    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(m.wait_exit(), Some(0), "{}", m.log_text());
    assert!(!alive(stray), "the daemonized grandchild outlived the pool");
    assert!(m.log_text().contains("processes they left behind still run"), "{}", m.log_text());
    // The port is free for the next master.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is still bound");
}

#[test]
fn when_forks_fail_the_master_backs_off_and_keeps_answering() {
    // RLIMIT_NPROC counts the processes of the master's (real) user: as nobody with room for
    // three more processes, most of the six forks fail with EAGAIN.
    let dir = TempDir::new("eagain");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let port = free_port();
    let cfg = format!(
        "command = [\"sleep\", \"1000\"]\nlisten = [\"127.0.0.1:{port}\"]\ninstances = 6\n[ready]\nmode = \"spawn\"\n"
    );
    let path = dir.join("pool.toml");
    std::fs::write(&path, cfg).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let root = dir.join("run");
    let log = dir.join("master.log");
    let copies = ForOtherUsers::new();
    let mut child = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "prlimit", "--nproc=4"])
        .arg(copies.corral())
        .args(["run", "-c"])
        .arg(&path)
        .env("CORRAL_RUNTIME_ROOT", &root)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let _guard = KillGroup(child.id() as i32);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("a fork refused with EAGAIN", TIMEOUT, || text().contains("cannot fork: the process limit is reached"));
    // The master backs off (no fork storm in the log) and answers.
    let out =
        Command::new(CORRAL).args(["status", "pool", "--json"]).env("CORRAL_RUNTIME_ROOT", &root).output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", text());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["restarts_by_reason"]["spawn_failed"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["restarts_by_reason"]["spawn_failed"].as_u64().unwrap() < 100, "no backoff: {v}");
    assert!(child.try_wait().unwrap().is_none(), "{}", text());
}

/// Kills a process group on drop.
struct KillGroup(i32);
impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
    }
}

#[test]
fn workers_of_another_user_read_the_units_credentials_and_no_one_else_can() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to start workers as another user");
        return;
    }
    // What systemd makes of LoadCredential=: a folder only the unit's user (root) reads.
    let creds = TempDir::new("creds");
    std::fs::write(creds.join("token"), "s3cret-token\n").unwrap();
    std::fs::set_permissions(creds.join("token"), std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::set_permissions(creds.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let copies = ForOtherUsers::new();
    let port = free_port();
    let cfg = format!(
        "command = [\"/usr/bin/python3\", \"{}\"]\ninstances = 2\nuser = \"nobody\"\nlisten = [\"127.0.0.1:{port}\"]\n",
        copies.worker().display()
    );
    let dir = creds.path().display().to_string();
    let opts = Options { wrapper: vec!["env".into(), format!("CREDENTIALS_DIRECTORY={dir}")], ..Options::default() };
    let mut m = Master::start("creds", &cfg, opts);
    m.systemd().wait("READY=1");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..4 {
        assert_eq!(get_path(addr, "/credential/token").expect("a worker reads the credential"), "s3cret-token\n");
    }
    // The copy is the workers' user's alone, in a folder only root and their group go through.
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let copy = m.dir.join("run/pool/credentials");
    let (d, f) = (std::fs::metadata(&copy).unwrap(), std::fs::metadata(copy.join("token")).unwrap());
    assert_eq!((d.uid(), d.mode() & 0o777), (nobody.uid.as_raw(), 0o500));
    assert_eq!((f.uid(), f.mode() & 0o777), (nobody.uid.as_raw(), 0o400));
    let run = std::fs::metadata(m.dir.join("run/pool")).unwrap();
    assert_eq!((run.gid(), run.mode() & 0o777), (nobody.gid.as_raw(), 0o710));
    // Another user, even in the workers' group, cannot read it.
    let out = Command::new("setpriv")
        .args(["--reuid=daemon", &format!("--regid={}", nobody.gid.as_raw()), "--clear-groups", "cat"])
        .arg(copy.join("token"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "another user read the copy");
    // A reload keeps serving it, even after the runtime directory was given back to root alone
    // (what systemd 257 does as it starts ExecReload=: RuntimeDirectoryMode= and the owner
    // again); the master's stop removes the copy.
    std::os::unix::fs::chown(m.dir.join("run/pool"), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(m.dir.join("run/pool"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let (code, _, err) = m.cli(&["reload", "pool"]);
    assert_eq!(code, Some(0), "{err}");
    let run = std::fs::metadata(m.dir.join("run/pool")).unwrap();
    assert_eq!((run.gid(), run.mode() & 0o777), (nobody.gid.as_raw(), 0o710));
    assert_eq!(get_path(addr, "/credential/token").unwrap(), "s3cret-token\n");
    m.signal(nix::sys::signal::Signal::SIGTERM);
    m.wait_exit();
    assert!(!copy.exists(), "the copy outlived the master");
}
