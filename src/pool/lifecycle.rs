//! How the pool reacts to what happens to workers: spawned, ready, exited, late for a deadline,
//! over their memory limit or silent to the watchdog.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::*;

impl Pool {
    pub(super) fn on_spawned(&mut self, now: Instant, id: WorkerId, pid: Pid, out: &mut Vec<Action>) {
        let Some(i) = self.index_of(id) else { return };
        let ready = self.configs[&self.workers[i].generation].ready.clone();
        let w = &mut self.workers[i];
        w.pid = Some(pid);
        w.started = now;
        if let WorkerState::Stopping { reason, .. } = w.state {
            // Stopped while it was being forked: stop it now that it has a pid.
            self.stop_worker(now, i, reason, out);
            return;
        }
        w.state = match ready.mode {
            ReadyMode::Spawn => WorkerState::Starting { timeout_at: None, ready_at: None },
            ReadyMode::Delay => WorkerState::Starting { timeout_at: None, ready_at: Some(later(now, ready.delay.0)) },
            ReadyMode::Notify => {
                WorkerState::Starting { timeout_at: Some(later(now, ready.timeout.0)), ready_at: None }
            }
        };
        tracing::info!(slot = w.slot, pid = pid.as_raw(), generation = w.generation, "worker started");
        if ready.mode == ReadyMode::Spawn {
            self.mark_ready(now, i);
        }
        if self.phase != Phase::Running {
            self.stop_worker(now, i, StopReason::Shutdown, out);
        }
    }

    pub(super) fn mark_ready(&mut self, now: Instant, i: usize) {
        let config = self.configs[&self.workers[i].generation].clone();
        let w = &mut self.workers[i];
        w.state = WorkerState::Ready;
        w.ready_since = Some(now);
        self.failures_since_ready = 0;
        if let Some(r) = &config.recycle {
            // after ± jitter, spread over the workers.
            let offset = r.jitter.0.mul_f64(spread(w.id) * 2.0);
            let at = later(later(now, r.after.0), offset);
            w.recycle_at = Some(at.checked_sub(r.jitter.0).unwrap_or(at));
        }
        tracing::info!(slot = w.slot, pid = w.pid.map(Pid::as_raw), generation = w.generation, "worker ready");
    }

    pub(super) fn on_memory(&mut self, pid: Pid, rss: u64) {
        let target = self.target;
        let Some(i) = self.workers.iter().position(|w| w.pid == Some(pid)) else { return };
        let Some(limit) = self.configs[&self.workers[i].generation].limits.memory else { return };
        let w = &mut self.workers[i];
        if rss > limit.0 && w.is_ready() && w.is_current(target) && self.phase == Phase::Running {
            w.replace = Some(RestartReason::Memory);
            tracing::warn!(
                slot = w.slot,
                pid = pid.as_raw(),
                "worker uses {} of memory, over the {} limit: replacing it",
                bytesize::ByteSize(rss).display().iec(),
                bytesize::ByteSize(limit.0).display().iec()
            );
            self.count(RestartReason::Memory);
        }
    }

    pub(super) fn on_exited(&mut self, now: Instant, pid: Pid, status: ExitStatus, out: &mut Vec<Action>) {
        let Some(i) = self.workers.iter().position(|w| w.pid == Some(pid)) else {
            return;
        };
        let w = self.workers.remove(i);
        match w.state {
            WorkerState::Stopping { .. } => {
                tracing::info!(
                    slot = w.slot,
                    pid = pid.as_raw(),
                    generation = w.generation,
                    "worker stopped ({status})"
                );
            }
            _ if self.phase != Phase::Running => {}
            WorkerState::Ready => {
                tracing::warn!(
                    slot = w.slot,
                    pid = pid.as_raw(),
                    generation = w.generation,
                    "worker exited unexpectedly ({status})"
                );
                self.on_failure(
                    now,
                    &w,
                    RestartReason::Crash,
                    format!("worker {} (pid {pid}) exited with {status}", w.slot),
                    out,
                );
            }
            WorkerState::Spawning | WorkerState::Starting { .. } => {
                tracing::warn!(
                    slot = w.slot,
                    pid = pid.as_raw(),
                    generation = w.generation,
                    "worker exited before it was ready ({status})"
                );
                let reason = format!(
                    "worker {} (pid {pid}) of generation {} exited with {status} before it was ready",
                    w.slot, w.generation
                );
                self.on_failure(now, &w, RestartReason::Crash, reason, out);
            }
        }
    }

    pub(super) fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            match w.state {
                WorkerState::Starting { ready_at: Some(t), .. } if t <= now => self.mark_ready(now, i),
                WorkerState::Starting { timeout_at: Some(t), .. } if t <= now => {
                    let w = w.clone();
                    let timeout = self.configs[&w.generation].ready.timeout.0;
                    tracing::warn!(
                        slot = w.slot,
                        pid = w.pid.map(Pid::as_raw),
                        generation = w.generation,
                        "worker not ready after {}",
                        humantime::format_duration(timeout)
                    );
                    self.stop_worker(now, i, StopReason::ReadyTimeout, out);
                    let pid = w.pid.map_or_else(String::new, |p| format!(" (pid {p})"));
                    let reason = format!(
                        "worker {}{pid} of generation {} was not ready within {}",
                        w.slot,
                        w.generation,
                        humantime::format_duration(timeout)
                    );
                    self.on_failure(now, &w, RestartReason::ReadyTimeout, reason, out);
                }
                WorkerState::Ready if self.watchdog_due(w).is_some_and(|t| t <= now) => {
                    let w = w.clone();
                    let config = self.configs[&w.generation].clone();
                    let timeout = config.watchdog.as_ref().map(|wd| wd.timeout.0).unwrap_or_default();
                    let after = humantime::format_duration(timeout);
                    tracing::error!(
                        slot = w.slot,
                        pid = w.pid.map(Pid::as_raw),
                        "no WATCHDOG=1 for {after}: killing the worker with SIGABRT"
                    );
                    if let Some(pid) = w.pid {
                        out.push(Action::Signal { pid, signal: Signal::SIGABRT });
                    }
                    let kill_at = Some(later(now, config.stop.timeout.0));
                    self.workers[i].state = WorkerState::Stopping { reason: StopReason::Watchdog, kill_at };
                    let pid = w.pid.map_or_else(String::new, |p| format!(" (pid {p})"));
                    let reason = format!("worker {}{pid} sent no WATCHDOG=1 for {after}", w.slot);
                    self.on_failure(now, &w, RestartReason::Watchdog, reason, out);
                }
                WorkerState::Ready if w.recycle_at.is_some_and(|t| t <= now) && w.is_current(self.target) => {
                    tracing::info!(
                        slot = w.slot,
                        pid = w.pid.map(Pid::as_raw),
                        "worker reached its recycle age: replacing it"
                    );
                    self.workers[i].replace = Some(RestartReason::Recycle);
                    self.workers[i].recycle_at = None;
                    self.count(RestartReason::Recycle);
                }
                WorkerState::Stopping { reason, kill_at: Some(t) } if t <= now => {
                    if let Some(pid) = w.pid {
                        tracing::warn!(
                            slot = w.slot,
                            pid = pid.as_raw(),
                            "worker did not stop in time, sending SIGKILL"
                        );
                        out.push(Action::Signal { pid, signal: Signal::SIGKILL });
                    }
                    self.workers[i].state = WorkerState::Stopping { reason, kill_at: None };
                }
                _ => {}
            }
        }
    }

    /// The master did not run for (at least) `stalled`: the pause is not held against workers.
    /// Each watchdog starts a full period afresh (pings sent meanwhile may have been lost to a
    /// full socket queue, and when the master stopped is unknown), and ready deadlines move by
    /// the pause.
    pub(super) fn on_stalled(&mut self, now: Instant, stalled: Duration) {
        tracing::warn!(
            "the master did not run for {} or more (stopped or starved of CPU): workers' deadlines start afresh",
            humantime::format_duration(Duration::from_millis(stalled.as_millis() as u64))
        );
        for w in &mut self.workers {
            if w.is_ready() {
                w.last_ping = Some(now);
            }
            if let WorkerState::Starting { timeout_at: Some(t), ready_at } = w.state {
                w.state = WorkerState::Starting { timeout_at: Some(later(t, stalled)), ready_at };
            }
        }
    }

    /// When the watchdog of a ready worker expires, if its generation has one.
    pub(super) fn watchdog_due(&self, w: &Worker) -> Option<Instant> {
        let timeout = self.configs[&w.generation].watchdog.as_ref()?.timeout.0;
        Some(later(w.last_ping.or(w.ready_since)?, timeout))
    }

    /// A worker died or failed to start when nobody asked it to.
    pub(super) fn on_failure(
        &mut self,
        now: Instant,
        w: &Worker,
        kind: RestartReason,
        reason: String,
        out: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Running {
            return;
        }
        self.count(kind);
        let aborts_reload = self.reload.as_ref().is_some_and(|r| r.to == w.generation) && w.ready_since.is_none();
        let restart = self.configs[&w.generation].restart.clone();
        let uptime = now.saturating_duration_since(w.started);
        let slot = self.slot_mut(w.slot);
        if w.ready_since.is_some() && uptime >= restart.min_uptime.0 {
            slot.failures = 0;
        }
        slot.failures += 1;
        slot.restarts += 1;
        let exp = slot.failures.saturating_sub(1).min(30);
        let delay = restart.delay.0.saturating_mul(1u32 << exp).min(restart.max_delay.0);
        slot.not_before = Some(later(now, delay));
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
            tracing::error!(
                "giving up: {} failed starts in a row and no worker is ready (last: {reason})",
                self.failures_since_ready
            );
            self.begin_stop(now, 1, out);
        } else if self.ready_count() == 0 && self.crashes.len() > restart.max_restarts as usize {
            tracing::error!(
                "giving up: {} restarts within {} and no worker is ready (last: {reason})",
                self.crashes.len(),
                humantime::format_duration(restart.window.0)
            );
            self.begin_stop(now, 1, out);
        } else {
            tracing::info!(slot = w.slot, "restarting worker in {}", humantime::format_duration(delay));
        }
    }
}
