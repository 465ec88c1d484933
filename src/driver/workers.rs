//! Starting one worker: its credentials, program, environment and sockets, then fork/exec
//! (`crate::spawn`) and the tasks that forward its output.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use nix::unistd::Pid;

use crate::config::ReadyMode;
use crate::launch::{Credentials, SpawnError, SpawnRequest};
use crate::os::spawn;
use crate::output::journal;
use crate::output::journal::{Origin, Stream};

use super::{Config, Driver, LogTarget};

impl Driver {
    pub(super) fn spawn_worker(
        &mut self,
        slot: usize,
        generation: u64,
        config: &Config,
        nice: u8,
    ) -> Result<Pid, SpawnError> {
        let credentials = match &config.user {
            None => None,
            Some(user) => {
                let c = Credentials::lookup(user)?;
                if nix::unistd::geteuid().is_root() {
                    Some(c)
                } else if c.uid == nix::unistd::geteuid().as_raw() {
                    None
                } else {
                    return Err(SpawnError::NeedsRoot { user: user.clone(), uid: nix::unistd::geteuid().as_raw() });
                }
            }
        };
        let credentials_dir = match &credentials {
            Some(c) => {
                // systemd may have reset the directory's mode since (it does at ExecReload=):
                // one fstat when nothing changed.
                if let Err(e) = self.runtime.reapply_access() {
                    tracing::warn!("{e}: the worker may not reach its notify socket");
                }
                self.worker_credentials(c)?
            }
            None => None,
        };
        let mut env = self.worker_env(slot, generation, config, credentials.as_ref());
        if let Some(dir) = credentials_dir {
            env.retain(|(k, _)| k != "CREDENTIALS_DIRECTORY");
            env.push(("CREDENTIALS_DIRECTORY".into(), dir.to_string_lossy().into_owned()));
        }
        if config.ready.mode == ReadyMode::Ipc {
            env.push(("NODE_CHANNEL_FD".into(), (3 + self.sockets.sockets.len()).to_string()));
            env.push(("NODE_CHANNEL_SERIALIZATION_MODE".into(), "json".into()));
        }
        let metrics_socket = self.worker_metrics_socket(slot, config, credentials.as_ref());
        if let Some(socket) = &metrics_socket {
            env.push(("CORRAL_METRICS_SOCKET".into(), socket.to_string_lossy().into_owned()));
        }
        let path = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| OsString::from(v));
        let program = crate::launch::resolve_program(&config.command[0], path.as_deref())?;
        // "ipc": Node's channel goes after the listening sockets.
        let ipc = match config.ready.mode {
            ReadyMode::Ipc => Some(crate::readiness::ipc::channel().map_err(|e| SpawnError::Resources {
                what: "create the worker's IPC channel".into(),
                error: e.to_string(),
            })?),
            _ => None,
        };
        let mut fds = self.sockets.fds();
        if let Some((_, theirs)) = &ipc {
            fds.push(theirs.as_fd());
        }
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
            fds: &fds,
            workdir: config.workdir.as_deref(),
            credentials: credentials.as_ref(),
            inherit_output: config.logs.target == LogTarget::Inherit,
            nice: (nice > 0 && self.priority.gentle).then(|| (self.priority.base + i32::from(nice)).min(19)),
        };
        let child = spawn::spawn(&req)?;
        let mut meta = WorkerMeta::new();
        meta.metrics_socket = metrics_socket;
        // A process just spawned has used no CPU: the first CPU % shown is the average since.
        meta.cpu_base = Some((Instant::now(), 0));
        let pipes = WorkerPipes { stdout: child.stdout, stderr: child.stderr, ipc: ipc.map(|(ours, _theirs)| ours) };
        // Its last lines are kept for the early-exit hint while it may still exit early.
        let tail_until = Instant::now() + crate::pool::EARLY_EXIT;
        self.take_charge(child.pid, (slot, generation), meta, pipes, config.ready.mode, tail_until);
        Ok(child.pid)
    }

    /// For a worker that runs as another user than this (root) master: systemd's credentials
    /// of the unit, copied where that user may read them ([`crate::credentials`]), once per
    /// user. None when systemd gave the unit none.
    fn worker_credentials(&mut self, c: &Credentials) -> Result<Option<std::path::PathBuf>, SpawnError> {
        let Some(from) = self.base_env.iter().find(|(k, _)| k == "CREDENTIALS_DIRECTORY").map(|(_, v)| v.clone())
        else {
            return Ok(None);
        };
        let dir = self.runtime.path.join(crate::credentials::DIR);
        if self.credentials_for == Some(c.uid) {
            return Ok(Some(dir));
        }
        crate::credentials::copy_for(std::path::Path::new(&from), &self.runtime.path, c.uid, c.gid).map_err(
            |error| SpawnError::Resources {
                what: format!("give the pool's systemd credentials to user {}", c.name),
                error,
            },
        )?;
        tracing::info!("systemd credentials of the unit copied to {} for user {}", dir.display(), c.name);
        self.credentials_for = Some(c.uid);
        Ok(Some(dir))
    }

    /// Take charge of a worker process, new or taken over by an upgrade: forward its output
    /// pipes to the journal (keeping duplicates for a later upgrade), keep its IPC channel, and
    /// watch it for the readiness signal of `mode`.
    pub(super) fn take_charge(
        &mut self,
        pid: Pid,
        (slot, generation): (usize, u64),
        mut meta: WorkerMeta,
        pipes: WorkerPipes,
        mode: crate::config::ReadyMode,
        tail_until: Instant,
    ) {
        let origin = Origin {
            name: self.name.clone(),
            slot,
            pid: pid.as_raw(),
            generation,
            tail: meta.tail.clone(),
            tail_until,
        };
        if let Some(out) = pipes.stdout {
            meta.stdout = self.forward_kept(out, Stream::Stdout, origin.clone());
        }
        if let Some(err) = pipes.stderr {
            meta.stderr = self.forward_kept(err, Stream::Stderr, origin);
        }
        meta.ipc = pipes.ipc.as_ref().and_then(|fd| fd.try_clone().ok());
        self.workers.insert(pid, meta);
        self.record.started(pid.as_raw());
        self.watch_ready(pid, mode, pipes.ipc);
    }

    /// With `[metrics] workers`: the path of a new worker's metrics socket, in the runtime
    /// directory's `metrics/` (which its user owns), with nothing left there by another.
    /// Without one (the folder cannot be made), the worker starts without the variable.
    fn worker_metrics_socket(
        &mut self,
        slot: usize,
        config: &Config,
        creds: Option<&Credentials>,
    ) -> Option<std::path::PathBuf> {
        if !config.metrics.as_ref().is_some_and(|m| m.workers) {
            return None;
        }
        let dir = match self.runtime.worker_metrics_dir(creds.map(|c| (c.uid, c.gid))) {
            Ok(dir) => dir,
            Err(e) => {
                tracing::warn!(slot, "worker metrics: {e}; this worker gets no CORRAL_METRICS_SOCKET");
                return None;
            }
        };
        self.metrics_seq += 1;
        let socket = dir.join(format!("{slot}-{:x}.sock", self.metrics_seq));
        let _ = std::fs::remove_file(&socket);
        Some(socket)
    }

    /// Forward a worker's output pipe; returns a duplicate of it for `corral upgrade` to hand
    /// over (none if it cannot be duplicated: then that pipe is not handed over).
    pub(super) fn forward_kept(&self, fd: OwnedFd, stream: Stream, origin: Origin) -> Option<OwnedFd> {
        let kept = fd.try_clone();
        if let Err(e) = &kept {
            tracing::warn!(slot = origin.slot, pid = origin.pid, "cannot duplicate an output pipe: {e}");
        }
        tokio::spawn(journal::forward(fd, stream, origin, self.sink.clone()));
        kept.ok()
    }

    /// The complete environment of a worker: the master's own (minus what is private to it),
    /// the config's `env`, then what corral sets. Later entries win.
    pub(super) fn worker_env(
        &self,
        slot: usize,
        generation: u64,
        config: &Config,
        creds: Option<&Credentials>,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self.base_env.clone();
        if let Some(c) = creds {
            env.push(("USER".into(), c.name.clone()));
            env.push(("LOGNAME".into(), c.name.clone()));
            env.push(("HOME".into(), c.home.to_string_lossy().into_owned()));
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
}

/// The master's ends of a worker's pipes: output (none when inherited) and the Node IPC channel.
pub(super) struct WorkerPipes {
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub ipc: Option<OwnedFd>,
}

/// What the driver knows about a live worker process.
#[derive(Debug)]
pub(super) struct WorkerMeta {
    /// Duplicates of the read ends of its stdout and stderr, kept for `corral upgrade` to hand
    /// over (the forwarding tasks own the originals).
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
    /// A duplicate of the master's end of its Node IPC channel ("ipc" mode), for the same.
    pub(super) ipc: Option<OwnedFd>,
    /// The worker's own `STATUS=`.
    pub(super) status: Option<String>,
    /// Last /proc sample: RSS bytes and CPU ticks of the process group.
    pub(super) rss: Option<u64>,
    pub(super) cpu_ticks: Option<u64>,
    /// Where the current CPU % is measured from, and that percentage.
    pub(super) cpu_base: Option<(Instant, u64)>,
    pub(super) cpu_percent: Option<f64>,
    /// The processes of its process group at the last sample.
    pub(super) group: Vec<i32>,
    /// Its last lines of output (for the hint when it exits right after starting).
    pub(super) tail: journal::Tail,
    /// Where it may serve its own metrics (`CORRAL_METRICS_SOCKET`).
    pub(super) metrics_socket: Option<std::path::PathBuf>,
}

impl WorkerMeta {
    pub(super) fn new() -> WorkerMeta {
        WorkerMeta {
            stdout: None,
            stderr: None,
            ipc: None,
            status: None,
            rss: None,
            cpu_ticks: None,
            cpu_base: None,
            cpu_percent: None,
            group: Vec::new(),
            tail: journal::Tail::default(),
            metrics_socket: None,
        }
    }
}
