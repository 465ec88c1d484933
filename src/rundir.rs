//! Where a pool keeps its sockets: the runtime directory (workers' notify socket, the control
//! socket, and a lock that refuses a second master for the same pool), and where the CLI finds it.
//!
//! The directories are created and opened the way ssh-agent, tmux and systemd do it: never
//! through a symbolic link (`openat` with `O_NOFOLLOW | O_DIRECTORY`, relative to the already
//! checked parent), and never used when another user owns them or may write to them. So another
//! user cannot redirect the pool's sockets, or plant a control socket the CLI would trust, by
//! creating `/tmp/corral-UID` or a link inside it first.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};

/// The control socket's file name in a pool's runtime directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// The workers' notify socket's file name in a pool's runtime directory.
pub const NOTIFY_SOCKET: &str = "notify.sock";
/// The folder of the workers' metrics sockets (`CORRAL_METRICS_SOCKET`) in a pool's runtime
/// directory.
pub const WORKER_METRICS_DIR: &str = "metrics";

/// The pool's private directory: the workers' notify socket and a lock against a second master.
pub struct RuntimeDir {
    pub path: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// systemd made it (`RuntimeDirectory=`), and owns its owner.
    managed: bool,
    /// Who goes through it, as [`RuntimeDir::set_access`] was last told.
    access: (Option<u32>, bool),
}

impl RuntimeDir {
    /// `$RUNTIME_DIRECTORY` under systemd, else `ROOT/NAME` (see [`runtime_root`]).
    pub fn locate(name: &str) -> PathBuf {
        systemd_runtime_directory().unwrap_or_else(|| runtime_root().join(name))
    }

    /// Create the directory (0700: who else goes through it is [`RuntimeDir::set_access`]'s),
    /// check it is ours alone, and take its lock.
    pub fn create(name: &str) -> Result<RuntimeDir, RuntimeDirError> {
        let (path, dir) = match systemd_runtime_directory() {
            // systemd made it for this service (RuntimeDirectory=): check it, leave its mode. (Set
            // by hand, it may not exist yet.)
            Some(path) => {
                if !path.exists() {
                    std::fs::create_dir_all(&path).map_err(io("create", &path))?;
                }
                let dir = open_dir(&path, None).and_then(|d| check_dir(&path, &d, Owner::Me).map(|_| d))?;
                // Its owner stays what systemd made it: see [`RuntimeDir::set_access`].
                (path, dir)
            }
            None => {
                let root = runtime_root();
                let root_fd = ensure_root(&root)?;
                let path = root.join(name);
                let dir = ensure_dir(&root_fd, &path, 0o700, Owner::Me)?;
                fchmod(&dir, Mode::from_bits_truncate(0o700)).map_err(|e| RuntimeDirError::Io {
                    action: format!("set permissions on {}", path.display()),
                    error: e.to_string(),
                })?;
                (path, dir)
            }
        };
        let lock_path = path.join("master.lock");
        let file = openat(
            &dir,
            "master.lock",
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map(std::fs::File::from)
        .map_err(|e| RuntimeDirError::Io { action: format!("open {}", lock_path.display()), error: e.to_string() })?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| RuntimeDirError::Locked { name: name.to_string(), lock: lock_path.clone() })?;
        Ok(RuntimeDir { path, _lock: lock, managed: systemd_runtime_directory().is_some(), access: (None, false) })
    }
}

impl RuntimeDir {
    /// The directory and lock a previous image of this master held (`corral upgrade`): the
    /// lock belongs to the open file, which the exec kept.
    pub fn adopt(path: PathBuf, lock: std::os::fd::OwnedFd) -> Result<RuntimeDir, RuntimeDirError> {
        let lock = nix::fcntl::Flock::lock(std::fs::File::from(lock), nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| RuntimeDirError::Io {
                action: format!("keep the lock of {}", path.display()),
                error: e.to_string(),
            })?;
        Ok(RuntimeDir { path, _lock: lock, managed: systemd_runtime_directory().is_some(), access: (None, false) })
    }

    /// `metrics/` inside it, where workers serve their own metrics (`[metrics] workers`):
    /// created unless it exists, never through a link, given to the workers' user (`owner`,
    /// uid and gid, when they run as another) with mode 0700. The pool directory around it is
    /// 0710 then, so they can reach it, and nobody else can.
    pub fn worker_metrics_dir(&self, owner: Option<(u32, u32)>) -> Result<PathBuf, RuntimeDirError> {
        let parent = open_dir(&self.path, None)?;
        let path = self.path.join(WORKER_METRICS_DIR);
        match mkdirat(&parent, WORKER_METRICS_DIR, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => {
                return Err(RuntimeDirError::Io { action: format!("create {}", path.display()), error: e.to_string() })
            }
        }
        let dir = open_dir(&path, Some(&parent))?;
        let (uid, gid) = owner.unwrap_or_else(|| (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()));
        let st = fstat(&dir)
            .map_err(|e| RuntimeDirError::Io { action: format!("inspect {}", path.display()), error: e.to_string() })?;
        if st.st_uid != uid || st.st_gid != gid {
            nix::unistd::fchown(&dir, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| RuntimeDirError::Io {
                    action: format!("give {} to the workers' user", path.display()),
                    error: e.to_string(),
                })?;
        }
        if st.st_mode & 0o7777 != 0o700 {
            fchmod(&dir, Mode::from_bits_truncate(0o700)).map_err(|e| RuntimeDirError::Io {
                action: format!("set permissions on {}", path.display()),
                error: e.to_string(),
            })?;
        }
        Ok(path)
    }

    /// Who goes through the directory: the workers' group when they run as another user
    /// (`worker_gid`: g+x), and anyone when members of `[control] group` must reach the control
    /// socket (`others`: o+x, not listing it). Every file in it keeps its own mode: the control
    /// socket is that group's, the notify socket the workers' group's, the metrics and
    /// credentials folders the workers' user's. Applied at start and at every reload: systemd
    /// sets `RuntimeDirectoryMode=` again when it starts `ExecReload=`.
    ///
    /// A directory systemd made keeps the owner and group it gave it: systemd 257 gives the
    /// whole tree back to the unit's user and group (files, folders, sockets) when it finds the
    /// directory's owner changed, which would take the workers' files from them. Workers of
    /// another user go through it as others do then (o+x), and what is theirs is theirs by
    /// its own owner and mode.
    pub fn set_access(&mut self, worker_gid: Option<u32>, others: bool) -> Result<(), RuntimeDirError> {
        self.access = (worker_gid, others);
        self.reapply_access()
    }

    /// [`RuntimeDir::set_access`] again, as last told (one `fstat` when nothing changed).
    pub fn reapply_access(&self) -> Result<(), RuntimeDirError> {
        let (worker_gid, others) = self.access;
        let (worker_gid, others) =
            if self.managed { (None, others || worker_gid.is_some()) } else { (worker_gid, others) };
        let dir = open_dir(&self.path, None)?;
        let fail = |e: nix::errno::Errno| RuntimeDirError::Io {
            action: format!("set permissions on {}", self.path.display()),
            error: e.to_string(),
        };
        let st = fstat(&dir).map_err(fail)?;
        if let Some(gid) = worker_gid.filter(|g| *g != st.st_gid) {
            nix::unistd::fchown(&dir, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(fail)?;
        }
        let mode = st.st_mode & 0o7777;
        let mut want = (mode & !0o077) | if others { 0o001 } else { 0 };
        if worker_gid.is_some() {
            want |= 0o010;
        } else {
            want |= mode & 0o050;
        }
        if want != mode {
            fchmod(&dir, Mode::from_bits_truncate(want)).map_err(fail)?;
        }
        Ok(())
    }

    /// The lock's descriptor, for `corral upgrade`.
    pub fn lock_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&*self._lock)
    }
}

fn systemd_runtime_directory() -> Option<PathBuf> {
    let dir = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty())?;
    let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_string();
    Some(PathBuf::from(first))
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
        return PathBuf::from(SYSTEM_ROOT);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(xdg) => PathBuf::from(xdg).join("corral"),
        None => PathBuf::from(format!("/tmp/corral-{uid}")),
    }
}

/// Why the runtime directory (or one on the way to it) cannot be used; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeDirError {
    /// A step on it failed: "create /run/corral/api", "open …", "set permissions on …".
    #[error("cannot {action}: {error}")]
    Io { action: String, error: String },
    #[error("refusing to use {}: it is a symbolic link or not a directory (remove it; corral creates it)", path.display())]
    NotADirectory { path: PathBuf },
    #[error(
        "refusing to use {}: it belongs to uid {uid}, not to you (uid {me}); remove it, or set \
         $XDG_RUNTIME_DIR or $CORRAL_RUNTIME_ROOT to a directory of your own",
        path.display()
    )]
    NotOurs { path: PathBuf, uid: u32, me: u32 },
    #[error("refusing to use {}: others may write to it (mode {mode:o}); remove it and let corral create it", path.display())]
    OthersMayWrite { path: PathBuf, mode: u32 },
    #[error("another corral master is already running pool {name:?} (lock {} is held)", lock.display())]
    Locked { name: String, lock: PathBuf },
}

/// "cannot `what` `path`: error".
fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeDirError {
    let action = format!("{what} {}", path.display());
    move |e| RuntimeDirError::Io { action, error: e.to_string() }
}

/// The control socket of pool `name`, as the CLI finds it, once the directories on the way are
/// known to be safe to trust (see [`check_path`]).
pub fn control_socket(name: &str) -> Result<PathBuf, RuntimeDirError> {
    let explicit = std::env::var_os("CORRAL_RUNTIME_ROOT").is_some_and(|d| !d.is_empty());
    // In the pool's own unit (`ExecReload=corral reload NAME` of a master that runs as a user):
    // systemd names the directory it made for it.
    if let Some(dir) = systemd_runtime_directory().filter(|d| !explicit && d.file_name() == Some(name.as_ref())) {
        check_path(&dir, Owner::MeOrRoot)?;
        return Ok(dir.join(CONTROL_SOCKET));
    }
    let root = runtime_root();
    let dir = root.join(name);
    // Root's directories are as trusted as our own: root could do anything to us anyway. Root
    // itself may ask any user's pool (the master lets root in), so it checks links and modes.
    let owner = if nix::unistd::geteuid().is_root() { Owner::Anyone } else { Owner::MeOrRoot };
    check_path(&root, owner)?;
    check_path(&dir, owner)?;
    if !explicit && !nix::unistd::geteuid().is_root() && !dir.join(CONTROL_SOCKET).exists() {
        if let Some(system) = system_pool(name) {
            return Ok(system);
        }
    }
    Ok(dir.join(CONTROL_SOCKET))
}

/// A user's CLI asking for a pool that systemd runs (`/run/corral/NAME`, a master that runs as
/// a user, or as root): trusted when `/run/corral` is root's and nobody else may write to it,
/// since then only root (systemd's `RuntimeDirectory=`) put the pool's directory there, whoever
/// owns it. Whether the caller may use its control socket is the master's decision.
fn system_pool(name: &str) -> Option<PathBuf> {
    let root = Path::new(SYSTEM_ROOT);
    check_path(root, Owner::Root).ok()?;
    let dir = root.join(name);
    check_path(&dir, Owner::Anyone).ok()?;
    let socket = dir.join(CONTROL_SOCKET);
    socket.exists().then_some(socket)
}

/// Where systemd puts pools' runtime directories (`RuntimeDirectory=corral/NAME`).
const SYSTEM_ROOT: &str = "/run/corral";

/// Who may own a directory we use.
#[derive(Clone, Copy)]
enum Owner {
    /// This process's effective uid.
    Me,
    /// This uid or root (`/run/corral` made by root, used by a pool that runs as a user).
    MeOrRoot,
    /// Any owner (root's CLI asking a user's pool); the mode is still checked.
    Anyone,
    /// Root only.
    Root,
}

/// The runtime root: its parents are created as needed (they are the administrator's or the
/// environment's choice), the root itself without following a link.
fn ensure_root(root: &Path) -> Result<OwnedFd, RuntimeDirError> {
    let parent = root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    let parent_fd = open_dir(parent, None)?;
    // 0755 like systemd's /run/corral: workers of another user reach their pool's notify
    // socket through it; the pool directories inside are private.
    ensure_dir(&parent_fd, root, 0o755, Owner::MeOrRoot)
}

/// Create `path`'s last component under `parent` (with `mode`, less the umask) unless it exists, open it without
/// following a link, and check it.
fn ensure_dir(parent: &OwnedFd, path: &Path, mode: u32, owner: Owner) -> Result<OwnedFd, RuntimeDirError> {
    let leaf = path.file_name().ok_or_else(|| RuntimeDirError::NotADirectory { path: path.to_owned() })?;
    match mkdirat(parent, leaf, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => {
            return Err(RuntimeDirError::Io { action: format!("create {}", path.display()), error: e.to_string() })
        }
    }
    let dir = open_dir(path, Some(parent))?;
    check_dir(path, &dir, owner)?;
    Ok(dir)
}

/// Open a directory; with `parent`, only `path`'s last component, relative to it and never
/// through a symbolic link.
fn open_dir(path: &Path, parent: Option<&OwnedFd>) -> Result<OwnedFd, RuntimeDirError> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let result = match parent {
        Some(p) => openat(p, path.file_name().unwrap_or(path.as_os_str()), flags, Mode::empty()),
        None => nix::fcntl::open(path, flags, Mode::empty()),
    };
    result.map_err(|e| match e {
        nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
            RuntimeDirError::NotADirectory { path: path.to_owned() }
        }
        e => RuntimeDirError::Io { action: format!("open {}", path.display()), error: e.to_string() },
    })
}

/// A directory is usable when its owner is trusted and nobody else may write to it.
fn check_dir(path: &Path, dir: impl AsFd, owner: Owner) -> Result<(), RuntimeDirError> {
    let st = fstat(dir.as_fd())
        .map_err(|e| RuntimeDirError::Io { action: format!("inspect {}", path.display()), error: e.to_string() })?;
    judge(path, st.st_uid, st.st_mode, owner)
}

fn judge(path: &Path, uid: u32, mode: u32, owner: Owner) -> Result<(), RuntimeDirError> {
    let me = nix::unistd::geteuid().as_raw();
    let trusted = match owner {
        Owner::Me => uid == me,
        Owner::MeOrRoot => uid == me || uid == 0,
        Owner::Anyone => true,
        Owner::Root => uid == 0,
    };
    if !trusted {
        return Err(RuntimeDirError::NotOurs { path: path.to_owned(), uid, me });
    }
    if mode & 0o022 != 0 {
        return Err(RuntimeDirError::OthersMayWrite { path: path.to_owned(), mode: mode & 0o7777 });
    }
    Ok(())
}

/// The client's check of an existing directory: no link, trusted owner, not writable by others.
fn check_path(path: &Path, owner: Owner) -> Result<(), RuntimeDirError> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        // Nothing there: the caller reports "not running" when it tries to connect.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("inspect", path)(e)),
    };
    if !meta.file_type().is_dir() {
        return Err(RuntimeDirError::NotADirectory { path: path.to_owned() });
    }
    judge(path, meta.uid(), meta.mode(), owner)
}

/// The pools under this user's runtime root, by name.
/// The pools whose control socket this user can reach: under [`runtime_root`], and for a user
/// other than root, also systemd's pools under `/run/corral` that let others through to their
/// control socket (`[control] group`, or a master running as this user).
pub fn running_pools() -> Vec<String> {
    let list = |root: &Path| -> Vec<String> {
        std::fs::read_dir(root)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().join(CONTROL_SOCKET).exists())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| crate::config::check_pool_name(n).is_ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let root = runtime_root();
    let mut found = list(&root);
    let explicit = std::env::var_os("CORRAL_RUNTIME_ROOT").is_some_and(|d| !d.is_empty());
    let system = Path::new(SYSTEM_ROOT);
    if !explicit && root != system && check_path(system, Owner::Root).is_ok() {
        found.extend(list(system));
    }
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_owner_and_mode() {
        let me = nix::unistd::geteuid().as_raw();
        let p = Path::new("/x");
        assert!(judge(p, me, 0o40700, Owner::Me).is_ok());
        assert!(judge(p, me, 0o40755, Owner::Me).is_ok());
        assert!(judge(p, me, 0o40777, Owner::Me).unwrap_err().to_string().contains("others may write"));
        assert!(judge(p, me, 0o41777, Owner::MeOrRoot).unwrap_err().to_string().contains("others may write"));
        assert!(judge(p, me, 0o40770, Owner::Me).is_err());
        let other = if me == 1 { 2 } else { 1 };
        assert!(judge(p, other, 0o40700, Owner::Me).unwrap_err().to_string().contains("belongs to uid"));
        assert!(judge(p, other, 0o40700, Owner::MeOrRoot).is_err());
        assert!(judge(p, 0, 0o40755, Owner::MeOrRoot).is_ok());
    }
}
