//! What a worker gets, under socket activation and without it: sockets at fd 3.. with
//! LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, NOTIFY_SOCKET pointing at the master, the CORRAL_*
//! variables, and no descriptor or variable of the master's.

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixStream;

use common::*;
use serde_json::Value;

fn env<'a>(report: &'a Value, key: &str) -> Option<&'a str> {
    report["env"][key].as_str()
}

fn check_worker(report: &Value, slot: usize, fds: usize, names: &str, fake_notify: &str) {
    let pid = report["pid"].as_i64().unwrap();
    assert_eq!(env(report, "LISTEN_PID"), Some(pid.to_string().as_str()), "LISTEN_PID is the worker's own pid");
    assert_eq!(env(report, "LISTEN_FDS"), Some(fds.to_string().as_str()));
    assert_eq!(env(report, "LISTEN_FDNAMES"), Some(names));
    let want_fds: Vec<i64> = (0..3 + fds as i64).collect();
    let got_fds: Vec<i64> = report["fds"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(got_fds, want_fds, "exactly stdin/out/err and the sockets: {}", report["fd_targets"]);
    for fd in 3..3 + fds {
        let target = report["fd_targets"][fd.to_string()].as_str().unwrap();
        assert!(target.starts_with("socket:"), "fd {fd} is {target}");
    }
    assert_eq!(report["fd_targets"]["0"].as_str(), Some("/dev/null"));
    let notify = env(report, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET set");
    assert_ne!(notify, fake_notify, "the master's own NOTIFY_SOCKET must not leak");
    assert!(notify.ends_with("/run/pool/notify.sock"), "{notify}");
    assert_eq!(env(report, "CORRAL_WORKER"), Some(slot.to_string().as_str()));
    assert_eq!(env(report, "CORRAL_GENERATION"), Some("1"));
    assert_eq!(env(report, "CORRAL_NAME"), Some("pool"));
    assert_eq!(env(report, "NODE_APP_INSTANCE"), Some(slot.to_string().as_str()));
    assert_eq!(env(report, "APP_MODE"), Some("test"));
    assert_eq!(env(report, "JOURNAL_STREAM"), None);
    assert_eq!(env(report, "WATCHDOG_USEC"), None);
    assert_eq!(report["pgid"], report["pid"], "own process group");
    assert_eq!(report["blocked"], serde_json::json!([]), "no blocked signals");
}

const CONFIG: &str = r#"
command = ["python3", "{worker}", "--report", "{dir}/report-{slot}.json"]
instances = 2
workdir = "{dir}"
instance_var = "NODE_APP_INSTANCE"
env = { APP_MODE = "test" }
"#;

#[test]
fn socket_activation_hands_workers_the_sockets_exactly_like_systemd() {
    let port = free_port();
    let dir = TempDir::new("sockpath");
    let unix = dir.join("admin.sock");
    let opts = Options {
        activate: vec![format!("127.0.0.1:{port}"), unix.display().to_string()],
        fdnames: vec!["http".into(), "admin".into()],
        ..Options::default()
    };
    let mut m = Master::start("activate", CONFIG, opts);
    let fake = m.systemd().path.display().to_string();
    // Like systemd, socket-activate starts the service on the first connection: this request
    // waits in the accept queue until a worker takes it.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let body = wait_for("the first connection to be answered", TIMEOUT, || get(addr).ok());
    assert!(body.starts_with("worker "), "{body}");
    m.systemd().wait("READY=1");
    assert_eq!(m.systemd().wait_status("2/2"), "2/2 workers ready · generation 1 · 0 restarts");
    for slot in 0..2 {
        let report = read_report(&m.dir.join(&format!("report-{slot}.json")));
        check_worker(&report, slot, 2, "http:admin", &fake);
        assert_eq!(report["cwd"].as_str(), Some(m.dir.path().to_str().unwrap()));
    }
    let body = get(addr).expect("a worker answers on the activated TCP socket");
    assert!(m.workers().contains(&answer_pid(&body).unwrap()), "{body}");
    UnixStream::connect(&unix).expect("the activated unix socket is listening");
    assert_eq!(threads(m.pid()), 1, "the master is single-threaded");
    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(m.wait_exit(), Some(0));
}

#[test]
fn without_activation_the_master_binds_listen_itself() {
    let port = free_port();
    let config = format!("{CONFIG}listen = [\"127.0.0.1:{port}\", \"unix:{{dir}}/sub/http.sock\"]\n");
    let mut m = Master::start("bind", &config, Options::default());
    let fake = m.systemd().path.display().to_string();
    m.systemd().wait("READY=1");
    let names = format!("127.0.0.1_{port}:{}/sub/http.sock", m.dir.path().display());
    for slot in 0..2 {
        let report = read_report(&m.dir.join(&format!("report-{slot}.json")));
        check_worker(&report, slot, 2, &names, &fake);
    }
    let body = get(format!("127.0.0.1:{port}").parse().unwrap()).expect("answer");
    assert!(body.starts_with("worker "), "{body}");
    UnixStream::connect(m.dir.join("sub/http.sock")).expect("unix socket bound");
    m.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(m.wait_exit(), Some(0));
}

#[test]
fn an_fd_that_is_not_a_listening_socket_is_a_clear_error() {
    let dir = TempDir::new("notsock");
    let cfg = dir.join("pool.toml");
    std::fs::write(&cfg, format!("command = [\"python3\", \"{}\"]\n", worker_py())).unwrap();
    let script = format!(
        "exec 3</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web exec {CORRAL} run -c {}",
        cfg.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("RUNTIME_DIRECTORY", dir.join("run"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("fd 3 (name \"web\") passed by systemd is not a listening socket")
            && stderr.contains("ListenStream="),
        "{stderr}"
    );
}

#[test]
fn no_sockets_at_all_is_explained() {
    let mut m = Master::start("nosock", "command = [\"true\"]\n", Options::default());
    assert_eq!(m.wait_exit(), Some(1));
    assert!(m.log_text().contains("no sockets to listen on"), "{}", m.log_text());
}
