//! Asking each worker for its own metrics (`[metrics] workers`): the unix socket at
//! `CORRAL_METRICS_SOCKET` where it may serve its registry over HTTP, all workers at once, only
//! when /metrics is asked, each within `worker_timeout` and `worker_max_size`.
//!
//! The HTTP client is the few lines one `GET` over HTTP/1.0 needs (the server answers and
//! closes; a chunked answer is decoded anyway): an HTTP client crate would bring a connection
//! pool and TLS the master has no use for.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::exposition::{self, Families};

/// A worker to ask.
#[derive(Debug, Clone)]
pub struct Target {
    pub slot: usize,
    pub generation: u64,
    pub pid: i32,
    pub socket: PathBuf,
}

/// What one /metrics request scrapes, and how patiently.
#[derive(Debug, Clone)]
pub struct Plan {
    pub targets: Vec<Target>,
    pub timeout: Duration,
    pub max_size: u64,
    /// What was logged already, shared by every scrape of the master's life.
    pub said: Said,
}

/// Each worker's failure is logged once (and its recovery), not at every scrape.
#[derive(Debug, Clone, Default)]
pub struct Said(Arc<Mutex<SaidInner>>);

#[derive(Debug, Default)]
struct SaidInner {
    /// A worker's socket → why it was last down.
    down: HashMap<PathBuf, String>,
    /// Families of a worker's left out, by its socket.
    conflicts: HashSet<(PathBuf, String)>,
}

/// One worker's answer: its families, or why there are none.
pub type Outcome = Result<Families, String>;

/// Ask every target at once; outcomes in the targets' order.
pub async fn scrape_all(plan: &Plan) -> Vec<Outcome> {
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in plan.targets.iter().enumerate() {
        let (socket, timeout, max) = (t.socket.clone(), plan.timeout, plan.max_size);
        set.spawn(async move { (i, scrape(socket, timeout, max).await) });
    }
    let mut out: Vec<Outcome> = plan.targets.iter().map(|_| Err("not asked".to_string())).collect();
    while let Some(done) = set.join_next().await {
        if let Ok((i, outcome)) = done {
            out[i] = outcome;
        }
    }
    out
}

/// One worker: connect, ask, read at most `max` bytes of body, within `timeout` in all.
pub async fn scrape(socket: PathBuf, timeout: Duration, max: u64) -> Outcome {
    match tokio::time::timeout(timeout, fetch(&socket, max)).await {
        Err(_) => Err(format!("no answer within {}", humantime::format_duration(timeout))),
        Ok(Err(e)) => Err(e),
        Ok(Ok((body, openmetrics))) => {
            let text = String::from_utf8(body).map_err(|_| "the answer is not UTF-8 text".to_string())?;
            exposition::parse(&text, openmetrics).map_err(|e| format!("not a Prometheus exposition: {e}"))
        }
    }
}

const HEAD_MAX: usize = 64 * 1024;

async fn fetch(socket: &std::path::Path, max: u64) -> Result<(Vec<u8>, bool), String> {
    let mut stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("it does not serve CORRAL_METRICS_SOCKET (no socket there)".into())
        }
        Err(e) => return Err(format!("cannot connect to its metrics socket: {e}")),
    };
    // The text format first: it holds OpenMetrics' families too (see exposition.rs).
    let request = "GET /metrics HTTP/1.0\r\nHost: corral\r\n\
                   Accept: text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5\r\n\
                   Connection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("cannot send the request: {e}"))?;
    let limit = max.saturating_add(HEAD_MAX as u64);
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        // No end of the head in its first 64 KiB: not HTTP. (Checked once, so that garbage is
        // not searched again at every read.)
        if raw.len() > HEAD_MAX && raw.len() - n <= HEAD_MAX && find(&raw[..HEAD_MAX], b"\r\n\r\n").is_none() {
            return Err("the answer is not HTTP".into());
        }
        if raw.len() as u64 > limit {
            return Err(format!("the answer is larger than worker_max_size ({})", bytesize::ByteSize(max)));
        }
        if let Some(len) = complete(&raw) {
            raw.truncate(len);
            break;
        }
    }
    response(&raw, max)
}

/// The length of a complete response with a `Content-Length`, once it is all there.
fn complete(raw: &[u8]) -> Option<usize> {
    let end = find(raw, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let len: usize = header(head, "content-length")?.parse().ok()?;
    (raw.len() >= end + len).then_some(end + len)
}

/// (body, whether it is OpenMetrics) of a whole HTTP response.
fn response(raw: &[u8], max: u64) -> Result<(Vec<u8>, bool), String> {
    let end = find(raw, b"\r\n\r\n").ok_or("the answer is not HTTP")? + 4;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the answer is not HTTP")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if !head.starts_with("HTTP/1.") {
        return Err("the answer is not HTTP".into());
    }
    if status != "200" {
        return Err(format!("it answered HTTP {status} to GET /metrics"));
    }
    if header(head, "content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        return Err("the answer is compressed, which corral did not ask for".into());
    }
    let openmetrics = header(head, "content-type").is_some_and(|t| t.contains("openmetrics"));
    let mut body = raw[end..].to_vec();
    if header(head, "transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body).ok_or("a broken chunked answer")?;
    } else if let Some(len) = header(head, "content-length").and_then(|l| l.parse::<usize>().ok()) {
        if body.len() < len {
            return Err("the answer ended early".into());
        }
    }
    if body.len() as u64 > max {
        return Err(format!("the answer is larger than worker_max_size ({})", bytesize::ByteSize(max)));
    }
    Ok((body, openmetrics))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = find(b, b"\r\n")?;
        let size = std::str::from_utf8(&b[..line]).ok()?.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        b = &b[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

impl Said {
    /// Log a worker's failure the first time it has this reason; its recovery once.
    pub fn outcome(&self, t: &Target, outcome: &Outcome) {
        let Ok(mut said) = self.0.lock() else { return };
        match outcome {
            Err(why) => {
                if said.down.get(&t.socket) != Some(why) {
                    tracing::warn!(
                        slot = t.slot,
                        pid = t.pid,
                        generation = t.generation,
                        "worker metrics: {why} (corral_worker_metrics_up is 0 until it answers)"
                    );
                    said.down.insert(t.socket.clone(), why.clone());
                }
            }
            Ok(_) => {
                if said.down.remove(&t.socket).is_some() {
                    tracing::info!(
                        slot = t.slot,
                        pid = t.pid,
                        generation = t.generation,
                        "worker metrics: answering again"
                    );
                }
            }
        }
    }

    /// Log once that a worker's family was left out.
    pub fn conflict(&self, t: &Target, c: &exposition::Conflict) {
        let Ok(mut said) = self.0.lock() else { return };
        if said.conflicts.insert((t.socket.clone(), c.family.clone())) {
            tracing::warn!(
                slot = t.slot,
                pid = t.pid,
                generation = t.generation,
                "worker metrics: {} left out: {}",
                c.family,
                c.why
            );
        }
    }

    /// Forget workers that are gone.
    pub fn keep_only(&self, targets: &[Target]) {
        let Ok(mut said) = self.0.lock() else { return };
        let live: HashSet<&PathBuf> = targets.iter().map(|t| &t.socket).collect();
        said.down.retain(|p, _| live.contains(p));
        said.conflicts.retain(|(p, _)| live.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_read_as_http_says() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: 4\r\n\r\na 1\n";
        assert_eq!(response(ok, 100), Ok((b"a 1\n".to_vec(), false)));
        assert_eq!(complete(ok), Some(ok.len()));
        assert_eq!(complete(&ok[..ok.len() - 1]), None);
        let om = b"HTTP/1.0 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0\r\n\r\na 1\n# EOF\n";
        assert_eq!(response(om, 100), Ok((b"a 1\n# EOF\n".to_vec(), true)));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\na \r\n2;x=y\r\n1\n\r\n0\r\n\r\n";
        assert_eq!(response(chunked, 100), Ok((b"a 1\n".to_vec(), false)));
        assert!(response(b"HTTP/1.1 404 Not Found\r\n\r\n", 100).unwrap_err().contains("HTTP 404"));
        assert!(response(b"SSH-2.0-OpenSSH\r\n\r\n", 100).unwrap_err().contains("not HTTP"));
        assert!(response(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\nxx", 100)
            .unwrap_err()
            .contains("compressed"));
        assert!(response(b"HTTP/1.1 200 OK\r\n\r\n0123456789", 5).unwrap_err().contains("larger"));
        assert!(response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01", 100).unwrap_err().contains("early"));
        assert!(response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 100).is_err());
    }
}
