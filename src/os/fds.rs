//! Descriptors handed over by systemd: taking ownership of raw fd numbers needs `unsafe`.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The sockets systemd passed to this process (fd 3.., `LISTEN_PID` checked), as owned fds with
/// their `LISTEN_FDNAMES` names, marked close-on-exec. Returns them once per process; later calls
/// get nothing, which is what makes taking ownership of the raw fds sound.
pub fn take_inherited_fds() -> std::io::Result<Vec<(OwnedFd, String)>> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (raw, name) in sd_notify::listen_fds_with_names()? {
        if borrow_open(raw).is_none() {
            return Err(std::io::Error::other(format!("LISTEN_FDS names fd {raw}, which is not open")));
        }
        // SAFETY: `listen_fds_with_names` verified LISTEN_PID is this process, so fds 3.. were
        // handed to us by the service manager; the fd is open (checked above), and the swap of
        // TAKEN guarantees this runs once, so no other OwnedFd for it exists.
        out.push((unsafe { OwnedFd::from_raw_fd(raw) }, name));
    }
    Ok(out)
}

/// Borrow a raw fd number for one call that only inspects or duplicates it (`F_GETFD`, `dup`).
pub(super) fn unsafe_free_borrow(raw: RawFd) -> BorrowedFd<'static> {
    // SAFETY: used only for fcntl(F_GETFD) and dup(2), which are harmless on any integer (a
    // closed fd gives EBADF) and do not outlive the call; nothing is closed through it.
    unsafe { BorrowedFd::borrow_raw(raw) }
}

/// A descriptor number as a borrow, if it is open. The borrow is only inspected or duplicated.
pub fn borrow_open(raw: RawFd) -> Option<BorrowedFd<'static>> {
    if raw < 0 {
        return None;
    }
    nix::fcntl::fcntl(unsafe_free_borrow(raw), nix::fcntl::FcntlArg::F_GETFD).ok()?;
    Some(unsafe_free_borrow(raw))
}

/// Take ownership of a descriptor the previous image of this process left open for us
/// (`corral upgrade`), once per number, marked close-on-exec again.
pub fn adopt(raw: RawFd) -> std::io::Result<OwnedFd> {
    static ADOPTED: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());
    let mut adopted = ADOPTED.lock().map_err(|_| std::io::Error::other("descriptor registry poisoned"))?;
    if adopted.contains(&raw) {
        return Err(std::io::Error::other(format!("descriptor {raw} is named twice in the upgrade state")));
    }
    let fd = borrow_open(raw).ok_or_else(|| std::io::Error::other(format!("descriptor {raw} is not open")))?;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    adopted.push(raw);
    // SAFETY: the number comes from the upgrade state the previous image of this same process
    // wrote, naming a descriptor it kept open across execve for exactly this; it is open
    // (checked above), nothing else in this image owns it, and the registry makes sure it is
    // adopted only once.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}
