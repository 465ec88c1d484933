//! A worker and the one place its state changes.
//!
//! Every state carries the timer that ends it ([`WorkerState`]), and [`Pool::enter`] is the only
//! code that moves a worker from one state to the next, with what that move does (signals,
//! deadlines, readiness bookkeeping, a notice), like `service_set_state` in systemd's
//! `service.c`. The stories (`crash`, `rollout`, `converge`, `shutdown`) decide *when* a worker
//! moves; this file says what moving means.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::{
    later, spread, Action, Generation, Notice, Pid, Pool, ReadyMode, ReadySignal, RestartReason, SignalTo, SlotId,
    StopMode, StopReason, WorkerId, WorkerRef,
};

/// What a worker is doing. Each state that can end by itself carries its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Asked for; the driver has not reported a pid yet.
    Spawning,
    /// Running, not ready yet: failed at `timeout_at` ("notify" mode), ready at `ready_at`
    /// ("delay" mode).
    Starting {
        timeout_at: Option<Instant>,
        ready_at: Option<Instant>,
    },
    Ready,
    /// Told to stop before it had a pid: it is stopped the moment it has one.
    Cancelled {
        reason: StopReason,
    },
    /// Sent its stop signal (SIGABRT for a silent watchdog); SIGKILL at `kill_at`.
    Stopping {
        reason: StopReason,
        kill_at: Instant,
    },
    /// Sent SIGKILL; only its exit is awaited.
    Killed {
        reason: StopReason,
    },
}

impl WorkerState {
    /// For the log of transitions ("slot 2: starting → ready").
    pub fn name(&self) -> &'static str {
        match self {
            WorkerState::Spawning => "spawning",
            WorkerState::Starting { .. } => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Cancelled { .. } => "cancelled",
            WorkerState::Stopping { .. } => "stopping",
            WorkerState::Killed { .. } => "killed",
        }
    }
}

/// A worker's state as `corral status`, `/metrics` and the JSON contract name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerPhase {
    Starting,
    Ready,
    Stopping,
}

impl WorkerPhase {
    pub const ALL: [WorkerPhase; 3] = [WorkerPhase::Starting, WorkerPhase::Ready, WorkerPhase::Stopping];
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerPhase::Starting => "starting",
            WorkerPhase::Ready => "ready",
            WorkerPhase::Stopping => "stopping",
        }
    }
}

impl std::fmt::Display for WorkerPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl WorkerState {
    pub fn phase(self) -> WorkerPhase {
        match self {
            WorkerState::Spawning | WorkerState::Starting { .. } => WorkerPhase::Starting,
            WorkerState::Ready => WorkerPhase::Ready,
            WorkerState::Cancelled { .. } | WorkerState::Stopping { .. } | WorkerState::Killed { .. } => {
                WorkerPhase::Stopping
            }
        }
    }
}

/// One worker process, from the moment it is asked for until it is reaped.
#[derive(Debug, Clone)]
pub struct Worker {
    /// Names the worker before it has a pid.
    pub id: WorkerId,
    /// Its slot, 0..N-1 (`CORRAL_WORKER`).
    pub slot: SlotId,
    /// The config it runs.
    pub generation: Generation,
    /// Known once the driver has forked it.
    pub pid: Option<Pid>,
    pub state: WorkerState,
    /// When it was asked for, then when it was forked.
    pub started: Instant,
    /// When it became ready.
    pub ready_since: Option<Instant>,
    /// Last `WATCHDOG=1` (the watchdog counts from readiness until the first ping).
    pub last_ping: Option<Instant>,
    /// Set when this worker is to be replaced without downtime (memory limit, recycle).
    pub replace: Option<RestartReason>,
    /// When `[recycle]` replaces it.
    pub recycle_at: Option<Instant>,
    /// Started at a lower priority (`reload.start_nice`) that readiness restores.
    pub niced: bool,
    /// While niced and starting: when its priority is restored even if it is not ready yet, so
    /// a saturated machine cannot starve it past `ready.timeout`.
    pub escalate_at: Option<Instant>,
}

impl Worker {
    /// Back from `reload.start_nice` to the master's priority, if it was started lower; whether
    /// it was.
    pub(super) fn restore_priority(&mut self, out: &mut Vec<Action>) -> bool {
        self.escalate_at = None;
        if !std::mem::take(&mut self.niced) {
            return false;
        }
        if let Some(pid) = self.pid {
            out.push(Action::NormalPriority { pid });
        }
        true
    }

    /// Not on its way out.
    pub(super) fn is_live(&self) -> bool {
        matches!(self.state, WorkerState::Spawning | WorkerState::Starting { .. } | WorkerState::Ready)
    }
    pub(super) fn is_ready(&self) -> bool {
        self.state == WorkerState::Ready
    }
    pub fn is_starting(&self) -> bool {
        matches!(self.state, WorkerState::Spawning | WorkerState::Starting { .. })
    }
    /// Alive, of the target generation, and not marked for replacement.
    pub(super) fn is_current(&self, target: Generation) -> bool {
        self.is_live() && self.generation == target && self.replace.is_none()
    }
    /// Who this is, for notices.
    pub(super) fn who(&self) -> WorkerRef {
        WorkerRef { slot: self.slot, pid: self.pid, generation: self.generation }
    }
}

/// The moves [`Pool::enter`] makes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Enter {
    /// The driver forked it: start its ready deadline, or stop it if it was cancelled.
    Running(Pid),
    Ready,
    /// Stop gracefully: the generation's stop signal (SIGABRT for the watchdog), SIGKILL later.
    Stop(StopReason),
    Kill,
    /// Reaped, or could not be started: it leaves the pool (and is handed back).
    Gone,
}

/// What a worker's current state is waiting for, when that time has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// "delay" mode: the delay has passed.
    Ready,
    ReadyTimeout,
    Watchdog,
    Recycle,
    Kill,
    /// Still starting at a lower priority at its escalation time.
    Escalate,
}

impl Pool {
    /// Move worker `i` (the only place a worker's state changes, and the only place a worker
    /// leaves the pool: [`Enter::Gone`] returns it). Every change of state is a debug-level
    /// notice, as systemd logs a unit's transitions.
    pub(super) fn enter(&mut self, now: Instant, i: usize, to: Enter, out: &mut Vec<Action>) -> Option<Worker> {
        let from = self.workers[i].state;
        if let Enter::Gone = to {
            let w = self.workers.remove(i);
            self.notices.push(Notice::Transition(w.who(), from.name(), "gone"));
            return Some(w);
        }
        self.move_worker(now, i, to, out);
        if let Some(w) = self.workers.get(i) {
            if w.state.name() != from.name() {
                self.notices.push(Notice::Transition(w.who(), from.name(), w.state.name()));
            }
        }
        None
    }

    /// [`Pool::enter`]'s moves between states.
    fn move_worker(&mut self, now: Instant, i: usize, to: Enter, out: &mut Vec<Action>) {
        let config = self.configs[&self.workers[i].generation].clone();
        let w = &mut self.workers[i];
        match (w.state, to) {
            (WorkerState::Spawning | WorkerState::Cancelled { .. }, Enter::Running(pid)) => {
                w.pid = Some(pid);
                w.started = now;
                if let WorkerState::Cancelled { reason } = w.state {
                    // Stopped while it was being forked: stop it now that it has a pid.
                    return self.move_worker(now, i, Enter::Stop(reason), out);
                }
                let ready = &config.ready;
                w.state = match ready.mode {
                    ReadyMode::Spawn => WorkerState::Starting { timeout_at: None, ready_at: None },
                    ReadyMode::Delay => {
                        WorkerState::Starting { timeout_at: None, ready_at: Some(later(now, ready.delay.0)) }
                    }
                    ReadyMode::Notify | ReadyMode::Listen | ReadyMode::Ipc => {
                        WorkerState::Starting { timeout_at: Some(later(now, ready.timeout.0)), ready_at: None }
                    }
                };
                if w.niced {
                    // Half its ready timeout at a lower priority at most ("delay" mode: until
                    // its delay ends, when it is ready anyway).
                    w.escalate_at = match ready.mode {
                        ReadyMode::Notify | ReadyMode::Listen | ReadyMode::Ipc => Some(later(now, ready.timeout.0 / 2)),
                        ReadyMode::Spawn | ReadyMode::Delay => None,
                    };
                }
                self.notices.push(Notice::Started(w.who()));
                if ready.mode == ReadyMode::Spawn {
                    self.move_worker(now, i, Enter::Ready, out);
                }
                if !self.phase.serving() {
                    self.move_worker(now, i, Enter::Stop(StopReason::Shutdown), out);
                }
            }
            (WorkerState::Starting { .. }, Enter::Ready) => {
                w.state = WorkerState::Ready;
                w.ready_since = Some(now);
                w.restore_priority(out);
                self.failures_since_ready = 0;
                if let Some(r) = &config.recycle {
                    // after ± jitter, spread over the workers.
                    let offset = r.jitter.0.mul_f64(spread(w.id) * 2.0);
                    let at = later(later(now, r.after.0), offset);
                    w.recycle_at = Some(at.checked_sub(r.jitter.0).unwrap_or(at));
                }
                self.notices.push(Notice::Ready(w.who()));
            }
            (WorkerState::Spawning, Enter::Stop(_) | Enter::Kill) => {
                let reason = if let Enter::Stop(r) = to { r } else { reason_or_shutdown(w.state) };
                w.state = WorkerState::Cancelled { reason };
            }
            (WorkerState::Starting { .. } | WorkerState::Ready, Enter::Stop(reason)) => {
                let Some(pid) = w.pid else { return };
                // The watchdog's SIGABRT is for the whole group: it is a kill, not a request.
                let (signal, to) = match (reason, config.stop.mode) {
                    (StopReason::Watchdog, _) => (Signal::SIGABRT, SignalTo::Group),
                    (_, StopMode::Main) => (config.stop.signal.0, SignalTo::Main),
                    (_, StopMode::Group) => (config.stop.signal.0, SignalTo::Group),
                };
                out.push(Action::Signal { pid, signal, to });
                w.state = WorkerState::Stopping { reason, kill_at: later(now, config.stop.timeout.0) };
            }
            (state, Enter::Kill) => {
                let reason = reason_or_shutdown(state);
                match w.pid {
                    Some(pid) => {
                        out.push(Action::Signal { pid, signal: Signal::SIGKILL, to: SignalTo::Group });
                        w.state = WorkerState::Killed { reason };
                    }
                    None => w.state = WorkerState::Cancelled { reason },
                }
            }
            // Anything else is no move at all: a second stop, readiness of a stopping worker.
            _ => {}
        }
    }

    /// Worker `i` is still starting at its escalation time: back to normal priority, so that a
    /// saturated machine cannot starve it past `ready.timeout`.
    pub(super) fn escalate(&mut self, now: Instant, i: usize, out: &mut Vec<Action>) {
        let w = &mut self.workers[i];
        if !w.restore_priority(out) {
            return;
        }
        let after = now.saturating_duration_since(w.started);
        self.notices.push(Notice::StillStartingAtLowPriority(w.who(), after));
    }

    /// `READY=1` from `pid` (credentials checked by the driver).
    pub(super) fn on_ready(&mut self, now: Instant, pid: Pid, signal: ReadySignal, out: &mut Vec<Action>) {
        if let Some(i) = self.workers.iter().position(|w| w.pid == Some(pid) && w.is_starting()) {
            if self.configs[&self.workers[i].generation].ready.mode.accepts(signal) {
                self.enter(now, i, Enter::Ready, out);
            }
        }
    }

    pub(super) fn on_ping(&mut self, now: Instant, pid: Pid) {
        if let Some(w) = self.workers.iter_mut().find(|w| w.pid == Some(pid)) {
            w.last_ping = Some(now);
        }
    }

    /// The master did not run for (at least) `stalled`: the pause is not held against workers.
    /// Each watchdog starts a full period afresh (pings sent meanwhile may have been lost to a
    /// full socket queue, and when the master stopped is unknown), and ready deadlines move by
    /// the pause.
    pub(super) fn on_stalled(&mut self, now: Instant, stalled: Duration) {
        self.notices.push(Notice::Stalled(stalled));
        for w in &mut self.workers {
            if w.is_ready() {
                w.last_ping = Some(now);
            }
            if let WorkerState::Starting { timeout_at: Some(t), ready_at } = w.state {
                w.state = WorkerState::Starting { timeout_at: Some(later(t, stalled)), ready_at };
            }
        }
    }

    /// When the watchdog of a ready worker expires, if its generation has one.
    pub(super) fn watchdog_due(&self, w: &Worker) -> Option<Instant> {
        let timeout = self.configs[&w.generation].watchdog.as_ref()?.timeout.0;
        Some(later(w.last_ping.or(w.ready_since)?, timeout))
    }

    /// The deadlines of worker `w`'s state (the earliest first is what matters).
    pub(super) fn deadlines(&self, w: &Worker) -> impl Iterator<Item = Instant> {
        let (a, b, c) = match w.state {
            WorkerState::Starting { timeout_at, ready_at } => (timeout_at, ready_at, w.escalate_at),
            WorkerState::Stopping { kill_at, .. } => (Some(kill_at), None, None),
            WorkerState::Ready => (self.watchdog_due(w), w.recycle_at.filter(|_| w.replace.is_none()), None),
            WorkerState::Spawning | WorkerState::Cancelled { .. } | WorkerState::Killed { .. } => (None, None, None),
        };
        a.into_iter().chain(b).chain(c)
    }

    /// What worker `w`'s state has waited for, if its time has come.
    pub(super) fn due(&self, w: &Worker, now: Instant) -> Option<Due> {
        match w.state {
            WorkerState::Starting { ready_at: Some(t), .. } if t <= now => Some(Due::Ready),
            WorkerState::Starting { timeout_at: Some(t), .. } if t <= now => Some(Due::ReadyTimeout),
            WorkerState::Starting { .. } if w.escalate_at.is_some_and(|t| t <= now) => Some(Due::Escalate),
            WorkerState::Ready if self.watchdog_due(w).is_some_and(|t| t <= now) => Some(Due::Watchdog),
            WorkerState::Ready if w.recycle_at.is_some_and(|t| t <= now) && w.is_current(self.target) => {
                Some(Due::Recycle)
            }
            WorkerState::Stopping { kill_at, .. } if kill_at <= now => Some(Due::Kill),
            _ => None,
        }
    }
}

fn reason_or_shutdown(state: WorkerState) -> StopReason {
    match state {
        WorkerState::Cancelled { reason } | WorkerState::Stopping { reason, .. } | WorkerState::Killed { reason } => {
            reason
        }
        _ => StopReason::Shutdown,
    }
}
