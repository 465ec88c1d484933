//! Converging the workers onto the target: spawn into empty slots, replace outdated workers
//! `reload.batch` at a time, stop what is no longer wanted, and stop everything on shutdown.

use std::time::Instant;

use nix::sys::signal::Signal;

use super::*;

impl Pool {
    pub(super) fn begin_stop(&mut self, now: Instant, exit_code: i32, out: &mut Vec<Action>) {
        tracing::info!("stopping {} workers", self.workers.len());
        self.phase = Phase::Stopping { exit_code };
        self.queued = None;
        if let Some(run) = self.reload.take() {
            for to in run.replies {
                out.push(Action::Reply { to, result: Err("the pool is stopping".into()) });
            }
        }
        let longest = self.workers.iter().map(|w| self.configs[&w.generation].stop.timeout.0).max().unwrap_or_default();
        out.push(Action::Notify(vec![Notify::Stopping, Notify::ExtendTimeout(longest.saturating_add(EXTEND_MARGIN))]));
        for i in 0..self.workers.len() {
            if self.workers[i].is_live() {
                self.stop_worker(now, i, StopReason::Shutdown, out);
            }
        }
    }

    pub(super) fn stop_now(&mut self, out: &mut Vec<Action>) {
        tracing::warn!("stopping now: killing every worker");
        for w in &mut self.workers {
            if let Some(pid) = w.pid {
                out.push(Action::Signal { pid, signal: Signal::SIGKILL });
            }
            let reason = match w.state {
                WorkerState::Stopping { reason, .. } => reason,
                _ => StopReason::Shutdown,
            };
            w.state = WorkerState::Stopping { reason, kill_at: None };
        }
    }

    /// Ask worker `i` to stop gracefully: its generation's stop signal, SIGKILL after the timeout.
    pub(super) fn stop_worker(&mut self, now: Instant, i: usize, reason: StopReason, out: &mut Vec<Action>) {
        let stop = self.configs[&self.workers[i].generation].stop.clone();
        let w = &mut self.workers[i];
        match w.pid {
            Some(pid) => {
                out.push(Action::Signal { pid, signal: stop.signal.0 });
                w.state = WorkerState::Stopping { reason, kill_at: Some(later(now, stop.timeout.0)) };
            }
            // Not forked yet: it will be stopped the moment it is (see `on_spawned`).
            None => w.state = WorkerState::Stopping { reason, kill_at: Some(now) },
        }
    }

    pub(super) fn spawn(&mut self, now: Instant, slot: SlotId, out: &mut Vec<Action>) {
        let id = WorkerId(self.next_id);
        self.next_id += 1;
        self.workers.push(Worker {
            id,
            slot,
            generation: self.target,
            pid: None,
            state: WorkerState::Spawning,
            started: now,
            ready_since: None,
            last_ping: None,
            replace: None,
            recycle_at: None,
        });
        out.push(Action::Spawn { id, slot, generation: self.target, config: self.configs[&self.target].clone() });
    }

    /// Converge the workers onto `desired` ready workers of the target generation.
    pub(super) fn reconcile(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.phase != Phase::Running {
            return;
        }
        let target = self.target;
        // Scale down, and stop starts that are no longer wanted.
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            if !w.is_live() {
                continue;
            }
            if w.slot >= self.desired {
                self.stop_worker(now, i, StopReason::ScaledDown, out);
            } else if w.generation != target && w.is_starting() {
                self.stop_worker(now, i, StopReason::Obsolete, out);
            }
        }
        let batch = self.configs[&target].batch(self.desired);
        let mut in_flight = 0;
        let mut outdated = Vec::new();
        let mut empty = Vec::new();
        for slot in 0..self.desired {
            let live = |w: &&Worker| w.slot == slot && w.is_live();
            let has_target = self.workers.iter().filter(live).any(|w| w.is_current(target));
            let target_ready = self.workers.iter().filter(live).any(|w| w.is_current(target) && w.is_ready());
            let old_ready = self.workers.iter().filter(live).any(|w| !w.is_current(target) && w.is_ready());
            if target_ready && old_ready {
                for i in 0..self.workers.len() {
                    let w = &self.workers[i];
                    if w.slot == slot && w.is_live() && !w.is_current(target) {
                        self.stop_worker(now, i, StopReason::Replaced, out);
                    }
                }
            } else if has_target && old_ready {
                in_flight += 1;
            } else if !has_target && old_ready {
                outdated.push(slot);
            } else if !has_target {
                empty.push(slot);
            }
        }
        for slot in empty {
            let due = self.slots.get(slot).and_then(|s| s.not_before).is_none_or(|t| t <= now);
            if due {
                self.spawn(now, slot, out);
            }
        }
        for slot in outdated {
            if in_flight >= batch {
                break;
            }
            in_flight += 1;
            self.spawn(now, slot, out);
        }
        // Generations nobody runs any more are forgotten.
        let in_use: Vec<Generation> = self.workers.iter().map(|w| w.generation).collect();
        let keep_from = self.reload.as_ref().map(|r| r.from);
        self.configs.retain(|g, _| *g == target || Some(*g) == keep_from || in_use.contains(g));
    }

    pub(super) fn all_slots_ready_on_target(&self) -> bool {
        (0..self.desired)
            .all(|slot| self.workers.iter().any(|w| w.slot == slot && w.generation == self.target && w.is_ready()))
    }
}
