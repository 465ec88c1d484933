//! One-shot readers of /proc: a process's stat and statm, the children lists, the processes
//! holding a socket, the master's own children. Each call opens, reads and closes.

use std::collections::BTreeMap;

use super::{page_size, GroupUsage};

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
pub(super) fn add(out: &mut BTreeMap<i32, GroupUsage>, pgrp: i32, pid: i32, usage: GroupUsage) {
    let g = out.entry(pgrp).or_insert_with(|| GroupUsage { cpu_ticks: Some(0), ..GroupUsage::default() });
    g.rss_bytes += usage.rss_bytes;
    g.cpu_ticks = g.cpu_ticks.zip(usage.cpu_ticks).map(|(a, b)| a + b);
    g.pids.push(pid);
}

pub(super) fn read_stat(pid: i32, page: u64, buf: &mut String) -> Option<(i32, GroupUsage)> {
    use std::io::Read;
    buf.clear();
    std::fs::File::open(format!("/proc/{pid}/stat")).ok()?.read_to_string(buf).ok()?;
    parse_stat(buf, page)
}

/// Resident pages of `pid`, from its `/proc/PID/statm` opened by path.
pub(super) fn read_statm(pid: i32, buf: &mut String) -> Option<u64> {
    use std::io::Read;
    buf.clear();
    std::fs::File::open(format!("/proc/{pid}/statm")).ok()?.read_to_string(buf).ok()?;
    parse_statm(buf)
}

/// The children of `pid` (those its main thread forked: where servers fork, and the one file
/// to read, which keeps a sample of 1024 workers cheap).
pub(super) fn push_children(pid: i32, stack: &mut Vec<i32>, buf: &mut String) {
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

/// Push the pids of a kept-open children list onto `stack`. The kernel hands the list out a
/// page at a time, so it is read until the end (one read when it is empty, the usual case).
pub(super) fn read_children(
    f: &std::fs::File,
    buf: &mut Vec<u8>,
    text: &mut String,
    stack: &mut Vec<i32>,
) -> std::io::Result<()> {
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
pub(super) fn parse_statm(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// (process group, usage) from the text of `/proc/PID/stat`.
pub(super) fn parse_stat(stat: &str, page: u64) -> Option<(i32, GroupUsage)> {
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

/// Our own live children, from the kernel's list (`/proc/self/task/*/children`), or by scanning
/// /proc where that list is not compiled in.
pub fn own_children() -> Vec<nix::unistd::Pid> {
    let me = std::process::id();
    let mut out = Vec::new();
    let listed = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"));
    match listed {
        Ok(text) => out.extend(text.split_whitespace().filter_map(|p| p.parse().ok()).map(nix::unistd::Pid::from_raw)),
        Err(_) => {
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
                let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
                if ppid == Some(me) {
                    out.push(nix::unistd::Pid::from_raw(pid));
                }
            }
        }
    }
    // Zombies are only waiting to be reaped.
    out.retain(|p| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        !matches!(stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()), Some("Z") | None)
    });
    out
}
