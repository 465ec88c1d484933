//! What the driver reports about the pool: /proc samples of each worker's process group (which
//! feed the memory limit) and the status snapshot behind `corral status`, /metrics and /health.

use std::time::Instant;

use nix::unistd::Pid;

use crate::pool::{Event, ReloadResult};
use crate::status::{LastReload, PoolStatus, WorkerStatus};

use super::Driver;

impl Driver {
    /// Read RSS (and, with `cpu`, CPU times) of every worker's process group; feed memory
    /// figures to the pool. CPU times cost the kernel twice what RSS does, and only
    /// status and /metrics show them, so they are read when those ask (see
    /// [`crate::sampler::GroupSampler`]); a worker's CPU % is its average since the previous such
    /// reading at least half a second before, or since it started (as `ps` and PM2 show it).
    pub(super) fn sample(&mut self, cpu: bool) {
        if self.workers.is_empty() {
            return;
        }
        let wanted: Vec<i32> = self.workers.keys().map(|p| p.as_raw()).collect();
        let groups = self.sampler.sample(&wanted, cpu);
        let now = Instant::now();
        if cpu {
            self.last_cpu_sample = Some(now);
        }
        let tck = crate::sampler::clock_ticks();
        let mut samples = Vec::with_capacity(groups.len());
        for (pid, meta) in self.workers.iter_mut() {
            let Some(usage) = groups.get(&pid.as_raw()) else { continue };
            meta.rss = Some(usage.rss_bytes);
            samples.push((*pid, usage.rss_bytes));
            let Some(cpu_ticks) = usage.cpu_ticks else { continue };
            meta.group.clone_from(&usage.pids);
            meta.cpu_ticks = Some(cpu_ticks);
            match meta.cpu_base {
                // CPU % needs some distance between two samples to mean anything.
                Some((then, ticks)) if now.duration_since(then).as_secs_f64() >= 0.5 => {
                    let dt = now.duration_since(then).as_secs_f64();
                    meta.cpu_percent = Some(100.0 * cpu_ticks.saturating_sub(ticks) as f64 / tck / dt);
                    meta.cpu_base = Some((now, cpu_ticks));
                }
                Some(_) => {}
                None => meta.cpu_base = Some((now, cpu_ticks)),
            }
        }
        self.dispatch(Event::MemorySamples(samples));
    }

    /// Sample with CPU times unless the last such sample is younger than a second: what
    /// `corral status` and /metrics show is at most that old, and a pool of a thousand
    /// workers answers faster for it.
    pub(super) fn sample_for_report(&mut self) {
        if self.last_cpu_sample.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(1)) {
            self.sample(true);
        }
    }

    /// With `[metrics] workers`: the ready workers to ask for their own metrics (the ones being
    /// replaced are left out: their series end with them).
    pub(super) fn scrape_plan(&self) -> Option<crate::metrics::scrape::Plan> {
        let m = self.pool.config().metrics.as_ref().filter(|m| m.workers)?;
        let targets = self
            .pool
            .workers()
            .iter()
            .filter(|w| w.state == crate::pool::WorkerState::Ready)
            .filter_map(|w| {
                let pid = w.pid?;
                let socket = self.workers.get(&pid)?.metrics_socket.clone()?;
                Some(crate::metrics::scrape::Target {
                    slot: w.slot,
                    generation: w.generation,
                    pid: pid.as_raw(),
                    socket,
                })
            })
            .collect();
        Some(crate::metrics::scrape::Plan {
            targets,
            timeout: m.worker_timeout.0,
            max_size: m.worker_max_size.0,
            said: self.metrics_said.clone(),
        })
    }

    /// For `corral status` only (not /metrics and /health, which a load balancer polls): which
    /// of the processes holding a listening socket the listen detector sees accepting, for
    /// starting workers, and for every worker of a pool of up to
    /// [`crate::status::ACCEPTING_CHECKED_UP_TO`] (it reads each process's threads in /proc).
    pub(super) fn check_accepting(&self, status: &mut PoolStatus) {
        let all = status.workers.len() <= crate::status::ACCEPTING_CHECKED_UP_TO;
        for w in status.workers.iter_mut().filter(|w| all || w.state == crate::pool::WorkerPhase::Starting) {
            let accepting = w
                .listening_pids
                .iter()
                .copied()
                .filter(|p| crate::readiness::listen::is_accepting(*p, &self.listen_inodes));
            w.accepting_pids = Some(accepting.collect());
        }
    }

    /// The pool as `corral status`, /metrics and /health report it.
    pub(super) fn snapshot(&self) -> PoolStatus {
        let now = Instant::now();
        let tck = crate::sampler::clock_ticks();
        let mut workers: Vec<WorkerStatus> = self
            .pool
            .workers()
            .iter()
            .map(|w| {
                let meta = w.pid.and_then(|p| self.workers.get(&p));
                WorkerStatus {
                    slot: w.slot,
                    pid: w.pid.map(Pid::as_raw),
                    generation: w.generation,
                    state: w.state.phase(),
                    uptime_seconds: now.saturating_duration_since(w.started).as_secs_f64(),
                    restarts: self.pool.slot_info(w.slot).map_or(0, |s| s.restarts),
                    rss_bytes: meta.and_then(|m| m.rss),
                    cpu_percent: meta.and_then(|m| m.cpu_percent),
                    cpu_seconds: meta.and_then(|m| m.cpu_ticks.map(|t| t as f64 / tck)),
                    status: meta.and_then(|m| m.status.clone()),
                    replacing: w.replace.map(|r| r.as_str().to_string()),
                    processes: meta.filter(|m| !m.group.is_empty()).map(|m| m.group.len()),
                    listening_pids: meta
                        .map_or_else(Vec::new, |m| crate::sampler::holding(&m.group, &self.listen_inodes)),
                    accepting_pids: None,
                }
            })
            .collect();
        workers.sort_by_key(|w| (w.slot, w.generation));
        let ready = self.pool.ready_slots();
        let (reloads_succeeded, reloads_failed) = self.pool.reload_counts();
        PoolStatus {
            name: self.name.to_string(),
            version: crate::VERSION.to_string(),
            pid: std::process::id(),
            uptime_seconds: now.duration_since(self.started).as_secs_f64(),
            generation: self.pool.generation(),
            desired: self.pool.desired(),
            ready,
            reloading: self.pool.reloading(),
            last_reload: self.pool.last_reload().map(|r| match r {
                ReloadResult::Succeeded(g) => LastReload { ok: true, generation: Some(*g), error: None },
                ReloadResult::Failed(e) => LastReload { ok: false, generation: None, error: Some(e.clone()) },
            }),
            restarts: self.pool.restarts_total(),
            restarts_by_reason: self
                .pool
                .restarts_by_reason()
                .into_iter()
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
            reloads_succeeded,
            reloads_failed,
            log_messages_dropped: crate::output::stderr::dropped(),
            upgrades: self.upgrades,
            draining: self.pool.draining(),
            min_ready: self.pool.config().metrics.as_ref().map_or(1, |m| m.min_ready.resolve(self.pool.desired())),
            memory_limit_bytes: self.pool.config().limits.memory.map(|m| m.0),
            workers,
        }
    }
}
