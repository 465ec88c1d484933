//! `ready.mode = "ipc"`: the IPC channel Node's `child_process.fork` gives a child, so that an
//! unchanged PM2 app's `process.send('ready')` (PM2's `wait_ready`) makes its worker ready.
//!
//! Node opens the channel when it finds `NODE_CHANNEL_FD` (a descriptor number) in its
//! environment; with `NODE_CHANNEL_SERIALIZATION_MODE=json` (Node's default) each message is
//! one line of JSON. corral makes a UNIX stream socketpair per worker, places the worker's end
//! after the listening sockets, and reads the other end here: the string `"ready"` is the
//! worker's readiness; everything else (PM2 modules send metrics this way) is read and
//! dropped. corral never writes to the channel.
//!
//! A worker that floods the channel cannot stall the master: lines are cut at
//! [`MAX_LINE`], and once more than [`BUDGET`] bytes arrive within a second this task pauses
//! until the second is over (the worker's writes then wait in its own memory, not ours). A
//! program that is not Node never opens the descriptor, and nothing happens.

use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// A message longer than this is not a readiness message: the rest of it is skipped.
pub const MAX_LINE: usize = 64 * 1024;
/// Bytes read per second before the reader pauses.
pub const BUDGET: usize = 8 << 20;

/// A fresh channel: (the master's end, the worker's end). Both close on exec and block (the
/// worker gets a descriptor as Node's own fork makes it); the spawn places the worker's end at
/// its number, which clears close-on-exec there, and [`watch`] makes the master's non-blocking.
pub fn channel() -> std::io::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).map_err(std::io::Error::from)
}

/// Whether one line of Node's JSON serialization says the worker is ready: the string
/// `"ready"`, as `process.send('ready')` writes it. Longer lines are not even parsed.
pub fn is_ready(line: &[u8]) -> bool {
    line.len() <= 64
        && matches!(serde_json::from_slice::<serde_json::Value>(line), Ok(serde_json::Value::String(s)) if s == "ready")
}

/// Read worker `pid`'s channel until it closes; send `pid` to `ready` at its first `"ready"`.
pub async fn watch(fd: OwnedFd, pid: Pid, ready: mpsc::UnboundedSender<Pid>) {
    let std = std::os::unix::net::UnixStream::from(fd);
    let stream = match std.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(std)) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(pid = pid.as_raw(), "cannot watch the worker's IPC channel: {e}");
            return;
        }
    };
    read_messages(stream, pid, ready).await;
}

async fn read_messages(mut stream: tokio::net::UnixStream, pid: Pid, ready: mpsc::UnboundedSender<Pid>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let mut skipping = false;
    let mut sent = false;
    let mut ignored = 0u64;
    let mut window = tokio::time::Instant::now();
    let mut read_in_window = 0usize;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        read_in_window += n;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let (part, ended) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = &rest[part.len() + usize::from(ended)..];
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend_from_slice(&part[..part.len().min(room)]);
            skipping |= part.len() > room;
            if !ended {
                continue;
            }
            if !skipping && !sent && is_ready(&line) {
                sent = true;
                tracing::debug!(pid = pid.as_raw(), "worker sent 'ready' on its IPC channel");
                let _ = ready.send(pid);
            } else {
                ignored += 1;
                if ignored <= 3 {
                    tracing::debug!(
                        pid = pid.as_raw(),
                        "ignoring an IPC message from the worker ({} bytes{})",
                        line.len(),
                        if skipping { ", cut" } else { "" }
                    );
                }
            }
            line.clear();
            skipping = false;
        }
        let now = tokio::time::Instant::now();
        if now.duration_since(window) >= Duration::from_secs(1) {
            window = now;
            read_in_window = 0;
        } else if read_in_window >= BUDGET {
            tokio::time::sleep_until(window + Duration::from_secs(1)).await;
            window = tokio::time::Instant::now();
            read_in_window = 0;
        }
    }
    if ignored > 3 {
        tracing::debug!(pid = pid.as_raw(), "{ignored} IPC messages from the worker ignored in all");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn ready_messages() {
        assert!(is_ready(br#""ready""#));
        assert!(is_ready(br#"  "ready" "#));
        for other in
            [&br#""online""#[..], br#"{"raw":"ready"}"#, br#"{"cmd":"NODE_HANDLE_ACK"}"#, b"ready", b"", b"\xff"]
        {
            assert!(!is_ready(other), "{:?}", String::from_utf8_lossy(other));
        }
    }

    /// Junk, an overlong line that ends in "ready", then the real message: only the last
    /// counts, and exactly once.
    #[tokio::test]
    async fn reads_ready_once_among_junk() {
        let (master, worker) = channel().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(watch(master, Pid::from_raw(42), tx));
        let mut w = std::os::unix::net::UnixStream::from(worker);
        let writer = std::thread::spawn(move || {
            w.write_all(b"{\"type\":\"axm:monitor\"}\nnot json\n").unwrap();
            let mut long = vec![b' '; MAX_LINE + 10];
            long.extend(b"\"ready\"\n");
            w.write_all(&long).unwrap();
            w.write_all(b"\"ready\"\n\"ready\"\n").unwrap();
        });
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap();
        assert_eq!(got, Some(Pid::from_raw(42)));
        writer.join().unwrap();
        // The writer closed its end: the task ends, having sent once.
        tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
        assert_eq!(rx.recv().await, None);
    }
}
