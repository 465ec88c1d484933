//! Test harness: start the real `corral` binary in a temp dir, act as systemd (sockets at fd 3..
//! via `systemd-socket-activate`, a datagram NOTIFY_SOCKET we read), wait on conditions, drive
//! HTTP load, and inspect processes through /proc. Every process a test starts is killed when the
//! test ends, even when it fails.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CORRAL: &str = env!("CARGO_BIN_EXE_corral");
/// Generous: CI machines are slow and shared. Tests wait on conditions, never on a fixed sleep.
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub fn worker_py() -> String {
    format!("{}/tests/worker.py", env!("CARGO_MANIFEST_DIR"))
}

/// Poll `cond` every 20ms until it holds; panic with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll until `f` returns Some.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory removed at drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "corral-it-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write `content` to `path` with `mode`, for `path` to be executed, without ever opening it
/// for writing in this process: another test thread forking meanwhile would inherit that
/// descriptor until its own exec, and executing the file would fail with ETXTBSY ("Text file
/// busy") until then. A child process (`cat`, fed through a pipe) writes it instead.
pub fn write_executable(path: &Path, content: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let mut cat =
        Command::new("sh").args(["-c", "cat > \"$1\"", "sh"]).arg(path).stdin(Stdio::piped()).spawn().expect("run cat");
    cat.stdin.take().expect("cat's stdin").write_all(content).expect("write to cat");
    assert!(cat.wait().expect("wait for cat").success(), "cat > {path:?}");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Copy the executable `from` to `to` the same way (`cp`, in a child process).
pub fn copy_executable(from: &Path, to: &Path) {
    let out = Command::new("cp").arg(from).arg(to).output().expect("run cp");
    assert!(out.status.success(), "cp {from:?} {to:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Copies of the corral binary and the test worker that another user (`nobody`) can read and run,
/// wherever the checkout lives: in a clone under /root (mode 700 on Debian) the originals are out
/// of reach. Every test that runs something as another user takes it from here. Removed at drop.
pub struct ForOtherUsers {
    dir: TempDir,
}

impl ForOtherUsers {
    pub fn new() -> ForOtherUsers {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("for-others");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod the copies' dir");
        for (from, name, mode) in [(CORRAL.to_string(), "corral", 0o755), (worker_py(), "worker.py", 0o644)] {
            let to = dir.join(name);
            copy_executable(Path::new(&from), &to);
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).expect("chmod a copy");
        }
        ForOtherUsers { dir }
    }
    /// The corral binary.
    pub fn corral(&self) -> PathBuf {
        self.dir.join("corral")
    }
    /// tests/worker.py.
    pub fn worker(&self) -> PathBuf {
        self.dir.join("worker.py")
    }
    /// The folder holding the copies (0755).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for ForOtherUsers {
    fn default() -> Self {
        Self::new()
    }
}

/// A free TCP port on loopback (bound and released; tests use it right away).
/// A loopback port nothing listens on, never the same twice in one test process: the kernel may
/// hand a port just released to the next bind to port 0, and two tests running in parallel
/// must not both be given it.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The datagram socket systemd would read: the master's NOTIFY_SOCKET. Like systemd, it is
/// drained continuously (by a thread), so the master never finds it full.
pub struct FakeSystemd {
    pub path: PathBuf,
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pub messages: Vec<String>,
}

impl FakeSystemd {
    pub fn new(dir: &TempDir) -> FakeSystemd {
        let path = dir.join("systemd-notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind fake notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, st) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            while !st.load(Ordering::SeqCst) {
                if let Ok(n) = sock.recv(&mut buf) {
                    if let Ok(mut v) = r.lock() {
                        v.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                }
            }
        });
        FakeSystemd { path, received, stop, messages: Vec::new() }
    }
    fn drain(&mut self) {
        if let Ok(mut v) = self.received.lock() {
            self.messages.append(&mut v);
        }
    }
    /// Wait for a datagram that contains `needle`; returns it.
    pub fn wait(&mut self, needle: &str) -> String {
        wait_for(&format!("notification containing {needle:?}"), TIMEOUT, || {
            self.drain();
            self.messages.iter().find(|m| m.contains(needle)).cloned()
        })
    }
    /// Wait for the latest STATUS= to contain `needle`.
    pub fn wait_status(&mut self, needle: &str) -> String {
        wait_for(&format!("STATUS containing {needle:?}"), TIMEOUT, || {
            self.drain();
            self.last_status().filter(|s| s.contains(needle))
        })
    }
    /// Wait for the latest STATUS= to be exactly `want`.
    pub fn wait_status_eq(&mut self, want: &str) {
        wait_for(&format!("STATUS = {want:?}"), TIMEOUT, || {
            self.drain();
            (self.last_status().as_deref() == Some(want)).then_some(())
        })
    }
    pub fn last_status(&mut self) -> Option<String> {
        self.drain();
        self.messages.iter().rev().find_map(|m| m.lines().find_map(|l| l.strip_prefix("STATUS=")).map(str::to_string))
    }
    pub fn count(&mut self, line: &str) -> usize {
        self.drain();
        self.messages.iter().filter(|m| m.lines().any(|l| l == line)).count()
    }
    pub fn clear(&mut self) {
        self.drain();
        self.messages.clear();
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub struct Options {
    /// Sockets for `systemd-socket-activate -l` (socket activation); empty: corral binds.
    pub activate: Vec<String>,
    pub fdnames: Vec<String>,
    pub notify: bool,
    pub env: Vec<(String, String)>,
    /// Prefix the command, e.g. `taskset -c 0`.
    pub wrapper: Vec<String>,
    /// Discard the master's stderr (for tests that flood it).
    pub discard_log: bool,
    /// The master's stderr goes here instead of `master.log` (a pipe the test controls, say).
    pub stderr: Option<std::os::fd::OwnedFd>,
    /// Run this binary instead of the one cargo built (a copy that `corral upgrade` replaces).
    pub binary: Option<String>,
    /// Keep the config's ready mode as it is, the default included. Otherwise a config that sets
    /// none gets `"notify"`: tests/worker.py speaks the notify protocol, and the tests drive its
    /// readiness with it (`--ready-after`, `--never-ready`), which the default ("listen") would
    /// not wait for.
    pub default_ready_mode: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            activate: vec![],
            fdnames: vec![],
            notify: true,
            env: vec![],
            wrapper: vec![],
            discard_log: false,
            stderr: None,
            binary: None,
            default_ready_mode: false,
        }
    }
}

/// A running `corral run`. Killing it (and every process under it) happens on drop.
pub struct Master {
    pub child: Child,
    pub dir: TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
    pub systemd: Option<FakeSystemd>,
    pub exit: Option<std::process::ExitStatus>,
    known: Arc<Mutex<Vec<i32>>>,
}

impl Master {
    /// Write `config` (with `{worker}` and `{dir}` replaced) and start `corral run` on it.
    pub fn start(tag: &str, config: &str, mut opts: Options) -> Master {
        let dir = TempDir::new(tag);
        let mut text = config.replace("{worker}", &worker_py()).replace("{dir}", &dir.0.to_string_lossy());
        if !opts.default_ready_mode {
            text = with_notify_by_default(&text);
        }
        let config = dir.join("pool.toml");
        std::fs::write(&config, text).expect("write config");
        let log = dir.join("master.log");
        let systemd = opts.notify.then(|| FakeSystemd::new(&dir));
        let mut argv: Vec<String> = opts.wrapper.clone();
        if !opts.activate.is_empty() {
            argv.push("systemd-socket-activate".into());
            for l in &opts.activate {
                argv.push(format!("--listen={l}"));
            }
            if !opts.fdnames.is_empty() {
                argv.push(format!("--fdname={}", opts.fdnames.join(":")));
            }
            if let Some(s) = &systemd {
                argv.push(format!("--setenv=NOTIFY_SOCKET={}", s.path.display()));
            }
            for var in ["PATH", "CORRAL_LOG", "CORRAL_RUNTIME_ROOT", "HOME"] {
                argv.push(format!("--setenv={var}"));
            }
            for (k, v) in &opts.env {
                argv.push(format!("--setenv={k}={v}"));
            }
        }
        argv.push(opts.binary.clone().unwrap_or_else(|| CORRAL.into()));
        argv.extend(["run".into(), "-c".into(), config.to_string_lossy().into_owned()]);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("master.out")).expect("stdout file"))
            .stderr(if let Some(fd) = opts.stderr.take() {
                Stdio::from(fd)
            } else if opts.discard_log {
                Stdio::null()
            } else {
                Stdio::from(std::fs::File::create(&log).expect("log file"))
            })
            .env("CORRAL_LOG", "debug")
            .env("CORRAL_RUNTIME_ROOT", dir.join("run"))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .process_group(0);
        if let Some(s) = &systemd {
            cmd.env("NOTIFY_SOCKET", &s.path);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start corral");
        Master { child, dir, config, log, systemd, exit: None, known: Arc::new(Mutex::new(Vec::new())) }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn systemd(&mut self) -> &mut FakeSystemd {
        self.systemd.as_mut().expect("started with a fake systemd")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str) {
        wait_until(&format!("master log containing {needle:?}"), TIMEOUT, || self.log_text().contains(needle));
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal the master");
    }

    /// Live (non-zombie) child processes of the master, but for the watcher of its death
    /// (`corral watch-master`).
    pub fn workers(&self) -> Vec<i32> {
        let w = children(self.pid())
            .into_iter()
            .filter(|p| proc_state(*p).is_some_and(|s| s != 'Z') && !is_watcher(*p))
            .collect::<Vec<_>>();
        self.known.lock().map(|mut k| k.extend(w.iter().copied())).ok();
        w
    }

    pub fn wait_workers(&self, n: usize) -> Vec<i32> {
        wait_for(&format!("{n} live workers"), TIMEOUT, || {
            let w = self.workers();
            (w.len() == n).then_some(w)
        })
    }

    /// Wait for the master to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let status = wait_for("the master to exit", TIMEOUT, || self.child.try_wait().ok().flatten());
        self.exit = Some(status);
        status.code()
    }

    /// `corral ARGS` as its user would run it, pointed at this master's runtime root:
    /// (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(CORRAL)
            .args(args)
            .env("CORRAL_RUNTIME_ROOT", self.dir.join("run"))
            .env("NO_COLOR", "1")
            .output()
            .expect("run corral");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if self.exit.is_none() && self.running() {
            let mut pids = descendants(self.pid());
            pids.extend(self.known.lock().map(|k| k.clone()).unwrap_or_default());
            let _ = self.child.kill();
            let _ = self.child.wait();
            for p in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
            }
        }
        if std::thread::panicking() {
            eprintln!("---- master log ({}) ----\n{}", self.log.display(), self.log_text());
        }
    }
}

/// Whether `pid` is a master's watcher (`corral watch-master RECORD`).
pub fn is_watcher(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"watch-master"))
}

/// The watcher of the master `pid`'s death, once it runs.
pub fn watcher_of(pid: i32) -> i32 {
    wait_for("the master's watcher", TIMEOUT, || children(pid).into_iter().find(|p| is_watcher(*p)))
}

/// Direct children of `pid`, from /proc.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if proc_ppid(p) == Some(pid) {
            out.push(p);
        }
    }
    out.sort();
    out
}

pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = s.rfind(')')?;
    Some(s[close + 2..].split_whitespace().map(str::to_string).collect())
}

pub fn proc_state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

pub fn proc_ppid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

pub fn alive(pid: i32) -> bool {
    proc_state(pid).is_some_and(|s| s != 'Z')
}

pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Bytes a process has written so far (/proc/PID/io `wchar`).
pub fn written(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("wchar:").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

pub fn threads(pid: i32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse().unwrap_or(0))))
        .unwrap_or(0)
}

/// What the test worker reported with `--report`.
pub fn read_report(path: &Path) -> serde_json::Value {
    let text = wait_for(&format!("worker report {}", path.display()), TIMEOUT, || std::fs::read_to_string(path).ok());
    serde_json::from_str(&text).expect("report is JSON")
}

/// One GET over a fresh connection; returns the body.
pub fn get(addr: SocketAddr) -> std::io::Result<String> {
    get_path(addr, "/")
}

/// GET `path`; the body of a 200 answer.
pub fn get_path(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    if !resp.starts_with("HTTP/1.1 200") && !resp.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!("bad response: {resp:?}")));
    }
    Ok(resp.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

/// The pid in a test worker's answer ("worker <pid> slot ...").
pub fn answer_pid(body: &str) -> Option<i32> {
    body.split_whitespace().nth(1)?.parse().ok()
}

/// Read one HTTP response with Content-Length from a keep-alive connection.
fn read_response(s: &mut TcpStream) -> std::io::Result<(usize, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {} bytes", head.len()),
            ));
        }
        head.push(byte[0]);
    }
    let head_text = String::from_utf8_lossy(&head).into_owned();
    if !head_text.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("bad response: {head_text:?}")));
    }
    let len: usize = head_text
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let close = head_text.to_ascii_lowercase().contains("connection: close");
    Ok((if close { 1 } else { 0 }, String::from_utf8_lossy(&body).into_owned()))
}

#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    pub ok: usize,
    pub failed: usize,
    /// Keep-alive requests resent on a new connection because the server closed the idle one
    /// before any byte of a response (RFC 9112 §9.3.1: clients retry idempotent requests then).
    pub retried_idle_close: usize,
    pub errors: BTreeMap<String, usize>,
    pub pids: BTreeMap<i32, usize>,
}

/// Hammer `addr` from `clients` threads until `stop` is set (or `max` requests each, or 120s):
/// a bounded load loop that stops by itself.
pub fn load(
    addr: SocketAddr,
    clients: usize,
    keep_alive: bool,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<LoadResult> {
    std::thread::spawn(move || {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || client_loop(addr, keep_alive, &stop, 200_000, Duration::from_secs(120)))
            })
            .collect();
        let mut total = LoadResult::default();
        for h in handles {
            let r = h.join().unwrap_or_default();
            total.ok += r.ok;
            total.failed += r.failed;
            total.retried_idle_close += r.retried_idle_close;
            for (k, v) in r.errors {
                *total.errors.entry(k).or_default() += v;
            }
            for (k, v) in r.pids {
                *total.pids.entry(k).or_default() += v;
            }
        }
        total
    })
}

fn client_loop(
    addr: SocketAddr,
    keep_alive: bool,
    stop: &std::sync::atomic::AtomicBool,
    max: usize,
    limit: Duration,
) -> LoadResult {
    let mut r = LoadResult::default();
    let start = Instant::now();
    let mut conn: Option<TcpStream> = None;
    let fail = |r: &mut LoadResult, e: String| {
        r.failed += 1;
        *r.errors.entry(e).or_default() += 1;
    };
    while !stop.load(Ordering::SeqCst) && r.ok + r.failed < max && start.elapsed() < limit {
        if !keep_alive {
            match get(addr) {
                Ok(body) => {
                    r.ok += 1;
                    *r.pids.entry(answer_pid(&body).unwrap_or(0)).or_default() += 1;
                }
                Err(e) => fail(&mut r, e.to_string()),
            }
            continue;
        }
        let reused = conn.is_some();
        if conn.is_none() {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    conn = Some(s);
                }
                Err(e) => {
                    fail(&mut r, format!("connect: {e}"));
                    continue;
                }
            }
        }
        let Some(s) = conn.as_mut() else { continue };
        let result = s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").and_then(|_| read_response(s));
        match result {
            Ok((close, body)) => {
                r.ok += 1;
                *r.pids.entry(answer_pid(&body).unwrap_or(0)).or_default() += 1;
                if close == 1 {
                    conn = None;
                }
            }
            Err(e) => {
                conn = None;
                let idle_close = reused
                    && (e.kind() == std::io::ErrorKind::UnexpectedEof && e.to_string() == "closed after 0 bytes"
                        || e.kind() == std::io::ErrorKind::ConnectionReset
                        || e.kind() == std::io::ErrorKind::BrokenPipe);
                if idle_close {
                    r.retried_idle_close += 1;
                } else {
                    fail(&mut r, e.to_string());
                }
            }
        }
    }
    r
}

/// `corral` with arguments, collecting output.
pub fn corral(args: &[&str]) -> std::process::Output {
    Command::new(CORRAL).args(args).env_remove("NOTIFY_SOCKET").output().expect("run corral")
}

/// A pool of two test workers (`tests/worker.py`) on a free loopback port, started and ready
/// (READY=1 seen): what the reload and upgrade tests drive.
pub struct TestPool {
    pub m: Master,
    pub addr: SocketAddr,
}

impl TestPool {
    /// `args`: more worker arguments (`, "--flag"`); `extra`: more config lines.
    pub fn start(tag: &str, args: &str, extra: &str) -> TestPool {
        Self::start_with(tag, args, extra, Options::default())
    }

    pub fn start_with(tag: &str, args: &str, extra: &str, opts: Options) -> TestPool {
        let port = free_port();
        let cfg = format!(
            "command = [\"python3\", \"{{worker}}\"{args}]\nlisten = [\"127.0.0.1:{port}\"]\ninstances = 2\n{extra}"
        );
        let mut m = Master::start(tag, &cfg, opts);
        m.systemd().wait("READY=1");
        TestPool { m, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }

    /// Replace the first `from` in the config with `to`.
    pub fn rewrite(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.m.config).unwrap();
        assert!(text.contains(from), "config has no {from:?}");
        std::fs::write(&self.m.config, text.replacen(from, to, 1)).unwrap();
    }

    /// SIGHUP and wait until systemd has heard the reload end (one more READY=1).
    pub fn reload(&mut self) {
        let before = self.m.systemd().count("READY=1");
        self.m.signal(nix::sys::signal::Signal::SIGHUP);
        wait_for("the reload to finish (READY=1)", TIMEOUT, || {
            (self.m.systemd().count("READY=1") > before).then_some(())
        });
    }

    /// Six answers from the pool, one connection each.
    pub fn answers(&self) -> Vec<String> {
        (0..6).map(|_| get(self.addr).expect("served")).collect()
    }

    /// `corral status --json`.
    pub fn status(&self) -> serde_json::Value {
        let (code, out, err) = self.m.cli(&["status", "pool", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str(&out).expect("status --json is JSON")
    }
}

/// Copy the folder `from` (recursively) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Debian's promtool, unpacked into target/prometheus by scripts/test.sh.
pub fn promtool() -> PathBuf {
    let p = PathBuf::from(format!("{}/target/prometheus/usr/bin/promtool", env!("CARGO_MANIFEST_DIR")));
    assert!(p.exists(), "{} is missing: run scripts/test.sh (it unpacks Debian's prometheus package)", p.display());
    p
}

/// The Node recipe's prom-client, installed once into target/metrics-cache (a temporary folder
/// renamed into place, so parallel runs never see half an install).
pub fn node_modules() -> PathBuf {
    const ROOT: &str = env!("CARGO_MANIFEST_DIR");
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let pkg = std::fs::read_to_string(format!("{ROOT}/examples/metrics/node/package.json")).unwrap();
        let version = pkg.split("\"prom-client\": \"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_string();
        let dir = PathBuf::from(format!("{ROOT}/target/metrics-cache/prom-client-{version}"));
        if !dir.join("node_modules/prom-client/package.json").exists() {
            let tmp = PathBuf::from(format!("{}.{}", dir.display(), std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).unwrap();
            std::fs::copy(format!("{ROOT}/examples/metrics/node/package.json"), tmp.join("package.json")).unwrap();
            let st = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
                .arg(&tmp)
                .status()
                .expect("npm (scripts/test.sh installs it)");
            assert!(st.success(), "npm install prom-client failed");
            if std::fs::rename(&tmp, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&tmp); // another run put it there first
            }
        }
        dir.join("node_modules")
    })
    .clone()
}

/// `config` with `ready.mode = "notify"` when it sets no ready mode (see
/// [`Options::default_ready_mode`]); a config that does not parse is left as it is.
pub fn with_notify_by_default(config: &str) -> String {
    let Ok(table) = config.parse::<toml::Table>() else { return config.to_string() };
    match table.get("ready") {
        Some(r) if r.get("mode").is_some() => config.to_string(),
        Some(_) => config.replacen("[ready]\n", "[ready]\nmode = \"notify\"\n", 1),
        None => format!("{config}\n[ready]\nmode = \"notify\"\n"),
    }
}
