//! corral as a container's PID 1, in a new PID namespace (`unshare --fork --pid --mount-proc`):
//! orphans a worker leaves behind are reaped (no zombie), SIGTERM drains (`stop.drain`: still
//! serving, /health and /ready 503, /live 200) and then stops the pool, and the exit status is
//! 0; logs are JSON lines on stdout when asked. The same story in a real container built from
//! examples/docker/Dockerfile is in tests/e2e.rs (podman).

mod common;

use std::process::{Command, Stdio};

use common::*;
use nix::sys::signal::Signal;

/// (status code, body) of GET `path`.
fn http(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let code = r.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, r.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()))
}

#[test]
fn as_pid_1_it_reaps_orphans_drains_on_sigterm_and_exits_0() {
    let dir = TempDir::new("pid1");
    let (port, metrics) = (free_port(), free_port());
    // Each `(sleep 0.3 &)` leaves an orphan: its parent subshell exits at once, so the sleep is
    // re-parented to PID 1, corral, which must reap it when it exits.
    let cfg = format!(
        r#"command = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do (sleep 0.3 &); done; exec python3 {worker}"]
instances = 2
listen = ["127.0.0.1:{port}"]
[stop]
drain = "2s"
[logs]
format = "json"
[metrics]
listen = "127.0.0.1:{metrics}"
min_ready = 2
"#,
        worker = worker_py()
    );
    std::fs::write(dir.join("pool.toml"), cfg).unwrap();
    let unshare = Command::new("unshare")
        .args(["--fork", "--pid", "--mount-proc", CORRAL, "run", "-c"])
        .arg(dir.join("pool.toml"))
        .env("CORRAL_RUNTIME_ROOT", dir.join("run"))
        .env("CORRAL_LOG", "debug")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .expect("unshare (util-linux)");
    let mut unshare = Pid1 { child: unshare, dir: &dir };
    let log = || std::fs::read_to_string(dir.join("stdout")).unwrap_or_default();
    // corral, as seen from here: unshare's child.
    let master =
        wait_for("corral in its PID namespace", TIMEOUT, || children(unshare.child.id() as i32).first().copied());
    wait_until("2 workers ready", TIMEOUT, || {
        assert!(unshare.child.try_wait().ok().flatten().is_none(), "corral exited before its workers were ready");
        http(metrics, "/ready").is_some_and(|(c, _)| c == 200)
    });
    assert!(log().contains("running as the container's init (pid 1)"), "{}", log());
    // The orphans ran as corral's children and are reaped: no zombie, no sleep left.
    wait_until("every orphan reaped", TIMEOUT, || {
        children(master).iter().all(|c| proc_state(*c) != Some('Z') && comm(*c) != "sleep")
    });
    // ...by corral: it says so for each process that was not a worker.
    wait_until("corral reaped the 16 orphans", TIMEOUT, || log().matches("reaped a stray process").count() >= 16);

    // SIGTERM: draining. The pool still serves; /health and /ready say 503; /live 200.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(master), Signal::SIGTERM).unwrap();
    wait_until("health says draining", TIMEOUT, || http(metrics, "/health").is_some_and(|(c, _)| c == 503));
    let (code, body) = http(metrics, "/ready").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"status\":\"draining\""), "{body}");
    assert_eq!(http(metrics, "/live").map(|(c, _)| c), Some(200));
    assert!(get(format!("127.0.0.1:{port}").parse().unwrap()).is_ok(), "still serving while draining");
    let status = wait_for("corral to exit", TIMEOUT, || unshare.child.try_wait().ok().flatten());
    assert_eq!(
        status.code(),
        Some(0),
        "{}\n{}",
        log(),
        std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
    );

    // Every line on stdout is one JSON object: the master's and the workers'.
    let text = log();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["timestamp"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(text.contains("draining for 2s before stopping"), "{text}");
    assert!(text.contains("\"pool\":\"pool\""), "worker lines carry their pool: {text}");
    assert!(text.contains("all workers stopped, exiting with 0"), "{text}");
    assert!(std::fs::read_to_string(dir.join("stderr")).unwrap_or_default().is_empty());
}

/// `unshare` and the corral in it: killed when the test ends, whatever happened, with what corral
/// printed shown when it failed.
struct Pid1<'a> {
    child: std::process::Child,
    dir: &'a TempDir,
}

impl Drop for Pid1<'_> {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // corral is unshare's child: SIGKILL to it (PID 1 of its namespace) ends the namespace.
            for pid in children(self.child.id() as i32) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            for name in ["stdout", "stderr"] {
                let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                eprintln!("---- corral's {name} ----\n{text}");
            }
        }
    }
}

/// Liveness and readiness apart: /ready needs `min_ready` workers, /health one, /live only a
/// master that answers.
#[test]
fn ready_needs_min_ready_workers_and_live_only_the_master() {
    let metrics = free_port();
    let cfg = format!(
        "command = [\"python3\", \"{{worker}}\", \"--ready-after\", \"1500\"]\ninstances = 2\n\
         listen = [\"127.0.0.1:{}\"]\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\nmin_ready = \"100%\"\n",
        free_port()
    );
    let mut m = Master::start("live-ready", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let workers = m.wait_workers(2);
    assert_eq!(http(metrics, "/ready").map(|(c, _)| c), Some(200));
    // A worker dies; its replacement takes 1.5 s to be ready: meanwhile /ready (2 of 2 needed)
    // answers 503, /health (1 needed) and /live 200.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(workers[0]), Signal::SIGKILL).unwrap();
    wait_until("/ready turns 503", TIMEOUT, || http(metrics, "/ready").is_some_and(|(c, _)| c == 503));
    let (code, body) = http(metrics, "/health").unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(metrics, "/live").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"alive\""), "{body}");
    wait_until("/ready back to 200", TIMEOUT, || http(metrics, "/ready").is_some_and(|(c, _)| c == 200));
}
