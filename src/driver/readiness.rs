//! The two ready modes the master observes itself: "listen" (a starting worker is checked in
//! /proc, with a back-off, until a process of its group waits for connections on one of the
//! pool's sockets: `crate::readiness::listen`) and "ipc" (`crate::readiness::ipc` reads its Node IPC channel).
//! Either becomes an [`Event::Ready`] with its signal; the pool decides whether it counts.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::config::{ReadyMode, ReadySignal};
use crate::pool::Event;

use super::Driver;

/// The first check of a starting worker comes this soon after its start...
const FIRST_CHECK: Duration = Duration::from_millis(5);
/// ...and the wait between checks grows by half each time, up to this. A worker that takes a
/// second to start costs about 15 checks; one that is not accepting for 30 s, about 310.
const MAX_CHECK: Duration = Duration::from_millis(100);
/// Until the wait reaches this, only the worker's main process is checked (one directory and a
/// few files); then every process of its group (a pass over /proc on kernels without
/// children lists), which finds a child that accepts for its parent (gunicorn's workers).
const GROUP_AFTER: Duration = Duration::from_millis(20);

pub(super) struct ReadyWatch {
    /// Starting workers in "listen" mode: when to check each next, and the wait after that.
    listening: HashMap<Pid, (Instant, Duration)>,
    /// Workers' IPC readers report "ready" here.
    pub(super) ipc_tx: mpsc::UnboundedSender<Pid>,
    pub(super) ipc_rx: mpsc::UnboundedReceiver<Pid>,
}

impl ReadyWatch {
    pub(super) fn new() -> ReadyWatch {
        let (ipc_tx, ipc_rx) = mpsc::unbounded_channel();
        ReadyWatch { listening: HashMap::new(), ipc_tx, ipc_rx }
    }

    /// When the next "listen" check is due, if any worker is being watched.
    pub(super) fn next_check(&self) -> Option<Instant> {
        self.listening.values().map(|(at, _)| *at).min()
    }
}

impl Driver {
    /// Start watching a worker that was just started (or taken over by an upgrade while
    /// starting) for the signal its mode waits for. `ipc` is the master's end of its channel.
    pub(super) fn watch_ready(&mut self, pid: Pid, mode: ReadyMode, ipc: Option<OwnedFd>) {
        if mode == ReadyMode::Listen {
            self.ready_watch.listening.insert(pid, (Instant::now() + FIRST_CHECK, FIRST_CHECK));
        }
        if let Some(fd) = ipc {
            tokio::spawn(crate::readiness::ipc::watch(fd, pid, self.ready_watch.ipc_tx.clone()));
        }
    }

    /// Check every watched worker whose check is due; a worker found accepting is ready.
    pub(super) fn check_listening(&mut self) {
        let now = Instant::now();
        // Workers that are no longer starting (ready by another signal, stopped, exited) are
        // not watched any more.
        let starting: Vec<Pid> = self.pool.workers().iter().filter(|w| w.is_starting()).filter_map(|w| w.pid).collect();
        self.ready_watch.listening.retain(|pid, _| starting.contains(pid));
        let due: Vec<(Pid, Duration)> = self
            .ready_watch
            .listening
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(p, (_, wait))| (*p, *wait))
            .collect();
        if due.is_empty() {
            return;
        }
        let whole: Vec<i32> = due.iter().filter(|(_, wait)| *wait >= GROUP_AFTER).map(|(p, _)| p.as_raw()).collect();
        let groups = if whole.is_empty() { Default::default() } else { crate::sampler::sample_groups(&whole) };
        for (pid, wait) in due {
            let found = match groups.get(&pid.as_raw()) {
                Some(g) => crate::readiness::listen::first_accepting(&g.pids, &self.listen_inodes),
                None => {
                    crate::readiness::listen::is_accepting(pid.as_raw(), &self.listen_inodes).then_some(pid.as_raw())
                }
            };
            if let Some(by) = found {
                self.ready_watch.listening.remove(&pid);
                tracing::debug!(pid = pid.as_raw(), by, "worker is accepting connections");
                self.dispatch(Event::Ready { pid, signal: ReadySignal::Listening });
            } else {
                let next = wait.mul_f32(1.5).min(MAX_CHECK);
                self.ready_watch.listening.insert(pid, (Instant::now() + wait, next));
            }
        }
    }
}
