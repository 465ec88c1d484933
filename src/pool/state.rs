//! The pool across `corral upgrade`: a snapshot the old image writes and the new image restores.
//!
//! Everything the pool knows goes over, so the new image carries on where the old one stopped:
//! every generation still in use (as its config text, parsed again by the new binary: one that
//! cannot read a config refuses the upgrade before anything happens), the workers with their
//! states, the slots' backoff, restart and reload counters, and the give-up bookkeeping. Times
//! are stored relative to the snapshot (nanoseconds; negative means in the past), so pending
//! timers resume as the time that remained. A snapshot is refused while a reload or a stop is
//! in progress: those wait for replies the old image owes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{
    later, Config, Generation, Phase, Pool, Refusal, ReloadResult, RestartReason, SlotId, SlotInfo, StopReason, Worker,
    WorkerId, WorkerState, MAX_INSTANCES,
};

/// A handed-over state that does not describe a pool this binary can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidState(pub String);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolState {
    generations: Vec<GenerationState>,
    target: Generation,
    desired: usize,
    next_id: u64,
    workers: Vec<WorkerSnapshot>,
    slots: Vec<SlotSnapshot>,
    announced_ready: bool,
    crashes: Vec<i64>,
    failures_since_ready: u32,
    restarts_total: u64,
    restarts_by_reason: Vec<(RestartReason, u64)>,
    reloads: (u64, u64),
    last_reload: Option<LastReloadSnapshot>,
    last_status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct GenerationState {
    generation: Generation,
    path: PathBuf,
    text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct WorkerSnapshot {
    id: u64,
    slot: SlotId,
    generation: Generation,
    pid: i32,
    state: StateSnapshot,
    started: i64,
    ready_since: Option<i64>,
    last_ping: Option<i64>,
    replace: Option<RestartReason>,
    recycle_at: Option<i64>,
    /// Still at `reload.start_nice` (added later: absent in older states).
    #[serde(default)]
    niced: bool,
    #[serde(default)]
    escalate_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
enum StateSnapshot {
    Starting { timeout_at: Option<i64>, ready_at: Option<i64> },
    Ready,
    Stopping { reason: StopReason, kill_at: i64 },
    Killed { reason: StopReason },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct SlotSnapshot {
    failures: u32,
    not_before: Option<i64>,
    restarts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
enum LastReloadSnapshot {
    Succeeded(Generation),
    Failed(String),
}

/// `t` relative to `now`, in nanoseconds (saturating).
fn rel(t: Instant, now: Instant) -> i64 {
    if t >= now {
        i64::try_from(t.duration_since(now).as_nanos()).unwrap_or(i64::MAX)
    } else {
        -i64::try_from(now.duration_since(t).as_nanos()).unwrap_or(i64::MAX)
    }
}

/// The instant `offset` nanoseconds from `now`.
fn abs(offset: i64, now: Instant) -> Instant {
    let d = Duration::from_nanos(offset.unsigned_abs());
    if offset >= 0 {
        later(now, d)
    } else {
        now.checked_sub(d).unwrap_or(now)
    }
}

impl Pool {
    /// What a new image needs to carry on, or why now is not the moment.
    pub fn snapshot(&self, now: Instant) -> Result<PoolState, Refusal> {
        if self.phase != Phase::Running {
            return Err(Refusal::Stopping);
        }
        if let Some(run) = &self.reload {
            return Err(Refusal::Reloading(run.to));
        }
        let mut workers = Vec::new();
        for w in &self.workers {
            let state = match w.state {
                WorkerState::Starting { timeout_at, ready_at } => StateSnapshot::Starting {
                    timeout_at: timeout_at.map(|t| rel(t, now)),
                    ready_at: ready_at.map(|t| rel(t, now)),
                },
                WorkerState::Ready => StateSnapshot::Ready,
                WorkerState::Stopping { reason, kill_at } => {
                    StateSnapshot::Stopping { reason, kill_at: rel(kill_at, now) }
                }
                WorkerState::Killed { reason } => StateSnapshot::Killed { reason },
                // Only inside one event's handling; never between events.
                WorkerState::Spawning | WorkerState::Cancelled { .. } => {
                    return Err(Refusal::WorkerStarting);
                }
            };
            let Some(pid) = w.pid else { return Err(Refusal::WorkerStarting) };
            workers.push(WorkerSnapshot {
                id: w.id.0,
                slot: w.slot,
                generation: w.generation,
                pid: pid.as_raw(),
                state,
                started: rel(w.started, now),
                ready_since: w.ready_since.map(|t| rel(t, now)),
                last_ping: w.last_ping.map(|t| rel(t, now)),
                replace: w.replace,
                recycle_at: w.recycle_at.map(|t| rel(t, now)),
                niced: w.niced,
                escalate_at: w.escalate_at.map(|t| rel(t, now)),
            });
        }
        Ok(PoolState {
            generations: self
                .configs
                .iter()
                .map(|(g, c)| GenerationState { generation: *g, path: c.path.clone(), text: c.source.to_string() })
                .collect(),
            target: self.target,
            desired: self.desired,
            next_id: self.next_id,
            workers,
            slots: self
                .slots
                .iter()
                .map(|s| SlotSnapshot {
                    failures: s.failures,
                    not_before: s.not_before.map(|t| rel(t, now)),
                    restarts: s.restarts,
                })
                .collect(),
            announced_ready: self.announced_ready,
            crashes: self.crashes.iter().map(|t| rel(*t, now)).collect(),
            failures_since_ready: self.failures_since_ready,
            restarts_total: self.restarts_total,
            restarts_by_reason: self.restarts_by_reason.iter().map(|(r, n)| (*r, *n)).collect(),
            reloads: self.reloads,
            last_reload: self.last_reload.as_ref().map(|r| match r {
                ReloadResult::Succeeded(g) => LastReloadSnapshot::Succeeded(*g),
                ReloadResult::Failed(e) => LastReloadSnapshot::Failed(e.clone()),
            }),
            last_status: self.last_status.clone(),
        })
    }

    /// Carry on from `state` at `now`: every config is parsed again (for `cpus` usable CPUs).
    pub fn restore(state: PoolState, now: Instant, cpus: usize) -> Result<Pool, InvalidState> {
        let mut configs = BTreeMap::new();
        for g in state.generations {
            let config = Config::parse(&g.path, &g.text, cpus).map_err(|e| {
                InvalidState(format!("this binary cannot use generation {}'s config: {e}", g.generation))
            })?;
            configs.insert(g.generation, Arc::new(config));
        }
        if !configs.contains_key(&state.target) {
            return Err(InvalidState(format!("the state has no config for its target generation {}", state.target)));
        }
        let mut workers = Vec::new();
        for w in state.workers {
            if !configs.contains_key(&w.generation) {
                return Err(InvalidState(format!(
                    "the state has no config for generation {} (worker {})",
                    w.generation, w.pid
                )));
            }
            workers.push(Worker {
                id: WorkerId(w.id),
                slot: w.slot,
                generation: w.generation,
                pid: Some(Pid::from_raw(w.pid)),
                state: match w.state {
                    StateSnapshot::Starting { timeout_at, ready_at } => WorkerState::Starting {
                        timeout_at: timeout_at.map(|t| abs(t, now)),
                        ready_at: ready_at.map(|t| abs(t, now)),
                    },
                    StateSnapshot::Ready => WorkerState::Ready,
                    StateSnapshot::Stopping { reason, kill_at } => {
                        WorkerState::Stopping { reason, kill_at: abs(kill_at, now) }
                    }
                    StateSnapshot::Killed { reason } => WorkerState::Killed { reason },
                },
                started: abs(w.started, now),
                ready_since: w.ready_since.map(|t| abs(t, now)),
                last_ping: w.last_ping.map(|t| abs(t, now)),
                replace: w.replace,
                recycle_at: w.recycle_at.map(|t| abs(t, now)),
                niced: w.niced,
                escalate_at: w.escalate_at.map(|t| abs(t, now)),
            });
        }
        Ok(Pool {
            configs,
            target: state.target,
            desired: state.desired.clamp(1, MAX_INSTANCES),
            workers,
            slots: state
                .slots
                .into_iter()
                .map(|s| SlotInfo {
                    failures: s.failures,
                    not_before: s.not_before.map(|t| abs(t, now)),
                    restarts: s.restarts,
                })
                .collect(),
            next_id: state.next_id,
            reload: None,
            queued: None,
            phase: Phase::Running,
            announced_ready: state.announced_ready,
            crashes: state.crashes.into_iter().map(|t| abs(t, now)).collect(),
            failures_since_ready: state.failures_since_ready,
            restarts_total: state.restarts_total,
            restarts_by_reason: state.restarts_by_reason.into_iter().collect(),
            reloads: state.reloads,
            last_reload: state.last_reload.map(|r| match r {
                LastReloadSnapshot::Succeeded(g) => ReloadResult::Succeeded(g),
                LastReloadSnapshot::Failed(e) => ReloadResult::Failed(e),
            }),
            last_status: state.last_status,
            // The new image works it out again and says so ([`Event::Capacity`]).
            capacity: (usize::MAX, u64::MAX),
            out_of_descriptors: false,
            notices: Vec::new(),
        })
    }
}
