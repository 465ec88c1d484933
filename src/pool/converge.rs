//! The converge story: after every event the workers are moved toward `desired` ready workers of
//! the target generation, like gunicorn's `manage_workers`. An empty slot gets a worker once its
//! backoff has passed; a slot whose ready worker is outdated (another generation, or marked for
//! replacement by the memory limit or recycling) gets a replacement, at most `reload.batch` in
//! flight, and the old worker is stopped once the replacement is ready; a starting worker of
//! another generation is stopped at once; slots beyond `desired` are stopped gracefully. Scaling
//! only changes `desired`.

use std::time::Instant;

use super::{
    Action, Enter, Generation, Notice, Phase, Pool, ReadyMode, Refusal, ReplyId, RestartReason, ScaleRequest, SlotId,
    StopReason, Worker, WorkerId, WorkerState, MAX_INSTANCES,
};

impl Pool {
    /// Converge the workers onto `desired` ready workers of the target generation.
    pub(super) fn converge(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.phase.serving() {
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
                self.enter(now, i, Enter::Stop(StopReason::ScaledDown), out);
            } else if w.generation != target && w.is_starting() {
                self.enter(now, i, Enter::Stop(StopReason::Obsolete), out);
            }
        }
        let batch = self.configs[&target].batch(self.desired);
        let mut in_flight = 0;
        let mut outdated = Vec::new();
        let mut empty = Vec::new();
        // One pass to group the live workers by slot: every slot is then looked at once.
        let by_slot = self.live_by_slot();
        for (slot, here) in by_slot.slots().enumerate() {
            let live = || here.iter().map(|&i| &self.workers[i]);
            let has_target = live().any(|w| w.is_current(target));
            let target_ready = live().any(|w| w.is_current(target) && w.is_ready());
            let old_ready = live().any(|w| !w.is_current(target) && w.is_ready());
            if target_ready && old_ready {
                // The replacement serves: the worker it replaces stops.
                for &i in here {
                    if !self.workers[i].is_current(target) {
                        self.enter(now, i, Enter::Stop(StopReason::Replaced), out);
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
        // Every worker process, stopping ones too, holds the master's descriptors. Slots are
        // filled while one process of room is left over, so a reload can always start a
        // replacement; a replacement may take that last room.
        let (capacity, nofile) = self.capacity;
        let fit = self.fit();
        let mut processes = self.workers.len();
        let mut refused = false;
        for slot in empty {
            let due = self.backoff_over(slot, now);
            if due && processes >= fit {
                refused = true;
            } else if due {
                processes += 1;
                self.spawn(now, slot, out);
            }
        }
        if refused && !self.out_of_descriptors {
            self.out_of_descriptors = true;
            self.notices.push(Notice::OutOfDescriptors { fit, wanted: self.desired, nofile });
        }
        for slot in outdated {
            // Out of room, a reload replaces one worker at a time: the reserve holds one
            // replacement, and the next starts once the worker it replaced has exited. When
            // nothing is in flight or leaving (a pool that runs more workers than a new config's
            // limit holds), one replacement goes ahead anyway, or the reload would never end.
            // (Workers on their way out hold their descriptors until they are reaped; looked for
            // only when out of room: this runs after every event.)
            let out_of_room =
                processes >= capacity.max(2) && (in_flight > 0 || self.workers.iter().any(|w| !w.is_live()));
            if in_flight >= batch || out_of_room {
                break;
            }
            // A replacement that failed waits out its slot's backoff like an empty slot (the
            // old worker serves meanwhile), or a start that fails at once (out of descriptors,
            // a missing program) would be asked for again in the same turn, forever.
            if !self.backoff_over(slot, now) {
                continue;
            }
            in_flight += 1;
            processes += 1;
            self.spawn(now, slot, out);
        }
        // Generations nobody runs any more are forgotten.
        let in_use: Vec<Generation> = self.workers.iter().map(|w| w.generation).collect();
        let keep_from = self.reload.as_ref().map(|r| r.from);
        self.configs.retain(|g, _| *g == target || Some(*g) == keep_from || in_use.contains(g));
    }

    /// `slot`'s restart backoff is over. A backoff that ended is forgotten, so that
    /// [`Pool::next_deadline`] never names a time already past for a slot that waits for
    /// something else (room in the descriptor limit, its turn in a reload's batch).
    fn backoff_over(&mut self, slot: SlotId, now: Instant) -> bool {
        let Some(info) = self.slots.get_mut(slot) else { return true };
        if info.not_before.is_some_and(|t| t > now) {
            return false;
        }
        info.not_before = None;
        true
    }

    /// Ask the driver for a worker of the target generation in `slot`.
    fn spawn(&mut self, now: Instant, slot: SlotId, out: &mut Vec<Action>) {
        let id = WorkerId(self.next_id);
        self.next_id += 1;
        let config = self.configs[&self.target].clone();
        // Gently only when someone serves meanwhile: the first generation starts at full speed,
        // and a worker ready on exec ("spawn" mode) has no start to spread.
        let gentle = config.ready.mode != ReadyMode::Spawn && self.workers.iter().any(|w| w.is_ready());
        let nice = if gentle { config.reload.start_nice.0 } else { 0 };
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
            niced: nice > 0,
            escalate_at: None,
        });
        out.push(Action::Spawn { id, slot, generation: self.target, config, nice });
    }

    /// Slots the master's descriptors can fill, keeping room for one replacement (see
    /// [`Event::Capacity`]).
    pub(super) fn fit(&self) -> usize {
        self.capacity.0.saturating_sub(1).max(1)
    }

    /// Every slot that can be filled has a ready worker of the target generation.
    pub(super) fn all_slots_ready_on_target(&self) -> bool {
        let wanted = self.desired.min(self.fit());
        let mut ready = vec![false; wanted];
        for w in &self.workers {
            if w.slot < wanted && w.generation == self.target && w.is_ready() {
                ready[w.slot] = true;
            }
        }
        ready.iter().all(|r| *r)
    }

    /// Indices of the live workers of each desired slot, in two passes and three allocations
    /// (a counting sort: this runs on every event and before every wait of the loop, so not
    /// one allocation per slot).
    pub(super) fn live_by_slot(&self) -> BySlot {
        let live = || self.workers.iter().enumerate().filter(|(_, w)| w.is_live() && w.slot < self.desired);
        let mut start = vec![0; self.desired + 1];
        for (_, w) in live() {
            start[w.slot + 1] += 1;
        }
        for s in 1..start.len() {
            start[s] += start[s - 1];
        }
        let mut next = start.clone();
        let mut index = vec![0; start[self.desired]];
        for (i, w) in live() {
            index[next[w.slot]] = i;
            next[w.slot] += 1;
        }
        BySlot { start, index }
    }

    /// A memory sample of `pid`'s process group: over `limits.memory`, the worker is marked for
    /// replacement without downtime.
    /// Worker `i`'s process group uses `rss` bytes.
    pub(super) fn on_memory(&mut self, i: usize, rss: u64) {
        let target = self.target;
        let Some(limit) = self.configs[&self.workers[i].generation].limits.memory else { return };
        let w = &mut self.workers[i];
        if rss > limit.0 && w.is_ready() && w.is_current(target) && self.phase.serving() {
            w.replace = Some(RestartReason::Memory);
            self.notices.push(Notice::OverMemory { worker: w.who(), rss, limit: limit.0 });
            self.count(RestartReason::Memory);
        }
    }

    /// Worker `i` reached its `recycle.after` age: marked for replacement without downtime.
    pub(super) fn recycle(&mut self, i: usize) {
        let w = &mut self.workers[i];
        w.replace = Some(RestartReason::Recycle);
        w.recycle_at = None;
        self.notices.push(Notice::RecycleAge(w.who()));
        self.count(RestartReason::Recycle);
    }

    /// `corral scale`, SIGTTIN/SIGTTOU: a new `desired`, saturating, at most [`MAX_INSTANCES`].
    pub(super) fn on_scale(&mut self, request: ScaleRequest, reply: Option<ReplyId>, out: &mut Vec<Action>) {
        let result = if self.phase != Phase::Running {
            Err(Refusal::Stopping)
        } else {
            let n = match request {
                ScaleRequest::Set(n) => i64::try_from(n).unwrap_or(i64::MAX),
                ScaleRequest::Add(d) => i64::try_from(self.desired).unwrap_or(i64::MAX).saturating_add(d),
            };
            let max = MAX_INSTANCES as i64;
            let (fit, nofile) = (self.fit(), self.capacity.1);
            if n > max {
                Err(Refusal::TooManyWorkers { max: MAX_INSTANCES, asked: n, workers: self.desired })
            } else if n > i64::try_from(fit).unwrap_or(i64::MAX) && n > i64::try_from(self.desired).unwrap_or(i64::MAX)
            {
                Err(Refusal::OutOfDescriptors { fit, nofile, asked: n as usize, workers: self.desired })
            } else {
                // Shrinking below one worker stops at one (`-1` on a single worker is a no-op).
                let n = n.max(1) as usize;
                self.notices.push(Notice::Scaling { from: self.desired, to: n });
                self.desired = n;
                Ok(format!("scaled to {n} workers"))
            }
        };
        if let Some(to) = reply {
            out.push(Action::Reply { to, result });
        }
    }
}

/// The live workers of each slot: [`BySlot::slots`] yields, for slot 0, 1, …, the indices of
/// its workers in `Pool::workers`, in the order they are there.
pub(super) struct BySlot {
    /// Where each slot's run starts in `index` (one more entry: the end of the last).
    start: Vec<usize>,
    index: Vec<usize>,
}

impl BySlot {
    pub(super) fn slots(&self) -> impl Iterator<Item = &[usize]> + '_ {
        self.start.windows(2).map(|w| &self.index[w[0]..w[1]])
    }
}
