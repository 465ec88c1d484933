//! What a master that died without stopping its workers leaves behind, and how it is stopped.
//!
//! Under systemd the unit's cgroup ends every process of a master that was SIGKILLed. Started by
//! hand, in CI or in a container whose init is something else, nothing does: the workers die of
//! their parent-death signal, but what they started (the server under `npm start`, a shell
//! script's child) keeps serving and holding the port. So the master keeps a record of its
//! workers' process groups in its runtime directory, and two things act on it:
//!
//! - **the watcher** (`corral watch-master`, hidden): a small process the master starts in a
//!   process group of its own, holding the read end of a pipe whose write end only the master
//!   has. The kernel closes that end whatever kills the master, so the watcher sees EOF within
//!   a scheduler tick, and stops the recorded groups: SIGTERM, SIGKILL one second later. A master
//!   that stops normally says `bye` first, and the watcher just exits (gunicorn's workers watch
//!   their arbiter the same way, by its pid);
//! - **the next start** of the same pool, which stops whatever the record still names before it
//!   binds the sockets (a watcher that was killed too, a reboot of the container's namespace…).
//!
//! The record is a log of lines `+ PGID STARTTIME` (a worker started; it leads its own process
//! group) and `- PGID` (it was reaped, and its group killed with it), compacted by the master
//! when it grows. STARTTIME is field 22 of `/proc/PID/stat`, so a recorded group is only
//! signalled while its leader is the process corral started, or, once the leader is gone, only
//! its members that started after it: a pid the kernel gave to somebody else is left alone.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The records' file names in a pool's runtime directory: `workers.PID`, one per master (an
/// upgrade keeps the pid, and so the file). The watcher of a master that was killed reads only
/// its master's, so a new master started meanwhile is never taken for the old one.
pub const RECORD: &str = "workers";

/// The record of the master with process id `pid`, in `runtime`.
pub fn record_path(runtime: &Path, pid: u32) -> PathBuf {
    runtime.join(format!("{RECORD}.{pid}"))
}
/// What the master writes to the watcher when it stops on its own.
const BYE: &[u8] = b"bye\n";
/// How long the recorded groups get between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(1);

/// Process groups named by a record: leader pid (= pgid) → the leader's start time.
pub type Groups = BTreeMap<i32, u64>;

/// Replay a record's lines. Lines that do not parse (a write cut short by SIGKILL) are skipped.
pub fn parse(text: &str) -> Groups {
    let mut groups = Groups::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        match (f.next(), f.next().and_then(|p| p.parse::<i32>().ok()), f.next()) {
            (Some("+"), Some(pgid), Some(start)) if pgid > 1 => {
                if let Ok(start) = start.parse() {
                    groups.insert(pgid, start);
                }
            }
            (Some("-"), Some(pgid), None) => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    groups
}

/// Read the record at `path`; a missing one names nothing.
pub fn read(path: &Path) -> Groups {
    std::fs::read_to_string(path).map(|t| parse(&t)).unwrap_or_default()
}

/// `(pgrp, starttime, zombie)` from `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(i32, u64, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // rest starts at field 3 (state): pgrp is field 5, starttime field 22.
    Some((f.get(2)?.parse().ok()?, f.get(19)?.parse().ok()?, *f.first()? == "Z"))
}

/// The start time of a live process, in clock ticks after boot (what the record keeps).
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, start, _)| start)
}

/// The live (not zombie) processes of a recorded group that are the ones corral's worker
/// started: its leader if it is still the same process, else members started after it.
fn members(pgid: i32, leader_start: u64) -> Vec<i32> {
    match stat(pgid) {
        // The leader is the worker corral started: the group is that worker's.
        Some((pgrp, start, false)) if start == leader_start && pgrp == pgid => return vec![pgid],
        // The pid is somebody else's now: the kernel reuses a pid only once no group has it as
        // pgid, so nothing of the worker's group is left.
        Some((_, start, _)) if start != leader_start => return Vec::new(),
        _ => {}
    }
    // The leader is gone (or a zombie): its group may live on, under another parent.
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if let Some((pgrp, start, zombie)) = stat(pid) {
            if pgrp == pgid && start >= leader_start && !zombie {
                out.push(pid);
            }
        }
    }
    out
}

/// Signal what is left of a recorded group.
fn signal(pgid: i32, leader_start: u64, sig: Signal) -> usize {
    let live = members(pgid, leader_start);
    if live.contains(&pgid) {
        let _ = killpg(Pid::from_raw(pgid), sig);
    } else {
        for pid in &live {
            let _ = kill(Pid::from_raw(*pid), sig);
        }
    }
    live.len()
}

/// What [`stop`] found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Groups that still had processes.
    pub groups: usize,
    /// Processes in them at the first signal.
    pub processes: usize,
    /// Whether any were left for SIGKILL after the grace period.
    pub killed: bool,
}

/// Stop every process of `groups` that is still corral's: SIGTERM, then SIGKILL after `grace`.
pub fn stop(groups: &Groups, grace: Duration) -> Stopped {
    let mut out = Stopped::default();
    let mut left: Vec<(i32, u64)> = Vec::new();
    for (&pgid, &start) in groups {
        let n = signal(pgid, start, Signal::SIGTERM);
        if n > 0 {
            out.groups += 1;
            out.processes += n;
            left.push((pgid, start));
        }
    }
    let deadline = Instant::now() + grace;
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        left.retain(|&(pgid, start)| !members(pgid, start).is_empty());
    }
    for (pgid, start) in left {
        if signal(pgid, start, Signal::SIGKILL) > 0 {
            out.killed = true;
        }
    }
    out
}

/// The master's side: the record it keeps, and its watcher.
pub struct Record {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Live groups, as written.
    live: Groups,
    /// Lines in the file now.
    lines: usize,
}

impl Record {
    /// Start a new record at `path` naming `live` (none at a first start; the workers taken over
    /// at an upgrade).
    pub fn create(path: PathBuf, live: Groups) -> Record {
        let mut r = Record { path, file: None, live, lines: 0 };
        r.rewrite();
        r
    }

    /// A worker started: it leads process group `pgid`.
    pub fn started(&mut self, pgid: i32) {
        let Some(start) = start_time(pgid) else { return };
        self.live.insert(pgid, start);
        self.append(&format!("+ {pgid} {start}\n"));
    }

    /// A worker was reaped (and its group killed).
    pub fn reaped(&mut self, pgid: i32) {
        if self.live.remove(&pgid).is_some() {
            self.append(&format!("- {pgid}\n"));
        }
    }

    /// The pool stopped every worker: nothing to record.
    pub fn remove(&mut self) {
        self.file = None;
        self.live.clear();
        let _ = std::fs::remove_file(&self.path);
    }

    fn append(&mut self, line: &str) {
        self.lines += 1;
        // Compact once most lines are history.
        if self.lines > 64 + 2 * self.live.len() {
            self.rewrite();
            return;
        }
        if let Some(f) = &mut self.file {
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::warn!("cannot write {}: {e}", self.path.display());
            }
        }
    }

    /// Write the live groups to a new file and put it in place (atomically: a watcher reading
    /// it meanwhile sees the old or the new one).
    fn rewrite(&mut self) {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".new");
        let text: String = self.live.iter().map(|(pgid, start)| format!("+ {pgid} {start}\n")).collect();
        // The master's and its watcher's alone (0600): the runtime directory may let others
        // through (`[control] group`).
        let _ = std::fs::remove_file(&tmp);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .and_then(|()| std::fs::OpenOptions::new().append(true).open(&self.path));
        match written {
            Ok(f) => self.file = Some(f),
            Err(e) => {
                tracing::warn!(
                    "cannot keep the record of workers at {} ({e}): if this master is killed, what its workers \
                     started may keep running",
                    self.path.display()
                );
                self.file = None;
            }
        }
        self.lines = self.live.len();
    }
}

/// The master's end of the watcher.
pub struct Watcher {
    pub pid: Pid,
    /// The write end: closed by the kernel when the master dies, however it dies.
    pipe: OwnedFd,
}

impl Watcher {
    /// Start `exe watch-master RECORD` in its own process group (so a signal to the master's
    /// group, a terminal's Ctrl-C, does not reach it), reading a pipe only the master writes.
    pub fn start(exe: &Path, record: &Path) -> std::io::Result<Watcher> {
        use std::os::unix::process::CommandExt;
        // Both ends close-on-exec: the child's stdin is a dup, and no worker inherits either.
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let child =
            std::process::Command::new(exe).arg("watch-master").arg(record).stdin(read).process_group(0).spawn()?;
        Ok(Watcher { pid: Pid::from_raw(child.id() as i32), pipe: write })
    }

    /// The watcher of a previous image of this master (`corral upgrade`).
    pub fn adopt(pid: i32, pipe: OwnedFd) -> Watcher {
        Watcher { pid: Pid::from_raw(pid), pipe }
    }

    /// The write end, for `corral upgrade` to hand over.
    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.pipe)
    }

    /// The master stops on its own: tell the watcher, and reap it (it exits at once).
    pub fn bye(self) {
        let mut f = std::fs::File::from(self.pipe);
        let _ = f.write_all(BYE);
        drop(f);
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            match nix::sys::wait::waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
                _ => return,
            }
        }
    }
}

/// `corral watch-master RECORD`: wait for EOF on stdin; unless the master said `bye`, stop the
/// groups the record names. Returns the exit status.
pub fn watch(record: &Path) -> i32 {
    let mut said = Vec::new();
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => said.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::error!("watching the master: cannot read its pipe ({e})");
                break;
            }
        }
    }
    if said.ends_with(BYE) {
        return 0;
    }
    let groups = read(record);
    let stopped = stop(&groups, GRACE);
    if stopped.processes > 0 {
        tracing::warn!(
            "the master is gone without stopping its workers (killed?): stopped {} processes in {} process groups \
             they left{}",
            stopped.processes,
            stopped.groups,
            if stopped.killed { " (SIGKILL after 1 s)" } else { "" }
        );
    }
    let _ = std::fs::remove_file(record);
    0
}

/// At a first start, before binding: stop what previous masters of this pool left running
/// (every record there is a dead master's: the runtime directory's lock is ours).
pub fn stop_previous(runtime: &Path) {
    let mut groups = Groups::new();
    let mut records = Vec::new();
    for entry in std::fs::read_dir(runtime).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.strip_prefix(RECORD).is_some_and(|rest| rest.starts_with('.')) {
            groups.extend(read(&entry.path()));
            records.push(entry.path());
        }
    }
    if groups.is_empty() {
        for r in records {
            let _ = std::fs::remove_file(r);
        }
        return;
    }
    let stopped = stop(&groups, GRACE);
    if stopped.processes > 0 {
        tracing::warn!(
            "a previous master of this pool died without stopping its workers: stopped {} processes in {} process \
             groups it had started{}",
            stopped.processes,
            stopped.groups,
            if stopped.killed { " (SIGKILL after 1 s)" } else { "" }
        );
    }
    for r in records {
        let _ = std::fs::remove_file(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_replays_starts_and_reaps_and_skips_what_does_not_parse() {
        let table: &[(&str, &[(i32, u64)])] = &[
            ("", &[]),
            ("+ 10 100\n+ 11 101\n", &[(10, 100), (11, 101)]),
            ("+ 10 100\n+ 11 101\n- 10\n", &[(11, 101)]),
            // A write cut short, a pid of 1 or less, garbage: skipped.
            ("+ 10 100\n+ 12 1", &[(10, 100), (12, 1)]),
            ("+ 10\n+ 1 5\n+ 0 5\n+ -3 5\nxyz\n- \n", &[]),
            ("- 10\n+ 10 7\n", &[(10, 7)]),
        ];
        for (text, want) in table {
            let got: Vec<_> = parse(text).into_iter().collect();
            assert_eq!(&got, want, "{text:?}");
        }
    }

    #[test]
    fn the_record_compacts_and_names_only_live_groups() {
        let dir = std::env::temp_dir().join(format!("corral-leftovers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = record_path(&dir, 1);
        let me = std::process::id() as i32;
        let mut r = Record::create(path.clone(), Groups::new());
        for _ in 0..200 {
            r.started(me);
            r.reaped(me);
        }
        r.started(me);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().count() < 70, "{text}");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "the master's and its watcher's alone");
        assert_eq!(read(&path).keys().copied().collect::<Vec<_>>(), vec![me]);
        r.remove();
        assert!(read(&path).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pid_that_now_names_another_process_is_left_alone() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert_eq!(members(me, start + 1), Vec::<i32>::new());
        // Our own group is led by cargo's test runner or a shell, not by us: only a leader counts.
        let pgrp = nix::unistd::getpgrp().as_raw();
        if pgrp == me {
            assert_eq!(members(me, start), vec![me]);
        }
    }
}
