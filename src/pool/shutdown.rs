//! The shutdown story: SIGTERM/SIGINT stop every worker gracefully (`STOPPING=1`, the stop
//! signal, SIGKILL after `stop.timeout`, and `EXTEND_TIMEOUT_USEC=` so systemd waits long
//! enough); a second signal kills at once; once the last worker is reaped the pool exits. Giving
//! up takes the same path with exit status 1.

use std::time::Instant;

use super::{later, Action, Enter, Notice, Notify, Phase, Pool, Refusal, StopReason, EXTEND_MARGIN};

impl Pool {
    /// SIGTERM/SIGINT: a graceful stop, or (the second time) stop now. With `stop.drain`, the
    /// first one drains first (serving on, health 503) and a second one ends the drain.
    pub(super) fn on_stop(&mut self, now: Instant, out: &mut Vec<Action>) {
        let drain = self.configs[&self.target].stop.drain.0;
        match self.phase {
            Phase::Running if !drain.is_zero() => {
                self.phase = Phase::Draining { until: later(now, drain) };
                self.queued = None;
                if let Some(run) = self.reload.take() {
                    for to in run.replies {
                        out.push(Action::Reply { to, result: Err(Refusal::Stopping) });
                    }
                }
                self.notices.push(Notice::Draining(drain));
                let longest = self.workers.iter().map(|w| self.configs[&w.generation].stop.timeout.0).max();
                let wait = drain.saturating_add(longest.unwrap_or_default()).saturating_add(EXTEND_MARGIN);
                out.push(Action::Notify(vec![Notify::Stopping, Notify::ExtendTimeout(wait)]));
            }
            Phase::Running | Phase::Draining { .. } => self.begin_stop(now, 0, out),
            Phase::Stopping { .. } | Phase::Exited => self.stop_now(now, out),
        }
    }

    /// Stop every worker gracefully; the pool exits with `exit_code` once they are gone.
    pub(super) fn begin_stop(&mut self, now: Instant, exit_code: i32, out: &mut Vec<Action>) {
        self.notices.push(Notice::Stopping { workers: self.workers.len() });
        self.phase = Phase::Stopping { exit_code };
        self.queued = None;
        if let Some(run) = self.reload.take() {
            for to in run.replies {
                out.push(Action::Reply { to, result: Err(Refusal::Stopping) });
            }
        }
        let longest = self.workers.iter().map(|w| self.configs[&w.generation].stop.timeout.0).max().unwrap_or_default();
        out.push(Action::Notify(vec![Notify::Stopping, Notify::ExtendTimeout(longest.saturating_add(EXTEND_MARGIN))]));
        for i in 0..self.workers.len() {
            if self.workers[i].is_live() {
                self.enter(now, i, Enter::Stop(StopReason::Shutdown), out);
            }
        }
    }

    fn stop_now(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.notices.push(Notice::StoppingNow);
        for i in 0..self.workers.len() {
            self.enter(now, i, Enter::Kill, out);
        }
    }

    /// Stopping with no worker left: exit.
    pub(super) fn finish_stop(&mut self, out: &mut Vec<Action>) {
        if let Phase::Stopping { exit_code } = self.phase {
            if self.workers.is_empty() {
                self.phase = Phase::Exited;
                out.push(Action::Exit(exit_code));
            }
        }
    }
}
