//! Assembling a driver, by either path: a first start ([`Driver::start`]: inherit or bind the
//! sockets, create the runtime directory and its sockets) or the new image of an upgrade
//! (`Driver::resume` in `upgrade.rs`: adopt them all). Both end in [`Driver::new`], the one
//! place every field of the driver is set.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::driver::readiness::ReadyWatch;
use crate::launch;
use crate::launch::Credentials;
use crate::notify::{NotifyServer, SystemdNotifier};
use crate::output::journal;
use crate::output::journal::Sink;
use crate::pool::Pool;
use crate::rundir::RuntimeDir;
use crate::sockets::ListenSockets;

use super::{Config, ControlServer, Driver, LogTarget, StartError};

/// The endpoints a master owns and `corral upgrade` hands over to its next image: bound (or
/// inherited) at a first start, adopted from descriptors after an upgrade.
pub(super) struct Endpoints {
    /// The listening sockets every worker inherits at fd 3...
    pub sockets: ListenSockets,
    /// The workers' `NOTIFY_SOCKET`.
    pub notify: NotifyServer,
    /// `corral status`/`reload`/`scale` come in here.
    pub control: ControlServer,
    /// `/metrics` and `/health`, when configured, with its connection limit.
    pub metrics: Option<(tokio::net::TcpListener, crate::gate::Gate)>,
    /// The runtime directory, held for its lock.
    pub runtime: RuntimeDir,
}

/// What a driver starts from, by either path: [`Driver::start`] (a first start) or
/// [`Driver::resume`] (the new image of an upgrade). [`Driver::new`] is the one place a driver
/// is assembled.
pub(super) struct Beginning {
    pub pool: Pool,
    pub config_path: PathBuf,
    pub name: Arc<str>,
    pub endpoints: Endpoints,
    pub sink: Sink,
    /// The master's own channel to systemd.
    pub systemd: SystemdNotifier,
    /// The path the master was started from (what an upgrade executes).
    pub exe: PathBuf,
    /// When the master started, for its uptime (an upgrade keeps the first image's).
    pub started: Instant,
    /// Upgrades so far, this one included.
    pub upgrades: u64,
    /// After an upgrade: the version taken over from.
    pub resumed: Option<String>,
    /// The watcher handed over by an upgrade (a first start, or an upgrade from a version that
    /// had none, starts one).
    pub watcher: Option<crate::leftovers::Watcher>,
}

impl Driver {
    /// Assemble a driver: the only place every field is set.
    pub(super) fn new(b: Beginning) -> Driver {
        let base = crate::os::priority::own_nice();
        let gentle = crate::launch::can_restore_priority(base);
        if !gentle && b.pool.config().reload.start_nice.0 > 0 {
            tracing::warn!(
                "reload.start_nice is not used: this master could not raise a worker's priority back to {base} \
                 (it has no CAP_SYS_NICE, and RLIMIT_NICE does not reach {base}); give the unit LimitNICE=+0"
            );
        }
        let priority = super::Priority { base, gentle };
        let Endpoints { sockets, notify, control, metrics, runtime } = b.endpoints;
        let listen_inodes =
            sockets.fds().iter().filter_map(|fd| nix::sys::stat::fstat(fd).ok()).map(|st| st.st_ino).collect();
        let record = crate::leftovers::Record::create(
            crate::leftovers::record_path(&runtime.path, std::process::id()),
            Default::default(),
        );
        let watcher = b.watcher.or_else(|| start_watcher(&b.exe, &runtime.path));
        Driver {
            pool: b.pool,
            config_path: b.config_path,
            name: b.name,
            sockets,
            notify,
            systemd: b.systemd,
            runtime,
            workers: HashMap::new(),
            base_env: base_env(),
            sink: Arc::new(b.sink),
            exit: None,
            events: VecDeque::new(),
            control,
            credentials_for: None,
            metrics,
            replies: HashMap::new(),
            next_reply: 0,
            started: b.started,
            strays: None,
            exe: b.exe,
            upgrades: b.upgrades,
            pending_upgrade: None,
            resumed: b.resumed,
            listen_inodes,
            last_cpu_sample: None,
            sampler: crate::sampler::GroupSampler::default(),
            ready_watch: ReadyWatch::new(),
            priority,
            // Apart from the names an earlier image of this master gave (`corral upgrade`).
            metrics_seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() << 16),
            metrics_said: Default::default(),
            own_descriptors: None,
            record,
            watcher,
        }
    }
}

/// Start the watcher of this master's death ([`crate::leftovers`]), unless something else ends
/// the workers when the master dies: the unit's cgroup under systemd (`INVOCATION_ID`), or the
/// PID namespace when the master is its init.
pub(super) fn start_watcher(exe: &Path, runtime: &Path) -> Option<crate::leftovers::Watcher> {
    if std::process::id() == 1 || std::env::var_os("INVOCATION_ID").is_some_and(|v| !v.is_empty()) {
        return None;
    }
    match crate::leftovers::Watcher::start(exe, &crate::leftovers::record_path(runtime, std::process::id())) {
        Ok(w) => {
            tracing::debug!(pid = w.pid.as_raw(), "watching for this master's death");
            Some(w)
        }
        Err(e) => {
            tracing::warn!(
                "cannot start the watcher of this master ({e}): if the master is killed, what its workers started \
                 keeps running until the pool's next start"
            );
            None
        }
    }
}

/// The master's environment minus what belongs to it alone: every worker's starting point.
pub(super) fn base_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        // What systemd set for the master alone: corral sets its own for each worker.
        .filter(|(k, _)| !crate::config::RESERVED_ENV.contains(&k.as_str()) && k != "JOURNAL_STREAM")
        .collect()
}

impl Driver {
    pub(super) fn start(config_path: &Path, config: Arc<Config>) -> Result<Driver, StartError> {
        // Orphaned grandchildren of workers are re-parented to us and reaped; and we behave as
        // an init when run as PID 1 in a container.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!("cannot become a child subreaper: {e}");
        }
        launch::raise_nofile_limit();
        // A user that does not exist stops the start here; who goes through the runtime directory
        // to the notify socket is set before the first worker starts (`Driver::apply_access`).
        if let Some(user) = config.user.as_ref().filter(|_| nix::unistd::geteuid().is_root()) {
            Credentials::lookup(user).map_err(StartError::User)?;
        }
        let runtime = RuntimeDir::create(&config.name).map_err(StartError::RuntimeDir)?;
        // What a previous master of this pool left running when it was killed (the lock is ours, so
        // it is gone) is stopped before the sockets are bound: it may hold the port.
        crate::leftovers::stop_previous(&runtime.path);
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
        // Metrics sockets of a previous master's workers (they are gone: the lock is ours).
        let _ = std::fs::remove_dir_all(runtime.path.join(crate::rundir::WORKER_METRICS_DIR));
        let notify_path = runtime.path.join(crate::rundir::NOTIFY_SOCKET);
        let notify = NotifyServer::bind(&notify_path, 0o600).map_err(|source| StartError::Bind {
            what: "notify",
            path: notify_path.clone(),
            source,
        })?;
        let control_path = runtime.path.join(crate::rundir::CONTROL_SOCKET);
        let control = ControlServer::bind(&control_path).map_err(|source| StartError::Bind {
            what: "control",
            path: control_path.clone(),
            source,
        })?;
        let metrics = match &config.metrics {
            None => None,
            Some(m) => {
                let l = std::net::TcpListener::bind(m.listen)
                    .and_then(|l| l.set_nonblocking(true).map(|_| l))
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|source| StartError::Metrics { addr: m.listen, source })?;
                tracing::info!("metrics on http://{}/metrics and /health", m.listen);
                Some((l, crate::gate::Gate::new("metrics listener")))
            }
        };
        // Read now: once a package replaces the file, /proc/self/exe names a deleted one.
        let exe = std::env::current_exe().map_err(StartError::OwnBinary)?;
        for s in &sockets.sockets {
            tracing::info!(
                "listening on {} ({})",
                s.address,
                if sockets.activated { "from systemd" } else { "bound by corral" }
            );
        }
        tracing::info!("pool {}: {} workers of `{}`", config.name, config.instances, config.command.join(" "));
        if let Some(w) = config.wrapper_warning() {
            tracing::warn!("{w}");
        }
        Ok(Driver::new(Beginning {
            name: Arc::from(config.name.as_str()),
            sink: log_sink(config.logs.target, config.logs.format),
            pool: Pool::new(config),
            config_path: config_path.to_owned(),
            endpoints: Endpoints { sockets, notify, control, metrics, runtime },
            systemd,
            exe,
            started: Instant::now(),
            upgrades: 0,
            resumed: None,
            watcher: None,
        }))
    }
}

/// Where worker output goes for a `[logs] target`.
pub(super) fn log_sink(target: LogTarget, format: crate::config::LogFormat) -> Sink {
    let text = if format == crate::config::LogFormat::Json { Sink::Json } else { Sink::Stderr };
    if !crate::logging::uses_journal(target) {
        return text;
    }
    let journal = Path::new(journal::JOURNAL_SOCKET);
    Sink::journal(journal).unwrap_or_else(|e| {
        if target == LogTarget::Journal {
            tracing::warn!("cannot reach journald at {} ({e}): worker output goes to stderr", journal.display());
        }
        Sink::Stderr
    })
}
