//! `/metrics` (Prometheus text format: corral's own series, encoded by the `prometheus-client`
//! crate, and with `[metrics] workers` every worker's, [`scrape`]d and [`exposition`]-merged)
//! and `/health`, `/ready`, `/live`.
//!
//! The HTTP side is written here rather than with an HTTP framework: it answers two GET paths
//! on one listener, on the master's single thread, and a framework would cost more memory than
//! the whole master. Each connection gets one response and is closed; a client that sends
//! nothing within a few seconds is dropped. Figures come from a [`PoolStatus`] snapshot taken by
//! the driver for each scrape, so this module never sees the pool itself.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::status::PoolStatus;

pub mod exposition;
pub mod scrape;

/// The content type of /metrics: the Prometheus text format, which every scraper reads and which
/// holds the families of workers answering in either format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An answer larger than this is followed by giving the heap's free memory back.
const TRIM_AFTER: usize = 256 * 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabel {
    slot: String,
    generation: String,
}

/// Whether each worker asked answered with its metrics: (slot, generation, up).
pub type WorkersUp = [(usize, u64, bool)];

/// corral's own series for one snapshot (OpenMetrics, as `prometheus-client` writes it).
pub fn render(p: &PoolStatus, workers_up: Option<&WorkersUp>) -> String {
    let mut reg = Registry::with_prefix("corral");
    let up = Gauge::<i64>::default();
    up.set(1);
    reg.register("up", "1 while the corral master runs", up);
    let generation = Gauge::<i64>::default();
    generation.set(p.generation as i64);
    reg.register("generation", "Generation new workers are started from (a reload adds one)", generation);
    let desired = Gauge::<i64>::default();
    desired.set(p.desired as i64);
    reg.register("desired_workers", "Number of workers the pool runs", desired);

    let workers = Family::<StateLabel, Gauge>::default();
    for phase in crate::pool::WorkerPhase::ALL {
        let n = p.workers.iter().filter(|w| w.state == phase).count();
        workers.get_or_create(&StateLabel { state: phase.as_str().into() }).set(n as i64);
    }
    reg.register("workers", "Worker processes by state", workers);

    let restarts = Family::<ReasonLabel, Counter>::default();
    for (reason, n) in &p.restarts_by_reason {
        restarts.get_or_create(&ReasonLabel { reason: reason.clone() }).inc_by(*n);
    }
    reg.register("worker_restarts", "Workers restarted or replaced, by reason", restarts);

    let reloads = Family::<ResultLabel, Counter>::default();
    reloads.get_or_create(&ResultLabel { result: "success".into() }).inc_by(p.reloads_succeeded);
    reloads.get_or_create(&ResultLabel { result: "failure".into() }).inc_by(p.reloads_failed);
    reg.register("reloads", "Rolling reloads, by result", reloads);

    let dropped = Counter::<u64>::default();
    dropped.inc_by(p.log_messages_dropped);
    reg.register(
        "log_messages_dropped",
        "The master's own log messages dropped because its stderr was not read fast enough",
        dropped,
    );

    let rss = Family::<SlotLabel, Gauge>::default();
    let cpu = Family::<SlotLabel, Counter<f64>>::default();
    for w in p.workers.iter().filter(|w| w.state != crate::pool::WorkerPhase::Stopping) {
        let slot = SlotLabel { slot: w.slot.to_string(), generation: w.generation.to_string() };
        if let Some(b) = w.rss_bytes {
            rss.get_or_create(&slot).set(b as i64);
        }
        if let Some(s) = w.cpu_seconds {
            cpu.get_or_create(&slot).inc_by(s);
        }
    }
    reg.register_with_unit(
        "worker_rss",
        "Resident memory of the worker's process group",
        prometheus_client::registry::Unit::Bytes,
        rss,
    );
    reg.register_with_unit(
        "worker_cpu",
        "CPU time of the worker's process group",
        prometheus_client::registry::Unit::Seconds,
        cpu,
    );

    if let Some(limit) = p.memory_limit_bytes {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(limit).unwrap_or(i64::MAX));
        reg.register_with_unit(
            "worker_memory_limit",
            "limits.memory: a worker whose process group uses more is replaced",
            prometheus_client::registry::Unit::Bytes,
            g,
        );
    }
    if let Some(up) = workers_up {
        let fam = Family::<SlotLabel, Gauge>::default();
        for (slot, generation, ok) in up {
            fam.get_or_create(&SlotLabel { slot: slot.to_string(), generation: generation.to_string() })
                .set(i64::from(*ok));
        }
        reg.register(
            "worker_metrics_up",
            "1 when the worker answered with its own metrics at CORRAL_METRICS_SOCKET in time",
            fam,
        );
    }

    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        out = "# encoding failed\n".into();
    }
    out
}

/// `/health`: 200 when at least one worker is ready and the pool is not draining before a
/// stop, else 503; `/ready`: the same with `metrics.min_ready` workers; `/live`: 200 whenever
/// the master's loop answers (a stuck master does not answer at all). A small JSON body each.
pub fn health(p: &PoolStatus, path: &str) -> (u16, String) {
    let needed = match path {
        "/ready" => p.min_ready.max(1),
        "/live" => 0,
        _ => 1,
    };
    let ok = path == "/live" || (p.ready >= needed && !p.draining);
    let code = if ok { 200 } else { 503 };
    let status = match (ok, path) {
        (true, "/live") => "alive",
        (true, _) => "ok",
        (false, _) if p.draining => "draining",
        (false, _) => "unavailable",
    };
    let body = serde_json::json!({
        "status": status,
        "ready": p.ready,
        "desired": p.desired,
        "needed": needed,
        "generation": p.generation,
    });
    (code, format!("{body}\n"))
}

/// Method and path (without the query) of an HTTP request head; empty strings when absent.
pub fn request_line(head: &[u8]) -> (String, String) {
    let line = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("").to_string();
    (method, path)
}

/// What the HTTP side asks the driver for: a snapshot, with figures sampled for it (/metrics)
/// or as last sampled (the health endpoints, which probes call every few seconds and which
/// show no per-process figures).
pub struct SnapshotRequest {
    pub reply: oneshot::Sender<Report>,
    pub sample: bool,
}

/// The driver's answer: the pool's snapshot and, for /metrics with `[metrics] workers`, the
/// workers to ask for theirs.
pub struct Report {
    pub status: PoolStatus,
    pub scrape: Option<scrape::Plan>,
}

/// The whole /metrics text: every worker of the plan asked at once, their answers merged with
/// corral's own series.
pub async fn exposition(report: Report) -> String {
    let Report { status, scrape: plan } = report;
    let outcomes = match &plan {
        Some(plan) => scrape::scrape_all(plan).await,
        None => Vec::new(),
    };
    let up: Option<Vec<(usize, u64, bool)>> = plan
        .as_ref()
        .map(|plan| plan.targets.iter().zip(&outcomes).map(|(t, o)| (t.slot, t.generation, o.is_ok())).collect());
    let own = render(&status, up.as_deref());
    let mut merged = exposition::Merged::default();
    match exposition::parse(&own, true) {
        Ok(families) => merged.own(families),
        Err(e) => tracing::error!("corral's own metrics do not read back ({e}): please report this"),
    }
    if let Some(plan) = &plan {
        plan.said.keep_only(&plan.targets);
        for (t, outcome) in plan.targets.iter().zip(outcomes) {
            plan.said.outcome(t, &outcome);
            if let Ok(families) = outcome {
                let origin = exposition::Origin { slot: t.slot, generation: t.generation };
                for c in merged.add(families, &origin) {
                    plan.said.conflict(t, &c);
                }
            }
        }
    }
    merged.render()
}

/// Serve one connection: read the request head, ask the driver for a snapshot, answer, close.
pub async fn serve(mut stream: tokio::net::TcpStream, driver: mpsc::UnboundedSender<SnapshotRequest>) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if head.len() > 8192 {
                return false;
            }
        }
        true
    };
    if !matches!(tokio::time::timeout(Duration::from_secs(5), read_head).await, Ok(true)) {
        return;
    }
    let (method, path) = request_line(&head);
    let (method, path) = (method.as_str(), path.as_str());
    let (code, kind, body) = if method != "GET" && method != "HEAD" {
        (405, "text/plain", "only GET\n".to_string())
    } else if !["/metrics", "/health", "/ready", "/live"].contains(&path) {
        (404, "text/plain", "try /metrics, /health, /ready or /live\n".to_string())
    } else {
        let (tx, rx) = oneshot::channel();
        let snapshot = match driver.send(SnapshotRequest { reply: tx, sample: path == "/metrics" }) {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        match (snapshot, path) {
            (None, _) => (503, "text/plain", "shutting down\n".to_string()),
            (Some(r), "/metrics") => (200, TEXT_FORMAT, exposition(r).await),
            (Some(r), _) => {
                let (code, body) = health(&r.status, path);
                (code, "application/json", body)
            }
        }
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        resp.push_str(&body);
    }
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
    // A large answer (many workers' series) leaves megabytes free in the heap: give them back,
    // or the master's RSS stays at the peak of its last scrape.
    if resp.len() > TRIM_AFTER {
        drop((resp, body));
        crate::os::memory::trim();
    }
}
