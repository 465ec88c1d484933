//! The listening sockets workers inherit: received from systemd (`LISTEN_FDS`) or bound here.
//!
//! With socket activation the sockets come at fd 3.. and are checked to be listening sockets
//! (`SO_ACCEPTCONN`); anything else is refused with an error that says how to fix the unit.
//! Without it, the master binds every `listen` entry itself: TCP with `SO_REUSEADDR` and the
//! kernel's maximum backlog, unix sockets after removing a stale socket file (never a live one or
//! a file that is not a socket). This module never accepts a connection: workers do.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::ListenAddr;

/// One listening socket and the name workers see in `LISTEN_FDNAMES`.
#[derive(Debug)]
pub struct ListenSocket {
    pub fd: OwnedFd,
    pub name: String,
    /// Human description for logs: the address it listens on.
    pub address: String,
}

/// The outcome of [`ListenSockets::resolve`].
#[derive(Debug)]
pub struct Resolved {
    pub sockets: ListenSockets,
    /// How many came back from systemd's fd store.
    pub restored: usize,
    /// Names of stored sockets no longer in the config.
    pub stale: Vec<String>,
}

#[derive(Debug, Default)]
pub struct ListenSockets {
    pub sockets: Vec<ListenSocket>,
    /// True when systemd passed them (socket activation).
    pub activated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("LISTEN_FDS is set but invalid: {0}")]
    BadEnvironment(String),
    #[error(
        "fd {fd} (name {name:?}) passed by systemd is not a listening socket; corral needs stream sockets \
         from ListenStream= with Accept=no in the .socket unit"
    )]
    NotListening { fd: i32, name: String },
    #[error("cannot bind {address}: {source}{hint}")]
    Bind { address: String, source: io::Error, hint: &'static str },
    #[error("no sockets to listen on: add `listen = [\"127.0.0.1:3000\"]` to the config, or start corral from a .socket unit")]
    Nothing,
}

impl ListenSockets {
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.sockets.iter().map(|s| s.fd.as_fd()).collect()
    }

    /// `LISTEN_FDNAMES` for workers, in fd order.
    pub fn names(&self) -> String {
        self.sockets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(":")
    }

    /// Sockets systemd passed to this process, if any (`LISTEN_PID` must be ours).
    pub fn from_systemd() -> Result<Option<ListenSockets>, SocketError> {
        let fds = crate::os::fds::take_inherited_fds().map_err(|e| SocketError::BadEnvironment(e.to_string()))?;
        if fds.is_empty() {
            return Ok(None);
        }
        let mut sockets = Vec::new();
        for (fd, name) in fds {
            let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false);
            if !listening {
                return Err(SocketError::NotListening { fd: fd.as_raw_fd(), name });
            }
            let address = describe(&fd);
            sockets.push(ListenSocket { fd, name, address });
        }
        Ok(Some(ListenSockets { sockets, activated: true }))
    }

    /// The sockets for `listen`, from what systemd passed (`inherited`) and binding the rest.
    ///
    /// When every inherited socket is named after a `listen` entry, they are ours from systemd's
    /// fd store (kept there by a previous run, see [`crate::notify::SystemdNotifier::store_fds`]):
    /// they are reused, so a restart refuses no connection; entries without one are bound, and
    /// `stale` lists the names of stored sockets the config no longer has. Otherwise the
    /// inherited sockets are socket activation and `listen` is ignored.
    pub fn resolve(inherited: Option<ListenSockets>, listen: &[ListenAddr]) -> Result<Resolved, SocketError> {
        let names: Vec<String> = listen.iter().map(fd_name).collect();
        match inherited {
            None => Ok(Resolved { sockets: ListenSockets::bind(listen)?, restored: 0, stale: vec![] }),
            Some(inh) if !listen.is_empty() && inh.sockets.iter().all(|s| names.contains(&s.name)) => {
                let mut stored = inh.sockets;
                let mut sockets = Vec::new();
                let mut restored = 0;
                for addr in listen {
                    let name = fd_name(addr);
                    match stored.iter().position(|s| s.name == name) {
                        Some(i) => {
                            let mut s = stored.swap_remove(i);
                            s.address = addr.to_string();
                            sockets.push(s);
                            restored += 1;
                        }
                        None => sockets.extend(ListenSockets::bind(std::slice::from_ref(addr))?.sockets),
                    }
                }
                let stale = stored.into_iter().map(|s| s.name).collect();
                Ok(Resolved { sockets: ListenSockets { sockets, activated: false }, restored, stale })
            }
            Some(inh) => {
                if !listen.is_empty() {
                    tracing::info!("socket-activated: ignoring `listen` in the config");
                }
                Ok(Resolved { sockets: inh, restored: 0, stale: vec![] })
            }
        }
    }

    /// Bind every `listen` entry.
    pub fn bind(addrs: &[ListenAddr]) -> Result<ListenSockets, SocketError> {
        if addrs.is_empty() {
            return Err(SocketError::Nothing);
        }
        let mut sockets = Vec::new();
        for addr in addrs {
            let fd = bind_one(addr).map_err(|source| {
                let hint = match source.kind() {
                    io::ErrorKind::AddrInUse => " (is another pool or service already listening there?)",
                    io::ErrorKind::PermissionDenied => {
                        " (ports below 1024 need root or CAP_NET_BIND_SERVICE; use a .socket unit)"
                    }
                    _ => "",
                };
                SocketError::Bind { address: addr.to_string(), source, hint }
            })?;
            sockets.push(ListenSocket { fd, name: fd_name(addr), address: addr.to_string() });
        }
        Ok(ListenSockets { sockets, activated: false })
    }
}

/// A `LISTEN_FDNAMES` name for a socket we bound: its address, with the characters systemd does
/// not allow in names (`:` separates them; control characters) replaced by `_`.
pub fn fd_name(addr: &ListenAddr) -> String {
    let s = match addr {
        ListenAddr::Unix(p) => p.display().to_string(),
        other => other.to_string(),
    };
    s.chars().map(|c| if c == ':' || c.is_control() || !c.is_ascii() { '_' } else { c }).take(255).collect()
}

fn bind_one(addr: &ListenAddr) -> io::Result<OwnedFd> {
    let socket = match addr {
        ListenAddr::Tcp(a) => {
            let s = Socket::new(Domain::for_address(*a), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            if a.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.bind(&(*a).into())?;
            s
        }
        ListenAddr::Port(port) => {
            // Like systemd's ListenStream=PORT: IPv6 and IPv4 on one socket, IPv4 alone when the
            // kernel has no IPv6.
            match Socket::new(Domain::IPV6, Type::STREAM, None) {
                Ok(s) => {
                    s.set_reuse_address(true)?;
                    s.set_only_v6(false)?;
                    s.bind(&std::net::SocketAddr::from(([0u16; 8], *port)).into())?;
                    s
                }
                Err(_) => {
                    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                    s.set_reuse_address(true)?;
                    s.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], *port)).into())?;
                    s
                }
            }
        }
        ListenAddr::Unix(path) => {
            remove_stale_unix_socket(path)?;
            if let Some(dir) = path.parent() {
                if !dir.exists() {
                    std::fs::create_dir_all(dir)?;
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
                }
            }
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            s.bind(&SockAddr::unix(path)?)?;
            // Like systemd's SocketMode= default: anyone who can reach the directory may connect.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
            s
        }
    };
    // The kernel caps this at net.core.somaxconn.
    socket.listen(libc::SOMAXCONN.max(4096))?;
    socket.set_cloexec(true)?;
    Ok(socket.into())
}

/// Remove `path` if it is a unix socket nobody listens on; refuse anything else.
fn remove_stale_unix_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; remove it or choose another path",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(io::ErrorKind::AddrInUse, "another process is listening on this socket")),
        Err(_) => std::fs::remove_file(path),
    }
}

/// "127.0.0.1:3000" or "unix:/run/x.sock" for a socket fd, for logs.
fn describe(fd: &OwnedFd) -> String {
    // socket2 can describe any socket without owning it for long: borrow via a dup.
    let Ok(dup) = fd.try_clone() else {
        return format!("fd {}", fd.as_raw_fd());
    };
    let s = Socket::from(dup);
    match s.local_addr() {
        Ok(a) => match (a.as_socket(), a.as_pathname()) {
            (Some(ip), _) => ip.to_string(),
            (None, Some(p)) => format!("unix:{}", p.display()),
            _ => "unix socket".into(),
        },
        Err(_) => format!("fd {}", fd.as_raw_fd()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_tcp_and_unix_and_replaces_stale_unix_sockets() {
        let dir = std::env::temp_dir().join(format!("corral-sock-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/http.sock");
        let addrs = vec![ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()), ListenAddr::Unix(path.clone())];
        let s = ListenSockets::bind(&addrs).unwrap();
        assert_eq!(s.sockets.len(), 2);
        assert!(getsockopt(&s.sockets[1].fd, sockopt::AcceptConn).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        // Live socket: refused.
        let err = ListenSockets::bind(&addrs[1..]).unwrap_err().to_string();
        assert!(err.contains("another process is listening"), "{err}");
        drop(s);
        // Stale socket file left behind: replaced.
        let s = ListenSockets::bind(&addrs[1..]).unwrap();
        drop(s);
        // A regular file is never removed.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "data").unwrap();
        let err = ListenSockets::bind(&addrs[1..]).unwrap_err().to_string();
        assert!(err.contains("is not a socket"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stored_sockets_are_reused_by_name_and_missing_ones_bound() {
        let a: ListenAddr = "127.0.0.1:0".parse().unwrap();
        let stored = ListenSockets::bind(std::slice::from_ref(&a)).unwrap();
        let port = {
            let dup = stored.sockets[0].fd.try_clone().unwrap();
            Socket::from(dup).local_addr().unwrap().as_socket().unwrap().port()
        };
        // The stored socket was bound to port 0; name it as the config entry that uses its port.
        let entry: ListenAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut inherited = stored;
        inherited.sockets[0].name = fd_name(&entry);
        let other: ListenAddr = "127.0.0.1:0".parse().unwrap();
        let r = ListenSockets::resolve(Some(inherited), &[entry.clone(), other]).unwrap();
        assert_eq!((r.restored, r.sockets.sockets.len(), r.stale.len()), (1, 2, 0));
        assert!(!r.sockets.activated);
        // Inherited sockets named otherwise are socket activation: used as they are.
        let mut act = ListenSockets::bind(std::slice::from_ref(&a)).unwrap();
        act.sockets[0].name = "http".into();
        act.activated = true;
        let r = ListenSockets::resolve(Some(act), &[entry]).unwrap();
        assert_eq!((r.restored, r.sockets.sockets[0].name.as_str()), (0, "http"));
        assert!(r.sockets.activated);
    }

    #[test]
    fn fd_names_never_contain_colons() {
        assert_eq!(fd_name(&"127.0.0.1:3000".parse().unwrap()), "127.0.0.1_3000");
        assert_eq!(fd_name(&"[::1]:80".parse().unwrap()), "[__1]_80");
        assert_eq!(fd_name(&"unix:/run/a/http.sock".parse().unwrap()), "/run/a/http.sock");
    }

    #[test]
    fn address_in_use_says_what_to_do() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let err = ListenSockets::bind(&[ListenAddr::Tcp(addr)]).unwrap_err().to_string();
        assert!(err.starts_with(&format!("cannot bind {addr}: ")), "{err}");
        assert!(err.contains("already listening"), "{err}");
    }
}
