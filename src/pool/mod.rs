//! The pool: every decision corral makes about workers, as a pure state machine.
//!
//! The driver feeds [`Event`]s in (a worker was spawned, became ready, exited; a timer is due; a
//! reload, scale or stop was asked for) together with the current time, and executes the
//! [`Action`]s that come out (spawn, signal, tell systemd, reply, exit); it logs the [`Notice`]s
//! ([`Pool::take_notices`]) that say what happened. This module never performs IO, never reads a
//! clock and never logs: time is an argument, and [`Pool::next_deadline`] tells the driver when to
//! send the next [`Event::Tick`]. That is what makes backoff, timeouts and rolling reloads
//! testable with tables instead of sleeps.
//!
//! # The model
//! The pool owns `desired` *slots* (0..N-1, what `CORRAL_WORKER` says). Each worker lives in one
//! slot and belongs to one *generation* (a config; a reload creates the next one). The pool has a
//! *target* generation, and after every event it converges the actual workers onto it.
//!
//! # Where things are
//! - `worker.rs`: a [`Worker`], its [`WorkerState`] (each state with the timer that ends it), and
//!   [`Pool::enter`], the only code that changes a worker's state.
//! - `converge.rs`: filling slots, batched replacement, scale-down; scale and memory requests.
//! - `rollout.rs`: a reload from request to done or rollback.
//! - `crash.rs`: exits, failed starts, timeouts; backoff and giving up.
//! - `shutdown.rs`: stop, stop now, exit.
//! - `state.rs`: the pool as a snapshot for `corral upgrade`, and its restoration.
//! - `notice.rs`, `types.rs`: what the pool says and its vocabulary.
//!
//! # How a reload flows
//! 1. [`Pool::handle`] gets [`Event::Reload`] with the new config and calls `on_reload`
//!    (rollout.rs): `Notify::Reloading` goes to systemd and `start_reload` makes generation
//!    `to = from + 1` the target. Nothing else changes yet.
//! 2. `settle` (below) runs after every event and calls `converge` (converge.rs): each slot
//!    whose ready worker is of the old generation is *outdated*; up to `reload.batch` of them get
//!    a worker of the target (`spawn` → [`Action::Spawn`]).
//! 3. The driver forks; [`Event::Spawned`] reaches [`Pool::enter`] with `Enter::Running`
//!    (worker.rs): the new worker is `Starting` with its ready deadline.
//! 4. `READY=1` → [`Event::Ready`] → `on_ready` → `enter(Enter::Ready)`. `converge` now sees the
//!    slot with a ready target worker *and* a ready old one, and stops the old one
//!    (`enter(Enter::Stop(Replaced))` → its stop signal, SIGKILL at `stop.timeout`), then starts
//!    the next outdated slot.
//! 5. When every slot has a ready worker of the target and no old worker is live, `conclude`
//!    (rollout.rs) calls `finish_reload`: the waiting `corral reload` gets its reply,
//!    `Notify::Ready` goes to systemd, and a queued reload, if any, starts (back to step 1).
//! 6. If instead a worker of the target exits or misses its ready deadline, `on_exited` or
//!    `not_ready_in_time` (crash.rs) reaches `on_failure`, which calls `abort_reload`
//!    (rollout.rs): the target moves back to `from`, the reply says why, and the next `converge`
//!    stops the half-started workers and replaces already-replaced slots with the old
//!    generation again. The old generation never stopped serving.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, ReadyMode, ReadySignal, StopMode, MAX_INSTANCES};

mod converge;
mod crash;
mod notice;
mod rollout;
mod shutdown;
mod state;
mod types;
mod worker;
/// Workers are named by their pid in events.
pub use nix::unistd::Pid;
pub use notice::*;
pub use state::{InvalidState, PoolState};
pub use types::*;
use worker::{Due, Enter};
pub use worker::{Worker, WorkerPhase, WorkerState};

/// A reload in progress: from which generation to which, and who waits for its outcome.
#[derive(Debug, Clone)]
struct ReloadRun {
    from: Generation,
    to: Generation,
    replies: Vec<ReplyId>,
}

/// A reload asked for during a reload; later requests replace its config and add their replies.
#[derive(Debug, Clone)]
struct QueuedReload {
    config: Arc<Config>,
    replies: Vec<ReplyId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// `stop.drain`: workers keep serving (and are restarted), health says 503, nothing new is
    /// accepted (reload, scale, upgrade); the stop begins at `until`.
    Draining {
        until: Instant,
    },
    /// Stopping every worker; then exit with `exit_code`.
    Stopping {
        exit_code: i32,
    },
    Exited,
}

impl Phase {
    /// Workers are kept serving: running, or draining before a stop.
    fn serving(self) -> bool {
        matches!(self, Phase::Running | Phase::Draining { .. })
    }
}

pub struct Pool {
    /// The config of every generation still needed: the target, a reload's origin, and any
    /// generation a worker still runs.
    configs: BTreeMap<Generation, Arc<Config>>,
    /// The generation the pool converges to. A reload moves it forward; an aborted reload back.
    target: Generation,
    /// How many slots to keep filled (`instances`, changed by scaling and by reloads).
    desired: usize,
    /// Every worker from the moment it is asked for until it is reaped, in start order.
    workers: Vec<Worker>,
    /// Crash bookkeeping per slot (index = slot): backoff and restart counts.
    slots: Vec<SlotInfo>,
    /// Source of [`WorkerId`]s.
    next_id: u64,
    /// The reload in progress.
    reload: Option<ReloadRun>,
    /// The reload that follows the current one.
    queued: Option<QueuedReload>,
    phase: Phase,
    /// `READY=1` was sent to systemd (once, for the first generation).
    announced_ready: bool,
    /// When recent failures happened, for the `restart.window` give-up rule.
    crashes: VecDeque<Instant>,
    /// Failed starts and crashes since a worker was last ready (or since start): the give-up
    /// count, like systemd's `StartLimitBurst=` counts starts.
    failures_since_ready: u32,
    /// Failures that led to a restart, of every kind.
    restarts_total: u64,
    /// Restarts and replacements by reason, for status and metrics.
    restarts_by_reason: BTreeMap<RestartReason, u64>,
    /// (succeeded, failed) reloads.
    reloads: (u64, u64),
    /// The outcome of the last reload, for status.
    last_reload: Option<ReloadResult>,
    /// The last `STATUS=` sent to systemd, so only changes are sent.
    last_status: String,
    /// What happened since the driver last asked ([`Pool::take_notices`]).
    notices: Vec<Notice>,
    /// Worker processes the master's descriptors hold, and its `RLIMIT_NOFILE` ([`Event::Capacity`]).
    capacity: (usize, u64),
    /// Slots are empty for want of descriptors, and the operator was told.
    out_of_descriptors: bool,
}

/// Margin added to our own stop timeout when asking systemd to wait longer.
const EXTEND_MARGIN: Duration = Duration::from_secs(5);

impl Pool {
    pub fn new(config: Arc<Config>) -> Pool {
        let desired = config.instances;
        Pool {
            configs: BTreeMap::from([(1, config)]),
            target: 1,
            desired,
            workers: Vec::new(),
            slots: Vec::new(),
            next_id: 0,
            reload: None,
            queued: None,
            phase: Phase::Running,
            announced_ready: false,
            crashes: VecDeque::new(),
            failures_since_ready: 0,
            restarts_total: 0,
            restarts_by_reason: BTreeMap::new(),
            reloads: (0, 0),
            last_reload: None,
            last_status: String::new(),
            notices: Vec::new(),
            capacity: (usize::MAX, u64::MAX),
            out_of_descriptors: false,
        }
    }

    /// Handle one event at time `now`; returns what the driver must do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Exited {
            return out;
        }
        match event {
            Event::Start => {}
            Event::Spawned { id, pid } => {
                if let Some(i) = self.index_of(id) {
                    self.enter(now, i, Enter::Running(pid), &mut out);
                }
            }
            Event::SpawnFailed { id, error } => self.on_spawn_failed(now, id, error, &mut out),
            Event::Ready { pid, signal } => self.on_ready(now, pid, signal, &mut out),
            Event::Exited { pid, status, last_output } => self.on_exited(now, pid, status, last_output, &mut out),
            Event::WatchdogPing { pid } => self.on_ping(now, pid),
            Event::MemorySamples(samples) => {
                // One pass over the workers (not one search per sample: 1024 workers would make
                // that a million comparisons every interval).
                let rss: std::collections::HashMap<Pid, u64> = samples.into_iter().collect();
                for i in 0..self.workers.len() {
                    if let Some(&r) = self.workers[i].pid.and_then(|p| rss.get(&p)) {
                        self.on_memory(i, r);
                    }
                }
            }
            Event::Tick => self.on_tick(now, &mut out),
            Event::Stalled { duration } => self.on_stalled(now, duration),
            Event::Reload { config, reply } => self.on_reload(config, reply, &mut out),
            Event::Scale { request, reply } => self.on_scale(request, reply, &mut out),
            Event::Stop => self.on_stop(now, &mut out),
            Event::Capacity { processes, nofile } => {
                // Told again only when it changed.
                if self.capacity != (processes.max(1), nofile) {
                    self.capacity = (processes.max(1), nofile);
                    self.out_of_descriptors = false;
                }
            }
        }
        self.settle(now, &mut out);
        out
    }

    /// After every event: converge, conclude what is done, tell systemd what changed, exit when
    /// stopped. A concluded reload may start the queued one, which is converged onto in turn;
    /// that empties the queue, so this runs at most twice.
    fn settle(&mut self, now: Instant, out: &mut Vec<Action>) {
        loop {
            let target = self.target;
            self.converge(now, out);
            self.conclude(out);
            if self.target == target {
                break;
            }
        }
        let status = self.status_line();
        if status != self.last_status {
            self.last_status = status.clone();
            out.push(Action::Notify(vec![Notify::Status(status)]));
        }
        self.finish_stop(out);
    }

    /// A timer is due: each worker whose state waited for this moment moves on.
    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Phase::Draining { until } = self.phase {
            if until <= now {
                self.begin_stop(now, 0, out);
            }
        }
        for i in 0..self.workers.len() {
            match self.due(&self.workers[i], now) {
                Some(Due::Ready) => {
                    self.enter(now, i, Enter::Ready, out);
                }
                Some(Due::ReadyTimeout) => self.not_ready_in_time(now, i, out),
                Some(Due::Watchdog) => self.watchdog_expired(now, i, out),
                Some(Due::Recycle) => self.recycle(i),
                Some(Due::Escalate) => self.escalate(now, i, out),
                Some(Due::Kill) => {
                    self.notices.push(Notice::KilledAfterTimeout(self.workers[i].who()));
                    self.enter(now, i, Enter::Kill, out);
                }
                None => {}
            }
        }
    }

    /// The earliest time at which a [`Event::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.iter().flat_map(|w| self.deadlines(w));
        let by_slot = self.phase.serving().then(|| self.live_by_slot());
        let restarts = by_slot
            .iter()
            .flat_map(|b| b.slots())
            .enumerate()
            // Empty slots, and slots whose replacement failed (the old worker serves).
            .filter(|(_, here)| !here.iter().any(|&i| self.workers[i].is_current(self.target)))
            .filter_map(|(slot, _)| self.slots.get(slot).and_then(|s| s.not_before));
        let drain = if let Phase::Draining { until } = self.phase { Some(until) } else { None };
        workers.chain(restarts).chain(drain).min()
    }

    /// What happened since the last call, oldest first, for the driver to log.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    pub fn generation(&self) -> Generation {
        self.target
    }

    /// Draining before a stop (`stop.drain`): still serving, but no longer healthy.
    pub fn draining(&self) -> bool {
        matches!(self.phase, Phase::Draining { .. })
    }

    pub fn desired(&self) -> usize {
        self.desired
    }

    pub fn restarts_total(&self) -> u64 {
        self.restarts_total
    }

    /// Restarts and replacements by reason, every reason present (0 when none).
    pub fn restarts_by_reason(&self) -> Vec<(RestartReason, u64)> {
        RestartReason::ALL.iter().map(|r| (*r, self.restarts_by_reason.get(r).copied().unwrap_or(0))).collect()
    }

    /// (succeeded, failed) reloads so far.
    pub fn reload_counts(&self) -> (u64, u64) {
        self.reloads
    }

    pub fn slot_info(&self, slot: SlotId) -> Option<&SlotInfo> {
        self.slots.get(slot)
    }

    pub fn reloading(&self) -> bool {
        self.reload.is_some()
    }

    pub fn last_reload(&self) -> Option<&ReloadResult> {
        self.last_reload.as_ref()
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.configs[&self.target]
    }

    /// The config a generation runs with (the target's, for a generation not known).
    pub fn config_of(&self, generation: Generation) -> &Arc<Config> {
        self.configs.get(&generation).unwrap_or_else(|| self.config())
    }

    /// Slots (of the desired ones) that have a ready worker: what "4/4 ready" counts.
    pub fn ready_slots(&self) -> usize {
        let mut ready = vec![false; self.desired];
        for w in self.workers.iter().filter(|w| w.is_ready() && w.slot < self.desired) {
            ready[w.slot] = true;
        }
        ready.iter().filter(|r| **r).count()
    }

    pub fn ready_count(&self) -> usize {
        self.workers.iter().filter(|w| w.is_ready()).count()
    }

    /// The line systemd shows as `Status:`.
    pub fn status_line(&self) -> String {
        if let Phase::Stopping { .. } | Phase::Exited = self.phase {
            return format!("Stopping: {} workers left", self.workers.len());
        }
        let ready = self.ready_slots();
        let restarts = match self.restarts_total {
            1 => "1 restart".to_string(),
            n => format!("{n} restarts"),
        };
        let mut s = format!("{ready}/{} workers ready · generation {} · {restarts}", self.desired, self.target);
        if self.draining() {
            s.push_str(" · draining before stop");
        } else if let Some(run) = &self.reload {
            s.push_str(&format!(" · reloading to generation {}", run.to));
        } else if let Some(ReloadResult::Failed(e)) = &self.last_reload {
            s.push_str(&format!(" · last reload failed: {e}"));
        }
        s
    }

    fn count(&mut self, reason: RestartReason) {
        *self.restarts_by_reason.entry(reason).or_default() += 1;
    }

    fn index_of(&self, id: WorkerId) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    fn slot_mut(&mut self, slot: SlotId) -> &mut SlotInfo {
        if self.slots.len() <= slot {
            self.slots.resize(slot + 1, SlotInfo::default());
        }
        &mut self.slots[slot]
    }
}

#[cfg(test)]
mod tests;
