//! `ready.mode = "listen"`: is a process waiting for connections on one of the pool's sockets?
//!
//! Nothing tells a master that a worker has started to accept on an inherited socket: the
//! socket was listening before the worker existed, and `accept` on a shared socket is invisible
//! to everyone else. What the kernel does show, in /proc, is what each process *waits on*:
//!
//! - An epoll instance lists its targets in `/proc/PID/fdinfo/FD`, one `tfd: … events: … ino:…`
//!   line each, where `ino` (hex) is the target file's inode. A listening socket registered for
//!   `EPOLLIN` there means the event loop accepts on it: Node (libuv), Go (netpoll), Rust
//!   (tokio/mio), Python asyncio and uvloop (uvicorn, hypercorn, gunicorn's async workers),
//!   nginx, Java NIO.
//! - A thread blocked in a system call shows it in `/proc/PID/task/TID/syscall`: its number and
//!   arguments. `accept`/`accept4` name the socket's descriptor directly; `poll`/`ppoll` and
//!   `select`/`pselect6` point at the descriptor sets in the process's memory, read from
//!   `/proc/PID/mem` (gunicorn's sync workers wait in `select`).
//!
//! Each descriptor is matched to the pool's sockets by inode (`/proc/PID/fd/N` reads
//! `socket:[INODE]`; `dup` and `socket.fromfd` keep the inode). Every process of the worker's
//! process group counts, so a child that accepts for its parent (gunicorn's worker under its
//! arbiter, `npm start` → node) makes the worker ready.
//!
//! What it cannot see: io_uring (`IORING_OP_ACCEPT` waits in the ring, not in a visible set),
//! a socket the worker bound itself (another inode: `SO_REUSEPORT` apps), a thread that is
//! between two waits at the moment of the check (seen on the next check), and processes the
//! master may not inspect (another user's, without root: reading `fd`, `syscall` and `mem`
//! needs ptrace access, which a master has over its own descendants). docs/frameworks.md and
//! corral.toml(5) list these; `notify` covers them all.
//!
//! No crate reads epoll fdinfo or a blocked thread's descriptor sets (procfs parses `stat`,
//! `status`, `fd` links, but neither of these), so this is written here, with the parsing kept
//! pure and tested apart from /proc.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

/// A socket of the pool, by inode.
pub type Inode = u64;

/// `EPOLLIN`, `POLLIN`: the interest that means "waiting for connections".
const EPOLLIN: u32 = 0x1;
const POLLIN: i16 = 0x1;
/// More descriptors than this in one poll/select set are not read (1 MiB of memory at most).
const MAX_SET: u64 = 1 << 17;

/// Of the processes `pids`, the first one seen waiting for connections on one of `sockets`.
pub fn first_accepting(pids: &[i32], sockets: &[Inode]) -> Option<i32> {
    pids.iter().copied().find(|&pid| is_accepting(pid, sockets))
}

/// Whether process `pid` waits for connections on one of `sockets`.
pub fn is_accepting(pid: i32, sockets: &[Inode]) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    // Descriptor → socket inode, for the pool's sockets; and the epoll descriptors.
    let mut held: HashMap<i32, Inode> = HashMap::new();
    let mut epolls = Vec::new();
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy();
        if let Some(ino) = socket_inode(&target) {
            if sockets.contains(&ino) {
                held.insert(fd, ino);
            }
        } else if target == "anon_inode:[eventpoll]" {
            epolls.push(fd);
        }
    }
    // Only a process that holds one of the sockets can wait on it (an epoll set inherited
    // without the socket still names it, but cannot accept from it).
    if held.is_empty() {
        return false;
    }
    for fd in epolls {
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else { continue };
        if epoll_watches(&info, sockets) {
            return true;
        }
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    let mut mem = None;
    for task in tasks.flatten() {
        let Ok(line) = std::fs::read_to_string(task.path().join("syscall")) else { continue };
        let Some(wait) = parse_syscall(&line) else { continue };
        let fds = match wait {
            Wait::Accept(fd) => vec![fd],
            Wait::Poll { fds, n } => {
                let mem = mem.get_or_insert_with(|| std::fs::File::open(format!("/proc/{pid}/mem")).ok());
                read_at(mem.as_ref(), fds, n.min(MAX_SET) * 8).map_or_else(Vec::new, |b| pollfds_reading(&b))
            }
            Wait::Select { nfds, readfds } => {
                let mem = mem.get_or_insert_with(|| std::fs::File::open(format!("/proc/{pid}/mem")).ok());
                read_at(mem.as_ref(), readfds, nfds.min(MAX_SET).div_ceil(64) * 8)
                    .map_or_else(Vec::new, |b| fd_set_members(&b, nfds))
            }
        };
        if fds.iter().any(|fd| held.contains_key(fd)) {
            return true;
        }
    }
    false
}

fn read_at(file: Option<&std::fs::File>, addr: u64, len: u64) -> Option<Vec<u8>> {
    let file = file?;
    let mut buf = vec![0u8; usize::try_from(len).ok()?];
    file.read_exact_at(&mut buf, addr).ok()?;
    Some(buf)
}

/// `socket:[12345]` → 12345.
pub fn socket_inode(link: &str) -> Option<Inode> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether an epoll instance's fdinfo text has one of `sockets` registered for input.
pub fn epoll_watches(fdinfo: &str, sockets: &[Inode]) -> bool {
    fdinfo.lines().filter(|l| l.starts_with("tfd:")).any(|line| {
        let mut events = None;
        let mut ino = None;
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            match w {
                "events:" => events = words.next().and_then(|v| u32::from_str_radix(v, 16).ok()),
                _ if w.starts_with("ino:") => ino = u64::from_str_radix(&w[4..], 16).ok(),
                _ => {}
            }
        }
        matches!((events, ino), (Some(e), Some(i)) if e & EPOLLIN != 0 && sockets.contains(&i))
    })
}

/// What a thread blocked in a system call waits on, when it is a wait for connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `accept`/`accept4` on this descriptor.
    Accept(i32),
    /// `poll`/`ppoll`: `n` `struct pollfd` at address `fds`.
    Poll { fds: u64, n: u64 },
    /// `select`/`pselect6`: a read set of `nfds` bits at address `readfds`.
    Select { nfds: u64, readfds: u64 },
}

/// Parse `/proc/PID/task/TID/syscall`: "NR ARG0 … ARG5 SP PC" while blocked, "running" or
/// "-1 SP PC" otherwise.
pub fn parse_syscall(line: &str) -> Option<Wait> {
    let mut f = line.split_whitespace();
    let nr: i64 = f.next()?.parse().ok()?;
    let args: Vec<u64> = f.take(6).filter_map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()).collect();
    if args.len() < 6 {
        return None;
    }
    syscall_wait(nr, &args)
}

fn syscall_wait(nr: i64, a: &[u64]) -> Option<Wait> {
    if nr == libc::SYS_accept4 || nr == accept_nr() {
        return i32::try_from(a[0]).ok().map(Wait::Accept);
    }
    if nr == libc::SYS_ppoll || Some(nr) == poll_nr() {
        return (a[0] != 0).then_some(Wait::Poll { fds: a[0], n: a[1] });
    }
    if nr == libc::SYS_pselect6 || Some(nr) == select_nr() {
        return (a[1] != 0).then_some(Wait::Select { nfds: a[0], readfds: a[1] });
    }
    None
}

fn accept_nr() -> i64 {
    libc::SYS_accept
}

#[cfg(target_arch = "x86_64")]
fn poll_nr() -> Option<i64> {
    Some(libc::SYS_poll)
}
#[cfg(target_arch = "x86_64")]
fn select_nr() -> Option<i64> {
    Some(libc::SYS_select)
}
// Newer architectures (aarch64, riscv64) have only ppoll and pselect6.
#[cfg(not(target_arch = "x86_64"))]
fn poll_nr() -> Option<i64> {
    None
}
#[cfg(not(target_arch = "x86_64"))]
fn select_nr() -> Option<i64> {
    None
}

/// The descriptors of a `struct pollfd` array (native endian: `int fd; short events; short
/// revents`) that wait for input.
pub fn pollfds_reading(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(8)
        .filter_map(|c| {
            let fd = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            let events = i16::from_ne_bytes([c[4], c[5]]);
            (fd >= 0 && events & POLLIN != 0).then_some(fd)
        })
        .collect()
}

/// The members of an `fd_set` (an array of native-endian `unsigned long` bit masks) below `nfds`.
pub fn fd_set_members(bytes: &[u8], nfds: u64) -> Vec<i32> {
    let mut out = Vec::new();
    for (w, chunk) in bytes.chunks_exact(8).enumerate() {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
        for bit in 0..64 {
            let fd = w as u64 * 64 + bit;
            if fd < nfds && word & (1 << bit) != 0 {
                out.push(fd as i32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_fdinfo() {
        // As Linux 6.x prints it; the socket is inode 0x3c4f = 15439.
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
                    tfd:        9 events:       19 data:                9  pos:0 ino:3c4f sdev:8\n\
                    tfd:       11 events:       19 data:                b  pos:0 ino:1234 sdev:8\n";
        assert!(epoll_watches(info, &[15439]));
        assert!(!epoll_watches(info, &[15440]));
        // Registered for output only (or disarmed, as EPOLLONESHOT leaves it): not accepting.
        let out_only = "tfd:        9 events:        4 data:                9  pos:0 ino:3c4f sdev:8\n";
        assert!(!epoll_watches(out_only, &[15439]));
        // tokio and Go register edge-triggered with IN|OUT|RDHUP.
        let tokio = "tfd:        9 events: 80002005 data:     7f0000000001  pos:0 ino:3c4f sdev:8\n";
        assert!(epoll_watches(tokio, &[15439]));
        assert!(!epoll_watches("", &[15439]));
        assert!(!epoll_watches("tfd: junk events: zz ino:qq\n", &[15439]));
    }

    #[test]
    fn syscall_lines() {
        let nr = |n: i64, args: &str| format!("{n} {args} 0x7ffd0000 0x7f0000001234");
        assert_eq!(parse_syscall(&nr(libc::SYS_accept4, "0x3 0x0 0x0 0x80800 0x0 0x0")), Some(Wait::Accept(3)));
        assert_eq!(parse_syscall(&nr(libc::SYS_accept, "0x5 0x7ffd 0x7ffe 0x0 0x0 0x0")), Some(Wait::Accept(5)));
        assert_eq!(
            parse_syscall(&nr(libc::SYS_ppoll, "0x7ffd1000 0x2 0x0 0x0 0x8 0x0")),
            Some(Wait::Poll { fds: 0x7ffd1000, n: 2 })
        );
        assert_eq!(
            parse_syscall(&nr(libc::SYS_pselect6, "0x7 0x7ffd2000 0x0 0x0 0x7ffd3000 0x0")),
            Some(Wait::Select { nfds: 7, readfds: 0x7ffd2000 })
        );
        // Blocked elsewhere, running, or in user space.
        assert_eq!(parse_syscall(&nr(libc::SYS_read, "0x3 0x7ffd 0x1000 0x0 0x0 0x0")), None);
        assert_eq!(parse_syscall("running"), None);
        assert_eq!(parse_syscall("-1 0x7ffd0000 0x7f0000001234"), None);
        assert_eq!(parse_syscall(""), None);
        // A select with no read set waits for nothing to read.
        assert_eq!(parse_syscall(&nr(libc::SYS_pselect6, "0x7 0x0 0x7ffd 0x0 0x0 0x0")), None);
    }

    #[test]
    fn descriptor_sets() {
        let mut pfds = Vec::new();
        for (fd, events) in [(3i32, POLLIN), (4, 0x4), (-1, POLLIN), (7, POLLIN | 0x4)] {
            pfds.extend(fd.to_ne_bytes());
            pfds.extend(events.to_ne_bytes());
            pfds.extend(0i16.to_ne_bytes());
        }
        assert_eq!(pollfds_reading(&pfds), vec![3, 7]);
        let mut set = vec![0u8; 16];
        set[0] = 0b1000_1000; // 3, 7
        set[8] = 0b1; // 64
        assert_eq!(fd_set_members(&set, 65), vec![3, 7, 64]);
        assert_eq!(fd_set_members(&set, 8), vec![3, 7]);
        assert_eq!(socket_inode("socket:[15439]"), Some(15439));
        assert_eq!(socket_inode("pipe:[15439]"), None);
    }

    /// Against the kernel: this process blocked in accept (a thread), then in poll, then with
    /// the socket in an epoll set.
    #[test]
    fn sees_this_process_wait() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
        let me = std::process::id() as i32;
        let wait_until = |want: bool| {
            let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < end {
                if is_accepting(me, &[ino]) == want {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            false
        };
        assert!(wait_until(false), "nothing waits yet");
        let addr = listener.local_addr().unwrap();
        let l2 = listener.try_clone().unwrap();
        let t = std::thread::spawn(move || l2.accept().map(|_| ()));
        assert!(wait_until(true), "a thread blocked in accept");
        std::net::TcpStream::connect(addr).unwrap();
        t.join().unwrap().unwrap();
        assert!(wait_until(false), "accept returned");

        let t = std::thread::spawn(move || {
            let mut p = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&listener), nix::poll::PollFlags::POLLIN)];
            nix::poll::poll(&mut p, nix::poll::PollTimeout::from(10_000u16)).map(|_| ())
        });
        assert!(wait_until(true), "a thread blocked in poll");
        std::net::TcpStream::connect(addr).unwrap();
        t.join().unwrap().unwrap();
    }
}
