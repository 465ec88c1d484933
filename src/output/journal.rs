//! Worker output: each worker's stdout and stderr pipes, read line by line by the master.
//!
//! Every line becomes a [`Record`] that knows which worker wrote it (slot, pid, generation) and
//! its priority (stdout 6, stderr 3, or a leading sd-daemon `<N>` prefix, which is stripped).
//! With journald, records go over its native protocol with `SYSLOG_IDENTIFIER`, `PRIORITY`,
//! `CORRAL_WORKER`, `CORRAL_WORKER_PID`, `CORRAL_GENERATION` and `OBJECT_PID`; sends are async,
//! so a journald that cannot keep up slows down only the worker whose pipe we stop reading, never
//! the master's loop. A record too large for a datagram goes as a sealed memfd, as journald
//! expects. Without journald, records are written as `name[slot]: line` on stderr. Lines longer than
//! [`MAX_LINE`] are split, not dropped; invalid UTF-8 is replaced, never fatal; a worker's last
//! lines are read until EOF, so nothing it wrote before exiting is lost. Each pipe is read by its
//! own task on the master's single thread, and tokio's cooperative budget keeps a flooding worker
//! from starving the event loop.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Longest line forwarded as one record; longer ones are split.
pub const MAX_LINE: usize = 16 * 1024;
/// A line buffer larger than this is given back once it is empty.
const READ_CHUNK: usize = 4096;

thread_local! {
    /// What one read of a pipe lands in, shared by every pipe of the master's one thread.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 64 * 1024]);
}

/// Who wrote a line.
#[derive(Debug, Clone)]
pub struct Origin {
    pub name: Arc<str>,
    pub slot: usize,
    pub pid: i32,
    pub generation: u64,
    /// The worker's last few lines, for the hint when it exits right after starting.
    pub tail: Tail,
    /// Until then the tail is kept: the hint is only for workers that exit sooner, so a worker
    /// that runs on costs its output lines no copy.
    pub tail_until: std::time::Instant,
}

/// A worker's last [`TAIL_LINES`] lines of output (each cut to [`TAIL_CHARS`]).
pub type Tail = Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;
pub const TAIL_LINES: usize = 3;
const TAIL_CHARS: usize = 300;

/// The lines in a tail, oldest first.
pub fn tail_lines(tail: &Tail) -> Vec<String> {
    tail.lock().map(|t| t.iter().cloned().collect()).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn default_priority(self) -> u8 {
        match self {
            Stream::Stdout => 6,
            Stream::Stderr => 3,
        }
    }
}

/// One line of worker output, ready for a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub priority: u8,
    pub message: &'a str,
}

/// Split off a leading `<N>` (N = 0..7) priority prefix, as sd-daemon(3) defines it.
pub fn record(stream: Stream, line: &str) -> Record<'_> {
    let b = line.as_bytes();
    if b.len() >= 3 && b[0] == b'<' && (b'0'..=b'7').contains(&b[1]) && b[2] == b'>' {
        return Record { priority: b[1] - b'0', message: &line[3..] };
    }
    Record { priority: stream.default_priority(), message: line }
}

/// True when stderr is the stream systemd connected to journald (`JOURNAL_STREAM=dev:ino`).
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let stream = stream.to_string_lossy().into_owned();
    let Some((dev, ino)) = stream.split_once(':') else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// journald's native protocol socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Where worker records go.
#[derive(Debug)]
pub enum Sink {
    /// `name[slot]: line` on the master's stderr.
    Stderr,
    /// One JSON object per line on the master's stderr (which then is its stdout).
    Json,
    /// journald's native protocol, on a datagram socket connected to [`JOURNAL_SOCKET`].
    Journal(tokio::net::UnixDatagram),
}

impl Sink {
    /// A sink connected to journald at `path`.
    pub fn journal(path: &std::path::Path) -> std::io::Result<Sink> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        sock.connect(path)?;
        sock.set_nonblocking(true)?;
        Ok(Sink::Journal(tokio::net::UnixDatagram::from_std(sock)?))
    }

    pub async fn write(&self, origin: &Origin, rec: &Record<'_>) {
        match self {
            Sink::Stderr => write_stderr(origin, rec).await,
            Sink::Json => crate::output::stderr::write_waiting(json_line(origin, rec).as_bytes()).await,
            Sink::Journal(sock) => {
                let msg = journal_message(origin, rec);
                match sock.send(&msg).await {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                        if let Err(e) = send_memfd(sock, &msg) {
                            tracing::warn!(slot = origin.slot, "cannot send a large record to journald: {e}");
                            write_stderr(origin, rec).await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!("journald send failed ({e}); writing to stderr");
                        write_stderr(origin, rec).await;
                    }
                }
            }
        }
    }
}

/// Without blocking the loop: a slow stderr reader slows this worker's pipe, nothing else.
async fn write_stderr(origin: &Origin, rec: &Record<'_>) {
    // A log line is text for a terminal or a file: no escape sequence of the worker's gets through.
    let line = format!("{}[{}]: {}\n", origin.name, origin.slot, crate::text::escape_terminal(rec.message));
    crate::output::stderr::write_waiting(line.as_bytes()).await;
}

/// A worker's line as one JSON object, with the fields journald would get.
pub fn json_line(origin: &Origin, rec: &Record<'_>) -> String {
    let level = match rec.priority {
        0..=3 => "ERROR",
        4 => "WARN",
        5 | 6 => "INFO",
        _ => "DEBUG",
    };
    let mut line = serde_json::json!({
        "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        "level": level,
        "pool": &*origin.name,
        "worker": origin.slot,
        "pid": origin.pid,
        "generation": origin.generation,
        "message": rec.message,
    })
    .to_string();
    line.push('\n');
    line
}

/// One journal entry in the native protocol: `KEY=value` lines, or for values containing a
/// newline `KEY`, newline, 64-bit little-endian length, the bytes, newline.
pub fn journal_message(origin: &Origin, rec: &Record<'_>) -> Vec<u8> {
    let mut v = Vec::with_capacity(rec.message.len() + 160);
    let mut field = |key: &str, value: &[u8]| {
        if value.contains(&b'\n') {
            v.extend_from_slice(key.as_bytes());
            v.push(b'\n');
            v.extend_from_slice(&(value.len() as u64).to_le_bytes());
            v.extend_from_slice(value);
            v.push(b'\n');
        } else {
            v.extend_from_slice(key.as_bytes());
            v.push(b'=');
            v.extend_from_slice(value);
            v.push(b'\n');
        }
    };
    field("MESSAGE", rec.message.as_bytes());
    field("PRIORITY", rec.priority.to_string().as_bytes());
    field("SYSLOG_IDENTIFIER", origin.name.as_bytes());
    field("CORRAL_WORKER", origin.slot.to_string().as_bytes());
    field("CORRAL_WORKER_PID", origin.pid.to_string().as_bytes());
    field("CORRAL_GENERATION", origin.generation.to_string().as_bytes());
    field("OBJECT_PID", origin.pid.to_string().as_bytes());
    v
}

/// Send a record that does not fit in a datagram: write it to a memfd, seal it, pass the fd.
fn send_memfd(sock: &tokio::net::UnixDatagram, msg: &[u8]) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let fd = memfd_create("corral-journal", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(msg)?;
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    let fds = [file.as_raw_fd()];
    sendmsg::<()>(sock.as_raw_fd(), &[], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)?;
    Ok(())
}

/// Forward one pipe until EOF. Runs as a task; ends by itself when the worker (and any child
/// that inherited the pipe) has exited.
pub async fn forward(fd: OwnedFd, stream: Stream, origin: Origin, sink: Arc<Sink>) {
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(slot = origin.slot, pid = origin.pid, "cannot read worker output: {e}");
            return;
        }
    };
    // Nothing is allocated for a worker until it writes, and a line buffer that grew with a
    // burst is given back: an idle worker costs the master next to nothing, however many there are.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if let Err(e) = pipe.readable().await {
            tracing::warn!(slot = origin.slot, pid = origin.pid, "reading worker output failed: {e}");
            break;
        }
        // Read into the one scratch buffer all pipes share (the loop runs on one thread, and
        // nothing awaits between the read and the copy), then keep only what is unfinished.
        let got = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            pipe.try_read(&mut scratch).inspect(|&n| buf.extend_from_slice(&scratch[..n]))
        });
        // A worker that floods its output must not starve the loop: count each read against
        // tokio's cooperative budget, as an awaited read would.
        tokio::task::consume_budget().await;
        match got {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => continue,
            Err(e) => {
                tracing::warn!(slot = origin.slot, pid = origin.pid, "reading worker output failed: {e}");
                break;
            }
        }
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            emit(&buf[start..start + pos], stream, &origin, &sink).await;
            start += pos + 1;
        }
        buf.drain(..start);
        while buf.len() >= MAX_LINE {
            emit(&buf[..MAX_LINE], stream, &origin, &sink).await;
            buf.drain(..MAX_LINE);
        }
        if buf.is_empty() && buf.capacity() > READ_CHUNK {
            buf = Vec::new(); // give back what a burst of output took
        }
    }
    if !buf.is_empty() {
        emit(&buf, stream, &origin, &sink).await;
    }
}

async fn emit(line: &[u8], stream: Stream, origin: &Origin, sink: &Sink) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    if std::time::Instant::now() < origin.tail_until {
        if let Ok(mut tail) = origin.tail.lock() {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.chars().take(TAIL_CHARS).collect());
        }
    }
    sink.write(origin, &record(stream, &text)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_protocol_fields() {
        let origin = Origin {
            name: "api".into(),
            slot: 2,
            pid: 4242,
            generation: 3,
            tail: Tail::default(),
            tail_until: std::time::Instant::now(),
        };
        let msg = journal_message(&origin, &Record { priority: 3, message: "boom" });
        assert_eq!(
            String::from_utf8(msg).unwrap(),
            "MESSAGE=boom\nPRIORITY=3\nSYSLOG_IDENTIFIER=api\nCORRAL_WORKER=2\nCORRAL_WORKER_PID=4242\nCORRAL_GENERATION=3\nOBJECT_PID=4242\n"
        );
        let msg = journal_message(&origin, &Record { priority: 6, message: "a\nb" });
        assert!(msg.starts_with(b"MESSAGE\n\x03\0\0\0\0\0\0\0a\nb\n"));
    }

    #[test]
    fn priority_prefixes() {
        assert_eq!(record(Stream::Stdout, "hello"), Record { priority: 6, message: "hello" });
        assert_eq!(record(Stream::Stderr, "oops"), Record { priority: 3, message: "oops" });
        assert_eq!(record(Stream::Stdout, "<4>careful"), Record { priority: 4, message: "careful" });
        assert_eq!(record(Stream::Stdout, "<9>not a prefix"), Record { priority: 6, message: "<9>not a prefix" });
        assert_eq!(record(Stream::Stdout, "<4"), Record { priority: 6, message: "<4" });
    }
}
