//! The event loop: turns IO into [`Event`]s for the [`Pool`] and executes its [`Action`]s.
//!
//! One thread, one `select!` over signals (SIGCHLD reap, SIGHUP reload, SIGTERM/SIGINT stop,
//! SIGTTIN/SIGTTOU scale), the workers' notify socket, the control socket, the metrics listener,
//! the pool's next deadline, the /proc sampler and the systemd watchdog. Like nginx's master, the handlers only record; the loop acts. The driver makes no
//! decisions of its own: who to start, stop or restart, and when a reload has failed, is the
//! pool's business. It must never keep running with a worker it does not know, and never exit
//! while a worker it started is alive.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};

use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, LogTarget};
use crate::control::{ControlServer, Incoming, Reply, Request};
use crate::launch::SpawnError;
use crate::metrics::SnapshotRequest;
use crate::notify::{NotifyServer, SystemdNotifier};
use crate::output::journal::{self, Sink};
use crate::pool::{Action, Event, ExitStatus, Notice, Notify, Pool, ReplyId, ScaleRequest, Severity, SignalTo};
use crate::rundir::RuntimeDir;
use crate::sockets::ListenSockets;

mod capacity;
mod observe;
mod readiness;
mod requests;
mod start;
mod strays;

use start::{log_sink, Beginning, Endpoints};
use strays::{stray_deadline, Strays};
use workers::WorkerMeta;
mod upgrade;
mod workers;

/// A timer this late means the master itself did not run (SIGSTOP, starved of CPU).
const STALL: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a pool could not start (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Sockets(#[from] crate::sockets::SocketError),
    #[error("cannot start the event loop: {0}")]
    EventLoop(std::io::Error),
    #[error(transparent)]
    User(SpawnError),
    /// The runtime directory is unsafe, someone else's, or locked by another master.
    #[error("{0}")]
    RuntimeDir(crate::rundir::RuntimeDirError),
    #[error("cannot bind the {what} socket {path}: {source}")]
    Bind { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics { addr: std::net::SocketAddr, source: std::io::Error },
    /// The new image of `corral upgrade` could not take over.
    #[error("cannot take over after the upgrade: {0}")]
    Resume(crate::handover::UpgradeError),
    /// The master's own path (what `corral upgrade` executes) cannot be found.
    #[error("cannot find my own binary: {0}")]
    OwnBinary(std::io::Error),
}

/// The master's event loop and everything it owns.
pub struct Driver {
    /// The decisions: the driver feeds it events and executes its actions.
    pool: Pool,
    /// Read again at every reload (a `current` symlink in it is followed anew).
    config_path: PathBuf,
    /// The pool's name, shared with every output task.
    name: Arc<str>,
    /// The listening sockets every worker inherits at fd 3...
    sockets: ListenSockets,
    /// The workers' `NOTIFY_SOCKET` (credentials checked).
    notify: NotifyServer,
    /// The master's own channel to systemd (`READY=1`, `STATUS=`, `WATCHDOG=1`, fd store).
    systemd: SystemdNotifier,
    /// Held for its lock (and so its sockets stay where the CLI looks).
    runtime: RuntimeDir,
    /// What the driver knows of each live worker process beyond the pool's view.
    workers: HashMap<Pid, WorkerMeta>,
    /// The master's environment minus what belongs to it alone: every worker's starting point.
    base_env: Vec<(String, String)>,
    /// Where worker output goes (journald or stderr).
    sink: Arc<Sink>,
    /// Set when the loop is to end, with the exit status.
    exit: Option<i32>,
    /// Events caused by executing actions (a spawn's result), handled before anything else.
    events: VecDeque<Event>,
    /// `corral status`/`reload`/`scale` come in here.
    control: ControlServer,
    /// The workers' user that `RUNTIME/credentials` was copied for ([`crate::credentials`]).
    credentials_for: Option<u32>,
    /// `/metrics` and `/health`, when configured, with its connection limit.
    metrics: Option<(tokio::net::TcpListener, crate::gate::Gate)>,
    /// Control clients waiting for an outcome (a reload, a scale), by the id the pool knows.
    replies: HashMap<ReplyId, oneshot::Sender<Reply>>,
    /// Source of those ids.
    next_reply: ReplyId,
    /// When the master started (its uptime in status).
    started: Instant,
    /// Set once the pool has exited while processes its workers left behind (daemonized, so out
    /// of their process groups, and re-parented to us as subreaper) still run: they are stopped
    /// like workers (stop signal, SIGKILL at the deadline) before the master exits.
    strays: Option<Strays>,
    /// The path the master was started from: what `corral upgrade` executes.
    exe: PathBuf,
    /// Times this master re-executed itself in place.
    upgrades: u64,
    /// A checked upgrade, executed on the loop's next turn.
    pending_upgrade: Option<upgrade::PendingUpgrade>,
    /// Set in the new image of an upgrade: the version it took over from.
    resumed: Option<String>,
    /// Inodes of the listening sockets: a process holding one of them can serve.
    listen_inodes: Vec<u64>,
    /// When the workers' processes were last sampled with their CPU times.
    last_cpu_sample: Option<Instant>,
    /// Reads the workers' process groups every `limits.interval`, keeping its files open.
    sampler: crate::sampler::GroupSampler,
    /// Starting workers watched for readiness by the master ("listen" and "ipc" modes).
    ready_watch: readiness::ReadyWatch,
    /// The master's own nice value, and whether a worker started below it can be raised back.
    priority: Priority,
    /// Names each worker's metrics socket (`[metrics] workers`) apart from any other's.
    metrics_seq: u64,
    /// Worker-metrics failures already logged.
    metrics_said: crate::metrics::scrape::Said,
    /// Descriptors the master holds for itself, measured once ([`capacity`]).
    own_descriptors: Option<usize>,
    /// The workers' process groups, recorded in the runtime directory ([`crate::leftovers`]).
    record: crate::leftovers::Record,
    /// Stops what the workers left if this master dies without stopping them.
    watcher: Option<crate::leftovers::Watcher>,
}

/// The priority workers get back once ready (`reload.start_nice`).
#[derive(Debug, Clone, Copy)]
struct Priority {
    /// The master's nice value, which workers inherit.
    base: i32,
    /// Whether workers may start lower: only if the master can raise them back.
    gentle: bool,
}

/// Run a pool in the foreground until it stops; returns the process exit code.
pub fn run(config: Config) -> Result<i32, StartError> {
    let config_path = config.path.clone();
    let config = Arc::new(config);
    on_event_loop(move || Driver::start(&config_path, config))
}

/// The new image of `corral upgrade`: take over the state handed over at `state_fd` and run
/// the pool until it stops; returns the process exit code.
pub fn resume(state_fd: std::os::fd::RawFd) -> Result<i32, StartError> {
    on_event_loop(move || Driver::resume(state_fd))
}

/// Build the driver on the master's single-threaded runtime and run it to the end.
fn on_event_loop(make: impl FnOnce() -> Result<Driver, StartError>) -> Result<i32, StartError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(StartError::EventLoop)?;
    rt.block_on(async move {
        let mut driver = make()?;
        Ok(driver.run().await)
    })
}

/// Every signal the loop handles, in the order [`Driver::run`] takes their streams: SIGCHLD
/// (reap), SIGTERM and SIGINT (stop), SIGHUP (reload), SIGTTIN and SIGTTOU (scale), SIGUSR2
/// (upgrade). The one list: `corral upgrade` blocks exactly these across its exec.
pub(super) const HANDLED_SIGNALS: [Signal; 7] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR2,
];

impl Driver {
    async fn run(&mut self) -> i32 {
        let signals: std::io::Result<Vec<_>> =
            HANDLED_SIGNALS.iter().map(|&sig| signal(SignalKind::from_raw(sig as libc::c_int))).collect();
        let signals = signals.map(|v| {
            <[_; HANDLED_SIGNALS.len()]>::try_from(v).unwrap_or_else(|_| unreachable!("one stream per signal"))
        });
        let [mut chld, mut term, mut int, mut hup, mut ttin, mut ttou, mut usr2] = match signals {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return 1;
            }
        };
        let hour = std::time::Duration::from_secs(3600);
        let watchdog = sd_notify::watchdog_enabled().filter(|_| self.systemd.enabled());
        let mut watchdog_timer = tokio::time::interval(watchdog.map_or(hour, |d| d / 2));
        watchdog_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (control_tx, mut control_rx) = mpsc::unbounded_channel::<Incoming>();
        let (metrics_tx, mut metrics_rx) = mpsc::unbounded_channel::<SnapshotRequest>();
        let mut sample_every = self.pool.config().limits.interval.0;
        // The first sample one interval after start: nothing to measure before workers run.
        let mut sampler = tokio::time::interval_at(tokio::time::Instant::now() + sample_every, sample_every);
        sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        // Signals blocked across an upgrade's exec are pending: now that they are handled, let
        // them in. (A first start finds them unblocked already.)
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_UNBLOCK,
            Some(&upgrade::handled_signals()),
            None,
        );
        let flusher = tokio::spawn(crate::output::stderr::flusher());
        if let Some(from) = self.resumed.take() {
            // Workers that exited while the exec was in flight are waiting to be reaped.
            self.reap();
            tracing::info!(
                "upgrade: corral {} took over from corral {from}, pid {}, {} workers",
                crate::VERSION,
                std::process::id(),
                self.workers.len()
            );
            // systemd shows which version serves now, until the pool's status next changes.
            let status = format!("{} · upgraded to corral {}", self.pool.status_line(), crate::VERSION);
            self.notify_systemd(&[Notify::Ready, Notify::Status(status)]);
        }
        let config = self.pool.config().clone();
        self.tell_capacity(&config);
        self.apply_access(&config);
        self.dispatch(Event::Start);
        while self.exit.is_none() {
            if let Some(pending) = self.pending_upgrade.take() {
                // Let the reply to `corral upgrade` go out first.
                tokio::task::yield_now().await;
                self.exec_upgrade(pending);
            }
            let deadline = self.pool.next_deadline().map(tokio::time::Instant::from_std);
            let listen_check = self.ready_watch.next_check().map(tokio::time::Instant::from_std);
            let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(|| tokio::time::Instant::now() + hour));
            tokio::select! {
                biased;
                Some(()) = chld.recv() => self.reap(),
                Some(()) = term.recv() => self.on_stop_signal(),
                Some(()) = int.recv() => self.on_stop_signal(),
                Some(()) = hup.recv() => self.reload(None),
                Some(()) = ttin.recv() => self.dispatch(Event::Scale { request: ScaleRequest::Add(1), reply: None }),
                Some(()) = ttou.recv() => self.dispatch(Event::Scale { request: ScaleRequest::Add(-1), reply: None }),
                Some(()) = usr2.recv() => self.begin_upgrade(None),
                Some(pid) = self.ready_watch.ipc_rx.recv() => {
                    self.dispatch(Event::Ready { pid, signal: crate::config::ReadySignal::Ipc });
                }
                () = sleep_until_some(listen_check), if listen_check.is_some() => self.check_listening(),
                msg = self.notify.recv() => match msg {
                    Ok(msg) => self.on_notify(msg),
                    Err(e) => tracing::warn!("notify socket: {e}"),
                },
                () = self.control.accept(control_tx.clone()) => {}
                Some(incoming) = control_rx.recv() => self.on_control(incoming),
                (accepted, permit) = accept_metrics(self.metrics.as_ref()) => match accepted {
                    Ok(stream) => {
                        let to_driver = metrics_tx.clone();
                        tokio::spawn(async move {
                            crate::metrics::serve(stream, to_driver).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        if let Some((_, gate)) = &self.metrics {
                            gate.failed(&e);
                        }
                    }
                },
                Some(SnapshotRequest { reply, sample }) = metrics_rx.recv() => {
                    if sample {
                        self.sample_for_report();
                    }
                    let scrape = if sample { self.scrape_plan() } else { None };
                    let _ = reply.send(crate::metrics::Report { status: self.snapshot(), scrape });
                }
                _ = sleep, if deadline.is_some() => {
                    // Take in every READY=1 and WATCHDOG=1 already waiting before judging
                    // deadlines: after the master was stopped they are all queued there.
                    self.drain_notify();
                    let late = deadline.map(|d| tokio::time::Instant::now().saturating_duration_since(d));
                    if let Some(late) = late.filter(|l| *l >= STALL) {
                        self.dispatch(Event::Stalled { duration: late });
                    }
                    self.dispatch(Event::Tick);
                }
                _ = sampler.tick() => {
                    // Memory only: CPU times are read when status or /metrics asks.
                    self.sample(false);
                    // A reload may have changed the interval.
                    let every = self.pool.config().limits.interval.0;
                    if every != sample_every {
                        sample_every = every;
                        sampler = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    }
                }
                _ = watchdog_timer.tick(), if watchdog.is_some() => self.systemd.send(&[NotifyState::Watchdog]),
                () = stray_deadline(self.strays.as_ref()) => self.kill_strays(),
                () = self.systemd.flush(), if self.systemd.pending() => {}
            }
        }
        // Every worker is gone: the watcher has nothing to do, and no one reads the secrets.
        self.record.remove();
        crate::credentials::remove(&self.runtime.path);
        if let Some(w) = self.watcher.take() {
            w.bye();
        }
        // Workers' output tasks finish on their own at EOF; give them the chance to flush.
        tokio::task::yield_now().await;
        flusher.abort();
        self.exit.unwrap_or(1)
    }

    /// Feed an event (and every event its actions cause) through the pool.
    fn dispatch(&mut self, event: Event) {
        self.events.push_back(event);
        while let Some(event) = self.events.pop_front() {
            let actions = self.pool.handle(Instant::now(), event);
            for notice in self.pool.take_notices() {
                log_notice(&notice);
            }
            for action in actions {
                self.execute(action);
            }
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Spawn { id, slot, generation, config, nice } => {
                let event = match self.spawn_worker(slot, generation, &config, nice) {
                    Ok(pid) => Event::Spawned { id, pid },
                    Err(error) => Event::SpawnFailed { id, error: error.to_string() },
                };
                self.events.push_back(event);
            }
            Action::NormalPriority { pid } => {
                if let Err(e) = crate::os::priority::set_group(pid.as_raw(), self.priority.base) {
                    tracing::debug!(pid = pid.as_raw(), "cannot restore the priority of its process group: {e}");
                }
            }
            Action::Signal { pid, signal, to: SignalTo::Group } => {
                // The worker leads its own process group: signal all of it, like systemd's
                // control-group kill mode; fall back to the pid if the group is gone.
                if killpg(pid, signal).is_err() {
                    let _ = nix::sys::signal::kill(pid, signal);
                }
            }
            Action::Signal { pid, signal, to: SignalTo::Main } => {
                let _ = nix::sys::signal::kill(pid, signal);
            }
            Action::Notify(fields) => self.notify_systemd(&fields),
            Action::Reply { to, result } => {
                if let Some(tx) = self.replies.remove(&to) {
                    let _ = tx.send(match result {
                        Ok(msg) => Reply::ok(msg),
                        Err(refusal) => Reply::err(refusal.to_string()),
                    });
                }
            }
            Action::Exit(code) => self.finish(code),
        }
    }

    fn notify_systemd(&mut self, fields: &[Notify]) {
        let mut states = Vec::new();
        let mut monotonic = None;
        for f in fields {
            match f {
                Notify::Ready => states.push(NotifyState::Ready),
                Notify::Reloading => {
                    states.push(NotifyState::Reloading);
                    monotonic = NotifyState::monotonic_usec_now().ok();
                }
                Notify::Stopping => states.push(NotifyState::Stopping),
                Notify::Status(s) => states.push(NotifyState::Status(s)),
                Notify::ExtendTimeout(d) => {
                    states.push(NotifyState::ExtendTimeoutUsec(u32::try_from(d.as_micros()).unwrap_or(u32::MAX)))
                }
            }
        }
        states.extend(monotonic);
        self.systemd.send(&states);
    }

    /// Reap every child that has exited: workers become `Exited` events, anything else (a
    /// worker's orphaned child, re-parented to us as subreaper) is just reaped.
    fn reap(&mut self) {
        let mut workers_gone = false;
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            if let Some(meta) = self.workers.remove(&pid) {
                // Whatever the worker left behind in its process group goes with it.
                let _ = killpg(pid, Signal::SIGKILL);
                self.record.reaped(pid.as_raw());
                if let Some(socket) = &meta.metrics_socket {
                    let _ = std::fs::remove_file(socket);
                }
                workers_gone = true;
                self.dispatch(Event::Exited { pid, status, last_output: journal::tail_lines(&meta.tail) });
            } else if self.watcher.as_ref().is_some_and(|w| w.pid == pid) {
                tracing::warn!("the watcher of this master exited ({status}): starting another");
                self.watcher = start::start_watcher(&self.exe, &self.runtime.path);
            } else {
                tracing::debug!(pid = pid.as_raw(), "reaped a stray process ({status})");
                self.stray_reaped();
            }
        }
        // The last stopping worker is gone (a reload's or a scale-down's drain ended): what their
        // pipes, tasks and bookkeeping took is free now; give it back to the kernel, or the
        // master's RSS stays at the peak of its busiest reload.
        if workers_gone && !self.pool.workers().iter().any(|w| w.state.phase() == crate::pool::WorkerPhase::Stopping) {
            crate::os::memory::trim();
        }
    }
}

/// A pool notice as a log line, inside a span naming the worker it is about.
fn log_notice(notice: &Notice) {
    let span = match notice.worker() {
        Some(w) => {
            tracing::info_span!("worker", slot = w.slot, pid = w.pid.map(Pid::as_raw), generation = w.generation)
        }
        None => tracing::Span::none(),
    };
    let _in = span.enter();
    match notice.severity() {
        Severity::Error => tracing::error!("{notice}"),
        Severity::Warning => tracing::warn!("{notice}"),
        Severity::Info => tracing::info!("{notice}"),
        Severity::Debug => tracing::debug!("{notice}"),
    }
}

/// The moment left-behind processes get SIGKILL, or never.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Accept on the metrics listener once its gate admits a connection, or never when there is none.
async fn accept_metrics(
    listener: Option<&(tokio::net::TcpListener, crate::gate::Gate)>,
) -> (std::io::Result<tokio::net::TcpStream>, tokio::sync::OwnedSemaphorePermit) {
    match listener {
        Some((l, gate)) => {
            let permit = gate.admit().await;
            (l.accept().await.map(|(s, _)| s), permit)
        }
        None => std::future::pending().await,
    }
}
