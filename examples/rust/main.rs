//! Minimal corral worker in Rust: the `listenfd` crate takes the socket at fd 3 (checking
//! LISTEN_PID like `sd_listen_fds()`), `sd-notify` sends READY=1, SIGTERM stops it gracefully.
//! Blocking std networking keeps it short; a real service would use its async runtime.
//!
//!     cargo build --release --example rust
//!     corral run -c examples/rust/corral.toml

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn main() -> std::io::Result<()> {
    let mut fds = listenfd::ListenFd::from_env();
    let listener: TcpListener = fds
        .take_tcp_listener(0)?
        .ok_or_else(|| std::io::Error::other("no listening socket: run me under corral or a systemd .socket unit"))?;
    // Shared with the other workers: poll instead of blocking in accept().
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook_lite(stop.clone());
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let pid = std::process::id();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                let mut reader = BufReader::new(stream.try_clone()?);
                let mut line = String::new();
                reader.read_line(&mut line)?;
                let body = match line.split_whitespace().nth(1) {
                    Some("/health") => format!("{{\"status\":\"ok\",\"pid\":{pid}}}"),
                    _ => format!("Hello from worker {pid}\n"),
                };
                let mut s = stream;
                write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e),
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    Ok(())
}

/// SIGTERM sets `stop`, without a signal-handling crate: a thread waits for the signal.
fn signal_hook_lite(stop: Arc<AtomicBool>) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if set.thread_block().is_ok() {
        std::thread::spawn(move || {
            let _ = set.wait();
            stop.store(true, Ordering::SeqCst);
        });
    }
}
