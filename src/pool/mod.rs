//! The pool: every decision corral makes about workers, as a pure state machine.
//!
//! The driver feeds [`Event`]s in (a worker was spawned, became ready, exited; a timer is due; a
//! reload, scale or stop was asked for) together with the current time, and executes the
//! [`Action`]s that come out (spawn, signal, tell systemd, reply, exit). This module never
//! performs IO and never reads a clock: time is an argument, and [`Pool::next_deadline`] tells the
//! driver when to send the next [`Event::Tick`]. That is what makes backoff, timeouts and rolling
//! reloads testable with tables instead of sleeps.
//!
//! # The model
//! The pool owns `desired` *slots* (0..N-1, what `CORRAL_WORKER` says). Each worker lives in one
//! slot and belongs to one *generation* (a config; a reload creates the next one). The pool has a
//! *target* generation, and after every event [`Pool::reconcile`] converges the actual workers
//! onto it, like gunicorn's `manage_workers`:
//!
//! - an empty slot gets a target worker, once its crash backoff has passed;
//! - a slot whose ready worker is of another generation gets a target replacement (at most
//!   `reload.batch` replacements in flight), and once the replacement is ready the old worker is
//!   stopped gracefully; a starting worker of another generation is stopped at once;
//! - workers in slots beyond `desired` are stopped gracefully (scale down).
//!
//! A reload only moves the target. If a worker of the new generation exits or is not ready in
//! time, the reload is aborted by moving the target back, and the same reconciliation stops the
//! half-started workers and rolls back any slot already replaced: the old generation keeps serving.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::config::{Config, ReadyMode, MAX_INSTANCES};

mod lifecycle;
mod reconcile;
mod reload;
mod types;
pub use types::*;

#[derive(Debug, Clone)]
struct ReloadRun {
    from: Generation,
    to: Generation,
    replies: Vec<ReplyId>,
}

#[derive(Debug, Clone)]
struct QueuedReload {
    config: Arc<Config>,
    replies: Vec<ReplyId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping { exit_code: i32 },
    Exited,
}

pub struct Pool {
    configs: BTreeMap<Generation, Arc<Config>>,
    target: Generation,
    desired: usize,
    workers: Vec<Worker>,
    slots: Vec<SlotInfo>,
    next_id: u64,
    reload: Option<ReloadRun>,
    queued: Option<QueuedReload>,
    phase: Phase,
    announced_ready: bool,
    crashes: VecDeque<Instant>,
    /// Failed starts and crashes since a worker was last ready (or since start): the give-up
    /// count, like systemd's `StartLimitBurst=` counts starts.
    failures_since_ready: u32,
    restarts_total: u64,
    restarts_by_reason: BTreeMap<RestartReason, u64>,
    reloads: (u64, u64),
    last_reload: Option<ReloadResult>,
    last_status: String,
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
        }
    }

    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    pub fn generation(&self) -> Generation {
        self.target
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

    fn count(&mut self, reason: RestartReason) {
        *self.restarts_by_reason.entry(reason).or_default() += 1;
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

    pub fn worker_by_pid(&self, pid: Pid) -> Option<&Worker> {
        self.workers.iter().find(|w| w.pid == Some(pid))
    }

    /// Slots (of the desired ones) that have a ready worker: what "4/4 ready" counts.
    pub fn ready_slots(&self) -> usize {
        (0..self.desired).filter(|slot| self.workers.iter().any(|w| w.slot == *slot && w.is_ready())).count()
    }
    pub fn ready_count(&self) -> usize {
        self.workers.iter().filter(|w| w.is_ready()).count()
    }

    /// Handle one event at time `now`; returns what the driver must do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Exited {
            return out;
        }
        match event {
            Event::Start => {}
            Event::Spawned { id, pid } => self.on_spawned(now, id, pid, &mut out),
            Event::SpawnFailed { id, error } => {
                if let Some(i) = self.index_of(id) {
                    let w = self.workers.remove(i);
                    tracing::error!(slot = w.slot, generation = w.generation, "cannot start worker: {error}");
                    let reason = format!("worker {} of generation {} could not start: {error}", w.slot, w.generation);
                    self.on_failure(now, &w, RestartReason::SpawnFailed, reason, &mut out);
                }
            }
            Event::Ready { pid } => {
                if let Some(i) = self.workers.iter().position(|w| w.pid == Some(pid) && w.is_starting()) {
                    self.mark_ready(now, i);
                }
            }
            Event::Exited { pid, status } => self.on_exited(now, pid, status, &mut out),
            Event::WatchdogPing { pid } => {
                if let Some(w) = self.workers.iter_mut().find(|w| w.pid == Some(pid)) {
                    w.last_ping = Some(now);
                }
            }
            Event::MemorySample { pid, rss } => self.on_memory(pid, rss),
            Event::Tick => self.on_tick(now, &mut out),
            Event::Stalled { duration } => self.on_stalled(now, duration),
            Event::Reload { config, reply } => self.on_reload(config, reply, &mut out),
            Event::Scale { request, reply } => self.on_scale(request, reply, &mut out),
            Event::Stop => match self.phase {
                Phase::Running => self.begin_stop(now, 0, &mut out),
                _ => self.stop_now(&mut out),
            },
            Event::StopNow => {
                if self.phase == Phase::Running {
                    self.begin_stop(now, 0, &mut out);
                }
                self.stop_now(&mut out);
            }
        }
        // A finished reload may start a queued one, which needs reconciling in turn.
        for _ in 0..3 {
            let target = self.target;
            self.reconcile(now, &mut out);
            self.report(&mut out);
            if self.target == target {
                break;
            }
        }
        out
    }

    /// The earliest time at which a [`Event::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut times = Vec::new();
        for w in &self.workers {
            match w.state {
                WorkerState::Starting { timeout_at, ready_at } => times.extend(timeout_at.into_iter().chain(ready_at)),
                WorkerState::Stopping { kill_at, .. } => times.extend(kill_at),
                WorkerState::Ready => {
                    times.extend(self.watchdog_due(w));
                    if w.replace.is_none() {
                        times.extend(w.recycle_at);
                    }
                }
                WorkerState::Spawning => {}
            }
        }
        if self.phase == Phase::Running {
            for slot in 0..self.desired {
                if !self.workers.iter().any(|w| w.slot == slot && w.is_live()) {
                    times.extend(self.slots.get(slot).and_then(|s| s.not_before));
                }
            }
        }
        times.into_iter().min()
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

    /// After every event: finish reloads, tell systemd what changed, exit when all is done.
    fn report(&mut self, out: &mut Vec<Action>) {
        if self.phase == Phase::Running && self.all_slots_ready_on_target() {
            if !self.announced_ready {
                self.announced_ready = true;
                tracing::info!("generation {}: all {} workers ready", self.target, self.desired);
                out.push(Action::Notify(vec![Notify::Ready]));
            }
            if let Some(run) = &self.reload {
                let no_old = !self.workers.iter().any(|w| w.is_live() && w.generation != self.target);
                if no_old {
                    let msg = format!("generation {} serving with {} workers", run.to, self.desired);
                    tracing::info!("reload done: {msg}");
                    self.finish_reload(Ok(msg), out);
                }
            }
        }
        let status = self.status_line();
        if status != self.last_status {
            self.last_status = status.clone();
            out.push(Action::Notify(vec![Notify::Status(status)]));
        }
        if let Phase::Stopping { exit_code } = self.phase {
            if self.workers.is_empty() {
                self.phase = Phase::Exited;
                out.push(Action::Exit(exit_code));
            }
        }
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
        if let Some(run) = &self.reload {
            s.push_str(&format!(" · reloading to generation {}", run.to));
        } else if let Some(ReloadResult::Failed(e)) = &self.last_reload {
            s.push_str(&format!(" · last reload failed: {e}"));
        }
        s
    }
}

#[cfg(test)]
mod tests;
