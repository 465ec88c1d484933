//! The ready modes the master observes itself, with real processes: "listen" (a worker is
//! ready when a process of its group waits for connections on an inherited socket, whatever
//! the wait: accept, select, poll, epoll, or a child accepting for its parent) and "ipc"
//! (Node's `process.send('ready')`).

mod common;

use std::path::Path;

use common::*;

const ACCEPTOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/acceptor.py");
const IPC_WORKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ipc-worker.js");

fn listen_pool(args: &str, extra: &str) -> String {
    let port = free_port();
    format!(
        r#"command = ["python3", "{ACCEPTOR}", "--marker", "{{dir}}/marks"{args}]
listen = ["127.0.0.1:{port}"]
instances = 1
{extra}
[ready]
mode = "listen"
"#
    )
}

/// Pids that wrote a marker (just before they started to wait for connections).
fn marked(dir: &Path) -> Vec<i32> {
    std::fs::read_dir(dir.join("marks"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn port_of(m: &Master) -> u16 {
    let text = std::fs::read_to_string(&m.config).unwrap();
    let at = text.find("127.0.0.1:").unwrap() + "127.0.0.1:".len();
    text[at..].split('"').next().unwrap().parse().unwrap()
}

/// A worker that warms up first is ready only once it waits for connections, and then serves.
fn ready_when_waiting(how: &str) {
    let cfg = listen_pool(&format!(", \"--wait\", \"{how}\", \"--after\", \"700\""), "");
    let mut m = Master::start(&format!("listen-{how}"), &cfg, Options::default());
    std::fs::create_dir_all(m.dir.join("marks")).unwrap();
    m.systemd().wait("READY=1");
    let marks = marked(m.dir.path());
    assert_eq!(marks.len(), 1, "ready before the worker waited for connections ({how})");
    let addr = format!("127.0.0.1:{}", port_of(&m)).parse().unwrap();
    let body = get(addr).expect("the ready worker answers");
    assert_eq!(body.trim().parse::<i32>().ok(), Some(marks[0]), "{body}");
    let log = m.log_text();
    assert!(log.contains("worker is accepting connections"), "{log}");
}

#[test]
fn listen_mode_sees_a_blocking_accept() {
    ready_when_waiting("accept");
}

#[test]
fn listen_mode_sees_select() {
    ready_when_waiting("select");
}

#[test]
fn listen_mode_sees_poll() {
    ready_when_waiting("poll");
}

#[test]
fn listen_mode_sees_an_epoll_set() {
    ready_when_waiting("epoll");
}

#[test]
fn listen_mode_sees_a_child_accepting_for_its_parent() {
    ready_when_waiting("child");
}

/// READY=1 from a worker that does not wait for connections does not make it ready in
/// "listen" mode (gunicorn's arbiter sends it before its workers accept): it is not ready in
/// time, and the message says what "listen" waits for.
#[test]
fn listen_mode_takes_only_what_it_sees() {
    let cfg =
        listen_pool(", \"--never\", \"--notify\"", "[restart]\ndelay = \"10ms\"\nmax_restarts = 1\nwindow = \"1h\"\n")
            .replace("mode = \"listen\"", "mode = \"listen\"\ntimeout = \"1s\"");
    let mut m = Master::start("listen-never", &cfg, Options::default());
    m.wait_log("not ready after 1s: with ready.mode = \"listen\" a process of the worker must wait for connections");
    assert_eq!(m.wait_exit(), Some(1), "gives up");
    assert_eq!(m.systemd().count("READY=1"), 0);
}

/// A rolling reload in "listen" mode replaces each worker only after its successor accepts.
#[test]
fn listen_mode_reload_waits_for_each_new_worker() {
    let cfg =
        listen_pool(", \"--wait\", \"epoll\", \"--after\", \"300\"", "").replace("instances = 1", "instances = 2");
    let mut m = Master::start("listen-reload", &cfg, Options::default());
    std::fs::create_dir_all(m.dir.join("marks")).unwrap();
    m.systemd().wait("READY=1");
    let first = m.wait_workers(2);
    let (code, out, err) = m.cli(&["reload", "pool"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let now = m.wait_workers(2);
    let marks = marked(m.dir.path());
    for pid in &now {
        assert!(!first.contains(pid), "every worker was replaced");
        assert!(marks.contains(pid), "new worker {pid} was taken as ready before it accepted: {marks:?}");
    }
}

fn ipc_pool(extra_env: &str, timeout: &str) -> String {
    let port = free_port();
    format!(
        r#"command = ["node", "{IPC_WORKER}"]
listen = ["127.0.0.1:{port}"]
instances = 2
env = {{ MARKER = "{{dir}}/marks"{extra_env} }}
[restart]
delay = "10ms"
max_restarts = 1
window = "1h"
[ready]
mode = "ipc"
timeout = "{timeout}"
"#
    )
}

#[test]
fn ipc_mode_takes_process_send_ready() {
    let mut m = Master::start("ipc", &ipc_pool(", READY_AFTER = \"500\"", "30s"), Options::default());
    std::fs::create_dir_all(m.dir.join("marks")).unwrap();
    m.systemd().wait("READY=1");
    let workers = m.wait_workers(2);
    let marks = marked(m.dir.path());
    for pid in &workers {
        assert!(marks.contains(pid), "worker {pid} ready before process.send('ready'): {marks:?}");
    }
    let addr = format!("127.0.0.1:{}", port_of(&m)).parse().unwrap();
    assert!(get(addr).is_ok());
    // The channel is not the worker's stdin/out and not a listening socket: LISTEN_FDS is 1.
    let (code, out, _) = m.cli(&["status", "pool", "--json"]);
    assert_eq!(code, Some(0));
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["ready"], 2, "{out}");
}

/// A worker that writes 20 MiB of messages to the channel before 'ready' does not stall the
/// master: `corral status` answers meanwhile, and the 'ready' after the flood still counts.
#[test]
fn ipc_flood_does_not_stall_the_master() {
    let mut m = Master::start("ipc-flood", &ipc_pool(", FLOOD = \"20000\"", "60s"), Options::default());
    std::fs::create_dir_all(m.dir.join("marks")).unwrap();
    m.wait_workers(2);
    let start = std::time::Instant::now();
    let (code, _, err) = m.cli(&["status", "pool"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(start.elapsed() < TIMEOUT);
    m.systemd().wait("READY=1");
    assert_eq!(marked(m.dir.path()).len(), 2);
}

/// A program that is not Node never opens the channel: not ready in time, and the message
/// says why.
#[test]
fn ipc_mode_with_a_program_that_is_not_node() {
    let port = free_port();
    let cfg = format!(
        "command = [\"python3\", \"{ACCEPTOR}\"]\nlisten = [\"127.0.0.1:{port}\"]\n[restart]\ndelay = \"10ms\"\n\
         max_restarts = 1\nwindow = \"1h\"\n[ready]\nmode = \"ipc\"\ntimeout = \"1s\"\n"
    );
    let mut m = Master::start("ipc-python", &cfg, Options::default());
    m.wait_log("with ready.mode = \"ipc\" the Node worker must call process.send('ready')");
    assert_eq!(m.wait_exit(), Some(1));
}

/// `corral upgrade` hands the IPC channels over: workers that keep writing to theirs do not see
/// it close (Node would crash on ERR_IPC_CHANNEL_CLOSED), and a worker started by the new image
/// is made ready by its 'ready' message.
#[test]
fn ipc_channels_survive_an_upgrade() {
    let mut m = Master::start("ipc-upgrade", &ipc_pool(", PING_EVERY = \"10\"", "30s"), Options::default());
    std::fs::create_dir_all(m.dir.join("marks")).unwrap();
    m.systemd().wait("READY=1");
    let before = m.wait_workers(2);
    let (code, out, err) = m.cli(&["upgrade", "pool"]);
    assert_eq!(code, Some(0), "{out}{err}");
    m.wait_log("took over from corral");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(before[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    let status = || -> serde_json::Value {
        let (_, out, _) = m.cli(&["status", "pool", "--json"]);
        serde_json::from_str(&out).unwrap_or_default()
    };
    let replaced = wait_for("a replacement made ready over IPC by the new image", TIMEOUT, || {
        let s = status();
        let pids: Vec<i64> = s["workers"].as_array()?.iter().filter_map(|w| w["pid"].as_i64()).collect();
        (s["ready"] == 2 && !pids.contains(&i64::from(before[0]))).then_some(pids)
    });
    assert!(replaced.contains(&i64::from(before[1])), "the other worker kept its channel: {replaced:?}");
    assert!(marked(m.dir.path()).len() >= 3, "the replacement sent 'ready'");
}

/// Without `[ready]`, a worker is ready when it is seen accepting: a worker that says READY=1
/// long before it listens is not trusted (gunicorn's arbiter does that), and one that never says
/// it is ready but serves is. `corral check` names the mode a config gets.
#[test]
fn the_default_ready_mode_waits_until_the_worker_accepts() {
    let opts = || Options { default_ready_mode: true, ..Options::default() };
    // Serves at once, never sends READY=1: ready by listening.
    let cfg = format!(
        "command = [\"python3\", \"{{worker}}\", \"--never-ready\"]\ninstances = 1\nlisten = [\"127.0.0.1:{}\"]\n",
        free_port()
    );
    let mut m = Master::start("default-listen", &cfg, opts());
    m.systemd().wait("READY=1");
    let (code, out, err) = m.cli(&["check", "-c", m.config.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ready.mode = \"listen\""), "{out}");
    drop(m);

    // Says READY=1 at once but waits 1.5 s before it listens: not ready before it accepts.
    let port = free_port();
    let cfg = format!(
        "command = [\"python3\", \"{ACCEPTOR}\", \"--marker\", \"{{dir}}/marks\", \"--notify\", \"--after\", \"1500\"]\n\
         listen = [\"127.0.0.1:{port}\"]\ninstances = 1\n"
    );
    let mut m = Master::start("default-early", &cfg, opts());
    std::fs::create_dir_all(m.dir.join("marks")).unwrap();
    m.systemd().wait("READY=1");
    let pids = marked(m.dir.path());
    assert_eq!(pids.len(), 1, "ready only once it waited for connections: {pids:?}");
}

#[test]
fn status_tells_a_process_that_holds_the_socket_from_one_that_accepts() {
    // Holds the socket and never waits on it: starting for good, "not accepting".
    let cfg = format!(
        "command = [\"python3\", \"{ACCEPTOR}\", \"--never\"]\nlisten = [\"127.0.0.1:{}\"]\ninstances = 1\n\
         [ready]\nmode = \"listen\"\ntimeout = \"10min\"\n",
        free_port()
    );
    let m = Master::start("not-accepting", &cfg, Options { default_ready_mode: true, ..Options::default() });
    let pid = m.wait_workers(1)[0];
    let w = wait_for("the worker holding the socket", TIMEOUT, || {
        let (code, out, _) = m.cli(&["status", "pool", "--json"]);
        let st: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| code == Some(0))?;
        let w = st["workers"][0].clone();
        (w["listening_pids"] == serde_json::json!([pid])).then_some(w)
    });
    assert_eq!(w["state"], "starting", "{w}");
    assert_eq!(w["accepting_pids"], serde_json::json!([]), "{w}");
    let (_, table, _) = m.cli(&["status", "pool"]);
    assert!(table.contains(&format!("{pid} (not accepting)")), "{table}");
    drop(m);

    // Waits in accept(): ready, and accepting.
    let cfg = format!(
        "command = [\"python3\", \"{ACCEPTOR}\", \"--wait\", \"accept\"]\nlisten = [\"127.0.0.1:{}\"]\n\
         instances = 1\n[ready]\nmode = \"listen\"\n",
        free_port()
    );
    let mut m = Master::start("accepting", &cfg, Options { default_ready_mode: true, ..Options::default() });
    m.systemd().wait("READY=1");
    let pid = m.wait_workers(1)[0];
    let (code, out, err) = m.cli(&["status", "pool", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["workers"][0]["accepting_pids"], serde_json::json!([pid]), "{st}");
    let (_, table, _) = m.cli(&["status", "pool"]);
    assert!(!table.contains("not accepting"), "{table}");
}
