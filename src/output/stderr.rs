//! The master's own stderr, written without ever blocking the event loop.
//!
//! Whoever reads the master's stderr (a terminal paused with Ctrl-S, a pipe into a stuck log
//! shipper) must not be able to stop supervision. So every write is non-blocking: what the
//! reader cannot take right now waits in a bounded buffer that a task flushes when stderr becomes
//! writable again. When the buffer is full, the master's own log messages are dropped and
//! counted ([`dropped`], shown by `corral status` and `/metrics`), and worker lines wait for
//! room: the worker whose pipe is not read slows down, as with journald, while the loop goes on.
//!
//! Non-blocking without touching anybody else's descriptor: `O_NONBLOCK` belongs to the open
//! file description, which the master may share with its parent or, with `logs.target =
//! "inherit"`, its workers. So a pipe or terminal is opened anew through `/proc/self/fd/2` (a
//! description of our own), a socket is written with `MSG_DONTWAIT`, and a regular file or
//! `/dev/null`, which never blocks, is written directly.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, Mode, SFlag};
use tokio::sync::Notify;

/// Bytes kept for a stderr reader that is not keeping up.
pub const BUFFER: usize = 256 * 1024;

enum Target {
    /// Writes never block (a regular file, a character device that is not a terminal).
    Direct,
    /// A non-blocking description of our own of the same pipe or terminal.
    Own(OwnedFd),
    /// A socket (systemd's journal stream without journald's native protocol): `MSG_DONTWAIT`.
    Socket,
}

struct State {
    target: Target,
    buf: VecDeque<u8>,
    dropped: u64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
/// Something waits in the buffer.
static PENDING: Notify = Notify::const_new();
/// The buffer has room again.
static ROOM: Notify = Notify::const_new();

/// Decide how to write stderr without blocking. Before this runs (and if it cannot), writes go
/// straight to fd 2.
pub fn init() {
    let stderr = io::stderr();
    let fd = stderr.as_fd();
    let target = match fstat(fd) {
        Ok(st) => {
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            if kind == SFlag::S_IFSOCK {
                Target::Socket
            } else if kind == SFlag::S_IFIFO || (kind == SFlag::S_IFCHR && nix::unistd::isatty(fd).unwrap_or(false)) {
                let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
                match nix::fcntl::open("/proc/self/fd/2", flags, Mode::empty()) {
                    Ok(own) => Target::Own(own),
                    // No /proc: fall back to writing fd 2 as it is.
                    Err(_) => Target::Direct,
                }
            } else {
                Target::Direct
            }
        }
        Err(_) => Target::Direct,
    };
    if let Ok(mut state) = STATE.lock() {
        *state = Some(State { target, buf: VecDeque::new(), dropped: 0 });
    }
}

fn try_write(target: &Target, bytes: &[u8]) -> io::Result<usize> {
    let n = match target {
        Target::Direct => nix::unistd::write(io::stderr(), bytes),
        Target::Own(fd) => nix::unistd::write(fd, bytes),
        Target::Socket => nix::sys::socket::send(
            io::stderr().as_raw_fd(),
            bytes,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        ),
    };
    n.map_err(io::Error::from)
}

/// Write what can be written now; keep the rest (whole, so lines are never cut) if it fits.
/// Returns false when `bytes` had to be dropped.
fn offer(state: &mut State, bytes: &[u8], may_drop: bool) -> bool {
    let mut rest = bytes;
    if state.buf.is_empty() {
        loop {
            match try_write(&state.target, rest) {
                Ok(n) if n >= rest.len() => return true,
                Ok(0) => break,
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Nobody is reading any more (EPIPE) or stderr is closed: nothing to keep it for.
                Err(_) => return true,
            }
        }
    }
    let started = rest.len() < bytes.len();
    if may_drop && !started && state.buf.len() + rest.len() > BUFFER {
        state.dropped += 1;
        return false;
    }
    state.buf.extend(rest);
    PENDING.notify_one();
    true
}

/// The master's own log output: written now, buffered, or dropped and counted. Never blocks.
pub fn write_or_drop(bytes: &[u8]) {
    match STATE.lock() {
        Ok(mut guard) => match guard.as_mut() {
            Some(state) => {
                offer(state, bytes, true);
            }
            None => {
                let _ = try_write(&Target::Direct, bytes);
            }
        },
        Err(_) => {
            let _ = try_write(&Target::Direct, bytes);
        }
    }
}

/// A worker's line: waits (asynchronously) for room rather than drop it.
pub async fn write_waiting(bytes: &[u8]) {
    loop {
        let room = ROOM.notified();
        tokio::pin!(room);
        room.as_mut().enable();
        {
            let Ok(mut guard) = STATE.lock() else { return };
            match guard.as_mut() {
                None => {
                    let _ = try_write(&Target::Direct, bytes);
                    return;
                }
                Some(state) if state.buf.len() < BUFFER => {
                    offer(state, bytes, false);
                    return;
                }
                Some(_) => {}
            }
        }
        room.await;
    }
}

/// Messages of the master's dropped because stderr's reader did not keep up.
pub fn dropped() -> u64 {
    STATE.lock().ok().and_then(|s| s.as_ref().map(|s| s.dropped)).unwrap_or(0)
}

/// How the flusher learns that stderr can take more: readiness through tokio for a pipe or a
/// socket, else (a terminal) a short sleep between attempts.
enum Waiter {
    Pipe(tokio::net::unix::pipe::Sender),
    Socket(tokio::net::UnixStream),
    Sleep,
}

impl Waiter {
    fn new() -> Waiter {
        let Ok(guard) = STATE.lock() else { return Waiter::Sleep };
        match guard.as_ref().map(|s| &s.target) {
            Some(Target::Own(fd)) => fd
                .try_clone()
                .ok()
                .and_then(|fd| tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok())
                .map_or(Waiter::Sleep, Waiter::Pipe),
            // Only its readiness is used; writes go through `send(MSG_DONTWAIT)`.
            Some(Target::Socket) => io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .and_then(|fd| tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)).ok())
                .map_or(Waiter::Sleep, Waiter::Socket),
            _ => Waiter::Sleep,
        }
    }

    /// Write through the readiness-tracking object, so that a `WouldBlock` clears its
    /// readiness and the next [`Waiter::wait`] really waits.
    fn write(&self, target: &Target, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Waiter::Pipe(p) => p.try_write(bytes),
            Waiter::Socket(s) => s.try_io(tokio::io::Interest::WRITABLE, || try_write(target, bytes)),
            Waiter::Sleep => try_write(target, bytes),
        }
    }

    async fn wait(&self) {
        let ready = match self {
            Waiter::Pipe(p) => p.writable().await,
            Waiter::Socket(s) => s.writable().await,
            Waiter::Sleep => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(())
            }
        };
        if ready.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Write out the buffer as often as stderr lets us; runs for the life of the loop.
pub async fn flusher() {
    let waiter = Waiter::new();
    loop {
        PENDING.notified().await;
        loop {
            match drain(|target, bytes| waiter.write(target, bytes)) {
                Drained::Empty => {
                    ROOM.notify_waiters();
                    break;
                }
                Drained::Progress => ROOM.notify_waiters(),
                Drained::Blocked => waiter.wait().await,
            }
        }
    }
}

enum Drained {
    Empty,
    Progress,
    Blocked,
}

fn drain(write: impl Fn(&Target, &[u8]) -> io::Result<usize>) -> Drained {
    let Ok(mut guard) = STATE.lock() else { return Drained::Empty };
    let Some(state) = guard.as_mut() else { return Drained::Empty };
    if state.buf.is_empty() {
        return Drained::Empty;
    }
    let (front, _) = state.buf.as_slices();
    match write(&state.target, front) {
        Ok(0) => Drained::Blocked,
        Ok(n) => {
            state.buf.drain(..n);
            if state.buf.is_empty() {
                state.buf.shrink_to(4096);
                Drained::Empty
            } else {
                Drained::Progress
            }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => Drained::Blocked,
        Err(_) => {
            state.buf.clear();
            Drained::Empty
        }
    }
}

/// At exit: give a slow reader up to `limit` to take what is left, then let it go.
pub fn flush_before_exit(limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match drain(try_write) {
            Drained::Empty => return,
            Drained::Progress => continue,
            Drained::Blocked => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return;
                }
                let fd = io::stderr();
                let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLOUT)];
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                let _ = nix::poll::poll(&mut fds, ms);
            }
        }
    }
}

/// `tracing`'s writer for the master's text logs.
pub struct LogWriter;

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_or_drop(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
