//! A real Prometheus (Debian's 2.42, unpacked into target/prometheus by scripts/test.sh, run
//! from a temporary folder, never as a service) scrapes a pool of prom-client workers through
//! corral: per-slot series arrive; the shipped alert rules (examples/prometheus) load and
//! evaluate, and pass their `promtool test rules` unit tests; every query of the shipped
//! Grafana dashboard (examples/grafana) runs without error, returns data, and names only
//! metrics that exist.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn prometheus_bin() -> PathBuf {
    let p = PathBuf::from(format!("{ROOT}/target/prometheus/usr/bin/prometheus"));
    assert!(p.exists(), "{} is missing: run scripts/test.sh (it unpacks Debian's prometheus package)", p.display());
    p
}

/// Prometheus, stopped when the test ends.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- prometheus log ----\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// GET an API path (HTTP/1.0: the answer is not chunked), as JSON.
    fn api(&self, path: &str) -> Value {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).expect("connect to prometheus");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let body = r.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {r}"))
    }

    fn query(&self, expr: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", encode(expr)))
    }
}

/// The metric names an expression uses: those of corral, of the recipes' apps, and `up`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        let known = ["corral_", "nodejs_", "http_requests_"].iter().any(|p| word.starts_with(p)) || word == "up";
        // `up` also appears as a label value or a word in a string; it is only a name before { or space.
        if known && (c == '{' || c == ' ' || c == ')' || c == '[') {
            out.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    out
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let dir = format!("{ROOT}/examples/prometheus");
    for args in [&["check", "rules", "corral-rules.yml"][..], &["test", "rules", "corral-rules.test.yml"]] {
        let out = Command::new(promtool()).args(args).current_dir(&dir).output().expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn prometheus_gets_per_slot_series_and_every_rule_and_dashboard_query_works() {
    let (port, mport) = (free_port(), free_port());
    let cfg = format!(
        "command = [\"node\", \"{ROOT}/examples/metrics/node/app.js\"]\ninstances = 2\nlisten = [\"127.0.0.1:{port}\"]\n\
         [ready]\nmode = \"listen\"\n[env]\nNODE_PATH = {:?}\n[limits]\nmemory = \"2GiB\"\n\
         [metrics]\nlisten = \"127.0.0.1:{mport}\"\nworkers = true\n",
        node_modules().display().to_string()
    );
    let mut m = Master::start("prom", &cfg, Options::default());
    m.systemd().wait("READY=1");

    // Requests while Prometheus scrapes, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        std::thread::spawn(move || {
            for _ in 0..3000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = get(addr);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let dir = m.dir.path().to_path_buf();
    let rules = format!("{ROOT}/examples/prometheus/corral-rules.yml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: corral\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n"
        ),
    )
    .unwrap();
    let paddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = dir.join("prometheus.log");
    let child = Command::new(prometheus_bin())
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={paddr}"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start prometheus");
    let p = Prometheus { child, addr: paddr, log };
    wait_until("prometheus ready", TIMEOUT, || get_path(paddr, "/-/ready").is_ok());

    // Per-slot series of the workers' own metrics arrive through corral.
    wait_until("http_requests_total of both slots in Prometheus", TIMEOUT, || {
        let r = p.query("sum by (slot) (http_requests_total)");
        r["data"]["result"].as_array().map_or(0, Vec::len) == 2
    });
    let r = p.query("count by (slot) (nodejs_eventloop_lag_seconds)");
    assert_eq!(r["data"]["result"].as_array().map_or(0, Vec::len), 2, "{r}");

    // A reload, so the annotation's query has something to show.
    m.signal(nix::sys::signal::Signal::SIGHUP);

    // Every rule loaded and evaluated without error.
    wait_until("every rule evaluated", TIMEOUT, || {
        let r = p.api("/api/v1/rules");
        let rules: Vec<Value> = r["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules.len() == 7 && rules.iter().all(|x| x["health"] == "ok")
    });

    let names: BTreeSet<String> = p.api("/api/v1/label/__name__/values")["data"]
        .as_array()
        .expect("metric names")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/examples/grafana/corral-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let grafana = |e: &str| e.replace("$__rate_interval", "5s").replace("$instance", ".*");
    let mut panels = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = grafana(target["expr"].as_str().expect("expr"));
            for name in metric_names(&expr) {
                assert!(names.contains(&name), "panel {:?} uses {name}, which nobody exports: {expr}", panel["title"]);
            }
            // Each query answers, with data.
            wait_until(&format!("data for {expr}"), TIMEOUT, || {
                let r = p.query(&expr);
                assert_eq!(r["status"], "success", "{expr}: {r}");
                r["data"]["result"].as_array().is_some_and(|a| !a.is_empty())
            });
            panels += 1;
        }
    }
    assert!(panels >= 10, "{panels} queries");
    let variable = &dashboard["templating"]["list"][1]["definition"];
    assert_eq!(variable, "label_values(corral_up, instance)");
    for annotation in dashboard["annotations"]["list"].as_array().expect("annotations") {
        let expr = grafana(annotation["expr"].as_str().expect("expr"));
        wait_until(&format!("the reload shown by {expr}"), TIMEOUT, || {
            p.query(&expr)["data"]["result"].as_array().is_some_and(|a| !a.is_empty())
        });
    }

    // The rules' expressions name only metrics that exist.
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    for line in rules_text.lines().filter_map(|l| l.trim().strip_prefix("expr:")) {
        for name in metric_names(line) {
            assert!(names.contains(&name), "a rule uses {name}, which nobody exports: {line}");
        }
        let r = p.query(line.trim());
        assert_eq!(r["status"], "success", "{line}: {r}");
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
}
