//! Scheduling priority of workers (`reload.start_nice`): the master's own nice value, and
//! setting one for a whole process group. Written here because nix 0.32 wraps neither
//! `getpriority` nor `setpriority`.

use std::io;

/// The calling process's nice value.
pub fn own_nice() -> i32 {
    // SAFETY: errno is this thread's; getpriority only reads the caller's scheduling data, and
    // -1 is a valid answer told apart from an error by errno, which is cleared first.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, 0);
        if n == -1 && *libc::__errno_location() != 0 {
            0
        } else {
            n
        }
    }
}

/// Set the nice value of every thread of every process in process group `pgid`.
pub fn set_group(pgid: i32, nice: i32) -> io::Result<()> {
    let Ok(who) = libc::id_t::try_from(pgid) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: setpriority takes plain integers and only changes scheduling parameters.
    let r = unsafe { libc::setpriority(libc::PRIO_PGRP, who, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
