//! Worker output: each worker's stdout and stderr pipes, read line by line by the master.
//!
//! Every line becomes a [`Record`] that knows which worker wrote it (slot, pid, generation) and
//! its priority (stdout 6, stderr 3, or a leading sd-daemon `<N>` prefix, which is stripped).
//! Records are written as `name[slot]: line` on the master's stderr. Lines longer than
//! [`MAX_LINE`] are split, not dropped; invalid UTF-8 is replaced, never fatal; a worker's last
//! lines are read until EOF, so nothing it wrote before exiting is lost. Each pipe is read by its
//! own task on the master's single thread, and tokio's cooperative budget keeps a flooding worker
//! from starving the event loop.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::AsyncReadExt;

/// Longest line forwarded as one record; longer ones are split.
pub const MAX_LINE: usize = 16 * 1024;
/// Bytes asked of the pipe per read.
const READ_CHUNK: usize = 4096;

/// Who wrote a line.
#[derive(Debug, Clone)]
pub struct Origin {
    pub name: Arc<str>,
    pub slot: usize,
    pub pid: i32,
    pub generation: u64,
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

/// Where worker records go.
#[derive(Debug)]
pub enum Sink {
    /// `name[slot]: line` on the master's stderr.
    Stderr,
}

impl Sink {
    pub fn write(&self, origin: &Origin, rec: &Record<'_>) {
        match self {
            Sink::Stderr => {
                let line = format!("{}[{}]: {}\n", origin.name, origin.slot, rec.message);
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }
}

/// Forward one pipe until EOF. Runs as a task; ends by itself when the worker (and any child
/// that inherited the pipe) has exited.
pub async fn forward(fd: OwnedFd, stream: Stream, origin: Origin, sink: Arc<Sink>) {
    let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(slot = origin.slot, pid = origin.pid, "cannot read worker output: {e}");
            return;
        }
    };
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(slot = origin.slot, pid = origin.pid, "reading worker output failed: {e}");
                break;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            emit(&buf[start..start + pos], stream, &origin, &sink);
            start += pos + 1;
        }
        buf.drain(..start);
        while buf.len() >= MAX_LINE {
            emit(&buf[..MAX_LINE], stream, &origin, &sink);
            buf.drain(..MAX_LINE);
        }
        if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
            buf = Vec::with_capacity(READ_CHUNK); // give back what a burst of output took
        }
    }
    if !buf.is_empty() {
        emit(&buf, stream, &origin, &sink);
    }
}

fn emit(line: &[u8], stream: Stream, origin: &Origin, sink: &Sink) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    sink.write(origin, &record(stream, &text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_prefixes() {
        assert_eq!(record(Stream::Stdout, "hello"), Record { priority: 6, message: "hello" });
        assert_eq!(record(Stream::Stderr, "oops"), Record { priority: 3, message: "oops" });
        assert_eq!(record(Stream::Stdout, "<4>careful"), Record { priority: 4, message: "careful" });
        assert_eq!(record(Stream::Stdout, "<9>not a prefix"), Record { priority: 6, message: "<9>not a prefix" });
        assert_eq!(record(Stream::Stdout, "<4"), Record { priority: 6, message: "<4" });
    }
}
