//! `corral upgrade` in the driver: hand everything over to the binary now at the master's path
//! (see [`crate::handover`] for the steps), and, in the new image, take it all over again.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::handover::{self, PathFd, SocketFd, UpgradeError, UpgradeState, WorkerFds};
use crate::notify::{NotifyServer, SystemdNotifier};
use crate::pool::{Notify, Pool};
use crate::rundir::RuntimeDir;
use crate::sockets::ListenSockets;

use super::{log_sink, Beginning, ControlServer, Driver, Endpoints, Reply, StartError, WorkerMeta, HANDLED_SIGNALS};

/// How long the new binary may take to say whether it can take over.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// An upgrade whose new binary has passed its check: the exec happens on the loop's next turn,
/// once the reply to `corral upgrade` is on its way.
pub(super) struct PendingUpgrade {
    state: OwnedFd,
    fds: Vec<RawFd>,
    to_version: String,
}

/// The signals the loop handles ([`HANDLED_SIGNALS`]) as a set. Blocked across the exec, they
/// stay pending and reach the new image once it handles them: none is lost, and none kills the
/// master in between.
pub(super) fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in HANDLED_SIGNALS {
        set.add(sig);
    }
    set
}

impl Driver {
    /// `corral upgrade` (with `reply`) or SIGUSR2: check the new binary, then exec it.
    pub(super) fn begin_upgrade(&mut self, reply: Option<oneshot::Sender<Reply>>) {
        match self.prepare_upgrade() {
            Ok(pending) => {
                let msg = format!("corral {} checked the state; it takes over now", pending.to_version);
                tracing::info!("upgrade: {msg}");
                if let Some(tx) = reply {
                    let _ = tx.send(Reply::ok(msg));
                }
                self.pending_upgrade = Some(pending);
            }
            Err(e) => {
                tracing::error!("upgrade refused, carrying on unchanged: {e}");
                if let Some(tx) = reply {
                    let _ = tx.send(Reply::err(format!("upgrade refused: {e}")));
                }
            }
        }
    }

    fn prepare_upgrade(&mut self) -> Result<PendingUpgrade, UpgradeError> {
        if self.pending_upgrade.is_some() {
            return Err(UpgradeError::UnderWay);
        }
        if self.strays.is_some() {
            return Err(crate::pool::Refusal::Stopping.into());
        }
        let now = Instant::now();
        let pool = self.pool.snapshot(now)?;
        let mut workers = Vec::new();
        for w in self.pool.workers() {
            let Some(pid) = w.pid else { continue };
            let meta = self.workers.get(&pid);
            workers.push(WorkerFds {
                pid: pid.as_raw(),
                slot: w.slot,
                generation: w.generation,
                stdout: meta.and_then(|m| m.stdout.as_ref()).map(|f| f.as_raw_fd()),
                stderr: meta.and_then(|m| m.stderr.as_ref()).map(|f| f.as_raw_fd()),
                ipc: meta.and_then(|m| m.ipc.as_ref()).map(|f| f.as_raw_fd()),
                status: meta.and_then(|m| m.status.clone()),
                metrics_socket: meta.and_then(|m| m.metrics_socket.clone()),
            });
        }
        let state = UpgradeState {
            format: handover::FORMAT,
            from_version: crate::VERSION.to_string(),
            exe: self.exe.clone(),
            config_path: self.config_path.clone(),
            name: self.name.to_string(),
            log_target: self.pool.config().logs.target,
            log_format: self.pool.config().logs.format,
            upgrades: self.upgrades,
            started_ago: u64::try_from(now.duration_since(self.started).as_nanos()).unwrap_or(u64::MAX),
            nofile: crate::launch::original_nofile(),
            sockets: self
                .sockets
                .sockets
                .iter()
                .map(|s| SocketFd { fd: s.fd.as_raw_fd(), name: s.name.clone(), address: s.address.clone() })
                .collect(),
            activated: self.sockets.activated,
            notify: PathFd { fd: self.notify.raw_fd(), path: self.notify.path().to_owned() },
            control: PathFd { fd: self.control.raw_fd(), path: self.control.path().to_owned() },
            metrics: self.metrics.as_ref().map(|(l, _)| l.as_raw_fd()),
            runtime: PathFd { fd: self.runtime.lock_fd(), path: self.runtime.path.clone() },
            workers,
            pool,
            watcher: self.watcher.as_ref().map(|w| handover::WatcherFd { pid: w.pid.as_raw(), fd: w.fd() }),
        };
        let fds = state.fds();
        let fd = handover::write_state(&state)?;
        let to_version = self.check_new_binary(&fd)?;
        Ok(PendingUpgrade { state: fd, fds, to_version })
    }

    /// Run `EXE upgrade-check --state-fd N`: the new binary reads the state and every config
    /// it would take over. Its own error message is the refusal's reason.
    fn check_new_binary(&self, state: &OwnedFd) -> Result<String, UpgradeError> {
        let exe = || self.exe.clone();
        handover::set_inherit(state, true)
            .map_err(|e| UpgradeError::State { what: "cannot hand over the state".into(), error: e.to_string() })?;
        let child = std::process::Command::new(&self.exe)
            .args(["upgrade-check", "--state-fd", &state.as_raw_fd().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let _ = handover::set_inherit(state, false);
        let mut child = child.map_err(|e| UpgradeError::NotRunnable { exe: exe(), error: e.to_string() })?;
        // Waited for here, on the loop: the check takes milliseconds, and notifications and
        // requests that arrive meanwhile wait in their sockets.
        let deadline = Instant::now() + CHECK_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(UpgradeError::NoAnswer { exe: exe(), secs: CHECK_TIMEOUT.as_secs() });
                }
                Err(e) => {
                    return Err(UpgradeError::NotRunnable { exe: exe(), error: format!("cannot wait for it: {e}") })
                }
            }
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut out);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        if status.success() && !out.trim().is_empty() {
            Ok(out.trim().to_string())
        } else {
            let why = err.trim();
            let why = if why.is_empty() { format!("it exited with {status}") } else { why.to_string() };
            Err(UpgradeError::Refused { exe: exe(), why })
        }
    }

    /// Exec the new binary. Returns only if `execve` failed, with everything as it was.
    pub(super) fn exec_upgrade(&mut self, pending: PendingUpgrade) {
        let to = &pending.to_version;
        self.notify_systemd(&[
            Notify::Reloading,
            Notify::Status(format!("upgrading: corral {} → {to}", crate::VERSION)),
        ]);
        let config = self.config_path.to_string_lossy().into_owned();
        let state_fd = pending.state.as_raw_fd().to_string();
        let cstr = |s: &[u8]| std::ffi::CString::new(s).ok();
        let argv: Option<Vec<_>> = [
            self.exe.as_os_str().as_encoded_bytes(),
            b"run",
            b"-c",
            config.as_bytes(),
            b"--state-fd",
            state_fd.as_bytes(),
        ]
        .into_iter()
        .map(cstr)
        .collect();
        let env: Vec<_> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut kv = k.into_encoded_bytes();
                kv.push(b'=');
                kv.extend(v.into_encoded_bytes());
                cstr(&kv)
            })
            .collect();
        let Some(argv) = argv else {
            tracing::error!("upgrade: the config path contains a NUL byte");
            return;
        };
        let mut keep = pending.fds.clone();
        keep.push(pending.state.as_raw_fd());
        let signals = handled_signals();
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None);
        for fd in &keep {
            if let Some(b) = crate::os::fds::borrow_open(*fd) {
                let _ = handover::set_inherit(b, true);
            }
        }
        tracing::info!("upgrade: executing {} (corral {to}), pid {}", self.exe.display(), std::process::id());
        crate::output::stderr::flush_before_exit(Duration::from_millis(200));
        let error = match nix::unistd::execve(&argv[0], &argv, &env) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        // Still here: nothing changed but the flags; undo them and carry on.
        for fd in &keep {
            if let Some(b) = crate::os::fds::borrow_open(*fd) {
                let _ = handover::set_inherit(b, false);
            }
        }
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&signals), None);
        tracing::error!(
            "upgrade failed, carrying on as corral {}: cannot execute {}: {error}",
            crate::VERSION,
            self.exe.display()
        );
        let status = self.pool.status_line();
        self.notify_systemd(&[Notify::Ready, Notify::Status(status)]);
    }

    /// The new image: take over the state the old one handed over at `fd`.
    pub(super) fn resume(state_fd: RawFd) -> Result<Driver, StartError> {
        let fail = StartError::Resume;
        let state = handover::read_state(handover::borrow(state_fd).map_err(fail)?).map_err(fail)?;
        let adopt = |fd: RawFd| {
            crate::os::fds::adopt(fd).map_err(|e| {
                StartError::Resume(UpgradeError::State { what: format!("descriptor {fd}"), error: e.to_string() })
            })
        };
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!("cannot become a child subreaper: {e}");
        }
        if let Some((soft, hard)) = state.nofile {
            crate::launch::set_original_nofile(soft, hard);
        }
        let now = Instant::now();
        let pool = Pool::restore(state.pool, now, crate::config::usable_cpus()).map_err(|e| fail(e.into()))?;
        let mut sockets = Vec::new();
        for s in state.sockets {
            sockets.push(crate::sockets::ListenSocket { fd: adopt(s.fd)?, name: s.name, address: s.address });
        }
        let notify = NotifyServer::from_fd(adopt(state.notify.fd)?, &state.notify.path)
            .map_err(|e| fail(UpgradeError::State { what: "notify socket".into(), error: e.to_string() }))?;
        let control = ControlServer::from_fd(adopt(state.control.fd)?, &state.control.path)
            .map_err(|e| fail(UpgradeError::State { what: "control socket".into(), error: e.to_string() }))?;
        let metrics = match state.metrics {
            None => None,
            Some(fd) => {
                let l = std::net::TcpListener::from(adopt(fd)?);
                let l = l
                    .set_nonblocking(true)
                    .and_then(|_| tokio::net::TcpListener::from_std(l))
                    .map_err(|e| fail(UpgradeError::State { what: "metrics listener".into(), error: e.to_string() }))?;
                Some((l, crate::gate::Gate::new("metrics listener")))
            }
        };
        let runtime =
            RuntimeDir::adopt(state.runtime.path, adopt(state.runtime.fd)?).map_err(StartError::RuntimeDir)?;
        let mut driver = Driver::new(Beginning {
            pool,
            config_path: state.config_path,
            name: Arc::from(state.name.as_str()),
            endpoints: Endpoints {
                sockets: ListenSockets { sockets, activated: state.activated },
                notify,
                control,
                metrics,
                runtime,
            },
            sink: log_sink(state.log_target, state.log_format),
            systemd: SystemdNotifier::from_env(),
            exe: state.exe,
            started: now.checked_sub(Duration::from_nanos(state.started_ago)).unwrap_or(now),
            upgrades: state.upgrades + 1,
            resumed: Some(state.from_version),
            watcher: match state.watcher {
                Some(w) => Some(crate::leftovers::Watcher::adopt(w.pid, adopt(w.fd)?)),
                None => None,
            },
        });
        for w in state.workers {
            let pid = Pid::from_raw(w.pid);
            let mut meta = WorkerMeta::new();
            meta.status = w.status;
            meta.metrics_socket = w.metrics_socket;
            let pipes = super::workers::WorkerPipes {
                stdout: w.stdout.map(adopt).transpose()?,
                stderr: w.stderr.map(adopt).transpose()?,
                ipc: w.ipc.map(adopt).transpose()?,
            };
            // A worker still starting is watched again for the signal its mode waits for (its
            // channel is read again in any case: a ready worker may keep writing to it).
            let mode = driver
                .pool
                .workers()
                .iter()
                .find(|x| x.pid == Some(pid) && x.is_starting())
                .map(|x| driver.pool.config_of(x.generation).ready.mode);
            // A worker taken over has long outlived the early-exit hint: no tail.
            driver.take_charge(
                pid,
                (w.slot, w.generation),
                meta,
                pipes,
                mode.unwrap_or(crate::config::ReadyMode::Notify),
                now,
            );
        }
        drop(crate::os::fds::adopt(state_fd));
        Ok(driver)
    }
}
