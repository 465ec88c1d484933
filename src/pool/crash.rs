//! The crash story: a worker exits when nobody asked it to, cannot be started, is not ready in
//! time or stops answering its watchdog. Its slot restarts after a backoff (`restart.delay`
//! doubling to `restart.max_delay`, reset by `min_uptime` of readiness); a failure of the new
//! generation during a reload aborts the reload; and a pool with no ready worker gives up after
//! `max_restarts` failures so that systemd takes over.

use std::time::{Duration, Instant};

use super::{
    later, Action, Enter, ExitStatus, Notice, Pid, Pool, RestartReason, StopOutcome, StopReason, Worker, WorkerId,
    WorkerState, EARLY_EXIT,
};

impl Pool {
    /// The driver could not fork or exec worker `id`.
    pub(super) fn on_spawn_failed(&mut self, now: Instant, id: WorkerId, error: String, out: &mut Vec<Action>) {
        let Some(i) = self.index_of(id) else { return };
        let Some(w) = self.enter(now, i, Enter::Gone, out) else { return };
        let reason = format!("worker {} of generation {} could not start: {error}", w.slot, w.generation);
        self.notices.push(Notice::CannotStart(w.who(), error));
        self.on_failure(now, &w, RestartReason::SpawnFailed, reason, out);
    }

    /// A worker process was reaped.
    pub(super) fn on_exited(
        &mut self,
        now: Instant,
        pid: Pid,
        status: ExitStatus,
        last_output: Vec<String>,
        out: &mut Vec<Action>,
    ) {
        let Some(i) = self.workers.iter().position(|w| w.pid == Some(pid)) else { return };
        let Some(w) = self.enter(now, i, Enter::Gone, out) else { return };
        if !w.is_live() {
            let outcome = match w.state {
                WorkerState::Stopping { kill_at, .. } => {
                    let timeout = self.configs.get(&w.generation).map_or(Duration::ZERO, |c| c.stop.timeout.0);
                    let signalled = kill_at.checked_sub(timeout).unwrap_or(kill_at);
                    StopOutcome::OnItsOwn(now.saturating_duration_since(signalled), timeout)
                }
                _ => StopOutcome::Killed,
            };
            self.notices.push(Notice::Stopped(w.who(), status, outcome));
            return;
        }
        if !self.phase.serving() {
            return;
        }
        let reason = if w.is_ready() {
            self.notices.push(Notice::ExitedUnexpectedly(w.who(), status));
            format!("worker {} (pid {pid}) exited with {status}", w.slot)
        } else {
            let after = now.saturating_duration_since(w.started);
            let last_output = if after < EARLY_EXIT { last_output } else { Vec::new() };
            self.notices.push(Notice::ExitedBeforeReady(w.who(), status, after, last_output));
            format!(
                "worker {} (pid {pid}) of generation {} exited with {status} before it was ready",
                w.slot, w.generation
            )
        };
        self.on_failure(now, &w, RestartReason::Crash, reason, out);
    }

    /// Worker `i` was not ready within `ready.timeout`: stopped, and its slot restarts.
    pub(super) fn not_ready_in_time(&mut self, now: Instant, i: usize, out: &mut Vec<Action>) {
        let w = self.workers[i].clone();
        let timeout = self.configs[&w.generation].ready.timeout.0;
        let mode = self.configs[&w.generation].ready.mode;
        self.notices.push(Notice::NotReadyInTime(w.who(), timeout, mode));
        self.enter(now, i, Enter::Stop(StopReason::ReadyTimeout), out);
        let pid = w.pid.map_or_else(String::new, |p| format!(" (pid {p})"));
        let reason = format!(
            "worker {}{pid} of generation {} was not ready within {}",
            w.slot,
            w.generation,
            humantime::format_duration(timeout)
        );
        self.on_failure(now, &w, RestartReason::ReadyTimeout, reason, out);
    }

    /// Worker `i` sent no `WATCHDOG=1` in time: SIGABRT (for a core dump, as systemd does), and
    /// its slot restarts.
    pub(super) fn watchdog_expired(&mut self, now: Instant, i: usize, out: &mut Vec<Action>) {
        let w = self.workers[i].clone();
        let timeout = self.configs[&w.generation].watchdog.as_ref().map(|wd| wd.timeout.0).unwrap_or_default();
        self.notices.push(Notice::WatchdogSilent(w.who(), timeout));
        self.enter(now, i, Enter::Stop(StopReason::Watchdog), out);
        let pid = w.pid.map_or_else(String::new, |p| format!(" (pid {p})"));
        let reason = format!("worker {}{pid} sent no WATCHDOG=1 for {}", w.slot, humantime::format_duration(timeout));
        self.on_failure(now, &w, RestartReason::Watchdog, reason, out);
    }

    /// A worker died or failed to start when nobody asked it to: back off its slot, abort a
    /// reload it belonged to, or give up.
    fn on_failure(&mut self, now: Instant, w: &Worker, kind: RestartReason, reason: String, out: &mut Vec<Action>) {
        if !self.phase.serving() {
            return;
        }
        self.count(kind);
        let aborts_reload = self.reload.as_ref().is_some_and(|r| r.to == w.generation) && w.ready_since.is_none();
        let restart = self.configs[&w.generation].restart.clone();
        let delay = self.back_off(now, w, &restart);
        self.restarts_total += 1;
        self.failures_since_ready = self.failures_since_ready.saturating_add(1);
        self.crashes.push_back(now);
        while self.crashes.front().is_some_and(|t| now.saturating_duration_since(*t) > restart.window.0) {
            self.crashes.pop_front();
        }
        if aborts_reload {
            self.abort_reload(reason, out);
        } else if self.ready_count() == 0 && self.failures_since_ready > restart.max_restarts {
            // Whatever the backoff: every failure counts, so a pool that never gets a worker
            // ready always gives up, and systemd's Restart=/OnFailure= take over.
            self.notices.push(Notice::GivingUpInARow { failures: self.failures_since_ready, last: reason });
            self.begin_stop(now, 1, out);
        } else if self.ready_count() == 0 && self.crashes.len() > restart.max_restarts as usize {
            let restarts = self.crashes.len();
            self.notices.push(Notice::GivingUpInWindow { restarts, window: restart.window.0, last: reason });
            self.begin_stop(now, 1, out);
        } else {
            self.notices.push(Notice::Restarting(w.who(), delay));
        }
    }

    /// Schedule the restart of `w`'s slot. A worker that was ready and up for `min_uptime`
    /// restarts at once: one crash after a healthy run is no crash loop. Failures in a row
    /// after that wait `delay`, doubled each time up to `max_delay`, as systemd's restart
    /// back-off steps do.
    fn back_off(&mut self, now: Instant, w: &Worker, restart: &crate::config::Restart) -> Duration {
        let uptime = now.saturating_duration_since(w.started);
        let slot = self.slot_mut(w.slot);
        slot.restarts += 1;
        if w.ready_since.is_some() && uptime >= restart.min_uptime.0 {
            slot.failures = 0;
            slot.not_before = Some(now);
            return Duration::ZERO;
        }
        slot.failures += 1;
        let exp = slot.failures.saturating_sub(1).min(30);
        let delay = restart.delay.0.saturating_mul(1u32 << exp).min(restart.max_delay.0);
        slot.not_before = Some(later(now, delay));
        delay
    }
}
