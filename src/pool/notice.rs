//! What happened, as the pool tells it: typed notices the driver turns into log lines, inside a
//! span that names the worker (`slot`, `pid`, `generation` recorded once). The pool itself never
//! logs, so each failure is described once, here.

use std::fmt;
use std::time::Duration;

use super::Pid;

use super::{ExitStatus, Generation, SlotId};
use crate::config::ReadyMode;

/// Which worker a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerRef {
    pub slot: SlotId,
    pub pid: Option<Pid>,
    pub generation: Generation,
}

/// How much a notice matters (maps onto log levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// A worker's change of state: for `CORRAL_LOG=debug`.
    Debug,
    Info,
    Warning,
    Error,
}

/// How a worker that was asked to stop ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopOutcome {
    /// It exited this long after its stop signal, before `stop.timeout` (the second field).
    OnItsOwn(Duration, Duration),
    /// It was killed with SIGKILL (`stop.timeout` reached, or a second stop signal).
    Killed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Still not ready after this long at `reload.start_nice`: back to normal priority.
    StillStartingAtLowPriority(WorkerRef, Duration),
    /// A worker moved from one state to another (their names).
    Transition(WorkerRef, &'static str, &'static str),
    Started(WorkerRef),
    Ready(WorkerRef),
    /// Exited after it was asked to stop: on its own after the stop signal (how long after, so
    /// a server that drained and re-raised SIGTERM reads apart from one the signal killed
    /// outright), or killed with SIGKILL.
    Stopped(WorkerRef, ExitStatus, StopOutcome),
    ExitedUnexpectedly(WorkerRef, ExitStatus),
    /// With how long after its start (moments mean it never got going) and, then, its last
    /// lines of output.
    ExitedBeforeReady(WorkerRef, ExitStatus, Duration, Vec<String>),
    CannotStart(WorkerRef, String),
    /// With whether it was waited for as `ready.mode = "notify"` (then the hint names the
    /// other modes).
    NotReadyInTime(WorkerRef, Duration, ReadyMode),
    /// A stop signal with `stop.drain`: serving on, unhealthy, for this long.
    Draining(Duration),
    WatchdogSilent(WorkerRef, Duration),
    OverMemory {
        worker: WorkerRef,
        rss: u64,
        limit: u64,
    },
    RecycleAge(WorkerRef),
    KilledAfterTimeout(WorkerRef),
    Restarting(WorkerRef, Duration),
    /// Slots left empty: their workers' descriptors do not fit.
    OutOfDescriptors {
        fit: usize,
        wanted: usize,
        nofile: u64,
    },
    /// Gave up: more failed starts in a row than `max_restarts` with no worker ready.
    GivingUpInARow {
        failures: u32,
        last: String,
    },
    /// Gave up: more restarts than `max_restarts` within `window` with no worker ready.
    GivingUpInWindow {
        restarts: usize,
        window: Duration,
        last: String,
    },
    Stalled(Duration),
    Stopping {
        workers: usize,
    },
    StoppingNow,
    AllReady {
        generation: Generation,
        workers: usize,
    },
    Reloading {
        from: Generation,
        to: Generation,
        workers: usize,
    },
    ReloadQueued,
    ReloadRefused {
        keeping: Generation,
        error: String,
    },
    ReloadDone(String),
    ReloadFailed {
        from: Generation,
        to: Generation,
        reason: String,
    },
    Scaling {
        from: usize,
        to: usize,
    },
}

impl Notice {
    /// The worker it is about, if any.
    pub fn worker(&self) -> Option<WorkerRef> {
        match self {
            Notice::Started(w)
            | Notice::Ready(w)
            | Notice::Stopped(w, ..)
            | Notice::ExitedUnexpectedly(w, _)
            | Notice::ExitedBeforeReady(w, ..)
            | Notice::CannotStart(w, _)
            | Notice::NotReadyInTime(w, ..)
            | Notice::WatchdogSilent(w, _)
            | Notice::OverMemory { worker: w, .. }
            | Notice::RecycleAge(w)
            | Notice::KilledAfterTimeout(w)
            | Notice::Restarting(w, _) => Some(*w),
            _ => None,
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Notice::CannotStart(..)
            | Notice::WatchdogSilent(..)
            | Notice::GivingUpInARow { .. }
            | Notice::GivingUpInWindow { .. }
            | Notice::ReloadRefused { .. }
            | Notice::OutOfDescriptors { .. }
            | Notice::ReloadFailed { .. } => Severity::Error,
            Notice::ExitedUnexpectedly(..)
            | Notice::ExitedBeforeReady(..)
            | Notice::NotReadyInTime(..)
            | Notice::OverMemory { .. }
            | Notice::KilledAfterTimeout(..)
            | Notice::Stalled(..)
            | Notice::StoppingNow => Severity::Warning,
            Notice::Transition(..) => Severity::Debug,
            _ => Severity::Info,
        }
    }
}

/// A worker that exits sooner than this after its start never got going: say why it may be.
pub const EARLY_EXIT: Duration = Duration::from_secs(1);

use crate::text::{human_bytes as size, human_ms as human};

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Transition(w, from, to) => write!(f, "slot {}: {from} → {to}", w.slot),
            Notice::StillStartingAtLowPriority(_, after) => write!(
                f,
                "still starting after {} at reload.start_nice: back to normal priority so it is ready in time",
                human(*after)
            ),
            Notice::Started(_) => write!(f, "worker started"),
            Notice::Ready(_) => write!(f, "worker ready"),
            Notice::Stopped(_, status, StopOutcome::OnItsOwn(after, timeout)) => {
                // Exiting on the stop signal itself within a few milliseconds means it had no
                // handler: whatever it was serving was cut off.
                let how = if matches!(status, ExitStatus::Signaled(_)) && *after < Duration::from_millis(50) {
                    ", at once: killed by the signal itself, no graceful drain"
                } else {
                    ""
                };
                write!(
                    f,
                    "worker stopped ({status}) {} after its stop signal, within stop.timeout ({}){how}",
                    human(*after),
                    human(*timeout)
                )
            }
            Notice::Stopped(_, status, StopOutcome::Killed) => {
                write!(f, "worker stopped ({status}): killed, it had not stopped on its own")
            }
            Notice::ExitedUnexpectedly(_, status) => write!(f, "worker exited unexpectedly ({status})"),
            Notice::ExitedBeforeReady(_, status, after, last_output) if *after < EARLY_EXIT => {
                write!(
                    f,
                    "worker exited {} after it started, before it was ready ({status}); usual causes: it binds \
                     its own port instead of taking the socket at fd 3 (LISTEN_FDS), or it ignores LISTEN_FDS \
                     and LISTEN_PID; or its command or environment is wrong",
                    human(*after)
                )?;
                if last_output.is_empty() {
                    return write!(f, "; it wrote nothing");
                }
                write!(f, "; its last output: ")?;
                for (i, line) in last_output.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{:?}", crate::text::escape_terminal(line))?;
                }
                Ok(())
            }
            Notice::ExitedBeforeReady(_, status, ..) => write!(f, "worker exited before it was ready ({status})"),
            Notice::Draining(d) => write!(
                f,
                "draining for {} before stopping: still serving, /health and /ready answer 503 (a second signal stops now)",
                human(*d)
            ),
            Notice::CannotStart(_, error) => write!(f, "cannot start worker: {error}"),
            Notice::NotReadyInTime(_, after, ReadyMode::Notify) => write!(
                f,
                "worker not ready after {}: with ready.mode = \"notify\" it must send READY=1 to \
                 $NOTIFY_SOCKET (sd_notify; from Node, the `systemd-notify --ready` binary or a native \
                 addon); an app that cannot can use mode = \"delay\" (ready after `delay`) or \"spawn\" \
                 (ready at exec), see corral.toml(5)",
                human(*after)
            ),
            Notice::NotReadyInTime(_, after, ReadyMode::Listen) => write!(
                f,
                "worker not ready after {}: with ready.mode = \"listen\" a process of the worker must wait \
                 for connections on the socket it inherited (fd 3 on, see LISTEN_FDS), not on a socket of \
                 its own; an app that uses io_uring or binds its own port needs \"notify\", see corral.toml(5)",
                human(*after)
            ),
            Notice::NotReadyInTime(_, after, ReadyMode::Ipc) => write!(
                f,
                "worker not ready after {}: with ready.mode = \"ipc\" the Node worker must call \
                 process.send('ready') (PM2's wait_ready); a program that is not Node has no IPC channel, \
                 use \"listen\" or \"notify\", see corral.toml(5)",
                human(*after)
            ),
            Notice::NotReadyInTime(_, after, _) => write!(f, "worker not ready after {}", human(*after)),
            Notice::WatchdogSilent(_, after) => {
                write!(f, "no WATCHDOG=1 for {}: killing the worker with SIGABRT", human(*after))
            }
            Notice::OverMemory { rss, limit, .. } => {
                write!(f, "worker uses {} of memory, over the {} limit: replacing it", size(*rss), size(*limit))
            }
            Notice::RecycleAge(_) => write!(f, "worker reached its recycle age: replacing it"),
            Notice::KilledAfterTimeout(_) => write!(f, "worker did not stop in time, sending SIGKILL"),
            Notice::Restarting(_, delay) => write!(f, "restarting worker in {}", human(*delay)),
            Notice::GivingUpInARow { failures, last } => {
                write!(f, "giving up: {failures} failed starts in a row and no worker is ready (last: {last})")
            }
            Notice::GivingUpInWindow { restarts, window, last } => write!(
                f,
                "giving up: {restarts} restarts within {} and no worker is ready (last: {last})",
                human(*window)
            ),
            Notice::Stalled(d) => write!(
                f,
                "the master did not run for {} or more (stopped or starved of CPU): workers' deadlines start afresh",
                human(*d)
            ),
            Notice::Stopping { workers } => write!(f, "stopping {workers} workers"),
            Notice::StoppingNow => write!(f, "stopping now: killing every worker"),
            Notice::AllReady { generation, workers } => {
                write!(f, "generation {generation}: all {workers} workers ready")
            }
            Notice::Reloading { from, to, workers } => {
                write!(f, "reloading: generation {from} → {to}, {workers} workers")
            }
            Notice::ReloadQueued => write!(f, "reload requested during a reload: it will follow the current one"),
            Notice::ReloadRefused { keeping, error } => {
                write!(f, "reload refused, keeping generation {keeping}: {error}")
            }
            Notice::ReloadDone(msg) => write!(f, "reload done: {msg}"),
            Notice::ReloadFailed { from, to, reason } => {
                write!(f, "reload to generation {to} failed, generation {from} keeps serving: {reason}")
            }
            Notice::Scaling { from, to } => write!(f, "scaling from {from} to {to} workers"),
            Notice::OutOfDescriptors { fit, wanted, nofile } => write!(
                f,
                "{wanted} workers wanted, but only {fit} fit in this master's descriptor limit (RLIMIT_NOFILE \
                 {nofile}, with room kept for a reload and for corral status, /metrics and the journal): \
                 running {fit}; raise LimitNOFILE= in the unit (or ulimit -n) and restart the pool"
            ),
        }
    }
}
