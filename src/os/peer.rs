//! Who is at the other end of a unix socket: the supplementary groups of the process that
//! connected (`SO_PEERGROUPS`, Linux 4.13), as the kernel recorded them at `connect()`, like
//! `SO_PEERCRED`'s uid and gid. Neither nix (0.32) nor socket2 (0.6) wraps this option, so it is
//! read here with `getsockopt` directly.

use std::os::fd::{AsRawFd, BorrowedFd};

/// The most groups a process may have (`NGROUPS_MAX`).
const MAX_GROUPS: usize = 65_536;

/// The peer's supplementary groups.
pub fn groups(sock: BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    let size = std::mem::size_of::<libc::gid_t>();
    let mut buf: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(buf.len() * size).unwrap_or(libc::socklen_t::MAX);
        // SAFETY: `buf` is a live, writable buffer of `len` bytes, and `len` a live socklen_t:
        // the kernel writes at most `len` bytes into `buf` and the length it wrote (or, with
        // ERANGE, the length it needs) into `len`; the descriptor is borrowed for the call.
        let r = unsafe {
            libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERGROUPS, buf.as_mut_ptr().cast(), &mut len)
        };
        let needed = usize::try_from(len).unwrap_or(usize::MAX) / size;
        if r == 0 {
            buf.truncate(needed.min(buf.len()));
            return Ok(buf);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || needed <= buf.len() || needed > MAX_GROUPS {
            return Err(e);
        }
        buf.resize(needed, 0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_peers_groups_are_its_own() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut got = super::groups(std::os::fd::AsFd::as_fd(&a)).unwrap();
        let mut mine: Vec<u32> = nix::unistd::getgroups().unwrap().iter().map(|g| g.as_raw()).collect();
        got.sort_unstable();
        mine.sort_unstable();
        assert_eq!(got, mine);
    }
}
