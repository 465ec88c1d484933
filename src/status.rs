//! What `corral status` shows: a snapshot of a pool, its JSON form (stable, documented in
//! corral(1)) and the human table. The figures come from [`crate::sampler`]; this module only
//! describes and renders them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::text::{escape_terminal, human_bytes, human_duration};

/// One pool, as the control socket reports it. Field names are part of the JSON contract.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolStatus {
    pub name: String,
    /// The running master's version (after a package upgrade: which binary serves).
    #[serde(default)]
    pub version: String,
    /// The master's pid.
    pub pid: u32,
    pub uptime_seconds: f64,
    /// The generation new workers are started from.
    pub generation: u64,
    pub desired: usize,
    /// Slots with a ready worker.
    pub ready: usize,
    pub reloading: bool,
    pub last_reload: Option<LastReload>,
    pub restarts: u64,
    pub restarts_by_reason: BTreeMap<String, u64>,
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
    /// How many times the master re-executed itself in place (`corral upgrade`).
    #[serde(default)]
    pub upgrades: u64,
    /// The master's own log messages dropped because its stderr's reader did not keep up.
    #[serde(default)]
    pub log_messages_dropped: u64,
    /// Draining before a stop (`stop.drain`): serving, but /health and /ready answer 503.
    #[serde(default)]
    pub draining: bool,
    /// Ready workers needed for `/ready` to answer 200 (`metrics.min_ready`, resolved).
    #[serde(default)]
    pub min_ready: usize,
    /// `limits.memory`: the most one worker's process group may use before it is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    pub workers: Vec<WorkerStatus>,
}

/// How a pool reads at a glance: every worker ready, some, or none (green, yellow, red in
/// `corral status` and `corral top`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    AllReady,
    SomeReady,
    NoneReady,
}

impl Health {
    /// The ANSI colour code it is shown in.
    pub fn ansi(self) -> &'static str {
        match self {
            Health::AllReady => "32",
            Health::SomeReady => "33",
            Health::NoneReady => "31",
        }
    }
}

impl PoolStatus {
    pub fn health(&self) -> Health {
        if self.ready == self.desired {
            Health::AllReady
        } else if self.ready == 0 {
            Health::NoneReady
        } else {
            Health::SomeReady
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastReload {
    pub ok: bool,
    /// The generation now serving (when `ok`).
    pub generation: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    pub slot: usize,
    pub pid: Option<i32>,
    pub generation: u64,
    /// `starting`, `ready` or `stopping`.
    pub state: crate::pool::WorkerPhase,
    pub uptime_seconds: f64,
    /// Restarts of this slot.
    pub restarts: u64,
    /// Resident memory of the worker's process group, when sampled.
    pub rss_bytes: Option<u64>,
    /// CPU use of the worker's process group between the last two samples, % of one CPU.
    pub cpu_percent: Option<f64>,
    pub cpu_seconds: Option<f64>,
    /// The worker's own `STATUS=` message.
    pub status: Option<String>,
    /// Why it is being replaced (`memory`, `recycle`), if it is.
    pub replacing: Option<String>,
    /// Processes in the worker's process group (itself and its children), when sampled.
    #[serde(default)]
    pub processes: Option<usize>,
    /// Those that hold one of the pool's listening sockets: the ones that can serve (with a
    /// gunicorn-style arbiter, its children rather than the worker's own pid).
    #[serde(default)]
    pub listening_pids: Vec<i32>,
    /// Of those, the ones the listen detector sees waiting for connections (what
    /// `ready.mode = "listen"` waits for): a process can hold the socket and not accept yet.
    /// Checked by `corral status` for starting workers, and for every worker of a pool of up to
    /// [`ACCEPTING_CHECKED_UP_TO`] (None: not checked; /metrics and /health never check).
    #[serde(default)]
    pub accepting_pids: Option<Vec<i32>>,
}

/// Pools up to this size get every worker's accepting processes checked for `corral status`;
/// larger ones only their starting workers' (it reads each process's threads in /proc).
pub const ACCEPTING_CHECKED_UP_TO: usize = 128;

/// The LISTENING cell: each process holding a listening socket, marked when the listen
/// detector sees it hold the socket without waiting for connections on it.
fn listening_cell(w: &WorkerStatus) -> String {
    if w.listening_pids.is_empty() {
        return "-".into();
    }
    w.listening_pids
        .iter()
        .map(|p| match &w.accepting_pids {
            Some(acc) if !acc.contains(p) => format!("{p} (not accepting)"),
            _ => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The pool line and worker table, like `pm2 ls`. `color`: ANSI colours (only on a TTY).
pub fn render(pools: &[PoolStatus], color: bool) -> String {
    let paint = |code: &str, s: &str| if color { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() };
    let mut out = String::new();
    for (i, p) in pools.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let health = p.health().ansi();
        let _ = write!(
            out,
            "{} · {} · generation {} · {} restart{} · master pid {} (corral {}) · up {}",
            paint("1", &escape_terminal(&p.name)),
            paint(health, &format!("{}/{} ready", p.ready, p.desired)),
            p.generation,
            p.restarts,
            if p.restarts == 1 { "" } else { "s" },
            p.pid,
            escape_terminal(&p.version),
            human_duration(p.uptime_seconds)
        );
        if p.reloading {
            out.push_str(&paint("33", " · reloading"));
        }
        if p.log_messages_dropped > 0 {
            let msg = format!(" · {} log messages dropped (stderr not read)", p.log_messages_dropped);
            out.push_str(&paint("33", &msg));
        }
        match &p.last_reload {
            Some(LastReload { ok: true, generation: Some(g), .. }) => {
                let _ = write!(out, " · last reload ok (generation {g})");
            }
            Some(LastReload { ok: false, error, .. }) => {
                let error = escape_terminal(error.as_deref().unwrap_or("unknown error"));
                let msg = format!(" · last reload failed: {error}");
                out.push_str(&paint("31", &msg));
            }
            _ => {}
        }
        out.push('\n');
        let header =
            ["SLOT", "PID", "GEN", "STATE", "UPTIME", "RESTARTS", "PROCS", "LISTENING", "RSS", "CPU", "STATUS"];
        let mut rows: Vec<[String; 11]> = vec![header.map(str::to_string)];
        for w in &p.workers {
            let state = match &w.replacing {
                Some(why) => format!("{} ({why})", w.state),
                None => w.state.to_string(),
            };
            rows.push([
                w.slot.to_string(),
                w.pid.map_or("-".into(), |p| p.to_string()),
                w.generation.to_string(),
                state,
                human_duration(w.uptime_seconds),
                w.restarts.to_string(),
                w.processes.map_or("-".into(), |n| n.to_string()),
                listening_cell(w),
                w.rss_bytes.map_or("-".into(), human_bytes),
                w.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%")),
                w.status.as_deref().map(escape_terminal).unwrap_or_default().into_owned(),
            ]);
        }
        let widths: Vec<usize> =
            (0..11).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
        for (n, row) in rows.iter().enumerate() {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                let text = match (n, c) {
                    (0, _) => paint("2", cell),
                    (_, 3) if cell.starts_with("ready") => paint("32", cell),
                    (_, 3) if cell.starts_with("starting") => paint("33", cell),
                    (_, 3) => paint("31", cell),
                    _ => cell.clone(),
                };
                line.push_str(&text);
                if c + 1 < row.len() {
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_aligned_table() {
        let w = |slot, state: crate::pool::WorkerPhase| WorkerStatus {
            slot,
            pid: Some(1000 + slot as i32),
            generation: 2,
            state,
            uptime_seconds: 125.0,
            restarts: 0,
            rss_bytes: Some(45 * 1024 * 1024),
            cpu_percent: Some(1.25),
            cpu_seconds: Some(3.0),
            status: None,
            replacing: None,
            processes: Some(1),
            listening_pids: vec![1000 + slot as i32],
            accepting_pids: None,
        };
        let p = PoolStatus {
            name: "myapi".into(),
            version: "1.2.3".into(),
            pid: 99,
            uptime_seconds: 3700.0,
            generation: 2,
            desired: 2,
            ready: 2,
            reloading: false,
            last_reload: Some(LastReload { ok: true, generation: Some(2), error: None }),
            restarts: 0,
            restarts_by_reason: BTreeMap::new(),
            reloads_succeeded: 1,
            reloads_failed: 0,
            log_messages_dropped: 0,
            upgrades: 0,
            draining: false,
            min_ready: 1,
            memory_limit_bytes: None,
            workers: vec![w(0, crate::pool::WorkerPhase::Ready), w(1, crate::pool::WorkerPhase::Starting)],
        };
        let text = render(&[p], false);
        let want = "\
myapi · 2/2 ready · generation 2 · 0 restarts · master pid 99 (corral 1.2.3) · up 1h 1m · last reload ok (generation 2)
SLOT  PID   GEN  STATE     UPTIME  RESTARTS  PROCS  LISTENING  RSS       CPU   STATUS
0     1000  2    ready     2m 5s   0         1      1000       45.0 MiB  1.2%
1     1001  2    starting  2m 5s   0         1      1001       45.0 MiB  1.2%
";
        assert_eq!(text, want);
    }
}
