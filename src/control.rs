//! The control socket: how `corral status`, `reload` and `scale` talk to a running master.
//!
//! One JSON request and one JSON reply per connection, over a unix stream socket in the pool's
//! runtime directory (`control.sock`, mode 0600). The server checks the peer's credentials
//! (`SO_PEERCRED`, `SO_PEERGROUPS`) before it reads anything: only root, the master's own uid
//! and, with `[control] group`, that group's members may ask (see [`ControlServer::admit_group`]
//! for the socket's mode then). Each
//! connection is served by a small task that hands the request to the driver's loop and writes
//! back what the loop answers; a client that sends nothing is dropped after a timeout, so no
//! client can stall the master.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::status::PoolStatus;

/// Largest request accepted.
const MAX_REQUEST: u64 = 64 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    /// `wait`: answer when the reload has finished (or failed), not when it started.
    Reload {
        wait: bool,
    },
    /// `"+2"`, `"-1"` or `"4"`.
    Scale {
        to: String,
    },
    /// Re-exec the binary now at the master's path, in place (`corral upgrade`). The reply
    /// comes once the new binary has been checked; the new image then takes over.
    Upgrade,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PoolStatus>,
}

impl Reply {
    pub fn ok(message: impl Into<String>) -> Reply {
        Reply { ok: true, message: Some(message.into()), error: None, status: None }
    }
    pub fn err(error: impl Into<String>) -> Reply {
        Reply { ok: false, message: None, error: Some(error.into()), status: None }
    }
    pub fn status(status: PoolStatus) -> Reply {
        Reply { ok: true, message: None, error: None, status: Some(status) }
    }
}

/// A request for the driver's loop, with where to send the answer.
pub struct Incoming {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}

pub struct ControlServer {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    gate: crate::gate::Gate,
    /// How `[control] group` was last applied. Read by each connection's task.
    access: std::sync::Arc<std::sync::RwLock<GroupAccess>>,
}

/// How [`ControlServer::admit_group`] opened the socket to a group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GroupAccess {
    /// Only root and the master's user (no group configured).
    #[default]
    Private,
    /// Mode 0660, the group's.
    Group { name: String, gid: u32 },
    /// The master may not give the socket to a group it is not in (it does not run as root):
    /// mode 0666, and the credentials check alone admits the group's members, as the D-Bus
    /// system bus does.
    CheckedOnly { name: String, gid: u32 },
}

impl GroupAccess {
    /// The group admitted, if any: its name and gid.
    fn group(&self) -> Option<(&str, u32)> {
        match self {
            GroupAccess::Private => None,
            GroupAccess::Group { name, gid } | GroupAccess::CheckedOnly { name, gid } => Some((name, *gid)),
        }
    }
}

impl ControlServer {
    /// Bind `path` (a leftover socket file is replaced; the runtime directory lock guarantees no
    /// other master uses it), mode 0600.
    pub fn bind(path: &Path) -> std::io::Result<ControlServer> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(ControlServer {
            listener: tokio::net::UnixListener::from_std(listener)?,
            path: path.to_owned(),
            gate: crate::gate::Gate::new("control socket"),
            access: Default::default(),
        })
    }

    /// Let members of `group` (`[control] group`) use the socket too, or, with `None`, no one
    /// but root and the master's user; a change is logged. Applied at start and at every
    /// reload. A group that does not exist is an error for the caller to report; the socket
    /// stays as it was.
    pub fn admit_group(&self, group: Option<&str>) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let set_mode = |mode: u32| {
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("cannot set the mode of {}: {e}", self.path.display()))
        };
        let Some(name) = group else {
            set_mode(0o600)?;
            self.remember(GroupAccess::Private);
            return Ok(());
        };
        let gid = group_gid(name)?;
        let access = match nix::unistd::chown(&self.path, None, Some(gid)) {
            Ok(()) => {
                set_mode(0o660)?;
                GroupAccess::Group { name: name.to_string(), gid: gid.as_raw() }
            }
            Err(nix::errno::Errno::EPERM) => {
                set_mode(0o666)?;
                GroupAccess::CheckedOnly { name: name.to_string(), gid: gid.as_raw() }
            }
            Err(e) => return Err(format!("cannot give {} to group {name:?}: {e}", self.path.display())),
        };
        self.remember(access);
        Ok(())
    }

    /// Keep `access` for the connections to come; say so when it changed.
    fn remember(&self, access: GroupAccess) {
        let mut kept = self.access.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *kept == access {
            return;
        }
        match &access {
            GroupAccess::Private => {}
            GroupAccess::Group { name, gid } => tracing::info!(
                "control socket {}: members of group {name} (gid {gid}) may use it (mode 0660)",
                self.path.display()
            ),
            GroupAccess::CheckedOnly { name, gid } => tracing::info!(
                "control socket {}: members of group {name} (gid {gid}) may use it; this master is not in \
                 that group, so the socket is mode 0666 and the credentials check alone refuses everyone else",
                self.path.display()
            ),
        }
        *kept = access;
    }

    /// Members of a group may come through the runtime directory to the socket.
    pub fn open_to_others(&self) -> bool {
        *self.access.read().unwrap_or_else(std::sync::PoisonError::into_inner) != GroupAccess::Private
    }

    /// The socket a previous image of this master bound (`corral upgrade`).
    pub fn from_fd(fd: std::os::fd::OwnedFd, path: &Path) -> std::io::Result<ControlServer> {
        let listener = std::os::unix::net::UnixListener::from(fd);
        listener.set_nonblocking(true)?;
        Ok(ControlServer {
            listener: tokio::net::UnixListener::from_std(listener)?,
            path: path.to_owned(),
            gate: crate::gate::Gate::new("control socket"),
            access: Default::default(),
        })
    }

    /// Its descriptor and path, for `corral upgrade`.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.listener)
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept one connection and serve it in its own task; requests reach `to_driver`. At most
    /// [`crate::gate::MAX_CONNECTIONS`] are served at once; accept errors pause, never spin.
    pub async fn accept(&self, to_driver: mpsc::UnboundedSender<Incoming>) {
        let permit = self.gate.admit().await;
        match self.listener.accept().await {
            Ok((stream, _)) => {
                let access = self.access.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                tokio::spawn(async move {
                    serve(stream, access, to_driver).await;
                    drop(permit);
                });
            }
            Err(e) => self.gate.failed(&e),
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(mut stream: tokio::net::UnixStream, access: GroupAccess, to_driver: mpsc::UnboundedSender<Incoming>) {
    let reply = match authorize(&stream, access.group()) {
        Err(refusal) => Reply::err(refusal.to_string()),
        Ok(()) => match read_request(&mut stream).await {
            Err(e) => Reply::err(e.to_string()),
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if to_driver.send(Incoming { request, reply: tx }).is_err() {
                    Reply::err("the master is shutting down")
                } else {
                    rx.await.unwrap_or_else(|_| Reply::err("the master is shutting down"))
                }
            }
        },
    };
    let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| r#"{"ok":false,"error":"encoding"}"#.into());
    text.push('\n');
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The gid of `[control] group` `name`, or what `corral check` and the master say when there is
/// none.
pub fn group_gid(name: &str) -> Result<nix::unistd::Gid, String> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(format!(
            "control.group: there is no group {name:?} (the corral package creates `corral`; else create it with \
             groupadd, or remove control.group)"
        )),
        Err(e) => Err(format!("control.group: cannot look up group {name:?}: {e}")),
    }
}

/// Why the control socket answers a connection with a refusal (the reply's `error`).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "permission denied: uid {uid} may not control this pool (only root, uid {me}{})",
        match group { Some(g) => format!(" and members of group {g}"), None => String::new() }
    )]
    NotAllowed { uid: u32, me: u32, group: Option<String> },
    #[error("cannot check the caller's credentials: {0}")]
    Credentials(std::io::Error),
    #[error("timed out waiting for the request")]
    Timeout,
    #[error("cannot read the request: {0}")]
    Read(std::io::Error),
    #[error("request too large")]
    TooLarge,
    #[error("invalid request: {0}")]
    Invalid(serde_json::Error),
    #[error(transparent)]
    Scale(#[from] BadScale),
}

/// Root, the master's own uid and members of `group` may control the pool; anyone else gets a
/// refusal and nothing of theirs is read. Membership is the peer's own at `connect()`: its
/// primary gid or one of its supplementary groups, as the kernel judges file access (a user
/// just added to the group logs in again first, as for a file of the group's).
fn authorize(stream: &tokio::net::UnixStream, group: Option<(&str, u32)>) -> Result<(), RequestError> {
    let me = nix::unistd::geteuid().as_raw();
    let cred = stream.peer_cred().map_err(RequestError::Credentials)?;
    if cred.uid() == 0 || cred.uid() == me {
        return Ok(());
    }
    if let Some((_, gid)) = group {
        let member = cred.gid() == gid
            || crate::os::peer::groups(std::os::fd::AsFd::as_fd(stream))
                .map_err(RequestError::Credentials)?
                .contains(&gid);
        if member {
            return Ok(());
        }
    }
    tracing::warn!("control request from uid {} refused", cred.uid());
    Err(RequestError::NotAllowed { uid: cred.uid(), me, group: group.map(|(name, _)| name.to_string()) })
}

async fn read_request(stream: &mut tokio::net::UnixStream) -> Result<Request, RequestError> {
    let mut buf = Vec::new();
    let mut limited = (&mut *stream).take(MAX_REQUEST + 1);
    match tokio::time::timeout(READ_TIMEOUT, limited.read_to_end(&mut buf)).await {
        Err(_) => return Err(RequestError::Timeout),
        Ok(Err(e)) => return Err(RequestError::Read(e)),
        Ok(Ok(_)) if buf.len() as u64 > MAX_REQUEST => return Err(RequestError::TooLarge),
        Ok(Ok(_)) => {}
    }
    parse_request(&buf)
}

/// A request as the control socket receives it (at most [`MAX_REQUEST`] bytes of JSON).
pub fn parse_request(bytes: &[u8]) -> Result<Request, RequestError> {
    if bytes.len() as u64 > MAX_REQUEST {
        return Err(RequestError::TooLarge);
    }
    let request: Request = serde_json::from_slice(bytes).map_err(RequestError::Invalid)?;
    if let Request::Scale { to } = &request {
        parse_scale(to)?;
    }
    Ok(request)
}

/// Client side: why a pool could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no pool {name:?} is running here (no control socket at {path})")]
    NotRunning { name: String, path: String },
    #[error("pool {name:?} is not running: {path} is stale (its master is gone)")]
    Stale { name: String, path: String },
    #[error(
        "permission denied on {path}: run as root, as the user the pool runs as, or as a member of the \
         pool's control.group (see corral(1), SECURITY)"
    )]
    Permission { path: String },
    #[error("talking to pool {name:?} failed: {error}")]
    Io { name: String, error: String },
}

/// Send one request and wait for the reply (up to `timeout`).
/// Send `request` to pool `name`'s master, found where `corral status` looks for it.
pub fn ask(name: &str, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let path = crate::rundir::control_socket(name)
        .map_err(|error| ClientError::Io { name: name.to_string(), error: error.to_string() })?;
    call(name, &path, request, timeout)
}

pub fn call(name: &str, path: &Path, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let p = path.display().to_string();
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ClientError::NotRunning { name: name.into(), path: p.clone() },
        std::io::ErrorKind::ConnectionRefused => ClientError::Stale { name: name.into(), path: p.clone() },
        std::io::ErrorKind::PermissionDenied => ClientError::Permission { path: p.clone() },
        _ => ClientError::Io { name: name.into(), error: e.to_string() },
    })?;
    let io = |e: std::io::Error| ClientError::Io { name: name.into(), error: e.to_string() };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let body = serde_json::to_vec(request).map_err(|e| ClientError::Io { name: name.into(), error: e.to_string() })?;
    // A refusal may come before the request is all written: its answer is read all the same.
    let sent = stream.write_all(&body).and_then(|()| stream.shutdown(std::net::Shutdown::Write));
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => {}
        // A master that refuses the caller answers and closes without reading the request; the
        // kernel then reports the unread request as a reset, after the answer.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !bytes.is_empty() => {}
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            return Err(ClientError::Io {
                name: name.into(),
                error: format!("no answer within {}", humantime::format_duration(timeout)),
            })
        }
        Err(e) => return Err(io(sent.err().unwrap_or(e))),
    }
    if bytes.is_empty() {
        sent.map_err(io)?;
    }
    let text = String::from_utf8_lossy(&bytes);
    serde_json::from_str(&text).map_err(|e| ClientError::Io { name: name.into(), error: format!("invalid reply: {e}") })
}

/// A worker count `corral scale` cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadScale {
    #[error("invalid worker count {0:?}: use N, +N or -N")]
    NotACount(String),
    #[error("a pool needs at least 1 worker")]
    Zero,
}

/// Parse `corral scale` arguments: `N`, `+N`, `-N`.
pub fn parse_scale(to: &str) -> Result<crate::pool::ScaleRequest, BadScale> {
    use crate::pool::ScaleRequest;
    let bad = || BadScale::NotACount(to.to_string());
    let t = to.trim();
    if let Some(n) = t.strip_prefix('+') {
        return n.parse::<i64>().map(ScaleRequest::Add).map_err(|_| bad());
    }
    if t.starts_with('-') {
        return t.parse::<i64>().map(ScaleRequest::Add).map_err(|_| bad());
    }
    match t.parse::<usize>() {
        Ok(0) => Err(BadScale::Zero),
        Ok(n) => Ok(ScaleRequest::Set(n)),
        Err(_) => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::ScaleRequest;

    #[test]
    fn scale_arguments() {
        assert_eq!(parse_scale("4"), Ok(ScaleRequest::Set(4)));
        assert_eq!(parse_scale("+2"), Ok(ScaleRequest::Add(2)));
        assert_eq!(parse_scale("-1"), Ok(ScaleRequest::Add(-1)));
        assert!(parse_scale("0").is_err());
        assert!(parse_scale("lots").is_err());
    }

    #[test]
    fn request_json_is_stable() {
        assert_eq!(serde_json::to_string(&Request::Reload { wait: true }).unwrap(), r#"{"cmd":"reload","wait":true}"#);
        assert_eq!(serde_json::to_string(&Request::Status).unwrap(), r#"{"cmd":"status"}"#);
        let r: Request = serde_json::from_str(r#"{"cmd":"scale","to":"+1"}"#).unwrap();
        assert_eq!(r, Request::Scale { to: "+1".into() });
    }
}
