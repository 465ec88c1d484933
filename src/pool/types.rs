//! The pool's vocabulary: what goes in ([`Event`]), what comes out ([`Action`], [`Notify`]),
//! why workers stop and restart, and the per-slot bookkeeping. Plain data; the decisions are in
//! the story files.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Pid;
use nix::sys::signal::Signal;

use crate::config::{Config, ConfigError, ReadySignal};

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
    /// Worker `pid` says, or was seen to be, ready: `READY=1` (credentials checked by the
    /// driver), accepting on an inherited socket, or `'ready'` on its IPC channel. Counts only
    /// where the worker's `ready.mode` takes that signal.
    Ready {
        pid: Pid,
        signal: ReadySignal,
    },
    /// A worker process was reaped.
    Exited {
        pid: Pid,
        status: ExitStatus,
        /// Its last lines of output (recorded during its first second only: they explain a
        /// worker that exits right after it starts).
        last_output: Vec<String>,
    },
    /// `WATCHDOG=1` from this pid.
    WatchdogPing {
        pid: Pid,
    },
    /// Resident memory of each worker's process group, sampled every `limits.interval`: one
    /// event for all of them, so the pool converges once per sample, not once per worker.
    MemorySamples(Vec<(Pid, u64)>),
    /// A deadline from [`Pool::next_deadline`] has passed.
    Tick,
    /// The master itself did not run for this long (stopped with SIGSTOP, starved of CPU): time
    /// that is no evidence against its workers, whose deadlines move by as much.
    Stalled {
        duration: Duration,
    },
    /// Re-read config: the new one, or why it could not be used.
    Reload {
        config: Result<Arc<Config>, ConfigError>,
        reply: Option<ReplyId>,
    },
    Scale {
        request: ScaleRequest,
        reply: Option<ReplyId>,
    },
    /// Graceful stop (SIGTERM/SIGINT): with `stop.drain`, a drain first; the next one stops
    /// gracefully (ending a drain), and one more while stopping kills every worker at once.
    Stop,
    /// How many worker processes the master's descriptors hold (`RLIMIT_NOFILE` `nofile`, less
    /// what the master keeps for itself and for the operator's way in): no more are started.
    Capacity {
        processes: usize,
        nofile: u64,
    },
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
        /// Run at this nice value until ready (0: as the master): see `reload.start_nice`.
        nice: u8,
    },
    /// Back to the master's own priority, for the worker's whole process group (it was started
    /// at a lower one).
    NormalPriority {
        pid: Pid,
    },
    /// Signal a worker: its whole process group, or (`stop.mode = "main"`) its main process.
    Signal {
        pid: Pid,
        signal: Signal,
        to: SignalTo,
    },
    Notify(Vec<Notify>),
    Reply {
        to: ReplyId,
        result: Result<String, Refusal>,
    },
    Exit(i32),
}

/// Why the pool refuses a request, or ends one in failure: what `corral reload`, `scale` and
/// `upgrade` print (and exit 1 with).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the pool is stopping")]
    Stopping,
    /// The new config cannot be used: nothing changed.
    #[error("{0}")]
    Config(ConfigError),
    /// A worker of the new generation failed before it was ready: rolled back.
    #[error("reload failed, generation {keeping} keeps serving: {reason}")]
    ReloadFailed { keeping: Generation, reason: String },
    #[error("a pool runs at most {max} workers: {asked} refused, still {workers} workers")]
    TooManyWorkers { max: usize, asked: i64, workers: usize },
    #[error(
        "only {fit} workers fit in this master's descriptor limit (RLIMIT_NOFILE {nofile}): {asked} refused, \
         still {workers} workers; raise LimitNOFILE= in the unit (or ulimit -n) and restart the pool"
    )]
    OutOfDescriptors { fit: usize, nofile: u64, asked: usize, workers: usize },
    /// Upgrades wait for a reload to end.
    #[error("a reload to generation {0} is in progress; upgrade when it has finished")]
    Reloading(Generation),
    /// Only inside the handling of one event; asking again is enough.
    #[error("a worker is being started; try again")]
    WorkerStarting,
}

/// Who an [`Action::Signal`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalTo {
    /// The worker's process group (it leads one).
    Group,
    /// The worker's main process only.
    Main,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Replaced,
    ScaledDown,
    Obsolete,
    ReadyTimeout,
    Watchdog,
    Shutdown,
}

/// Why a worker was restarted or replaced; counted for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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

/// `now + d`, for every deadline the pool sets. Config durations are bounded
/// ([`crate::config::MAX_DURATION`]), so this cannot overflow with a checked config; should it
/// ever, the deadline is as far as a bounded one could be rather than a panic.
pub(super) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).or_else(|| now.checked_add(crate::config::MAX_DURATION)).unwrap_or(now)
}

/// A deterministic number in [0, 1) from a worker id (splitmix64), so `recycle.jitter` spreads
/// workers without the pool needing a random source.
pub(super) fn spread(id: WorkerId) -> f64 {
    let mut z = id.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Crash bookkeeping of one slot.
#[derive(Debug, Clone, Default)]
pub struct SlotInfo {
    /// Failures in a row (the backoff exponent); reset by `min_uptime` of readiness.
    pub failures: u32,
    /// No new worker in this slot before then.
    pub not_before: Option<Instant>,
    /// Restarts of this slot so far (shown per worker by `corral status`).
    pub restarts: u64,
}

/// The outcome of the last reload, for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadResult {
    Succeeded(Generation),
    Failed(String),
}
