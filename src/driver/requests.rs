//! Requests from outside the loop: control-socket commands, reload (SIGHUP or `corral reload`),
//! and notifications from workers, each turned into pool events.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::control;
use crate::pool::{Event, ReplyId};

use super::{Config, Driver, Incoming, Reply, Request};

impl Driver {
    pub(super) fn on_control(&mut self, incoming: Incoming) {
        let Incoming { request, reply } = incoming;
        match request {
            Request::Status => {
                self.sample_for_report();
                let mut status = self.snapshot();
                self.check_accepting(&mut status);
                let _ = reply.send(Reply::status(status));
            }
            Request::Reload { wait } => {
                if wait {
                    let id = self.remember(reply);
                    self.reload(Some(id));
                } else {
                    let _ = reply.send(Reply::ok("reload requested"));
                    self.reload(None);
                }
            }
            Request::Upgrade => self.begin_upgrade(Some(reply)),
            Request::Scale { to } => match control::parse_scale(&to) {
                Ok(request) => {
                    let id = self.remember(reply);
                    self.dispatch(Event::Scale { request, reply: Some(id) });
                }
                Err(e) => {
                    let _ = reply.send(Reply::err(e.to_string()));
                }
            },
        }
    }

    pub(super) fn remember(&mut self, reply: oneshot::Sender<Reply>) -> ReplyId {
        self.next_reply += 1;
        self.replies.insert(self.next_reply, reply);
        self.next_reply
    }

    /// Who besides root and the master's user may use the control socket (`[control] group`),
    /// and who goes through the runtime directory to it and to the notify socket (that group's
    /// members; workers of another user): at start and at every reload. What cannot be done is
    /// said, and changes nothing.
    pub(super) fn apply_access(&mut self, config: &Config) {
        if let Err(e) = self.control.admit_group(config.control.group.as_deref()) {
            tracing::error!("{e}; the control socket stays as it was");
        }
        let worker_gid = match &config.user {
            Some(user) if nix::unistd::geteuid().is_root() => {
                crate::launch::Credentials::lookup(user).ok().map(|c| c.gid)
            }
            _ => None,
        };
        if let Err(e) = self.runtime.set_access(worker_gid, self.control.open_to_others()) {
            tracing::warn!("{e}: workers of another user, or members of control.group, may not get through");
        }
        if let Some(gid) = worker_gid {
            let notify = self.notify.path().to_owned();
            let given = nix::unistd::chown(&notify, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(std::io::Error::from)
                .and_then(|()| std::fs::set_permissions(&notify, std::os::unix::fs::PermissionsExt::from_mode(0o660)));
            if let Err(e) = given {
                tracing::warn!("cannot give {} to the workers' group: {e}", notify.display());
            }
        }
    }

    pub(super) fn reload(&mut self, reply: Option<ReplyId>) {
        tracing::info!("reload requested: reading {}", self.config_path.display());
        let config = Config::load(&self.config_path).map(Arc::new);
        if let Ok(c) = &config {
            if c.listen != self.pool.config().listen && !self.sockets.activated {
                tracing::warn!(
                    "`listen` changed: sockets are kept across reloads; restart the service to listen elsewhere"
                );
            }
            // What a worker of the new config costs may differ (an IPC channel, metrics).
            self.tell_capacity(c);
            self.apply_access(c);
        }
        self.dispatch(Event::Reload { config, reply });
    }

    /// Handle every notification already waiting in the socket.
    pub(super) fn drain_notify(&mut self) {
        // Bounded: a worker flooding the socket cannot keep the loop here.
        for _ in 0..4096 {
            match self.notify.try_recv() {
                Ok(Some(msg)) => self.on_notify(msg),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("notify socket: {e}");
                    return;
                }
            }
        }
    }

    pub(super) fn on_notify(&mut self, msg: crate::notify::Message) {
        // A worker's own children (e.g. `npm start` → node) may speak for it if they stayed in
        // its process group, like systemd's NotifyAccess=all within the cgroup.
        let pid = if self.workers.contains_key(&msg.pid) {
            msg.pid
        } else {
            match nix::unistd::getpgid(Some(msg.pid)) {
                Ok(pgid) if self.workers.contains_key(&pgid) => pgid,
                _ => {
                    tracing::debug!(
                        pid = msg.pid.as_raw(),
                        "ignoring a notification from a process that is not a worker"
                    );
                    return;
                }
            }
        };
        if let Some(status) = msg.get("STATUS") {
            if let Some(meta) = self.workers.get_mut(&pid) {
                meta.status = Some(status.to_string());
            }
        }
        if msg.get("READY") == Some("1") {
            self.dispatch(Event::Ready { pid, signal: crate::config::ReadySignal::Notify });
        }
        if msg.get("WATCHDOG") == Some("1") {
            self.dispatch(Event::WatchdogPing { pid });
        }
    }
}
