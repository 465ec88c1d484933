//! The /proc sampler: what each worker's process group uses (RSS, CPU time), which processes
//! hold the pool's listening sockets, and the master's own children. It reads /proc and
//! changes nothing.
//!
//! A worker's figures are those of its whole process group, so they include the children it
//! started (they stay in its group). [`GroupSampler`] keeps each member's /proc files open and
//! re-reads them with `pread`, walking the kernel's children lists only when the host created a
//! process since the previous sample; [`sample_groups`] is the one-shot form.

//!
//! `mod.rs` has the kept-open [`GroupSampler`]; `procfs.rs` the one-shot readers of /proc.

use std::collections::BTreeMap;

mod procfs;

#[cfg(test)]
use procfs::parse_stat;
pub use procfs::{clock_ticks, holding, own_children, sample_groups};
use procfs::{parse_statm, push_children, read_children, read_stat, read_statm};

/// Resident bytes and CPU ticks of one process group, and its processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupUsage {
    pub rss_bytes: u64,
    /// `None` where the sample read only memory figures.
    pub cpu_ticks: Option<u64>,
    pub pids: Vec<i32>,
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

#[cfg(test)]
mod tests;
