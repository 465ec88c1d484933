//! The last step of a stop: processes the workers left behind. A daemonized grandchild keeping
//! the port bound, say, is re-parented to the master (a subreaper); once every worker has
//! stopped, these get the stop signal, then SIGKILL at `stop.timeout`, as systemd stops what is
//! left in a unit's cgroup, and the master exits when none is left.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::pool::Event;

use super::Driver;

/// The last step of a stop: processes left behind by workers.
pub(super) struct Strays {
    /// The pool's exit status, used once they are gone.
    exit_code: i32,
    /// When they get SIGKILL.
    kill_at: tokio::time::Instant,
    /// SIGKILL was sent.
    killed: bool,
}

impl Driver {
    /// The pool has stopped every worker. Processes the workers left behind (a daemonized
    /// grandchild keeping the port bound, say) are ours as subreaper: stop them too, as
    /// systemd stops what is left in a unit's cgroup, then exit.
    pub(super) fn finish(&mut self, code: i32) {
        let left = self.left_behind();
        if left.is_empty() {
            tracing::info!("all workers stopped, exiting with {code}");
            self.exit = Some(code);
            return;
        }
        let stop = self.pool.config().stop.clone();
        tracing::warn!(
            "all workers stopped; {} processes they left behind still run (pids {left:?}): sending {}, SIGKILL in {}",
            left.len(),
            stop.signal.0.as_str(),
            humantime::format_duration(stop.timeout.0)
        );
        for pid in &left {
            signal_process_and_group(*pid, stop.signal.0);
        }
        let kill_at = tokio::time::Instant::now().checked_add(stop.timeout.0).unwrap_or_else(tokio::time::Instant::now);
        self.strays = Some(Strays { exit_code: code, kill_at, killed: false });
    }

    /// The master's children that are no worker: what workers left behind (re-parented to us as
    /// subreaper), but not the watcher of the master's death.
    fn left_behind(&self) -> Vec<Pid> {
        let mut left = crate::sampler::own_children();
        if let Some(w) = &self.watcher {
            left.retain(|p| *p != w.pid);
        }
        left
    }

    /// SIGTERM/SIGINT: a graceful stop, or, when one is under way, stop now.
    pub(super) fn on_stop_signal(&mut self) {
        if self.strays.is_some() {
            self.kill_strays();
        } else {
            self.dispatch(Event::Stop);
        }
    }

    pub(super) fn kill_strays(&mut self) {
        let left = self.left_behind();
        tracing::warn!("processes left behind by workers did not stop in time: SIGKILL to {left:?}");
        for pid in &left {
            signal_process_and_group(*pid, Signal::SIGKILL);
        }
        if let Some(s) = &mut self.strays {
            s.killed = true;
            if left.is_empty() {
                self.exit = Some(s.exit_code);
            }
        }
    }

    /// A child that was no worker was reaped: if the pool is waiting for the left-behind
    /// processes and none is left, exit.
    pub(super) fn stray_reaped(&mut self) {
        if let Some(s) = &self.strays {
            if self.left_behind().is_empty() {
                tracing::info!("processes left behind by workers are gone, exiting with {}", s.exit_code);
                self.exit = Some(s.exit_code);
            }
        }
    }
}

/// Signal a process and, when it leads one, its process group (a daemon that called setsid).
pub(super) fn signal_process_and_group(pid: Pid, signal: Signal) {
    if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
        let _ = killpg(pid, signal);
    }
    let _ = nix::sys::signal::kill(pid, signal);
}

pub(super) async fn stray_deadline(strays: Option<&Strays>) {
    match strays {
        Some(s) if !s.killed => tokio::time::sleep_until(s.kill_at).await,
        _ => std::future::pending().await,
    }
}
