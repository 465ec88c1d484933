//! `corral upgrade`: the master replaces its own binary in place, as nginx's binary upgrade and
//! systemd's `daemon-reexec` do, but keeping its pid (systemd's `MAINPID`) and every worker.
//!
//! 1. The old image writes an [`UpgradeState`] (versioned JSON: the pool's snapshot, and the
//!    descriptor number and role of everything that must survive: listening sockets, the
//!    workers' notify socket, the control socket, the metrics listener, the runtime directory's
//!    lock, each worker's output pipes) into a memfd.
//! 2. It runs the binary now at its own path as `corral upgrade-check --state-fd N`: the new
//!    binary reads the state and re-validates every config it would take over. Only if that
//!    succeeds does anything irreversible happen; otherwise the upgrade is refused with the
//!    new binary's own words and the pool carries on untouched.
//! 3. It clears close-on-exec on exactly the descriptors in the state, blocks the signals it
//!    handles (they stay pending across `execve`), and `execve`s `corral run -c CONFIG
//!    --state-fd N`.
//! 4. The new image ([`crate::driver::resume`]) adopts the descriptors, restores the pool,
//!    reaps any worker that exited meanwhile, unblocks the signals, and carries on.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::pool::PoolState;

/// The state format this binary writes; it reads this one and every older one.
pub const FORMAT: u32 = 1;

/// Everything a new image needs to take over from the old one.
#[derive(Debug, Serialize, Deserialize)]
pub struct UpgradeState {
    /// [`FORMAT`] of the binary that wrote it.
    pub format: u32,
    /// The version that wrote it.
    pub from_version: String,
    /// The path the master was started from (and execs).
    pub exe: PathBuf,
    pub config_path: PathBuf,
    pub name: String,
    /// Where the master's own logs go (`[logs] target`), for the new image's first lines.
    pub log_target: crate::config::LogTarget,
    #[serde(default)]
    pub log_format: crate::config::LogFormat,
    /// Upgrades so far (shown by `corral status`, counted by `corral upgrade`).
    pub upgrades: u64,
    /// How long ago the master started, in nanoseconds.
    pub started_ago: u64,
    /// `RLIMIT_NOFILE` (soft, hard) as the first image was started: what workers get.
    pub nofile: Option<(u64, u64)>,
    pub sockets: Vec<SocketFd>,
    pub activated: bool,
    pub notify: PathFd,
    pub control: PathFd,
    pub metrics: Option<RawFd>,
    pub runtime: PathFd,
    pub workers: Vec<WorkerFds>,
    pub pool: PoolState,
    /// The watcher of the master's death ([`crate::leftovers`]): its pid and the pipe's write
    /// end. Absent from a state written by 0.2.0 and earlier: the new image starts one.
    #[serde(default)]
    pub watcher: Option<WatcherFd>,
}

/// The master's end of its watcher, handed over.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct WatcherFd {
    pub pid: i32,
    pub fd: RawFd,
}

/// A listening socket handed over.
#[derive(Debug, Serialize, Deserialize)]
pub struct SocketFd {
    pub fd: RawFd,
    pub name: String,
    pub address: String,
}

/// A descriptor with the path it belongs to (a bound socket, the runtime directory's lock).
#[derive(Debug, Serialize, Deserialize)]
pub struct PathFd {
    pub fd: RawFd,
    pub path: PathBuf,
}

/// A worker's output pipes and what the driver knew of it.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerFds {
    pub pid: i32,
    pub slot: usize,
    pub generation: u64,
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
    /// The master's end of its Node IPC channel ("ipc" mode).
    #[serde(default)]
    pub ipc: Option<RawFd>,
    pub status: Option<String>,
    /// Where it may serve its own metrics (`[metrics] workers`).
    #[serde(default)]
    pub metrics_socket: Option<PathBuf>,
}

impl UpgradeState {
    /// Every descriptor the new image must find open.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.sockets.iter().map(|s| s.fd).collect();
        fds.extend([self.notify.fd, self.control.fd, self.runtime.fd]);
        fds.extend(self.metrics);
        fds.extend(self.watcher.map(|w| w.fd));
        for w in &self.workers {
            fds.extend(w.stdout.into_iter().chain(w.stderr).chain(w.ipc));
        }
        fds
    }
}

/// Why `corral upgrade` is refused (the pool carries on unchanged), or why the new image
/// cannot take over.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("an upgrade is already under way")]
    UnderWay,
    /// Not now: the pool is stopping, reloading, or starting a worker.
    #[error(transparent)]
    Pool(#[from] crate::pool::Refusal),
    /// The state file or a descriptor could not be made, handed over or read.
    #[error("{what}: {error}")]
    State { what: String, error: String },
    /// The state was written by a newer corral.
    #[error(
        "the state of corral {from} has format {format}, newer than this binary ({version}, format {FORMAT}) \
         understands"
    )]
    NewerFormat { from: String, format: u32, version: &'static str },
    /// The state does not describe a pool this binary can run.
    #[error(transparent)]
    Invalid(#[from] crate::pool::InvalidState),
    /// The binary now at the master's path could not be started.
    #[error("cannot run the new binary {exe}: {error}")]
    NotRunnable { exe: PathBuf, error: String },
    #[error("the new binary {exe} did not answer within {secs}s")]
    NoAnswer { exe: PathBuf, secs: u64 },
    /// The new binary checked the state and said no, in its own words.
    #[error("the new binary {exe} cannot take over: {why}")]
    Refused { exe: PathBuf, why: String },
}

impl UpgradeError {
    fn state(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpgradeError {
        let what = what.into();
        move |e| UpgradeError::State { what, error: e.to_string() }
    }
}

/// Write `state` into a fresh memfd (close-on-exec until the moment it is handed over).
pub fn write_state(state: &UpgradeState) -> Result<OwnedFd, UpgradeError> {
    let fd = nix::sys::memfd::memfd_create("corral-upgrade-state", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| UpgradeError::State { what: "cannot create the state file".into(), error: e.desc().into() })?;
    let mut file = std::fs::File::from(fd);
    let json = serde_json::to_vec(state)
        .map_err(|e| UpgradeError::State { what: "cannot encode the state".into(), error: e.to_string() })?;
    file.write_all(&json).map_err(UpgradeError::state("cannot write the state"))?;
    Ok(OwnedFd::from(file))
}

/// Read the state handed over at `fd` (from its start, whoever read it before).
pub fn read_state(fd: BorrowedFd<'_>) -> Result<UpgradeState, UpgradeError> {
    let owned = fd.try_clone_to_owned().map_err(UpgradeError::state("state fd"))?;
    let mut file = std::fs::File::from(owned);
    file.seek(SeekFrom::Start(0)).map_err(UpgradeError::state("cannot read the state"))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(UpgradeError::state("cannot read the state"))?;
    #[derive(Deserialize)]
    struct Format {
        format: u32,
        from_version: String,
    }
    let head: Format = serde_json::from_slice(&text)
        .map_err(|e| UpgradeError::State { what: "the state is not readable".into(), error: e.to_string() })?;
    if head.format > FORMAT {
        return Err(UpgradeError::NewerFormat {
            from: head.from_version,
            format: head.format,
            version: crate::VERSION,
        });
    }
    serde_json::from_slice(&text).map_err(|e| UpgradeError::State {
        what: format!("the state of corral {} is not readable", head.from_version),
        error: e.to_string(),
    })
}

/// `corral upgrade-check --state-fd N`, run by the old image with the new binary: can this
/// binary take over? Prints its version when it can.
pub fn check(fd: RawFd) -> Result<String, UpgradeError> {
    let borrowed = borrow(fd)?;
    let state = read_state(borrowed)?;
    crate::pool::Pool::restore(state.pool, std::time::Instant::now(), crate::config::usable_cpus())?;
    Ok(crate::VERSION.to_string())
}

/// A descriptor number from the command line or the state, if it is open.
pub fn borrow(fd: RawFd) -> Result<BorrowedFd<'static>, UpgradeError> {
    crate::os::fds::borrow_open(fd)
        .ok_or_else(|| UpgradeError::State { what: format!("descriptor {fd}"), error: "not open".into() })
}

/// Keep `fd` open across `execve` (or not).
pub fn set_inherit(fd: impl AsFd, inherit: bool) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = if inherit { FdFlag::empty() } else { FdFlag::FD_CLOEXEC };
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(flags)).map(|_| ()).map_err(std::io::Error::from)
}
