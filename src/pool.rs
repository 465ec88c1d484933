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
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::{Config, ReadyMode};

pub type SlotId = usize;
pub type Generation = u64;
/// Identifies a request whose outcome someone (a CLI client) is waiting for.
pub type ReplyId = u64;

/// Names a worker from the moment it is asked for, before it has a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub u64);

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signaled(i32),
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signaled(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "signal {}", sig.as_str()),
                Err(_) => write!(f, "signal {s}"),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleRequest {
    Set(usize),
    Add(i64),
}

#[derive(Debug, Clone)]
pub enum Event {
    /// Start the first generation.
    Start,
    /// The driver forked and exec'd worker `id`.
    Spawned {
        id: WorkerId,
        pid: Pid,
    },
    /// The worker could not be started at all (fork or exec failed).
    SpawnFailed {
        id: WorkerId,
        error: String,
    },
    /// `READY=1` from this pid (credentials checked by the driver).
    Ready {
        pid: Pid,
    },
    /// A worker process was reaped.
    Exited {
        pid: Pid,
        status: ExitStatus,
    },
    /// `WATCHDOG=1` from this pid.
    WatchdogPing {
        pid: Pid,
    },
    /// Resident memory of this worker's process group, sampled every `limits.interval`.
    MemorySample {
        pid: Pid,
        rss: u64,
    },
    /// A deadline from [`Pool::next_deadline`] has passed.
    Tick,
    /// Re-read config: the new one, or why it could not be used.
    Reload {
        config: Result<Arc<Config>, String>,
        reply: Option<ReplyId>,
    },
    Scale {
        request: ScaleRequest,
        reply: Option<ReplyId>,
    },
    /// Graceful stop (SIGTERM/SIGINT). A second one means [`Event::StopNow`].
    Stop,
    StopNow,
}

/// A message for systemd; the driver adds `MONOTONIC_USEC=` to `Reloading`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    Ready,
    Reloading,
    Stopping,
    Status(String),
    ExtendTimeout(Duration),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Spawn {
        id: WorkerId,
        slot: SlotId,
        generation: Generation,
        config: Arc<Config>,
    },
    /// Signal a worker's process group.
    Signal {
        pid: Pid,
        signal: Signal,
    },
    Notify(Vec<Notify>),
    Reply {
        to: ReplyId,
        result: Result<String, String>,
    },
    Exit(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Replaced,
    ScaledDown,
    Obsolete,
    ReadyTimeout,
    Watchdog,
    Shutdown,
}

/// Why a worker was restarted or replaced; counted for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RestartReason {
    /// Exited on its own.
    Crash,
    /// Could not be started (exec failed).
    SpawnFailed,
    /// Not ready within `ready.timeout`.
    ReadyTimeout,
    /// Stopped sending `WATCHDOG=1`.
    Watchdog,
    /// Over `limits.memory`.
    Memory,
    /// Reached its `recycle.after` age.
    Recycle,
}

impl RestartReason {
    pub const ALL: [RestartReason; 6] = [
        RestartReason::Crash,
        RestartReason::SpawnFailed,
        RestartReason::ReadyTimeout,
        RestartReason::Watchdog,
        RestartReason::Memory,
        RestartReason::Recycle,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Crash => "crash",
            RestartReason::SpawnFailed => "spawn_failed",
            RestartReason::ReadyTimeout => "ready_timeout",
            RestartReason::Watchdog => "watchdog",
            RestartReason::Memory => "memory",
            RestartReason::Recycle => "recycle",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Asked for; the driver has not reported a pid yet.
    Spawning,
    /// Running, not ready yet. `timeout_at`: ready deadline; `ready_at`: when `delay` mode says ready.
    Starting {
        timeout_at: Option<Instant>,
        ready_at: Option<Instant>,
    },
    Ready,
    /// Signalled; SIGKILL at `kill_at` (None once killed).
    Stopping {
        reason: StopReason,
        kill_at: Option<Instant>,
    },
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub id: WorkerId,
    pub slot: SlotId,
    pub generation: Generation,
    pub pid: Option<Pid>,
    pub state: WorkerState,
    pub started: Instant,
    pub ready_since: Option<Instant>,
    /// Last `WATCHDOG=1` (the watchdog counts from readiness until the first ping).
    pub last_ping: Option<Instant>,
    /// Set when this worker is to be replaced without downtime (memory limit, recycle).
    pub replace: Option<RestartReason>,
    /// When `[recycle]` replaces it.
    pub recycle_at: Option<Instant>,
}

impl Worker {
    fn is_live(&self) -> bool {
        !matches!(self.state, WorkerState::Stopping { .. })
    }
    fn is_ready(&self) -> bool {
        self.state == WorkerState::Ready
    }
    fn is_starting(&self) -> bool {
        matches!(self.state, WorkerState::Spawning | WorkerState::Starting { .. })
    }
    /// Alive, of the target generation, and not marked for replacement.
    fn is_current(&self, target: Generation) -> bool {
        self.is_live() && self.generation == target && self.replace.is_none()
    }
}

/// A deterministic number in [0, 1) from a worker id (splitmix64), so `recycle.jitter` spreads
/// workers without the pool needing a random source.
fn spread(id: WorkerId) -> f64 {
    let mut z = id.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Crash bookkeeping of one slot.
#[derive(Debug, Clone, Default)]
pub struct SlotInfo {
    pub failures: u32,
    pub not_before: Option<Instant>,
    pub restarts: u64,
}

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

/// The outcome of the last reload, for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadResult {
    Succeeded(Generation),
    Failed(String),
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

    fn on_spawned(&mut self, now: Instant, id: WorkerId, pid: Pid, out: &mut Vec<Action>) {
        let Some(i) = self.index_of(id) else { return };
        let ready = self.configs[&self.workers[i].generation].ready.clone();
        let w = &mut self.workers[i];
        w.pid = Some(pid);
        w.started = now;
        if let WorkerState::Stopping { reason, .. } = w.state {
            // Stopped while it was being forked: stop it now that it has a pid.
            self.stop_worker(now, i, reason, out);
            return;
        }
        w.state = match ready.mode {
            ReadyMode::Spawn => WorkerState::Starting { timeout_at: None, ready_at: None },
            ReadyMode::Delay => WorkerState::Starting { timeout_at: None, ready_at: Some(now + ready.delay.0) },
            ReadyMode::Notify => WorkerState::Starting { timeout_at: Some(now + ready.timeout.0), ready_at: None },
        };
        tracing::info!(slot = w.slot, pid = pid.as_raw(), generation = w.generation, "worker started");
        if ready.mode == ReadyMode::Spawn {
            self.mark_ready(now, i);
        }
        if self.phase != Phase::Running {
            self.stop_worker(now, i, StopReason::Shutdown, out);
        }
    }

    fn mark_ready(&mut self, now: Instant, i: usize) {
        let config = self.configs[&self.workers[i].generation].clone();
        let w = &mut self.workers[i];
        w.state = WorkerState::Ready;
        w.ready_since = Some(now);
        if let Some(r) = &config.recycle {
            let offset = r.jitter.0.mul_f64(spread(w.id) * 2.0);
            w.recycle_at = Some((now + r.after.0 + offset).checked_sub(r.jitter.0).unwrap_or(now + r.after.0));
        }
        tracing::info!(slot = w.slot, pid = w.pid.map(Pid::as_raw), generation = w.generation, "worker ready");
    }

    fn on_memory(&mut self, pid: Pid, rss: u64) {
        let target = self.target;
        let Some(i) = self.workers.iter().position(|w| w.pid == Some(pid)) else { return };
        let Some(limit) = self.configs[&self.workers[i].generation].limits.memory else { return };
        let w = &mut self.workers[i];
        if rss > limit.0 && w.is_ready() && w.is_current(target) && self.phase == Phase::Running {
            w.replace = Some(RestartReason::Memory);
            tracing::warn!(
                slot = w.slot,
                pid = pid.as_raw(),
                "worker uses {} of memory, over the {} limit: replacing it",
                bytesize::ByteSize(rss).display().iec(),
                bytesize::ByteSize(limit.0).display().iec()
            );
            self.count(RestartReason::Memory);
        }
    }

    fn on_exited(&mut self, now: Instant, pid: Pid, status: ExitStatus, out: &mut Vec<Action>) {
        let Some(i) = self.workers.iter().position(|w| w.pid == Some(pid)) else {
            return;
        };
        let w = self.workers.remove(i);
        match w.state {
            WorkerState::Stopping { .. } => {
                tracing::info!(
                    slot = w.slot,
                    pid = pid.as_raw(),
                    generation = w.generation,
                    "worker stopped ({status})"
                );
            }
            _ if self.phase != Phase::Running => {}
            WorkerState::Ready => {
                tracing::warn!(
                    slot = w.slot,
                    pid = pid.as_raw(),
                    generation = w.generation,
                    "worker exited unexpectedly ({status})"
                );
                self.on_failure(
                    now,
                    &w,
                    RestartReason::Crash,
                    format!("worker {} (pid {pid}) exited with {status}", w.slot),
                    out,
                );
            }
            WorkerState::Spawning | WorkerState::Starting { .. } => {
                tracing::warn!(
                    slot = w.slot,
                    pid = pid.as_raw(),
                    generation = w.generation,
                    "worker exited before it was ready ({status})"
                );
                let reason = format!(
                    "worker {} (pid {pid}) of generation {} exited with {status} before it was ready",
                    w.slot, w.generation
                );
                self.on_failure(now, &w, RestartReason::Crash, reason, out);
            }
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            match w.state {
                WorkerState::Starting { ready_at: Some(t), .. } if t <= now => self.mark_ready(now, i),
                WorkerState::Starting { timeout_at: Some(t), .. } if t <= now => {
                    let w = w.clone();
                    let timeout = self.configs[&w.generation].ready.timeout.0;
                    tracing::warn!(
                        slot = w.slot,
                        pid = w.pid.map(Pid::as_raw),
                        generation = w.generation,
                        "worker not ready after {}",
                        humantime::format_duration(timeout)
                    );
                    self.stop_worker(now, i, StopReason::ReadyTimeout, out);
                    let pid = w.pid.map_or_else(String::new, |p| format!(" (pid {p})"));
                    let reason = format!(
                        "worker {}{pid} of generation {} was not ready within {}",
                        w.slot,
                        w.generation,
                        humantime::format_duration(timeout)
                    );
                    self.on_failure(now, &w, RestartReason::ReadyTimeout, reason, out);
                }
                WorkerState::Ready if self.watchdog_due(w).is_some_and(|t| t <= now) => {
                    let w = w.clone();
                    let config = self.configs[&w.generation].clone();
                    let timeout = config.watchdog.as_ref().map(|wd| wd.timeout.0).unwrap_or_default();
                    let after = humantime::format_duration(timeout);
                    tracing::error!(
                        slot = w.slot,
                        pid = w.pid.map(Pid::as_raw),
                        "no WATCHDOG=1 for {after}: killing the worker with SIGABRT"
                    );
                    if let Some(pid) = w.pid {
                        out.push(Action::Signal { pid, signal: Signal::SIGABRT });
                    }
                    let kill_at = Some(now + config.stop.timeout.0);
                    self.workers[i].state = WorkerState::Stopping { reason: StopReason::Watchdog, kill_at };
                    let pid = w.pid.map_or_else(String::new, |p| format!(" (pid {p})"));
                    let reason = format!("worker {}{pid} sent no WATCHDOG=1 for {after}", w.slot);
                    self.on_failure(now, &w, RestartReason::Watchdog, reason, out);
                }
                WorkerState::Ready if w.recycle_at.is_some_and(|t| t <= now) && w.is_current(self.target) => {
                    tracing::info!(
                        slot = w.slot,
                        pid = w.pid.map(Pid::as_raw),
                        "worker reached its recycle age: replacing it"
                    );
                    self.workers[i].replace = Some(RestartReason::Recycle);
                    self.workers[i].recycle_at = None;
                    self.count(RestartReason::Recycle);
                }
                WorkerState::Stopping { reason, kill_at: Some(t) } if t <= now => {
                    if let Some(pid) = w.pid {
                        tracing::warn!(
                            slot = w.slot,
                            pid = pid.as_raw(),
                            "worker did not stop in time, sending SIGKILL"
                        );
                        out.push(Action::Signal { pid, signal: Signal::SIGKILL });
                    }
                    self.workers[i].state = WorkerState::Stopping { reason, kill_at: None };
                }
                _ => {}
            }
        }
    }

    /// When the watchdog of a ready worker expires, if its generation has one.
    fn watchdog_due(&self, w: &Worker) -> Option<Instant> {
        let timeout = self.configs[&w.generation].watchdog.as_ref()?.timeout.0;
        Some(w.last_ping.or(w.ready_since)? + timeout)
    }

    /// A worker died or failed to start when nobody asked it to.
    fn on_failure(&mut self, now: Instant, w: &Worker, kind: RestartReason, reason: String, out: &mut Vec<Action>) {
        if self.phase != Phase::Running {
            return;
        }
        self.count(kind);
        let aborts_reload = self.reload.as_ref().is_some_and(|r| r.to == w.generation) && w.ready_since.is_none();
        let restart = self.configs[&w.generation].restart.clone();
        let uptime = now.saturating_duration_since(w.started);
        let slot = self.slot_mut(w.slot);
        if w.ready_since.is_some() && uptime >= restart.min_uptime.0 {
            slot.failures = 0;
        }
        slot.failures += 1;
        slot.restarts += 1;
        let exp = slot.failures.saturating_sub(1).min(30);
        let delay = restart.delay.0.saturating_mul(1u32 << exp).min(restart.max_delay.0);
        slot.not_before = Some(now + delay);
        self.restarts_total += 1;
        self.crashes.push_back(now);
        while self.crashes.front().is_some_and(|t| now.saturating_duration_since(*t) > restart.window.0) {
            self.crashes.pop_front();
        }
        if aborts_reload {
            self.abort_reload(reason, out);
        } else if self.crashes.len() > restart.max_restarts as usize && self.ready_count() == 0 {
            tracing::error!(
                "giving up: {} restarts within {} and no worker is ready (last: {reason})",
                self.crashes.len(),
                humantime::format_duration(restart.window.0)
            );
            self.begin_stop(now, 1, out);
        } else {
            tracing::info!(slot = w.slot, "restarting worker in {}", humantime::format_duration(delay));
        }
    }

    fn on_reload(&mut self, config: Result<Arc<Config>, String>, reply: Option<ReplyId>, out: &mut Vec<Action>) {
        if self.phase != Phase::Running {
            if let Some(to) = reply {
                out.push(Action::Reply { to, result: Err("the pool is stopping".into()) });
            }
            return;
        }
        let replies: Vec<ReplyId> = reply.into_iter().collect();
        match config {
            Err(error) => {
                tracing::error!("reload refused, keeping generation {}: {error}", self.target);
                for to in replies {
                    out.push(Action::Reply { to, result: Err(error.clone()) });
                }
                if self.reload.is_none() {
                    // Tell systemd the reload happened (and ended): notify-reload waits for it.
                    out.push(Action::Notify(vec![Notify::Reloading]));
                    out.push(Action::Notify(vec![Notify::Ready]));
                    self.reloads.1 += 1;
                    self.last_reload = Some(ReloadResult::Failed(error));
                }
            }
            Ok(config) => {
                if self.reload.is_some() {
                    tracing::info!("reload requested during a reload: it will follow the current one");
                    let queued = self.queued.get_or_insert(QueuedReload { config: config.clone(), replies: vec![] });
                    queued.config = config;
                    queued.replies.extend(replies);
                } else {
                    out.push(Action::Notify(vec![Notify::Reloading]));
                    self.start_reload(config, replies);
                }
            }
        }
    }

    fn start_reload(&mut self, config: Arc<Config>, replies: Vec<ReplyId>) {
        let from = self.target;
        let to = self.configs.keys().next_back().copied().unwrap_or(from) + 1;
        if config.instances_spec != self.configs[&from].instances_spec {
            self.desired = config.instances;
        }
        tracing::info!("reloading: generation {from} → {to}, {} workers", self.desired);
        self.configs.insert(to, config);
        self.target = to;
        self.reload = Some(ReloadRun { from, to, replies });
    }

    fn finish_reload(&mut self, result: Result<String, String>, out: &mut Vec<Action>) {
        let Some(run) = self.reload.take() else {
            return;
        };
        for to in run.replies {
            out.push(Action::Reply { to, result: result.clone() });
        }
        self.last_reload = Some(match result {
            Ok(_) => {
                self.reloads.0 += 1;
                ReloadResult::Succeeded(run.to)
            }
            Err(e) => {
                self.reloads.1 += 1;
                ReloadResult::Failed(e)
            }
        });
        if let Some(q) = self.queued.take() {
            self.start_reload(q.config, q.replies);
        } else {
            out.push(Action::Notify(vec![Notify::Ready]));
        }
    }

    fn abort_reload(&mut self, reason: String, out: &mut Vec<Action>) {
        let Some(run) = self.reload.as_ref() else {
            return;
        };
        tracing::error!("reload to generation {} failed, generation {} keeps serving: {reason}", run.to, run.from);
        self.target = run.from;
        self.finish_reload(Err(format!("reload failed, generation {} keeps serving: {reason}", run.from)), out);
    }

    fn on_scale(&mut self, request: ScaleRequest, reply: Option<ReplyId>, out: &mut Vec<Action>) {
        let result = if self.phase != Phase::Running {
            Err("the pool is stopping".to_string())
        } else {
            let n = match request {
                ScaleRequest::Set(n) => n as i64,
                ScaleRequest::Add(d) => self.desired as i64 + d,
            };
            let n = n.clamp(1, 4096) as usize;
            tracing::info!("scaling from {} to {n} workers", self.desired);
            self.desired = n;
            Ok(format!("scaled to {n} workers"))
        };
        if let Some(to) = reply {
            out.push(Action::Reply { to, result });
        }
    }

    fn begin_stop(&mut self, now: Instant, exit_code: i32, out: &mut Vec<Action>) {
        tracing::info!("stopping {} workers", self.workers.len());
        self.phase = Phase::Stopping { exit_code };
        self.queued = None;
        if let Some(run) = self.reload.take() {
            for to in run.replies {
                out.push(Action::Reply { to, result: Err("the pool is stopping".into()) });
            }
        }
        let longest = self.workers.iter().map(|w| self.configs[&w.generation].stop.timeout.0).max().unwrap_or_default();
        out.push(Action::Notify(vec![Notify::Stopping, Notify::ExtendTimeout(longest + EXTEND_MARGIN)]));
        for i in 0..self.workers.len() {
            if self.workers[i].is_live() {
                self.stop_worker(now, i, StopReason::Shutdown, out);
            }
        }
    }

    fn stop_now(&mut self, out: &mut Vec<Action>) {
        tracing::warn!("stopping now: killing every worker");
        for w in &mut self.workers {
            if let Some(pid) = w.pid {
                out.push(Action::Signal { pid, signal: Signal::SIGKILL });
            }
            let reason = match w.state {
                WorkerState::Stopping { reason, .. } => reason,
                _ => StopReason::Shutdown,
            };
            w.state = WorkerState::Stopping { reason, kill_at: None };
        }
    }

    /// Ask worker `i` to stop gracefully: its generation's stop signal, SIGKILL after the timeout.
    fn stop_worker(&mut self, now: Instant, i: usize, reason: StopReason, out: &mut Vec<Action>) {
        let stop = self.configs[&self.workers[i].generation].stop.clone();
        let w = &mut self.workers[i];
        match w.pid {
            Some(pid) => {
                out.push(Action::Signal { pid, signal: stop.signal.0 });
                w.state = WorkerState::Stopping { reason, kill_at: Some(now + stop.timeout.0) };
            }
            // Not forked yet: it will be stopped the moment it is (see `on_spawned`).
            None => w.state = WorkerState::Stopping { reason, kill_at: Some(now) },
        }
    }

    fn spawn(&mut self, now: Instant, slot: SlotId, out: &mut Vec<Action>) {
        let id = WorkerId(self.next_id);
        self.next_id += 1;
        self.workers.push(Worker {
            id,
            slot,
            generation: self.target,
            pid: None,
            state: WorkerState::Spawning,
            started: now,
            ready_since: None,
            last_ping: None,
            replace: None,
            recycle_at: None,
        });
        out.push(Action::Spawn { id, slot, generation: self.target, config: self.configs[&self.target].clone() });
    }

    /// Converge the workers onto `desired` ready workers of the target generation.
    fn reconcile(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.phase != Phase::Running {
            return;
        }
        let target = self.target;
        // Scale down, and stop starts that are no longer wanted.
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            if !w.is_live() {
                continue;
            }
            if w.slot >= self.desired {
                self.stop_worker(now, i, StopReason::ScaledDown, out);
            } else if w.generation != target && w.is_starting() {
                self.stop_worker(now, i, StopReason::Obsolete, out);
            }
        }
        let batch = self.configs[&target].batch(self.desired);
        let mut in_flight = 0;
        let mut outdated = Vec::new();
        let mut empty = Vec::new();
        for slot in 0..self.desired {
            let live = |w: &&Worker| w.slot == slot && w.is_live();
            let has_target = self.workers.iter().filter(live).any(|w| w.is_current(target));
            let target_ready = self.workers.iter().filter(live).any(|w| w.is_current(target) && w.is_ready());
            let old_ready = self.workers.iter().filter(live).any(|w| !w.is_current(target) && w.is_ready());
            if target_ready && old_ready {
                for i in 0..self.workers.len() {
                    let w = &self.workers[i];
                    if w.slot == slot && w.is_live() && !w.is_current(target) {
                        self.stop_worker(now, i, StopReason::Replaced, out);
                    }
                }
            } else if has_target && old_ready {
                in_flight += 1;
            } else if !has_target && old_ready {
                outdated.push(slot);
            } else if !has_target {
                empty.push(slot);
            }
        }
        for slot in empty {
            let due = self.slots.get(slot).and_then(|s| s.not_before).is_none_or(|t| t <= now);
            if due {
                self.spawn(now, slot, out);
            }
        }
        for slot in outdated {
            if in_flight >= batch {
                break;
            }
            in_flight += 1;
            self.spawn(now, slot, out);
        }
        // Generations nobody runs any more are forgotten.
        let in_use: Vec<Generation> = self.workers.iter().map(|w| w.generation).collect();
        let keep_from = self.reload.as_ref().map(|r| r.from);
        self.configs.retain(|g, _| *g == target || Some(*g) == keep_from || in_use.contains(g));
    }

    fn all_slots_ready_on_target(&self) -> bool {
        (0..self.desired)
            .all(|slot| self.workers.iter().any(|w| w.slot == slot && w.generation == self.target && w.is_ready()))
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
        let ready =
            (0..self.desired).filter(|slot| self.workers.iter().any(|w| w.slot == *slot && w.is_ready())).count();
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
#[path = "pool_tests.rs"]
mod tests;
