//! Both sides of sd_notify.
//!
//! [`NotifyServer`] is the datagram socket whose path workers get as `NOTIFY_SOCKET`. It has
//! `SO_PASSCRED` set, so every datagram carries the sender's pid (`SCM_CREDENTIALS`, filled in by
//! the kernel, not the sender); the driver only believes a message whose pid is a current worker.
//! Messages are parsed like systemd does: newline-separated `KEY=VALUE`, unknown keys ignored,
//! at most [`MAX_MESSAGE`] bytes (longer ones are dropped), file descriptors attached to a
//! message closed at once.
//!
//! [`SystemdNotifier`] sends the master's own state to the service manager's `NOTIFY_SOCKET`.
//! The `sd-notify` crate formats the fields; sending is done here because that crate does not
//! support the abstract namespace (`@` in `NOTIFY_SOCKET`), which systemd uses in containers.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials};
use nix::unistd::Pid;

/// systemd's limit for a notification datagram.
pub const MAX_MESSAGE: usize = 4096;

/// One datagram from a worker: who sent it (kernel-checked) and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub pid: Pid,
    pub fields: Vec<(String, String)>,
}

impl Message {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Parse `KEY=VALUE` lines. Lines without `=`, with an empty key, or not UTF-8 are skipped.
pub fn parse(data: &[u8]) -> Vec<(String, String)> {
    data.split(|b| *b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub struct NotifyServer {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl NotifyServer {
    /// Bind a datagram socket at `path` (replacing a leftover file). `mode` is its permission
    /// bits: workers that run as another user need write access to send.
    pub fn bind(path: &Path, mode: u32) -> io::Result<NotifyServer> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let sock = UnixDatagram::bind(path)?;
        sock.set_nonblocking(true)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        socket::setsockopt(&sock, sockopt::PassCred, &true)?;
        Ok(NotifyServer { socket: tokio::net::UnixDatagram::from_std(sock)?, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket a previous image of this master bound (`corral upgrade`).
    pub fn from_fd(fd: std::os::fd::OwnedFd, path: &Path) -> io::Result<NotifyServer> {
        let sock = UnixDatagram::from(fd);
        sock.set_nonblocking(true)?;
        Ok(NotifyServer { socket: tokio::net::UnixDatagram::from_std(sock)?, path: path.to_owned() })
    }

    /// Its descriptor, for `corral upgrade`.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// The next well-formed message. Datagrams without credentials or over the size limit are
    /// dropped here.
    pub async fn recv(&self) -> io::Result<Message> {
        let fd = self.socket.as_raw_fd();
        loop {
            self.socket.readable().await?;
            match self.socket.try_io(tokio::io::Interest::READABLE, || receive(fd)) {
                Ok(Some(msg)) => return Ok(msg),
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl NotifyServer {
    /// A message already waiting in the socket, without waiting for one. Used to take in every
    /// queued `WATCHDOG=1`/`READY=1` before deadlines are judged.
    pub fn try_recv(&self) -> io::Result<Option<Message>> {
        let fd = self.socket.as_raw_fd();
        loop {
            match self.socket.try_io(tokio::io::Interest::READABLE, || receive(fd)) {
                Ok(Some(msg)) => return Ok(Some(msg)),
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for NotifyServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Read one datagram. `Ok(None)`: it was not acceptable and has been discarded.
fn receive(fd: i32) -> io::Result<Option<Message>> {
    let mut buf = [0u8; MAX_MESSAGE + 1];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!(UnixCredentials, [i32; 16]);
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC;
    let msg = socket::recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), flags).map_err(io::Error::from)?;
    let mut pid = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => pid = Some(Pid::from_raw(cred.pid())),
                // Nobody may leave descriptors with us: close them.
                ControlMessageOwned::ScmRights(fds) => {
                    for fd in fds {
                        let _ = nix::unistd::close(fd);
                    }
                }
                _ => {}
            }
        }
    }
    let len = msg.bytes;
    if len > MAX_MESSAGE || msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        tracing::warn!("dropped an oversized notification ({len} bytes)");
        return Ok(None);
    }
    let Some(pid) = pid else { return Ok(None) };
    Ok(Some(Message { pid, fields: parse(&buf[..len]) }))
}

/// The master's channel to its own service manager.
///
/// Sends never block the event loop: the socket is non-blocking, and a message the receiver has
/// no room for waits in a backlog that the loop flushes when the socket becomes writable (see
/// [`SystemdNotifier::flush`]). systemd drains its socket quickly; this matters when it is slow
/// or stuck, which must not stall the pool.
pub struct SystemdNotifier {
    target: Option<tokio::net::UnixDatagram>,
    backlog: std::collections::VecDeque<Vec<u8>>,
}

/// Messages kept while the service manager is not reading; older ones are dropped beyond this.
const MAX_BACKLOG: usize = 1024;

impl SystemdNotifier {
    /// From `NOTIFY_SOCKET`, read once at start (inside the runtime). Workers never see it.
    pub fn from_env() -> SystemdNotifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
            let connect = || -> io::Result<tokio::net::UnixDatagram> {
                let addr = match bytes.strip_prefix(b"@") {
                    Some(name) => SocketAddr::from_abstract_name(name)?,
                    None => SocketAddr::from_pathname(Path::new(&path))?,
                };
                let sock = UnixDatagram::unbound()?;
                sock.connect_addr(&addr)?;
                sock.set_nonblocking(true)?;
                tokio::net::UnixDatagram::from_std(sock)
            };
            match connect() {
                Ok(sock) => Some(sock),
                Err(e) => {
                    tracing::warn!("ignoring NOTIFY_SOCKET={}: {e}", path.to_string_lossy());
                    None
                }
            }
        });
        SystemdNotifier { target, backlog: std::collections::VecDeque::new() }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Messages waiting for the service manager to read its socket.
    pub fn pending(&self) -> bool {
        !self.backlog.is_empty()
    }

    pub fn send(&mut self, states: &[sd_notify::NotifyState<'_>]) {
        if self.target.is_none() || states.is_empty() {
            return;
        }
        let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
        self.backlog.push_back(msg.into_bytes());
        if self.backlog.len() > MAX_BACKLOG {
            self.backlog.pop_front();
            tracing::warn!("the service manager is not reading notifications; dropped the oldest");
        }
        self.try_flush();
    }

    fn try_flush(&mut self) {
        let Some(sock) = &self.target else { return };
        while let Some(msg) = self.backlog.front() {
            match sock.try_send(msg) {
                Ok(_) => {
                    self.backlog.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("cannot notify the service manager: {e}");
                    self.backlog.pop_front();
                }
            }
        }
    }

    /// Hand listening sockets to the service manager's fd store (`FDSTORE=1`, one message per
    /// socket so each keeps its `FDNAME=`), so that a restart of the service gets them back and
    /// no connection is refused meanwhile. systemd keeps them only when the unit sets
    /// `FileDescriptorStoreMax=`; otherwise it drops them, which costs nothing. Sent at once (a
    /// start-up message; never queued behind the backlog).
    pub fn store_fds(&self, sockets: &[(String, std::os::fd::BorrowedFd<'_>)]) {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let Some(sock) = &self.target else { return };
        for (name, fd) in sockets {
            let msg = format!("FDSTORE=1\nFDNAME={name}\n");
            let fds = [fd.as_raw_fd()];
            let iov = [std::io::IoSlice::new(msg.as_bytes())];
            if let Err(e) =
                sendmsg::<()>(sock.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::MSG_DONTWAIT, None)
            {
                tracing::debug!("cannot store {name} with the service manager: {e}");
            }
        }
    }

    /// Ask the service manager to close stored sockets the config no longer lists.
    pub fn remove_stored(&mut self, names: &[String]) {
        for name in names {
            let remove = format!("FDSTOREREMOVE=1\nFDNAME={name}");
            self.send(&[sd_notify::NotifyState::Custom(&remove)]);
        }
    }

    /// Wait until the socket can take more, then send what is waiting. Never completes when
    /// nothing is pending, so it can sit in a `select!`.
    pub async fn flush(&mut self) {
        match (&self.target, self.backlog.is_empty()) {
            (Some(sock), false) => {
                if sock.writable().await.is_ok() {
                    self.try_flush();
                }
            }
            _ => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_systemd() {
        let fields = parse(b"READY=1\nSTATUS=listening on 3000\n\nnot a field\n=x\nlower=1\nWATCHDOG=1");
        assert_eq!(
            fields,
            vec![
                ("READY".into(), "1".into()),
                ("STATUS".into(), "listening on 3000".into()),
                ("WATCHDOG".into(), "1".into())
            ]
        );
        assert!(parse(&[0xff, 0xfe, b'\n']).is_empty());
    }

    #[test]
    fn server_checks_credentials_and_size() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let path = std::env::temp_dir().join(format!("corral-notify-test-{}.sock", std::process::id()));
            let server = NotifyServer::bind(&path, 0o600).unwrap();
            let client = UnixDatagram::unbound().unwrap();
            client.send_to(&vec![b'X'; MAX_MESSAGE + 10], &path).unwrap();
            client.send_to(b"READY=1\nSTATUS=hi", &path).unwrap();
            let msg = server.recv().await.unwrap();
            assert_eq!(msg.pid.as_raw() as u32, std::process::id());
            assert_eq!(msg.get("READY"), Some("1"));
            assert_eq!(msg.get("STATUS"), Some("hi"));
        });
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse(&data);
        }
    }
}
