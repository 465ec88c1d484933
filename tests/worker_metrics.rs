//! `[metrics] workers`: each worker serves its own registry at `CORRAL_METRICS_SOCKET` and
//! corral's /metrics carries them all, with `slot` and `generation`. The recipes of
//! docs/metrics.md (Node with prom-client, Python with Debian's prometheus_client, Go with
//! Debian's client_golang) count every request, summed over slots, before and after a reload;
//! workers that answer garbage, slowly, too much or not at all cost a bounded delay and show 0
//! in `corral_worker_metrics_up`; every exposition passes Debian's `promtool check metrics`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// corral's /metrics (a 200 answer, or the test fails).
fn exposition(addr: SocketAddr) -> String {
    get_path(addr, "/metrics").unwrap_or_else(|e| panic!("GET /metrics: {e}"))
}

/// corral's /metrics, checked by promtool, with its samples.
fn checked_exposition(addr: SocketAddr, dir: &Path) -> (String, Vec<Sample>) {
    let text = exposition(addr);
    promtool_accepts(&text, dir);
    let s = samples(&text);
    (text, s)
}

/// One sample of an exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of a text exposition (the test's own reading, independent of corral's parser).
fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((n, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (n.to_string(), labels)
            }
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        out.push((name, labels, value));
    }
    out
}

fn sum(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    s.iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| v)
        .sum()
}

fn slots_of(s: &[Sample], name: &str, generation: &str) -> Vec<String> {
    let mut slots: Vec<String> = s
        .iter()
        .filter(|(n, l, _)| n == name && l.get("generation").map(String::as_str) == Some(generation))
        .filter_map(|(_, l, _)| l.get("slot").cloned())
        .collect();
    slots.sort();
    slots.dedup();
    slots
}

/// `promtool check metrics` on `text`: no parse error, and no lint problem in corral's own.
fn promtool_accepts(text: &str, dir: &Path) {
    let file = dir.join("exposition.txt");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' check metrics < '{}'", promtool().display(), file.display()))
        .output()
        .expect("run promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // 0: clean; 3: lint problems only (the apps' own metrics are theirs); anything else failed.
    assert!(matches!(out.status.code(), Some(0 | 3)), "promtool refused the exposition: {said}\n{text}");
    assert!(!said.contains("corral_"), "promtool found problems in corral's own metrics: {said}");
}

/// The Go recipe built against Debian's client_golang (GOPATH mode: no module download).
fn go_server() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let d = PathBuf::from(format!("{ROOT}/target/metrics-cache/go-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let bin = d.join("server");
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(format!("{ROOT}/examples/metrics/go/main.go"))
            .env("GOPATH", format!("{}:/usr/share/gocode", d.join("gopath").display()))
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .env("GOCACHE", d.join("cache"))
            .output()
            .expect("go (scripts/test.sh installs golang-go)");
        assert!(
            out.status.success(),
            "building the Go recipe failed (scripts/test.sh installs golang-github-prometheus-client-golang-dev): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
    .clone()
}

struct Recipe {
    name: &'static str,
    command: Vec<String>,
    env: Vec<(String, String)>,
    /// A series every worker of this recipe exports besides the request counter.
    also: &'static str,
}

fn recipes() -> Vec<Recipe> {
    vec![
        Recipe {
            name: "node",
            command: vec!["node".into(), format!("{ROOT}/examples/metrics/node/app.js")],
            env: vec![("NODE_PATH".into(), node_modules().display().to_string())],
            also: "nodejs_eventloop_lag_seconds",
        },
        Recipe {
            name: "python",
            command: vec!["python3".into(), format!("{ROOT}/examples/metrics/python/app.py")],
            env: vec![],
            also: "python_info",
        },
        Recipe { name: "go", command: vec![go_server().display().to_string()], env: vec![], also: "go_goroutines" },
    ]
}

fn pool_config(command: &[String], env: &[(String, String)], port: u16, mport: u16) -> String {
    let cmd = command.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ");
    let env = env.iter().map(|(k, v)| format!("{k} = {v:?}\n")).collect::<String>();
    format!(
        "command = [{cmd}]\ninstances = 3\nlisten = [\"127.0.0.1:{port}\"]\n[ready]\nmode = \"listen\"\n\
         [env]\n{env}[metrics]\nlisten = \"127.0.0.1:{mport}\"\nworkers = true\n"
    )
}

#[test]
fn each_recipe_counts_every_request_summed_over_slots_before_and_after_a_reload() {
    for r in recipes() {
        let (port, mport) = (free_port(), free_port());
        let mut m =
            Master::start(&format!("wm-{}", r.name), &pool_config(&r.command, &r.env, port, mport), Options::default());
        m.systemd().wait("READY=1");
        let (addr, maddr) = (SocketAddr::from(([127, 0, 0, 1], port)), SocketAddr::from(([127, 0, 0, 1], mport)));
        let metrics = || samples(&exposition(maddr));
        // Every worker answers its metrics once it is ready.
        wait_until(&format!("{}: 3 workers' metrics up", r.name), TIMEOUT, || {
            sum(&metrics(), "corral_worker_metrics_up", &[("generation", "1")]) == 3.0
        });
        for _ in 0..60 {
            get(addr).expect("served");
        }
        let (text, s) = checked_exposition(maddr, m.dir.path());
        assert_eq!(sum(&s, "http_requests_total", &[("code", "200")]), 60.0, "{}: {text}", r.name);
        assert_eq!(slots_of(&s, r.also, "1"), ["0", "1", "2"], "{}: {text}", r.name);
        // The kernel spread the requests over more than one worker, and each counted its own.
        assert!(slots_of(&s, "http_requests_total", "1").len() >= 2, "{}: {text}", r.name);

        // After a reload: generation 2's workers only, counting from zero.
        let before = m.systemd().count("READY=1");
        m.signal(nix::sys::signal::Signal::SIGHUP);
        wait_until("the reload to finish", TIMEOUT, || m.systemd().count("READY=1") > before);
        wait_until(&format!("{}: generation 1 gone from /metrics", r.name), TIMEOUT, || {
            let s = metrics();
            slots_of(&s, r.also, "1").is_empty() && slots_of(&s, r.also, "2").len() == 3
        });
        for _ in 0..30 {
            get(addr).expect("served");
        }
        let (text, s) = checked_exposition(maddr, m.dir.path());
        assert_eq!(sum(&s, "http_requests_total", &[("generation", "2")]), 30.0, "{}: {text}", r.name);
        assert_eq!(sum(&s, "http_requests_total", &[("generation", "1")]), 0.0, "{}: {text}", r.name);
        assert_eq!(sum(&s, "corral_worker_metrics_up", &[("generation", "2")]), 3.0);
        // Sockets of the replaced workers are removed with them.
        let left = std::fs::read_dir(m.dir.join("run/pool/metrics")).unwrap().count();
        assert_eq!(left, 3, "{}: one socket per live worker", r.name);
    }
}

#[test]
fn misbehaving_workers_cost_a_bounded_delay_and_show_down_once_in_the_log() {
    let mport = free_port();
    let modes = "0=text,1=openmetrics,2=garbage,3=slow,4=huge,5=http500,6=none";
    let cfg = format!(
        "command = [\"python3\", \"{{worker}}\", \"--metrics\", \"{modes}\"]\ninstances = 7\n\
         listen = [\"127.0.0.1:{}\"]\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\nworkers = true\n\
         worker_timeout = \"500ms\"\nworker_max_size = \"1MiB\"\n",
        free_port()
    );
    let mut m = Master::start("wm-bad", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let maddr = SocketAddr::from(([127, 0, 0, 1], mport));
    wait_until("7 ready workers in /metrics", TIMEOUT, || {
        let s = samples(&exposition(maddr));
        s.iter().filter(|(n, _, _)| n == "corral_worker_metrics_up").count() == 7
    });
    for round in 0..3 {
        let t = Instant::now();
        let text = exposition(maddr);
        // A worker that would answer after 60 s, or send 100 MB, does not hold the scrape up
        // (a generous bound: the timeout is 500 ms, and workers are asked at once).
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "scrape took {:?}", t.elapsed());
        promtool_accepts(&text, m.dir.path());
        let s = samples(&text);
        let up = |slot: &str| sum(&s, "corral_worker_metrics_up", &[("slot", slot)]);
        assert_eq!((up("0"), up("1")), (1.0, 1.0), "round {round}: {text}");
        for bad in ["2", "3", "4", "5", "6"] {
            assert_eq!(up(bad), 0.0, "slot {bad}: {text}");
        }
        // The text format and OpenMetrics answers both arrive, as one counter family.
        assert_eq!(slots_of(&s, "test_requests_total", "1"), ["0", "1"], "{text}");
        assert_eq!(text.matches("# TYPE test_requests_total counter").count(), 1, "{text}");
        assert!(!text.contains("test_filler"), "nothing of the huge answer: {text}");
    }
    // Each failure is logged once, with its reason, however many scrapes saw it.
    let log = m.log_text();
    for reason in [
        "not UTF-8",
        "no answer within 500ms",
        "larger than worker_max_size",
        "HTTP 500",
        "does not serve CORRAL_METRICS_SOCKET",
    ] {
        assert_eq!(log.matches(reason).count(), 1, "{reason:?} once in:\n{log}");
    }

    // corral upgrade keeps knowing where each worker serves.
    let (code, _, err) = m.cli(&["upgrade", "pool"]);
    assert_eq!(code, Some(0), "{err}");
    wait_until("the upgraded master answers /metrics with slot 0 up", TIMEOUT, || {
        get_path(maddr, "/metrics")
            .map(|t| sum(&samples(&t), "corral_worker_metrics_up", &[("slot", "0")]) == 1.0)
            .unwrap_or(false)
    });
}

#[test]
fn without_workers_true_no_worker_gets_the_variable_and_corrals_own_metrics_pass_promtool() {
    let mport = free_port();
    let dir = TempDir::new("wm-off");
    let cfg = format!(
        "command = [\"python3\", \"{{worker}}\", \"--report\", \"{}/report-{{slot}}.json\"]\ninstances = 2\n\
         listen = [\"127.0.0.1:{}\"]\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n[limits]\nmemory = \"1GiB\"\n",
        dir.path().display(),
        free_port()
    );
    let mut m = Master::start("wm-off", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let report = read_report(&dir.join("report-0.json"));
    assert!(report["env"].get("CORRAL_METRICS_SOCKET").is_none(), "{report}");
    let (text, s) = checked_exposition(SocketAddr::from(([127, 0, 0, 1], mport)), m.dir.path());
    assert_eq!(sum(&s, "corral_worker_memory_limit_bytes", &[]), 1024.0 * 1024.0 * 1024.0, "{text}");
    assert!(!text.contains("corral_worker_metrics_up"), "{text}");
}

#[test]
fn a_worker_running_as_another_user_serves_its_metrics_where_only_it_and_the_master_can() {
    use std::os::unix::fs::MetadataExt;
    let copies = ForOtherUsers::new();
    let mport = free_port();
    let cfg = format!(
        "command = [\"/usr/bin/python3\", \"{}\", \"--metrics\", \"text\"]\ninstances = 2\nuser = \"nobody\"\n\
         listen = [\"127.0.0.1:{}\"]\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\nworkers = true\n",
        copies.worker().display(),
        free_port()
    );
    let mut m = Master::start("wm-user", &cfg, Options::default());
    m.systemd().wait("READY=1");
    let maddr = SocketAddr::from(([127, 0, 0, 1], mport));
    wait_until("both workers' metrics up", TIMEOUT, || {
        get_path(maddr, "/metrics").is_ok_and(|t| sum(&samples(&t), "corral_worker_metrics_up", &[]) == 2.0)
    });
    let dir = std::fs::metadata(m.dir.join("run/pool/metrics")).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!((dir.uid(), dir.mode() & 0o777), (nobody.uid.as_raw(), 0o700), "the workers' user's alone");
}
