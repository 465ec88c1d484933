//! The event loop: turns IO into [`Event`]s for the [`Pool`] and executes its [`Action`]s.
//!
//! One thread, one `select!` over signals (SIGCHLD reap, SIGHUP reload, SIGTERM/SIGINT stop,
//! SIGTTIN/SIGTTOU scale), the workers' notify socket, the control socket, the metrics listener,
//! the pool's next deadline, the /proc sampler and the systemd watchdog. Like nginx's master, the handlers only record; the loop acts. The driver makes no
//! decisions of its own: who to start, stop or restart, and when a reload has failed, is the
//! pool's business. It must never keep running with a worker it does not know, and never exit
//! while a worker it started is alive.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};

use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, LogTarget};
use crate::control::{self, ControlServer, Incoming, Reply, Request};
use crate::journal::{self, Origin, Sink, Stream};
use crate::metrics::SnapshotRequest;
use crate::notify::{NotifyServer, SystemdNotifier};
use crate::pool::{Action, Event, ExitStatus, Notify, Pool, ReloadResult, ReplyId, ScaleRequest, WorkerState};
use crate::sockets::ListenSockets;
use crate::spawn::{self, Credentials, SpawnRequest};
use crate::status::{self, LastReload, PoolStatus, WorkerStatus};

/// Variables of the master's own environment that belong to the master only.
const PRIVATE_ENV: &[&str] =
    &["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"];

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Sockets(#[from] crate::sockets::SocketError),
    #[error("{0}")]
    Other(String),
}

/// What the driver knows about a live worker process.
#[derive(Debug, Clone)]
struct WorkerMeta {
    slot: usize,
    generation: u64,
    /// The worker's own `STATUS=`.
    status: Option<String>,
    /// Last /proc sample: RSS bytes and CPU ticks of the process group.
    rss: Option<u64>,
    cpu_ticks: Option<u64>,
    /// Where the current CPU % is measured from, and that percentage.
    cpu_base: Option<(Instant, u64)>,
    cpu_percent: Option<f64>,
}

/// The pool's private directory: the workers' notify socket and a lock against a second master.
pub struct RuntimeDir {
    pub path: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl RuntimeDir {
    /// `$RUNTIME_DIRECTORY` under systemd, else `ROOT/NAME` (see [`runtime_root`]).
    pub fn locate(name: &str) -> PathBuf {
        if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
            let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_string();
            return PathBuf::from(first);
        }
        runtime_root().join(name)
    }

    /// Create the directory (0700, or 0710 with the workers' group so they can reach the notify
    /// socket) and take its lock.
    pub fn create(name: &str, worker_gid: Option<u32>) -> Result<RuntimeDir, String> {
        let path = Self::locate(name);
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create runtime directory {}: {e}", path.display()))?;
        let mode = if worker_gid.is_some() { 0o710 } else { 0o700 };
        if std::env::var_os("RUNTIME_DIRECTORY").is_none() {
            if let Some(gid) = worker_gid {
                let _ = nix::unistd::chown(&path, None, Some(nix::unistd::Gid::from_raw(gid)));
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("cannot set permissions on {}: {e}", path.display()))?;
        }
        let lock_path = path.join("master.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
            format!("another corral master is already running pool {name:?} (lock {} is held)", lock_path.display())
        })?;
        Ok(RuntimeDir { path, _lock: lock })
    }
}

/// Where pools keep their runtime directories (and where `corral status` looks for them):
/// `$CORRAL_RUNTIME_ROOT`, else `/run/corral` as root, else `$XDG_RUNTIME_DIR/corral`, else
/// `/tmp/corral-UID`. The units set `RuntimeDirectory=corral/%i`, which is `/run/corral/NAME`.
pub fn runtime_root() -> PathBuf {
    if let Some(root) = std::env::var_os("CORRAL_RUNTIME_ROOT").filter(|d| !d.is_empty()) {
        return PathBuf::from(root);
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/corral");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(xdg) => PathBuf::from(xdg).join("corral"),
        None => PathBuf::from(format!("/tmp/corral-{uid}")),
    }
}

/// The control socket of pool `name`, as the CLI finds it.
pub fn control_socket(name: &str) -> PathBuf {
    runtime_root().join(name).join("control.sock")
}

pub struct Driver {
    pool: Pool,
    config_path: PathBuf,
    name: Arc<str>,
    sockets: ListenSockets,
    notify: NotifyServer,
    systemd: SystemdNotifier,
    _runtime: RuntimeDir,
    workers: HashMap<Pid, WorkerMeta>,
    base_env: Vec<(String, String)>,
    sink: Arc<Sink>,
    exit: Option<i32>,
    events: VecDeque<Event>,
    control: ControlServer,
    metrics: Option<tokio::net::TcpListener>,
    replies: HashMap<ReplyId, oneshot::Sender<Reply>>,
    next_reply: ReplyId,
    started: Instant,
}

/// Run a pool in the foreground until it stops; returns the process exit code.
pub fn run(config: Config) -> Result<i32, StartError> {
    let config_path = config.path.clone();
    let config = Arc::new(config);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| StartError::Other(format!("cannot start the event loop: {e}")))?;
    rt.block_on(async move {
        let mut driver = Driver::start(&config_path, config)?;
        Ok(driver.run().await)
    })
}

impl Driver {
    fn start(config_path: &Path, config: Arc<Config>) -> Result<Driver, StartError> {
        // Orphaned grandchildren of workers are re-parented to us and reaped; and we behave as
        // an init when run as PID 1 in a container.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!("cannot become a child subreaper: {e}");
        }
        let resolved = ListenSockets::resolve(ListenSockets::from_systemd()?, &config.listen)?;
        let sockets = resolved.sockets;
        let mut systemd = SystemdNotifier::from_env();
        if !sockets.activated {
            if resolved.restored > 0 {
                tracing::info!("{} listening sockets kept across the restart by systemd's fd store", resolved.restored);
            }
            let named: Vec<_> = sockets.sockets.iter().map(|s| (s.name.clone(), s.fd.as_fd())).collect();
            systemd.store_fds(&named);
            systemd.remove_stored(&resolved.stale);
        }
        let worker_gid = match &config.user {
            Some(user) if nix::unistd::geteuid().is_root() => {
                Some(Credentials::lookup(user).map_err(StartError::Other)?.gid)
            }
            _ => None,
        };
        let runtime = RuntimeDir::create(&config.name, worker_gid).map_err(StartError::Other)?;
        let mode = if worker_gid.is_some() { 0o660 } else { 0o600 };
        let notify_path = runtime.path.join("notify.sock");
        let notify = NotifyServer::bind(&notify_path, mode)
            .map_err(|e| StartError::Other(format!("cannot bind the notify socket {}: {e}", notify_path.display())))?;
        if let Some(gid) = worker_gid {
            let _ = nix::unistd::chown(&notify_path, None, Some(nix::unistd::Gid::from_raw(gid)));
        }
        let control_path = runtime.path.join("control.sock");
        let control = ControlServer::bind(&control_path).map_err(|e| {
            StartError::Other(format!("cannot bind the control socket {}: {e}", control_path.display()))
        })?;
        let metrics = match &config.metrics {
            None => None,
            Some(m) => {
                let l = std::net::TcpListener::bind(m.listen)
                    .and_then(|l| l.set_nonblocking(true).map(|_| l))
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|e| StartError::Other(format!("cannot listen for metrics on {}: {e}", m.listen)))?;
                tracing::info!("metrics on http://{}/metrics and /health", m.listen);
                Some(l)
            }
        };
        let sink = Arc::new(log_sink(config.logs.target));
        let base_env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| !PRIVATE_ENV.contains(&k.as_str()))
            .collect();
        for s in &sockets.sockets {
            tracing::info!(
                "listening on {} ({})",
                s.address,
                if sockets.activated { "from systemd" } else { "bound by corral" }
            );
        }
        tracing::info!("pool {}: {} workers of `{}`", config.name, config.instances, config.command.join(" "));
        Ok(Driver {
            name: Arc::from(config.name.as_str()),
            pool: Pool::new(config),
            config_path: config_path.to_owned(),
            sockets,
            notify,
            systemd,
            _runtime: runtime,
            workers: HashMap::new(),
            base_env,
            sink,
            exit: None,
            events: VecDeque::new(),
            control,
            metrics,
            replies: HashMap::new(),
            next_reply: 0,
            started: Instant::now(),
        })
    }

    async fn run(&mut self) -> i32 {
        let signals = (|| -> std::io::Result<_> {
            Ok((
                signal(SignalKind::child())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::hangup())?,
                signal(SignalKind::from_raw(libc::SIGTTIN))?,
                signal(SignalKind::from_raw(libc::SIGTTOU))?,
            ))
        })();
        let (mut chld, mut term, mut int, mut hup, mut ttin, mut ttou) = match signals {
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

        self.dispatch(Event::Start);
        while self.exit.is_none() {
            let deadline = self.pool.next_deadline().map(tokio::time::Instant::from_std);
            let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(|| tokio::time::Instant::now() + hour));
            tokio::select! {
                biased;
                Some(()) = chld.recv() => self.reap(),
                Some(()) = term.recv() => self.dispatch(Event::Stop),
                Some(()) = int.recv() => self.dispatch(Event::Stop),
                Some(()) = hup.recv() => self.reload(None),
                Some(()) = ttin.recv() => self.dispatch(Event::Scale { request: ScaleRequest::Add(1), reply: None }),
                Some(()) = ttou.recv() => self.dispatch(Event::Scale { request: ScaleRequest::Add(-1), reply: None }),
                msg = self.notify.recv() => match msg {
                    Ok(msg) => self.on_notify(msg),
                    Err(e) => tracing::warn!("notify socket: {e}"),
                },
                () = self.control.accept(control_tx.clone()) => {}
                Some(incoming) = control_rx.recv() => self.on_control(incoming),
                accepted = accept_metrics(self.metrics.as_ref()) => match accepted {
                    Ok(stream) => {
                        tokio::spawn(crate::metrics::serve(stream, metrics_tx.clone()));
                    }
                    Err(e) => tracing::warn!("metrics listener: {e}"),
                },
                Some(SnapshotRequest(reply)) = metrics_rx.recv() => {
                    let _ = reply.send(self.snapshot());
                }
                _ = sleep, if deadline.is_some() => self.dispatch(Event::Tick),
                _ = sampler.tick() => {
                    self.sample();
                    // A reload may have changed the interval.
                    let every = self.pool.config().limits.interval.0;
                    if every != sample_every {
                        sample_every = every;
                        sampler = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    }
                }
                _ = watchdog_timer.tick(), if watchdog.is_some() => self.systemd.send(&[NotifyState::Watchdog]),
                () = self.systemd.flush(), if self.systemd.pending() => {}
            }
        }
        // Workers' output tasks finish on their own at EOF; give them the chance to flush.
        tokio::task::yield_now().await;
        self.exit.unwrap_or(1)
    }

    fn on_control(&mut self, incoming: Incoming) {
        let Incoming { request, reply } = incoming;
        match request {
            Request::Status => {
                self.sample();
                let _ = reply.send(Reply::status(self.snapshot()));
            }
            Request::Reload { wait } => {
                if wait {
                    let id = self.remember(reply);
                    self.reload(Some(id));
                } else {
                    let _ = reply.send(Reply::ok("reload requested"));
                    self.reload(None);
                }
            }
            Request::Scale { to } => match control::parse_scale(&to) {
                Ok(request) => {
                    let id = self.remember(reply);
                    self.dispatch(Event::Scale { request, reply: Some(id) });
                }
                Err(e) => {
                    let _ = reply.send(Reply::err(e));
                }
            },
        }
    }

    fn remember(&mut self, reply: oneshot::Sender<Reply>) -> ReplyId {
        self.next_reply += 1;
        self.replies.insert(self.next_reply, reply);
        self.next_reply
    }

    /// Read RSS and CPU of every worker's process group; feed memory figures to the pool.
    fn sample(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        let wanted: Vec<i32> = self.workers.keys().map(|p| p.as_raw()).collect();
        let groups = status::sample_groups(&wanted);
        let now = Instant::now();
        let tck = status::clock_ticks();
        let mut samples = Vec::new();
        for (pid, meta) in self.workers.iter_mut() {
            let Some(usage) = groups.get(&pid.as_raw()) else { continue };
            meta.rss = Some(usage.rss_bytes);
            meta.cpu_ticks = Some(usage.cpu_ticks);
            match meta.cpu_base {
                // CPU % needs some distance between two samples to mean anything.
                Some((then, ticks)) if now.duration_since(then).as_secs_f64() >= 0.5 => {
                    let dt = now.duration_since(then).as_secs_f64();
                    meta.cpu_percent = Some(100.0 * usage.cpu_ticks.saturating_sub(ticks) as f64 / tck / dt);
                    meta.cpu_base = Some((now, usage.cpu_ticks));
                }
                Some(_) => {}
                None => meta.cpu_base = Some((now, usage.cpu_ticks)),
            }
            samples.push((*pid, usage.rss_bytes));
        }
        for (pid, rss) in samples {
            self.dispatch(Event::MemorySample { pid, rss });
        }
    }

    /// The pool as `corral status`, /metrics and /health report it.
    fn snapshot(&self) -> PoolStatus {
        let now = Instant::now();
        let tck = status::clock_ticks();
        let mut workers: Vec<WorkerStatus> = self
            .pool
            .workers()
            .iter()
            .map(|w| {
                let meta = w.pid.and_then(|p| self.workers.get(&p));
                WorkerStatus {
                    slot: w.slot,
                    pid: w.pid.map(Pid::as_raw),
                    generation: w.generation,
                    state: match w.state {
                        WorkerState::Spawning | WorkerState::Starting { .. } => "starting",
                        WorkerState::Ready => "ready",
                        WorkerState::Stopping { .. } => "stopping",
                    }
                    .to_string(),
                    uptime_seconds: now.saturating_duration_since(w.started).as_secs_f64(),
                    restarts: self.pool.slot_info(w.slot).map_or(0, |s| s.restarts),
                    rss_bytes: meta.and_then(|m| m.rss),
                    cpu_percent: meta.and_then(|m| m.cpu_percent),
                    cpu_seconds: meta.and_then(|m| m.cpu_ticks.map(|t| t as f64 / tck)),
                    status: meta.and_then(|m| m.status.clone()),
                    replacing: w.replace.map(|r| r.as_str().to_string()),
                }
            })
            .collect();
        workers.sort_by_key(|w| (w.slot, w.generation));
        let ready = (0..self.pool.desired())
            .filter(|slot| self.pool.workers().iter().any(|w| w.slot == *slot && w.state == WorkerState::Ready))
            .count();
        let (reloads_succeeded, reloads_failed) = self.pool.reload_counts();
        PoolStatus {
            name: self.name.to_string(),
            pid: std::process::id(),
            uptime_seconds: now.duration_since(self.started).as_secs_f64(),
            generation: self.pool.generation(),
            desired: self.pool.desired(),
            ready,
            reloading: self.pool.reloading(),
            last_reload: self.pool.last_reload().map(|r| match r {
                ReloadResult::Succeeded(g) => LastReload { ok: true, generation: Some(*g), error: None },
                ReloadResult::Failed(e) => LastReload { ok: false, generation: None, error: Some(e.clone()) },
            }),
            restarts: self.pool.restarts_total(),
            restarts_by_reason: self
                .pool
                .restarts_by_reason()
                .into_iter()
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
            reloads_succeeded,
            reloads_failed,
            workers,
        }
    }

    /// Feed an event (and every event its actions cause) through the pool.
    fn dispatch(&mut self, event: Event) {
        self.events.push_back(event);
        while let Some(event) = self.events.pop_front() {
            let actions = self.pool.handle(Instant::now(), event);
            for action in actions {
                self.execute(action);
            }
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Spawn { id, slot, generation, config } => {
                let event = match self.spawn_worker(slot, generation, &config) {
                    Ok(pid) => Event::Spawned { id, pid },
                    Err(error) => Event::SpawnFailed { id, error },
                };
                self.events.push_back(event);
            }
            Action::Signal { pid, signal } => {
                // The worker leads its own process group: signal all of it, like systemd's
                // control-group kill mode; fall back to the pid if the group is gone.
                if killpg(pid, signal).is_err() {
                    let _ = nix::sys::signal::kill(pid, signal);
                }
            }
            Action::Notify(fields) => self.notify_systemd(&fields),
            Action::Reply { to, result } => {
                if let Some(tx) = self.replies.remove(&to) {
                    let _ = tx.send(match result {
                        Ok(msg) => Reply::ok(msg),
                        Err(msg) => Reply::err(msg),
                    });
                }
            }
            Action::Exit(code) => {
                tracing::info!("all workers stopped, exiting with {code}");
                self.exit = Some(code);
            }
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

    fn spawn_worker(&mut self, slot: usize, generation: u64, config: &Config) -> Result<Pid, String> {
        let credentials = match &config.user {
            None => None,
            Some(user) => {
                let c = Credentials::lookup(user)?;
                if nix::unistd::geteuid().is_root() {
                    Some(c)
                } else if c.uid == nix::unistd::geteuid().as_raw() {
                    None
                } else {
                    return Err(format!(
                        "user = {user:?} needs corral to run as root (it runs as uid {})",
                        nix::unistd::geteuid()
                    ));
                }
            }
        };
        let env = self.worker_env(slot, generation, config, credentials.as_ref());
        let path = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| OsString::from(v));
        let program = spawn::resolve_program(&config.command[0], path.as_deref())?;
        let fds = self.sockets.fds();
        let mut pid_vars = Vec::new();
        if !fds.is_empty() {
            pid_vars.push("LISTEN_PID");
        }
        if config.watchdog.is_some() {
            pid_vars.push("WATCHDOG_PID");
        }
        let req = SpawnRequest {
            program: &program,
            argv: &config.command,
            env: &env,
            pid_vars: &pid_vars,
            listen_fds: &fds,
            workdir: config.workdir.as_deref(),
            credentials: credentials.as_ref(),
            inherit_output: config.logs.target == LogTarget::Inherit,
        };
        let child = spawn::spawn(&req)?;
        let pid = child.pid;
        self.workers.insert(
            pid,
            WorkerMeta {
                slot,
                generation,
                status: None,
                rss: None,
                cpu_ticks: None,
                cpu_base: None,
                cpu_percent: None,
            },
        );
        let origin = Origin { name: self.name.clone(), slot, pid: pid.as_raw(), generation };
        if let Some(out) = child.stdout {
            self.forward_output(out, Stream::Stdout, origin.clone());
        }
        if let Some(err) = child.stderr {
            self.forward_output(err, Stream::Stderr, origin);
        }
        Ok(pid)
    }

    fn forward_output(&self, fd: OwnedFd, stream: Stream, origin: Origin) {
        tokio::spawn(journal::forward(fd, stream, origin, self.sink.clone()));
    }

    /// The complete environment of a worker: the master's own (minus what is private to it),
    /// the config's `env`, then what corral sets. Later entries win.
    fn worker_env(
        &self,
        slot: usize,
        generation: u64,
        config: &Config,
        creds: Option<&Credentials>,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self.base_env.clone();
        if let (Some(c), Some(user)) = (creds, &config.user) {
            if let Ok(Some(u)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(c.uid)) {
                env.push(("USER".into(), u.name.clone()));
                env.push(("LOGNAME".into(), u.name));
                env.push(("HOME".into(), u.dir.to_string_lossy().into_owned()));
            } else {
                env.push(("USER".into(), user.clone()));
            }
        }
        env.extend(config.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if !self.sockets.sockets.is_empty() {
            env.push(("LISTEN_FDS".into(), self.sockets.sockets.len().to_string()));
            env.push(("LISTEN_FDNAMES".into(), self.sockets.names()));
        }
        env.push(("NOTIFY_SOCKET".into(), self.notify.path().to_string_lossy().into_owned()));
        env.push(("CORRAL_NAME".into(), self.name.to_string()));
        env.push(("CORRAL_WORKER".into(), slot.to_string()));
        env.push(("CORRAL_GENERATION".into(), generation.to_string()));
        if let Some(w) = &config.watchdog {
            env.push(("WATCHDOG_USEC".into(), w.timeout.0.as_micros().to_string()));
        }
        if let Some(var) = &config.instance_var {
            env.push((var.clone(), slot.to_string()));
        }
        // Keep the last value of each name, in first-seen order.
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<(String, String)> = env.into_iter().rev().filter(|(k, _)| seen.insert(k.clone())).collect();
        out.reverse();
        out
    }

    /// Reap every child that has exited: workers become `Exited` events, anything else (a
    /// worker's orphaned child, re-parented to us as subreaper) is just reaped.
    fn reap(&mut self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(meta) = self.workers.remove(&pid) {
                // Whatever the worker left behind in its process group goes with it.
                let _ = killpg(pid, Signal::SIGKILL);
                tracing::debug!(
                    slot = meta.slot,
                    pid = pid.as_raw(),
                    generation = meta.generation,
                    "reaped worker ({status})"
                );
                self.dispatch(Event::Exited { pid, status });
            } else {
                tracing::debug!(pid = pid.as_raw(), "reaped a stray process ({status})");
            }
        }
    }

    fn reload(&mut self, reply: Option<ReplyId>) {
        tracing::info!("reload requested: reading {}", self.config_path.display());
        let config = Config::load(&self.config_path).map(Arc::new).map_err(|e| e.to_string());
        if let Ok(c) = &config {
            if c.listen != self.pool.config().listen && !self.sockets.activated {
                tracing::warn!(
                    "`listen` changed: sockets are kept across reloads; restart the service to listen elsewhere"
                );
            }
        }
        self.dispatch(Event::Reload { config, reply });
    }

    fn on_notify(&mut self, msg: crate::notify::Message) {
        // A worker's own children (e.g. `npm start` → node) may speak for it if they stayed in
        // its process group, like systemd's NotifyAccess=all within the cgroup.
        let pid = if self.workers.contains_key(&msg.pid) {
            msg.pid
        } else {
            match nix::unistd::getpgid(Some(msg.pid)) {
                Ok(pgid) if self.workers.contains_key(&pgid) => pgid,
                _ => {
                    tracing::debug!(
                        pid = msg.pid.as_raw(),
                        "ignoring a notification from a process that is not a worker"
                    );
                    return;
                }
            }
        };
        if let Some(status) = msg.get("STATUS") {
            if let Some(meta) = self.workers.get_mut(&pid) {
                meta.status = Some(status.to_string());
            }
        }
        if msg.get("READY") == Some("1") {
            self.dispatch(Event::Ready { pid });
        }
        if msg.get("WATCHDOG") == Some("1") {
            self.dispatch(Event::WatchdogPing { pid });
        }
    }
}

/// Accept on the metrics listener, or never when there is none.
async fn accept_metrics(listener: Option<&tokio::net::TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Where worker output goes for a `[logs] target`.
fn log_sink(target: LogTarget) -> Sink {
    let journal = Path::new(journal::JOURNAL_SOCKET);
    match target {
        LogTarget::Stderr | LogTarget::Inherit => Sink::Stderr,
        LogTarget::Journal => Sink::journal(journal).unwrap_or_else(|e| {
            tracing::warn!("cannot reach journald at {} ({e}): worker output goes to stderr", journal.display());
            Sink::Stderr
        }),
        LogTarget::Auto if crate::journal::stderr_is_journal() => Sink::journal(journal).unwrap_or(Sink::Stderr),
        LogTarget::Auto => Sink::Stderr,
    }
}
