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
    /// `None` where the sample read only memory figures.
    pub cpu_ticks: Option<u64>,
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
    let page = page_size();
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
    let g = out.entry(pgrp).or_insert_with(|| GroupUsage { cpu_ticks: Some(0), ..GroupUsage::default() });
    g.rss_bytes += usage.rss_bytes;
    g.cpu_ticks = g.cpu_ticks.zip(usage.cpu_ticks).map(|(a, b)| a + b);
    g.pids.push(pid);
}

fn read_stat(pid: i32, page: u64, buf: &mut String) -> Option<(i32, GroupUsage)> {
    use std::io::Read;
    buf.clear();
    std::fs::File::open(format!("/proc/{pid}/stat")).ok()?.read_to_string(buf).ok()?;
    parse_stat(buf, page)
}

/// Resident pages of `pid`, from its `/proc/PID/statm` opened by path.
fn read_statm(pid: i32, buf: &mut String) -> Option<u64> {
    use std::io::Read;
    buf.clear();
    std::fs::File::open(format!("/proc/{pid}/statm")).ok()?.read_to_string(buf).ok()?;
    parse_statm(buf)
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
/// between runs, so that an idle pool of 1024 workers costs next to nothing.
///
/// Each process met keeps its `/proc/PID/statm` and its children list
/// (`/proc/PID/task/PID/children`) open; they are read again with one `pread` each (no path
/// walk, no open and close: the kernel regenerates the text on each read from offset 0). A
/// sample is of one of two depths:
///
/// - **memory** (the periodic one): a member's RSS comes from its `statm`, half the
///   kernel's work of `stat` (seven numbers; no thread walk for CPU times, no 52 fields to
///   format). Its group is the one its `stat` showed when it was first met, checked again
///   every [`GROUP_CHECK_EVERY`] for processes that are not a worker themselves (one that
///   calls setpgid to leave its worker's group is no longer counted for it after that);
/// - **full** (`cpu`: for `corral status` and /metrics): every member's `stat` is read, for
///   its CPU times and its group.
///
/// Members are found by walking down from each worker through the children lists, unless no
/// process was created on the host since the last sample (the `processes` count of /proc/stat
/// did not move): then no list can have grown, and the known members are read again without
/// them. A sample of an idle pool on a quiet host is one `pread` of a statm per process.
/// The master's own children list (members whose parent exited are re-parented to it) is as
/// long as the pool: it is read when a member is found gone, and every [`GROUP_CHECK_EVERY`].
///
/// Where the kernel has no children lists and /proc must be scanned for group members, a
/// process seen before keeps its known group and is not read again; only processes new since
/// the last scan are. Every [`FULL_SCAN_EVERY`]th scan reads them all anyway.
///
/// A kept-open file refers to its process, not to its number: once the process is gone it
/// reads nothing, so a reused pid is never counted through it. The kernel keeps a page for
/// each open file's text: 8 KiB per process of kernel memory, against a path walk each.
#[derive(Default)]
pub struct GroupSampler {
    /// Every process met by the last walk: the groups' members and the master's other children.
    procs: std::collections::HashMap<i32, Proc>,
    /// The master's own children list.
    master_children: Option<std::fs::File>,
    /// The walk's number: a process met in this walk carries it.
    round: u64,
    /// Files kept open in `procs`.
    kept: usize,
    /// Members found gone in this walk.
    gone: usize,
    /// The host's count of processes (and threads) created, at the last walk, and the file it
    /// is read from (`processes` in /proc/stat).
    forks: Option<u64>,
    proc_stat: Option<std::fs::File>,
    /// When the groups of members that are not workers themselves were last read again.
    groups_checked: Option<std::time::Instant>,
    /// Scan path: the group of every process seen at the last scan.
    seen: std::collections::HashMap<i32, i32>,
    scans: u64,
    /// Reused between samples: a stat line, a read buffer, the walk's stack.
    text: String,
    buf: Vec<u8>,
    stack: Vec<i32>,
}

/// One process met by [`GroupSampler`], as it keeps it between samples.
struct Proc {
    /// Its `/proc/PID/statm` and children list, kept open (`None` past the kept-open budget,
    /// or not needed yet: read by path then).
    statm: Option<std::fs::File>,
    children: Option<std::fs::File>,
    /// Its process group when its `stat` was last read.
    pgrp: i32,
    /// The walk that met it last.
    round: u64,
}

impl Proc {
    fn files(&self) -> usize {
        usize::from(self.statm.is_some()) + usize::from(self.children.is_some())
    }
}

/// At most this many files kept open by [`GroupSampler`] (two per process: statm and children),
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

/// How often [`GroupSampler`] reads again the group of each member that is not a worker.
pub const GROUP_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |p| p as u64)
}

/// What one visit of [`GroupSampler::visit`] reads.
struct Depth<'a> {
    /// CPU times too (every member's `stat`).
    cpu: bool,
    /// The group of members that are not workers read again.
    check_groups: bool,
    leaders: &'a std::collections::HashSet<i32>,
    page: u64,
}

impl GroupSampler {
    /// RSS of each group led by one of `wanted`; with `cpu`, its CPU ticks and its processes.
    pub fn sample(&mut self, wanted: &[i32], cpu: bool) -> BTreeMap<i32, GroupUsage> {
        self.sample_as(wanted, cpu, false)
    }

    /// [`GroupSampler::sample`]; with `assume_quiet`, as if no process had been created since
    /// the last sample (for tests: the host's count moves all the time while they run).
    fn sample_as(&mut self, wanted: &[i32], cpu: bool, assume_quiet: bool) -> BTreeMap<i32, GroupUsage> {
        let mut out = BTreeMap::new();
        let Some(&first) = wanted.first() else {
            self.procs.clear();
            self.kept = 0;
            return out;
        };
        let leaders: std::collections::HashSet<i32> = wanted.iter().copied().collect();
        let now = std::time::Instant::now();
        let check_groups = cpu || self.groups_checked.is_none_or(|t| now.duration_since(t) >= GROUP_CHECK_EVERY);
        if check_groups {
            self.groups_checked = Some(now);
        }
        let depth = Depth { cpu, check_groups, leaders: &leaders, page: page_size() };
        self.round += 1;
        let walk = self.procs.get(&first).is_some_and(|p| p.children.is_some())
            || std::fs::metadata(format!("/proc/{first}/task/{first}/children")).is_ok();
        self.gone = 0;
        if walk {
            let grown = (self.tree_may_have_grown() && !assume_quiet) || check_groups;
            let mut stack = std::mem::take(&mut self.stack);
            stack.clear();
            stack.extend_from_slice(wanted);
            if grown {
                // Down each group through the children lists, and every member known before
                // (one whose parent exited is re-parented: no longer below its worker).
                stack.extend(self.procs.iter().filter(|(_, p)| leaders.contains(&p.pgrp)).map(|(pid, _)| *pid));
                while let Some(pid) = stack.pop() {
                    self.visit(pid, &depth, &mut out, Some(&mut stack));
                }
            } else {
                // No process was created on the host since the last walk: the same processes,
                // read again without their children lists.
                stack.extend(self.procs.keys());
                for &pid in &stack {
                    self.visit(pid, &depth, &mut out, None);
                }
                stack.clear();
            }
            // The master's other children: group members whose parent exited (re-parented to
            // the master, the subreaper). Its list is as long as the pool, so it is read only
            // when a member is gone (its children are re-parented), at the first walk, and with
            // the groups' check.
            if self.gone > 0 || check_groups || self.master_children.is_none() {
                let master = std::process::id() as i32;
                if self.master_children.is_none() {
                    self.master_children = std::fs::File::open(format!("/proc/{master}/task/{master}/children")).ok();
                }
                if let Some(f) = &self.master_children {
                    let _ = read_children(f, &mut self.buf, &mut self.text, &mut stack);
                }
                while let Some(pid) = stack.pop() {
                    self.visit(pid, &depth, &mut out, Some(&mut stack));
                }
            }
            self.stack = stack;
        } else {
            for pid in self.scan(&leaders) {
                self.visit(pid, &depth, &mut out, None);
            }
        }
        let round = self.round;
        let mut closed = 0;
        self.procs.retain(|_, p| {
            let met = p.round == round;
            if !met {
                closed += p.files();
            }
            met
        });
        self.kept -= closed;
        out
    }

    /// Read `pid` once in this walk: count it for its group if that is one of `depth.leaders`,
    /// and push its children onto `stack` (when walking children lists).
    fn visit(
        &mut self,
        pid: i32,
        depth: &Depth<'_>,
        out: &mut BTreeMap<i32, GroupUsage>,
        stack: Option<&mut Vec<i32>>,
    ) {
        use std::collections::hash_map::Entry;
        let round = self.round;
        let budget = kept_open_budget();
        let Self { procs, kept, text, buf, gone, .. } = self;
        let (proc, fresh) = match procs.entry(pid) {
            Entry::Occupied(e) => {
                let proc = e.into_mut();
                if proc.round == round {
                    return;
                }
                proc.round = round;
                (proc, None)
            }
            Entry::Vacant(e) => {
                // Met for the first time: its stat tells its group.
                let Some((pgrp, usage)) = read_stat(pid, depth.page, text) else { return };
                (e.insert(Proc { statm: None, children: None, pgrp, round }), Some(usage))
            }
        };
        if let Some(stack) = stack {
            if proc.children.is_none() && *kept < budget {
                proc.children = std::fs::File::open(format!("/proc/{pid}/task/{pid}/children")).ok();
                *kept += usize::from(proc.children.is_some());
            }
            match &proc.children {
                Some(f) => {
                    let _ = read_children(f, buf, text, stack);
                }
                None => push_children(pid, stack, text),
            }
        }
        // Its group (and CPU times) from its stat: when met for the first time, for a full
        // sample, and at the groups' check for a process that is not a worker itself.
        let cpu_ticks = match fresh {
            Some(usage) => usage.cpu_ticks,
            None if depth.cpu || (depth.check_groups && !depth.leaders.contains(&pid)) => {
                let Some((pgrp, usage)) = read_stat(pid, depth.page, text) else {
                    proc.round = 0; // gone: forgotten after this walk
                    *gone += 1;
                    return;
                };
                proc.pgrp = pgrp;
                usage.cpu_ticks
            }
            None => None,
        };
        if !depth.leaders.contains(&proc.pgrp) {
            return; // walked only for its children
        }
        // Its RSS from its statm, always: the exact count (stat's is the kernel's approximate
        // one, which can lag by a few hundred KiB).
        if proc.statm.is_none() && *kept < budget {
            proc.statm = std::fs::File::open(format!("/proc/{pid}/statm")).ok();
            *kept += usize::from(proc.statm.is_some());
        }
        let pages = match &proc.statm {
            Some(f) => {
                use std::os::unix::fs::FileExt;
                if buf.len() < 4096 {
                    buf.resize(4096, 0);
                }
                // A kept file of an exited process reads nothing or fails (ESRCH).
                match f.read_at(buf, 0) {
                    Ok(n) if n > 0 => std::str::from_utf8(&buf[..n]).ok().and_then(parse_statm),
                    _ => None,
                }
            }
            None => read_statm(pid, text),
        };
        let Some(pages) = pages else {
            proc.round = 0;
            *gone += 1;
            return;
        };
        let g = out.entry(proc.pgrp).or_insert_with(|| GroupUsage { cpu_ticks: Some(0), ..GroupUsage::default() });
        g.rss_bytes += pages * depth.page;
        g.cpu_ticks = g.cpu_ticks.zip(cpu_ticks).map(|(a, b)| a + b);
        // Who is in the group is for status and /metrics: with the CPU times.
        if depth.cpu {
            g.pids.push(pid);
        }
    }

    /// Whether a process or thread may have been created since the last call: the host's
    /// count of them (`processes` in /proc/stat, which every fork and clone adds to) moved.
    /// When it did not, no children list can have grown, and a sample of an idle pool is one
    /// read per process. Unknown counts as grown.
    fn tree_may_have_grown(&mut self) -> bool {
        use std::os::unix::fs::FileExt;
        if self.proc_stat.is_none() {
            self.proc_stat = std::fs::File::open("/proc/stat").ok();
        }
        let Some(f) = &self.proc_stat else { return true };
        // /proc/stat holds a line per CPU and per interrupt before `processes`. The kernel
        // makes the whole text for every read that starts anywhere, so it is read in one go,
        // with a buffer grown until the text fits (tens of KiB on a host of hundreds of CPUs).
        if self.buf.len() < 4096 {
            self.buf.resize(4096, 0);
        }
        let n = loop {
            match f.read_at(&mut self.buf, 0) {
                Ok(n) if n < self.buf.len() => break n,
                Ok(_) if self.buf.len() < 1 << 20 => {
                    let more = self.buf.len() * 2;
                    self.buf.resize(more, 0);
                }
                _ => return true,
            }
        };
        let now = std::str::from_utf8(&self.buf[..n])
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("processes ")))
            .and_then(|n| n.trim().parse::<u64>().ok());
        let grown = now.is_none() || now != self.forks;
        self.forks = now;
        grown
    }

    /// One pass over /proc: the pids that may be in one of the groups `leaders`.
    fn scan(&mut self, leaders: &std::collections::HashSet<i32>) -> Vec<i32> {
        let full = self.scans % FULL_SCAN_EVERY == 0;
        self.scans += 1;
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        let mut now = std::collections::HashMap::with_capacity(self.seen.len());
        let mut candidates = Vec::new();
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let pgrp = match self.seen.get(&pid) {
                Some(&g) if !full => Some(g),
                _ => read_stat(pid, 4096, &mut self.text).map(|(g, _)| g),
            };
            let Some(pgrp) = pgrp else { continue };
            now.insert(pid, pgrp);
            if leaders.contains(&pgrp) || self.procs.contains_key(&pid) {
                candidates.push(pid);
            }
        }
        self.seen = now;
        candidates
    }
}

/// Push the pids of a kept-open children list onto `stack`. The kernel hands the list out a
/// page at a time, so it is read until the end (one read when it is empty, the usual case).
fn read_children(f: &std::fs::File, buf: &mut Vec<u8>, text: &mut String, stack: &mut Vec<i32>) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    if buf.len() < 4096 {
        buf.resize(4096, 0);
    }
    text.clear();
    let mut offset = 0;
    loop {
        let n = f.read_at(buf, offset)?;
        if n == 0 {
            break;
        }
        text.push_str(std::str::from_utf8(&buf[..n]).map_err(|_| std::io::ErrorKind::InvalidData)?);
        offset += n as u64;
    }
    stack.extend(text.split_ascii_whitespace().filter_map(|c| c.parse::<i32>().ok()));
    Ok(())
}

/// Resident pages from the text of `/proc/PID/statm` (its second field).
fn parse_statm(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
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
    Some((pgrp, GroupUsage { rss_bytes: rss_pages * page, cpu_ticks: Some(utime + stime), pids: Vec::new() }))
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

    /// The kept-open sampler finds what the one-shot one finds, sample after sample, at both
    /// depths and on a quiet host, and drops a member that exits.
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
        // Just exec'd, a `sleep` is still mapping its libraries: wait until the group's RSS
        // holds still for 100ms before comparing one look with another.
        let mut last = 0;
        loop {
            let rss = sampler.sample(&[pid], false)[&pid].rss_bytes;
            if rss == last {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the group's RSS never held still");
            last = rss;
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let sorted = |mut v: Vec<i32>| {
            v.sort_unstable();
            v
        };
        for quiet in [false, true, false, true] {
            let fresh = &sample_groups(&[pid])[&pid];
            let full = &sampler.sample_as(&[pid], true, quiet)[&pid];
            assert_eq!(sorted(full.pids.clone()), sorted(fresh.pids.clone()));
            assert!(full.cpu_ticks.is_some());
            // Idle sleeps and a waiting shell: their RSS does not move between two looks.
            let memory = &sampler.sample_as(&[pid], false, quiet)[&pid];
            assert_eq!((memory.rss_bytes, memory.cpu_ticks), (full.rss_bytes, None), "quiet: {quiet}");
        }
        let victim = sample_groups(&[pid])[&pid].pids.iter().copied().find(|p| *p != pid).unwrap();
        let rss_before = sampler.sample_as(&[pid], false, true)[&pid].rss_bytes;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), nix::sys::signal::Signal::SIGKILL).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // A member gone is noticed without a walk (its kept statm reads nothing)...
        while sampler.sample_as(&[pid], false, true)[&pid].rss_bytes == rss_before {
            assert!(std::time::Instant::now() < deadline, "an exited member is still counted");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // ...and forgotten.
        assert!(!sampler.sample_as(&[pid], true, true)[&pid].pids.contains(&victim));
        assert!(!sampler.procs.contains_key(&victim));
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let _ = leader.wait();
    }

    /// A process forked into a group after samples that found nothing new is found by the
    /// next one: the fork moved the host's count of created processes.
    #[test]
    fn group_sampler_finds_a_child_forked_later() {
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(format!("corral-sampler-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let go = dir.join("go");
        let script = format!("while [ ! -e {} ]; do sleep 0.05; done; sleep 30 & wait", go.display());
        let mut leader = std::process::Command::new("sh").args(["-c", &script]).process_group(0).spawn().unwrap();
        let pid = leader.id() as i32;
        let mut sampler = GroupSampler::default();
        // The shell forks a `sleep` every 50ms: wait for a sample that sees only the shell.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sampler.sample(&[pid], true)[&pid].pids != [pid] {
            assert!(std::time::Instant::now() < deadline, "never saw the shell alone");
        }
        std::fs::write(&go, "").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            sampler.sample(&[pid], false);
            let pids = &sampler.sample(&[pid], true)[&pid].pids;
            if pids.len() == 2 && sample_groups(&[pid])[&pid].pids.len() == 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the child forked later was never counted");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let _ = leader.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The host's count of created processes is read (and a fork moves it).
    #[test]
    fn a_fork_counts_as_the_tree_may_have_grown() {
        let mut sampler = GroupSampler::default();
        assert!(sampler.tree_may_have_grown(), "nothing to compare with yet");
        let before = sampler.forks.expect("`processes` read from /proc/stat");
        std::process::Command::new("true").status().unwrap();
        assert!(sampler.tree_may_have_grown());
        assert!(sampler.forks.unwrap() > before);
    }

    #[test]
    fn parses_proc_stat_with_odd_names() {
        let stat = "1234 (my (odd) app) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000000 300 18446744073709551615";
        let (pgrp, u) = parse_stat(stat, 4096).unwrap();
        assert_eq!(pgrp, 1234);
        assert_eq!(u, GroupUsage { rss_bytes: 300 * 4096, cpu_ticks: Some(300), pids: vec![] });
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
