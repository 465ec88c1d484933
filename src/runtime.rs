//! Where a pool keeps its sockets: the runtime directory (workers' notify socket, the control
//! socket, and a lock that refuses a second master for the same pool), and where the CLI finds it.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

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
