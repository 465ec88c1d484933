//! Operating a pool: `corral status` / `reload` / `scale` over the control socket (and who may
//! use it), journald output read back from a real systemd-journald, memory limit, per-worker
//! watchdog, recycle, and Prometheus `/metrics` + `/health` parsed by a real parser.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::*;
use serde_json::Value;

fn pool(tag: &str, args: &str, extra: &str) -> (Master, SocketAddr) {
    let port = free_port();
    let cfg = format!(
        "command = [\"python3\", \"{{worker}}\"{args}]\nlisten = [\"127.0.0.1:{port}\"]\ninstances = 2\n{extra}"
    );
    let mut m = Master::start(tag, &cfg, Options::default());
    m.systemd().wait("READY=1");
    (m, format!("127.0.0.1:{port}").parse().unwrap())
}

fn status_json(m: &Master) -> Value {
    let (code, out, err) = m.cli(&["status", "pool", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).expect("status --json is JSON")
}

fn restarts(m: &Master, reason: &str) -> u64 {
    status_json(m)["restarts_by_reason"][reason].as_u64().unwrap_or(0)
}

#[test]
fn status_shows_a_table_and_stable_json() {
    let (m, _) = pool("status", "", "[limits]\ninterval = \"200ms\"\n");
    let pids = m.wait_workers(2);
    let (code, out, err) = m.cli(&["status", "pool"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("pool · 2/2 ready · generation 1 · 0 restarts · master pid "), "{out}");
    let header = out.lines().nth(1).unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["SLOT", "PID", "GEN", "STATE", "UPTIME", "RESTARTS", "PROCS", "LISTENING", "RSS", "CPU", "STATUS"]
    );
    for pid in &pids {
        assert!(out.contains(&pid.to_string()), "{out}");
    }
    let j = status_json(&m);
    assert_eq!(j["name"], "pool");
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(j["pid"].as_i64(), Some(m.pid() as i64));
    assert_eq!((j["generation"].as_u64(), j["desired"].as_u64(), j["ready"].as_u64()), (Some(1), Some(2), Some(2)));
    let workers = j["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for (slot, w) in workers.iter().enumerate() {
        assert_eq!(w["slot"].as_u64(), Some(slot as u64));
        assert_eq!(w["state"], "ready");
        assert!(pids.contains(&(w["pid"].as_i64().unwrap() as i32)));
        assert!(w["rss_bytes"].as_u64().unwrap() > 1024 * 1024, "RSS sampled: {w}");
        assert!(w["status"].as_str().unwrap().starts_with("serving as pid"), "the worker's STATUS=: {w}");
        assert_eq!(w["processes"], 1, "{w}");
        assert_eq!(w["listening_pids"], serde_json::json!([w["pid"]]), "{w}");
    }
    // Without a NAME: every pool under the runtime root, as an array.
    let (code, out, _) = m.cli(&["status", "--json"]);
    assert_eq!(code, Some(0));
    let all: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(all.as_array().map(|a| a.len()), Some(1));
}

#[test]
fn reload_waits_and_reports_success_bad_config_and_broken_release() {
    let (m, addr) = pool("clireload", ", \"--fail-if-env\", \"BROKEN\"", "");
    let text = std::fs::read_to_string(&m.config).unwrap();
    let (code, out, err) = m.cli(&["reload", "pool"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "pool: generation 2 serving with 2 workers");
    assert!(get(addr).unwrap().contains("generation 2"));

    std::fs::write(&m.config, text.replace("instances = 2", "instances = 0")).unwrap();
    let (code, _, err) = m.cli(&["reload", "pool"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("pool.toml:3:13: instances must be at least 1"), "{err}");

    std::fs::write(&m.config, text.replace("instances = 2", "instances = 2\nenv = { BROKEN = \"1\" }")).unwrap();
    let (code, _, err) = m.cli(&["reload", "pool"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("reload failed, generation 2 keeps serving: worker 0"), "{err}");
    assert!(err.contains("exited with exit code 4 before it was ready"), "{err}");
    assert!(get(addr).unwrap().contains("generation 2"));

    std::fs::write(&m.config, &text).unwrap();
    let (code, out, err) = m.cli(&["reload", "pool", "--no-wait"]);
    assert_eq!((code, out.trim()), (Some(0), "pool: reload requested"), "{err}");
    let j = status_json(&m);
    assert_eq!(j["reloads_failed"].as_u64(), Some(2));
}

#[test]
fn scale_sets_adds_and_removes_workers() {
    let (mut m, _) = pool("cliscale", "", "");
    let (code, out, err) = m.cli(&["scale", "pool", "+2"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "pool: scaled to 4 workers");
    m.systemd().wait_status("4/4 workers ready");
    assert_eq!(m.cli(&["scale", "pool", "-3"]).0, Some(0));
    m.systemd().wait_status("1/1 workers ready");
    assert_eq!(m.cli(&["scale", "pool", "-5"]).1.trim(), "pool: scaled to 1 workers");
    assert_eq!(m.cli(&["scale", "pool", "3"]).0, Some(0));
    m.systemd().wait_status("3/3 workers ready");
    let (code, _, err) = m.cli(&["scale", "pool", "zero"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid worker count \"zero\""), "{err}");
}

#[test]
fn clear_errors_when_no_pool_runs_or_the_socket_is_stale() {
    let (m, _) = pool("clierr", "", "");
    let (code, _, err) = m.cli(&["status", "nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no pool \"nope\" is running here (no control socket at"), "{err}");
    let stale = m.dir.join("run/ghost");
    std::fs::create_dir_all(&stale).unwrap();
    drop(std::os::unix::net::UnixListener::bind(stale.join("control.sock")).unwrap());
    let (code, _, err) = m.cli(&["reload", "ghost"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("pool \"ghost\" is not running") && err.contains("is stale"), "{err}");
}

#[test]
fn another_user_is_refused_and_changes_nothing() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let (m, _) = pool("cliperm", "", "");
    let before = m.wait_workers(2);
    let copies = ForOtherUsers::new();
    let corral_copy = copies.corral();
    for args in [&["scale", "pool", "+3"][..], &["reload", "pool"][..], &["status", "pool"][..]] {
        let out = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&corral_copy)
            .args(args)
            .env("CORRAL_RUNTIME_ROOT", m.dir.join("run"))
            .output()
            .expect("setpriv");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("permission denied"), "{args:?}: {err}");
    }
    assert_eq!(m.wait_workers(2), before);
    assert_eq!(status_json(&m)["generation"].as_u64(), Some(1));
}

#[test]
fn members_of_the_control_group_may_operate_the_pool_and_no_one_else() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    // `users` (gid 100) is in every Debian's base-passwd; `nobody` is not in it.
    let group = nix::unistd::Group::from_name("users").unwrap().expect("the users group");
    let gid = group.gid.as_raw();
    let (m, _) = pool("ctlgroup", "", "[control]\ngroup = \"users\"\n");
    m.wait_workers(2);
    std::fs::set_permissions(m.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = m.dir.join("run/pool/control.sock");
    wait_until("the socket given to the group", TIMEOUT, || {
        std::fs::metadata(&socket).is_ok_and(|md| md.gid() == gid && md.mode() & 0o777 == 0o660)
    });
    let pool_dir = std::fs::metadata(m.dir.join("run/pool")).unwrap();
    assert_eq!(pool_dir.mode() & 0o007, 0o001, "others may go through the pool's directory, not list it");
    let copies = ForOtherUsers::new();
    let as_nobody = |ids: &[&str], args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=nobody"])
            .args(ids)
            .arg(copies.corral())
            .args(args)
            .env("CORRAL_RUNTIME_ROOT", m.dir.join("run"))
            .output()
            .expect("setpriv");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let member = ["--regid=nogroup".to_string(), format!("--groups={gid}")];
    let member: Vec<&str> = member.iter().map(String::as_str).collect();
    let outsider = ["--regid=nogroup", "--clear-groups"];
    let primary = ["--regid=users", "--clear-groups"];
    // A member (by a supplementary group, or by the primary one) operates the pool.
    let (code, out, err) = as_nobody(&member, &["status", "pool", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"generation\""), "{out}");
    let (code, _, err) = as_nobody(&member, &["scale", "pool", "3"]);
    assert_eq!(code, Some(0), "{err}");
    m.wait_workers(3);
    let (code, out, err) = as_nobody(&primary, &["reload", "pool"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("generation 2 serving with 3 workers"), "{out}");
    // Anyone else: the socket's mode refuses them, and behind it the master's own check (what
    // a master that may not give the socket to the group relies on: mode 0666), before it reads
    // anything of theirs.
    let everything =
        [&["scale", "pool", "+3"][..], &["reload", "pool"][..], &["status", "pool"][..], &["upgrade", "pool"][..]];
    for args in everything {
        let (code, _, err) = as_nobody(&outsider, args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains("permission denied on") && err.contains("control.group"), "{args:?}: {err}");
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in everything {
        let (code, _, err) = as_nobody(&outsider, args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains(
                "permission denied: uid 65534 may not control this pool (only root, uid 0 and members of group users)"
            ),
            "{args:?}: {err}"
        );
    }
    // (The replaced workers may still be draining: three once they are gone.)
    m.wait_workers(3);
    assert_eq!(status_json(&m)["generation"].as_u64(), Some(2));
    // Without control.group, a reload takes it back: the members are refused too.
    let config = m.dir.join("pool.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("[control]\ngroup = \"users\"\n", "");
    std::fs::write(&config, text).unwrap();
    let (code, _, err) = m.cli(&["reload", "pool"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(std::fs::metadata(&socket).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(m.dir.join("run/pool")).unwrap().mode() & 0o007, 0);
    let (code, _, err) = as_nobody(&member, &["status", "pool"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("permission denied"), "{err}");
}

#[test]
fn worker_output_reaches_a_real_journald_with_per_worker_fields() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root for a private mount namespace");
        return;
    }
    let dir = TempDir::new("journal");
    let port = free_port();
    std::fs::write(
        dir.join("pool.toml"),
        format!(
            "command = [\"python3\", \"{}\", \"--say\", \"hello\", \"--long\", \"40000\"]\ninstances = 2\nlisten = [\"127.0.0.1:{port}\"]\n[logs]\ntarget = \"journal\"\n",
            worker_py()
        ),
    )
    .unwrap();
    // A private journald: its own /run and journal directory, nothing reaches the host's logs.
    let script = format!(
        r#"set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal /var/log/journal
mount -t tmpfs tmpfs /var/log/journal
/lib/systemd/systemd-journald & J=$!
i=0; until [ -S /run/systemd/journal/socket ]; do i=$((i+1)); [ $i -lt 600 ]; sleep 0.05; done
CORRAL_RUNTIME_ROOT={d}/run {corral} run -c {d}/pool.toml 2>{d}/master.log & C=$!
seen() {{ journalctl --no-pager -o json SYSLOG_IDENTIFIER=pool 2>/dev/null | grep -c "\"MESSAGE\":\"$1\"" ; }}
i=0; until [ "$(seen hello-warn)" -ge 2 ] && [ "$(seen hello-err)" -ge 2 ]; do i=$((i+1)); [ $i -lt 600 ]; sleep 0.05; done
kill -TERM $C; wait $C
journalctl --no-pager --all -o json SYSLOG_IDENTIFIER=pool > {d}/journal.json
journalctl --no-pager -o json SYSLOG_IDENTIFIER=corral > {d}/master.json
kill $J; wait $J || true
"#,
        d = dir.path().display(),
        corral = CORRAL
    );
    let out = Command::new("timeout").args(["-k", "5", "60", "unshare", "-m", "sh", "-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "scenario failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("master.log")).unwrap_or_default()
    );
    let entries: Vec<Value> = std::fs::read_to_string(dir.join("journal.json"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |msg: &str, slot: &str| {
        entries
            .iter()
            .find(|e| e["MESSAGE"] == msg && e["CORRAL_WORKER"] == slot)
            .unwrap_or_else(|| panic!("no entry {msg:?} from worker {slot} in {entries:#?}"))
    };
    for slot in ["0", "1"] {
        let out = find("hello", slot);
        assert_eq!(out["PRIORITY"], "6");
        assert_eq!(out["CORRAL_GENERATION"], "1");
        assert_eq!(out["SYSLOG_IDENTIFIER"], "pool");
        let pid = out["CORRAL_WORKER_PID"].as_str().unwrap();
        assert_eq!(out["OBJECT_PID"].as_str(), Some(pid));
        assert_eq!(find("hello-err", slot)["PRIORITY"], "3");
        assert_eq!(find("hello-warn", slot)["PRIORITY"], "4", "<4> prefix sets the priority and is stripped");
        assert_eq!(find("stopped gracefully", slot)["CORRAL_WORKER_PID"].as_str(), Some(pid), "last words are kept");
    }
    // 40000 characters become records of at most 16 KiB, nothing dropped.
    let long: usize = entries
        .iter()
        .filter(|e| e["CORRAL_WORKER"] == "0")
        .filter_map(|e| e["MESSAGE"].as_str())
        .filter(|m| m.chars().all(|c| c == 'x'))
        .map(str::len)
        .sum();
    assert_eq!(long, 40000);
    let master = std::fs::read_to_string(dir.join("master.json")).unwrap();
    assert!(master.contains("all workers stopped"), "the master's own logs go to journald too: {master}");
}

/// A pool of workers started with `args` that take 120 MiB after a while, under an 80 MiB limit
/// sampled every 100ms: a worker is replaced for it, without downtime and not as a crash.
fn replaced_over_the_memory_limit(tag: &str, args: &str) {
    let (m, addr) = pool(tag, args, "[limits]\nmemory = \"80MiB\"\ninterval = \"100ms\"\n");
    let first = m.wait_workers(2);
    m.wait_log("over the 80.0 MiB limit: replacing it");
    wait_until("a memory replacement counted", TIMEOUT, || restarts(&m, "memory") >= 1);
    wait_until("an original worker replaced", TIMEOUT, || first.iter().any(|p| !alive(*p)));
    assert!(get(addr).is_ok());
    assert_eq!(restarts(&m, "crash"), 0, "replaced, not crashed");
}

#[test]
fn a_worker_over_the_memory_limit_is_replaced_without_downtime() {
    replaced_over_the_memory_limit("memory", ", \"--leak-mib\", \"120\", \"--leak-after\", \"300\"");
}

/// The limit is on the worker's process group: memory taken by a process the worker forks
/// long after it started (after many samples found nothing new) counts too.
#[test]
fn a_worker_whose_child_goes_over_the_memory_limit_is_replaced() {
    replaced_over_the_memory_limit(
        "memchild",
        ", \"--leak-mib\", \"120\", \"--leak-after\", \"1500\", \"--leak-in-child\"",
    );
}

#[test]
fn a_worker_that_stops_pinging_is_aborted_and_replaced() {
    let (m, _) = pool(
        "watchdog",
        ", \"--watchdog\", \"--report\", \"{dir}/report-{slot}.json\", \"--stop-pinging-after\", \"500\"",
        "[watchdog]\ntimeout = \"400ms\"\n",
    );
    let report = read_report(&m.dir.join("report-0.json"));
    assert_eq!(report["env"]["WATCHDOG_USEC"], "400000");
    assert_eq!(report["env"]["WATCHDOG_PID"].as_str(), Some(report["pid"].to_string().as_str()));
    m.wait_log("no WATCHDOG=1 for 400ms: killing the worker with SIGABRT");
    wait_until("watchdog restarts counted", TIMEOUT, || restarts(&m, "watchdog") >= 2);
    // The counter moves when SIGABRT is sent; the death follows.
    let pid = report["pid"].as_i64().unwrap() as i32;
    wait_until("the silent worker is gone", TIMEOUT, || !alive(pid));
}

#[test]
fn a_pinging_worker_is_left_alone() {
    let (mut m, _) =
        pool("watchdogok", ", \"--watchdog\"", "[watchdog]\ntimeout = \"1s\"\n[limits]\ninterval = \"100ms\"\n");
    let pids = m.wait_workers(2);
    // Two and a half times the timeout later, the same workers serve.
    let t = std::time::Instant::now();
    wait_until("2.5s of watchdog-supervised running", TIMEOUT, || t.elapsed() > std::time::Duration::from_millis(2500));
    assert_eq!(m.wait_workers(2), pids);
    assert_eq!(restarts(&m, "watchdog"), 0);
    assert!(m.systemd().last_status().unwrap().contains("0 restarts"));
}

#[test]
fn recycle_replaces_workers_gracefully() {
    let (m, addr) = pool("recycle", "", "[recycle]\nafter = \"1s\"\njitter = \"200ms\"\n");
    let first = m.wait_workers(2);
    wait_until("both original workers recycled", TIMEOUT, || first.iter().all(|p| !alive(*p)));
    assert!(restarts(&m, "recycle") >= 2);
    assert!(m.log_text().contains("pool[0]: stopped gracefully"));
    assert!(get(addr).is_ok());
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let code = r.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, r.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

#[test]
fn metrics_parse_with_the_prometheus_parser_and_health_follows_readiness() {
    let mport = free_port();
    let (m, _) =
        pool("metrics", "", &format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n[limits]\ninterval = \"100ms\"\n"));
    let maddr: SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    let (code, body) = wait_for("metrics with RSS samples", TIMEOUT, || {
        let r = http_get(maddr, "/metrics");
        r.1.contains("corral_worker_rss_bytes{slot=\"1\",generation=\"1\"}").then_some(r)
    });
    assert_eq!(code, 200);
    std::fs::write(m.dir.join("metrics.txt"), &body).unwrap();
    let parser = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(open(sys.argv[1]).read())}
s = lambda name, **labels: [x.value for f in fams.values() for x in f.samples if x.name == name and all(x.labels.get(k) == v for k, v in labels.items())]
assert s("corral_up") == [1.0], s("corral_up")
assert s("corral_generation") == [1.0]
assert s("corral_workers", state="ready") == [2.0], s("corral_workers", state="ready")
assert fams["corral_worker_restarts"].type == "counter"
assert s("corral_worker_restarts_total", reason="crash") == [0.0]
assert s("corral_reloads_total", result="success") == [0.0]
assert all(v > 1e6 for v in s("corral_worker_rss_bytes")), s("corral_worker_rss_bytes")
assert len(s("corral_worker_cpu_seconds_total")) == 2
print("ok", len(fams))
"#;
    let out =
        Command::new("python3").args(["-c", parser, m.dir.join("metrics.txt").to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}\n{body}", String::from_utf8_lossy(&out.stderr));
    let (code, body) = http_get(maddr, "/health");
    assert_eq!(code, 200);
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((h["status"].as_str(), h["ready"].as_u64()), (Some("ok"), Some(2)));
    assert_eq!(http_get(maddr, "/nope").0, 404);

    // A pool with no ready worker is unhealthy.
    let mport2 = free_port();
    let cfg = format!(
        "command = [\"python3\", \"{{worker}}\", \"--never-ready\"]\nlisten = [\"127.0.0.1:{}\"]\n[metrics]\nlisten = \"127.0.0.1:{mport2}\"\n",
        free_port()
    );
    let m2 = Master::start("unhealthy", &cfg, Options::default());
    let maddr2: SocketAddr = format!("127.0.0.1:{mport2}").parse().unwrap();
    let (code, body) = wait_for("health endpoint", TIMEOUT, || {
        std::net::TcpStream::connect(maddr2).ok().map(|_| http_get(maddr2, "/health"))
    });
    assert_eq!(code, 503, "{body}");
    drop(m2);
}

#[test]
fn status_shows_the_process_group_and_which_processes_serve() {
    // A gunicorn-style arbiter: the worker's main process forks the one that serves and closes
    // the listening socket itself.
    let port = free_port();
    let cfg = format!(
        "command = [\"sh\", \"-c\", \"python3 {{worker}} --any-listen-pid & exec 3<&-; wait\"]\nlisten = [\"127.0.0.1:{port}\"]\n[limits]\ninterval = \"200ms\"\n"
    );
    let mut m = Master::start("arbiter", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let main = m.wait_workers(1)[0];
    let child =
        wait_for("the serving child", TIMEOUT, || descendants(main).into_iter().find(|p| comm(*p) == "python3"));
    let w = wait_for("a sample of the group", TIMEOUT, || {
        let j = status_json(&m);
        let w = j["workers"][0].clone();
        (w["processes"] == 2).then_some(w)
    });
    assert_eq!(w["pid"], main);
    assert_eq!(w["listening_pids"], serde_json::json!([child]), "the arbiter closed the socket; its child serves: {w}");
    let (_, table, _) = m.cli(&["status", "pool"]);
    let row = table.lines().nth(2).unwrap();
    assert!(row.split_whitespace().any(|c| c == child.to_string()), "{table}");
}
