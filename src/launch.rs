//! What a worker is started with, prepared before `fork` in safe code: who it runs as
//! ([`Credentials`]), which program ([`resolve_program`], searched as `execvp` would), the
//! descriptor limit it gets back ([`raise_nofile_limit`] raised the master's), and why a start
//! failed ([`SpawnError`]). The fork and exec themselves are [`crate::os::spawn`]'s, the only
//! place `unsafe` is allowed.

use std::ffi::{CString, OsStr};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::Pid;

/// Why a worker could not be started. Each message says what failed, on what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot look up user {user:?}: {error}")]
    UserLookup { user: String, error: String },
    #[error("user {0:?} does not exist (create it, or change `user` in the config)")]
    NoSuchUser(String),
    #[error("user = {user:?} needs corral to run as root (it runs as uid {uid})")]
    NeedsRoot { user: String, uid: u32 },
    #[error("cannot list the groups of {user:?}: {error}")]
    Groups { user: String, error: String },
    #[error("cannot find `{program}` in PATH ({path}): install it or give its full path in `command`")]
    NotFound { program: String, path: String },
    #[error("{0} contains a NUL byte")]
    Nul(String),
    /// A pipe, a duplicate, /dev/null: the master's own resources.
    #[error("cannot {what}: {error}")]
    Resources { what: String, error: String },
    #[error(
        "cannot fork: the process limit is reached (RLIMIT_NPROC of the user, or the system's pid or thread \
         limit); retrying with backoff"
    )]
    ForkLimit,
    #[error("cannot fork: {0}")]
    Fork(String),
    #[error("cannot execute {program}{resolved}{as_user}: {error}")]
    Exec { program: String, resolved: String, as_user: String, error: String },
    #[error("cannot chdir to {dir}: {error}")]
    Chdir { dir: String, error: String },
    /// A step between fork and exec: setpgid, the parent-death signal, fds, groups, gid, uid.
    #[error("cannot {step} for {program}: {error}")]
    Setup { step: &'static str, program: String, error: String },
}

pub(crate) fn resources(what: impl Into<String>) -> impl FnOnce(Errno) -> SpawnError {
    let what = what.into();
    move |e| SpawnError::Resources { what, error: e.desc().to_string() }
}

/// Who the worker runs as, resolved before `fork`.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    /// For the worker's USER/LOGNAME and HOME.
    pub name: String,
    pub home: PathBuf,
}

impl Credentials {
    /// Look up `user` (a name or a numeric uid) with its primary and supplementary groups.
    pub fn lookup(user: &str) -> Result<Credentials, SpawnError> {
        let found = match user.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(user),
        }
        .map_err(|e| SpawnError::UserLookup { user: user.into(), error: e.desc().into() })?;
        let u = found.ok_or_else(|| SpawnError::NoSuchUser(user.into()))?;
        let cname = CString::new(u.name.as_bytes()).map_err(|_| SpawnError::Nul(format!("user name {user:?}")))?;
        let groups = nix::unistd::getgrouplist(&cname, u.gid)
            .map_err(|e| SpawnError::Groups { user: user.into(), error: e.desc().into() })?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        Ok(Credentials { uid: u.uid.as_raw(), gid: u.gid.as_raw(), groups, name: u.name, home: u.dir })
    }
}

/// What to run. `env` is the complete environment except the variables named in `pid_vars`
/// (`LISTEN_PID`, `WATCHDOG_PID`), which are added here with the child's own pid.
pub struct SpawnRequest<'a> {
    pub program: &'a Path,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub pid_vars: &'a [&'a str],
    /// Placed at 3, 4, …: the listening sockets, then (in "ipc" mode) the Node channel.
    pub fds: &'a [BorrowedFd<'a>],
    pub workdir: Option<&'a Path>,
    pub credentials: Option<&'a Credentials>,
    /// Give the worker the master's own stdout and stderr instead of pipes.
    pub inherit_output: bool,
    /// Start at this absolute nice value (`reload.start_nice`), restored by the driver.
    pub nice: Option<i32>,
}

/// A started worker: its pid and the read ends of its stdout and stderr (None when inherited).
#[derive(Debug)]
pub struct Child {
    pub pid: Pid,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// The master's `RLIMIT_NOFILE` (soft, hard) as it was started, once [`raise_nofile_limit`] ran.
static ORIGINAL_NOFILE: std::sync::OnceLock<(libc::rlim_t, libc::rlim_t)> = std::sync::OnceLock::new();

/// The limit the master was started with, as the kernel types it (what workers get back).
pub(crate) fn original_rlimit() -> Option<(libc::rlim_t, libc::rlim_t)> {
    ORIGINAL_NOFILE.get().copied()
}

/// The descriptor limit the master was started with, for `corral upgrade` to hand over.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
pub fn original_nofile() -> Option<(u64, u64)> {
    ORIGINAL_NOFILE.get().map(|&(s, h)| (s as u64, h as u64))
}

/// After `corral upgrade`: the limit the first image was started with (the new image starts
/// with the raised one).
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
pub fn set_original_nofile(soft: u64, hard: u64) {
    let _ = ORIGINAL_NOFILE.set((soft as libc::rlim_t, hard as libc::rlim_t));
}

/// Raise the master's soft descriptor limit to the hard one, as systemd does for itself: the
/// master holds a few descriptors per worker and per connection, and must not run out under a
/// flood of connections. Workers get the original limit back (see `child_main`).
pub fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let _ = ORIGINAL_NOFILE.set((soft, hard));
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::debug!("cannot raise the descriptor limit from {soft} to {hard}: {e}");
        }
    }
}

/// Find `program` the way `execvp` would, but before `fork`: a name without `/` is searched in
/// `path` (the worker's `PATH`). Names with a `/` are used as they are (relative to the workdir).
pub fn resolve_program(program: &str, path: Option<&OsStr>) -> Result<PathBuf, SpawnError> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = path.unwrap_or_else(|| OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(path) {
        let candidate = dir.join(program);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(SpawnError::NotFound { program: program.into(), path: path.to_string_lossy().into_owned() })
}

/// Whether this process may raise a worker's nice value back to `base` once it has lowered
/// it (`reload.start_nice`): with CAP_SYS_NICE in its effective set, or an `RLIMIT_NICE` that
/// reaches `base` (a unit's `LimitNICE=+0`).
pub fn can_restore_priority(base: i32) -> bool {
    let caps = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
    });
    const CAP_SYS_NICE: u32 = 23;
    if caps.is_some_and(|c| c & (1 << CAP_SYS_NICE) != 0) {
        return true;
    }
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE) {
        // The lowest nice value allowed is 20 - limit (an infinite limit allows any).
        Ok((soft, _)) => 20i64.saturating_sub(i64::try_from(soft).unwrap_or(i64::MAX)) <= i64::from(base),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_resolution() {
        assert_eq!(resolve_program("./server", None).unwrap(), PathBuf::from("./server"));
        assert_eq!(resolve_program("sh", Some(OsStr::new("/nonexistent:/bin"))).unwrap(), PathBuf::from("/bin/sh"));
        let err = resolve_program("no-such-program-x", Some(OsStr::new("/bin"))).unwrap_err().to_string();
        assert!(err.contains("cannot find `no-such-program-x` in PATH (/bin)"), "{err}");
    }
}
