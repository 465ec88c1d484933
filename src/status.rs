//! What `corral status` shows: a snapshot of a pool, its JSON form (stable, documented in
//! corral(1)), the human table, and the /proc sampling that feeds RSS and CPU figures.
//!
//! Sampling reads `/proc/*/stat` once per round and sums every process by process group, so a
//! worker's figures include the children it started (they stay in its group). This module never
//! changes anything: it reads /proc and renders.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

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
    pub workers: Vec<WorkerStatus>,
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
}

/// Resident bytes and CPU ticks of one process group, and its processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupUsage {
    pub rss_bytes: u64,
    pub cpu_ticks: u64,
    pub pids: Vec<i32>,
}

/// Sum RSS and CPU of every process in the process groups `wanted` (each led by a worker).
///
/// Each group is found by walking down from its leader through the kernel's children lists
/// (`/proc/PID/task/TID/children`), so the cost grows with the pool's own processes, not with
/// every process on the host (100 pools on one host each sampling every few seconds would
/// otherwise read the whole of /proc each time). Where the kernel has no children lists, one
/// pass over /proc does it. One reused buffer: the master runs this every few seconds.
pub fn sample_groups(wanted: &[i32]) -> BTreeMap<i32, GroupUsage> {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let mut out: BTreeMap<i32, GroupUsage> = BTreeMap::new();
    let mut stat = String::with_capacity(512);
    let Some(first) = wanted.first() else { return out };
    if std::fs::metadata(format!("/proc/{first}/task/{first}/children")).is_err() {
        return sample_groups_by_scan(wanted, page);
    }
    let mut stack = Vec::new();
    for &leader in wanted {
        stack.clear();
        stack.push(leader);
        while let Some(pid) = stack.pop() {
            if let Some((pgrp, usage)) = read_stat(pid, page, &mut stat).filter(|(g, _)| *g == leader) {
                add(&mut out, pgrp, pid, usage);
            }
            push_children(pid, &mut stack, &mut stat);
        }
    }
    // A group member whose parent exited was re-parented to the master (the subreaper): look
    // at the master's other children and their descendants too.
    stack.clear();
    push_children(std::process::id() as i32, &mut stack, &mut stat);
    let leaders: std::collections::HashSet<i32> = wanted.iter().copied().collect();
    stack.retain(|p| !leaders.contains(p));
    while let Some(pid) = stack.pop() {
        if let Some((pgrp, usage)) = read_stat(pid, page, &mut stat).filter(|(g, _)| leaders.contains(g)) {
            add(&mut out, pgrp, pid, usage);
        }
        push_children(pid, &mut stack, &mut stat);
    }
    out
}

/// Count process `pid`'s usage in its group `pgrp`.
fn add(out: &mut BTreeMap<i32, GroupUsage>, pgrp: i32, pid: i32, usage: GroupUsage) {
    let g = out.entry(pgrp).or_default();
    g.rss_bytes += usage.rss_bytes;
    g.cpu_ticks += usage.cpu_ticks;
    g.pids.push(pid);
}

fn read_stat(pid: i32, page: u64, buf: &mut String) -> Option<(i32, GroupUsage)> {
    use std::io::Read;
    buf.clear();
    std::fs::File::open(format!("/proc/{pid}/stat")).ok()?.read_to_string(buf).ok()?;
    parse_stat(buf, page)
}

/// The children of `pid` (those its main thread forked: where servers fork, and the one file
/// to read, which keeps a sample of 1024 workers cheap).
fn push_children(pid: i32, stack: &mut Vec<i32>, buf: &mut String) {
    use std::io::Read;
    buf.clear();
    if std::fs::File::open(format!("/proc/{pid}/task/{pid}/children")).and_then(|mut f| f.read_to_string(buf)).is_ok() {
        stack.extend(buf.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
    }
}

/// The same by one pass over all of /proc (kernels without children lists).
fn sample_groups_by_scan(wanted: &[i32], page: u64) -> BTreeMap<i32, GroupUsage> {
    let mut out: BTreeMap<i32, GroupUsage> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    let mut stat = String::with_capacity(512);
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if let Some((pgrp, usage)) = read_stat(pid, page, &mut stat).filter(|(g, _)| wanted.contains(g)) {
            add(&mut out, pgrp, pid, usage);
        }
    }
    out
}

/// [`sample_groups`] for a sampler that runs every `limits.interval`, keeping what it learned
/// between runs, so that an idle pool of 1024 workers costs next to nothing:
///
/// - each process of a group keeps its `/proc/PID/stat` and its children list
///   (`/proc/PID/task/PID/children`) open, and they are read again with one `pread` each (no
///   path walk, no open and close: the text is regenerated on every read from offset 0);
/// - where the kernel has no children lists and /proc must be scanned for group members, a
///   process seen before keeps its known group and is not read again; only processes new since
///   the last scan are. Every [`FULL_SCAN_EVERY`]th scan reads them all anyway (a process may
///   change its group with setpgid, or a pid be reused within an interval).
///
/// A member's group is checked at every read (it is in the text read), so a process that left
/// the group, or a reused pid, is never counted for the wrong worker.
#[derive(Default)]
pub struct GroupSampler {
    open: std::collections::HashMap<i32, std::fs::File>,
    children: std::collections::HashMap<i32, std::fs::File>,
    /// Scan path: the group of every process seen at the last scan.
    seen: std::collections::HashMap<i32, i32>,
    scans: u64,
    /// Read buffers, allocated once: a stat line, a children list.
    stat_buf: Vec<u8>,
    child_buf: Vec<u8>,
}

/// At most this many files kept open by [`GroupSampler`] (two per process: stat and children),
/// and never more than a quarter of the descriptor limit: descriptors are for connections first.
pub const MAX_KEPT_OPEN: usize = 4096;

fn kept_open_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(s, _)| s);
        MAX_KEPT_OPEN.min(usize::try_from(soft / 4).unwrap_or(MAX_KEPT_OPEN))
    })
}

/// How often (in scans) [`GroupSampler`] reads every process of /proc again.
pub const FULL_SCAN_EVERY: u64 = 12;

impl GroupSampler {
    pub fn sample(&mut self, wanted: &[i32]) -> BTreeMap<i32, GroupUsage> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
        let Some(first) = wanted.first() else {
            self.open.clear();
            self.children.clear();
            return BTreeMap::new();
        };
        let leaders: std::collections::HashSet<i32> = wanted.iter().copied().collect();
        let members: Vec<i32> = if self.children.contains_key(first)
            || std::fs::metadata(format!("/proc/{first}/task/{first}/children")).is_ok()
        {
            let mut found = Vec::new();
            let mut stack: Vec<i32> = wanted.to_vec();
            // The master's other children: group members whose parent exited (re-parented to
            // the master, the subreaper).
            let master = std::process::id() as i32;
            self.push_children(master, &mut stack);
            let mut visited = std::collections::HashSet::new();
            while let Some(pid) = stack.pop() {
                if visited.insert(pid) {
                    found.push(pid);
                    self.push_children(pid, &mut stack);
                }
            }
            self.children.retain(|pid, _| *pid == master || visited.contains(pid));
            found
        } else {
            self.scan(&leaders)
        };
        let mut out: BTreeMap<i32, GroupUsage> = BTreeMap::new();
        let mut keep = std::collections::HashSet::new();
        for pid in members {
            let Some((pgrp, usage)) = self.read(pid, page) else { continue };
            if leaders.contains(&pgrp) {
                keep.insert(pid);
                add(&mut out, pgrp, pid, usage);
            }
        }
        self.open.retain(|pid, _| keep.contains(pid));
        out
    }

    /// One pass over /proc: the pids that may be in one of the groups `leaders`.
    fn scan(&mut self, leaders: &std::collections::HashSet<i32>) -> Vec<i32> {
        let full = self.scans % FULL_SCAN_EVERY == 0;
        self.scans += 1;
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        let mut now = std::collections::HashMap::with_capacity(self.seen.len());
        let mut candidates = Vec::new();
        let mut text = String::new();
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let pgrp = match self.seen.get(&pid) {
                Some(&g) if !full => Some(g),
                _ => read_stat(pid, 4096, &mut text).map(|(g, _)| g),
            };
            let Some(pgrp) = pgrp else { continue };
            now.insert(pid, pgrp);
            if leaders.contains(&pgrp) || self.open.contains_key(&pid) {
                candidates.push(pid);
            }
        }
        self.seen = now;
        candidates
    }

    /// Push the children of `pid` (those its main thread forked) onto `stack`, through its
    /// kept-open children list.
    fn push_children(&mut self, pid: i32, stack: &mut Vec<i32>) {
        use std::os::unix::fs::FileExt;
        if !self.children.contains_key(&pid) {
            if self.open.len() + self.children.len() >= kept_open_budget() {
                let mut text = String::new();
                push_children(pid, stack, &mut text);
                return;
            }
            let Ok(f) = std::fs::File::open(format!("/proc/{pid}/task/{pid}/children")) else { return };
            self.children.insert(pid, f);
        }
        if self.child_buf.is_empty() {
            self.child_buf = vec![0; 64 * 1024];
        }
        let n = self.children.get(&pid).and_then(|f| f.read_at(&mut self.child_buf, 0).ok());
        match n {
            Some(n) if n > 0 => {
                if let Ok(text) = std::str::from_utf8(&self.child_buf[..n]) {
                    stack.extend(text.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
                }
            }
            Some(_) => {}
            None => {
                self.children.remove(&pid);
            }
        }
    }

    /// (group, usage) of `pid`, through its kept-open stat file (past [`MAX_KEPT_OPEN`] files,
    /// by opening it each time: descriptors are the master's to keep for connections).
    fn read(&mut self, pid: i32, page: u64) -> Option<(i32, GroupUsage)> {
        use std::os::unix::fs::FileExt;
        if !self.open.contains_key(&pid) {
            if self.open.len() + self.children.len() >= kept_open_budget() {
                let mut text = String::new();
                return read_stat(pid, page, &mut text);
            }
            self.open.insert(pid, std::fs::File::open(format!("/proc/{pid}/stat")).ok()?);
        }
        if self.stat_buf.is_empty() {
            self.stat_buf = vec![0; 1024];
        }
        let n = match self.open.get(&pid)?.read_at(&mut self.stat_buf, 0) {
            Ok(n) if n > 0 => n,
            // The process is gone (a kept file of an exited process reads nothing or ESRCH).
            _ => {
                self.open.remove(&pid);
                return None;
            }
        };
        parse_stat(std::str::from_utf8(&self.stat_buf[..n]).ok()?, page)
    }
}

/// (process group, usage) from the text of `/proc/PID/stat`.
fn parse_stat(stat: &str, page: u64) -> Option<(i32, GroupUsage)> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let pgrp = f.get(2)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    Some((pgrp, GroupUsage { rss_bytes: rss_pages * page, cpu_ticks: utime + stime, pids: Vec::new() }))
}

/// Of `pids`, those with a descriptor open on one of the sockets `inodes` (read from
/// `/proc/PID/fd`, which root and the processes' own user may read).
pub fn holding(pids: &[i32], inodes: &[u64]) -> Vec<i32> {
    let mut out = Vec::new();
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let holds = dir.flatten().any(|fd| {
            std::fs::read_link(fd.path()).ok().is_some_and(|target| {
                let t = target.to_string_lossy();
                t.strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|ino| inodes.contains(&ino))
            })
        });
        if holds {
            out.push(*pid);
        }
    }
    out.sort_unstable();
    out
}

/// Clock ticks per second, for CPU figures.
pub fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64
}

fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn human_bytes(b: u64) -> String {
    bytesize::ByteSize(b).display().iec().to_string()
}

/// Text from outside (a worker's `STATUS=`, its output, an error that quotes it) made safe for a
/// terminal, as `systemctl` and `journalctl` do: control characters (C0 but tab, DEL, C1) become
/// visible `\xNN` escapes, so no worker can move the cursor, retitle the window or hide text.
/// Machine output (JSON, journald fields) keeps the exact text.
pub fn escape_terminal(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| (c.is_control() && c != '\t') || c == '\u{7f}';
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The pool line and worker table, like `pm2 ls`. `color`: ANSI colours (only on a TTY).
pub fn render(pools: &[PoolStatus], color: bool) -> String {
    let paint = |code: &str, s: &str| if color { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() };
    let mut out = String::new();
    for (i, p) in pools.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let health = if p.ready == p.desired {
            "32"
        } else if p.ready == 0 {
            "31"
        } else {
            "33"
        };
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
                if w.listening_pids.is_empty() {
                    "-".into()
                } else {
                    w.listening_pids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
                },
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

    /// The kept-open sampler finds what the one-shot one finds, sample after sample, and drops
    /// a member that exits.
    #[test]
    fn group_sampler_agrees_with_a_fresh_look() {
        use std::os::unix::process::CommandExt;
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = leader.id() as i32;
        let mut sampler = GroupSampler::default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sample_groups(&[pid]).get(&pid).map_or(0, |g| g.pids.len()) < 3 {
            assert!(std::time::Instant::now() < deadline, "the group never had 3 processes");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for _ in 0..3 {
            let mut fresh = sample_groups(&[pid])[&pid].pids.clone();
            let mut kept = sampler.sample(&[pid])[&pid].pids.clone();
            fresh.sort_unstable();
            kept.sort_unstable();
            assert_eq!(kept, fresh);
        }
        let victim = sample_groups(&[pid])[&pid].pids.iter().copied().find(|p| *p != pid).unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), nix::sys::signal::Signal::SIGKILL).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sampler.sample(&[pid])[&pid].pids.contains(&victim) {
            assert!(std::time::Instant::now() < deadline, "an exited member is still counted");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let _ = leader.wait();
    }

    #[test]
    fn parses_proc_stat_with_odd_names() {
        let stat = "1234 (my (odd) app) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000000 300 18446744073709551615";
        let (pgrp, u) = parse_stat(stat, 4096).unwrap();
        assert_eq!(pgrp, 1234);
        assert_eq!(u, GroupUsage { rss_bytes: 300 * 4096, cpu_ticks: 300, pids: vec![] });
        assert!(parse_stat("garbage", 4096).is_none());
    }

    #[test]
    fn samples_this_process_group() {
        let me = nix::unistd::getpgrp().as_raw();
        let groups = sample_groups(&[me]);
        assert!(groups.get(&me).is_some_and(|g| g.rss_bytes > 0));
    }

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

    #[test]
    fn terminal_escapes_are_made_visible() {
        assert_eq!(escape_terminal("plain\ttext ✓"), "plain\ttext ✓");
        assert_eq!(escape_terminal("\x1b]0;owned\x07\x1b[2J"), "\\x1b]0;owned\\x07\\x1b[2J");
        assert_eq!(escape_terminal("a\rb\nc\u{9b}d\u{7f}"), "a\\x0db\\x0ac\\x9bd\\x7f");
    }
}
