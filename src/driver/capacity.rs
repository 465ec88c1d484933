//! How many worker processes the master's descriptors hold. Each worker costs the master a few
//! (its output pipes and the duplicates kept for `corral upgrade`, its Node IPC channel, a
//! connection when /metrics asks it); the master keeps room for itself and for the operator's
//! way in (the control socket, /metrics and /health, a spawn's own pipes); the sampler keeps
//! two files open per process it watches (and never more than a quarter of the limit). The pool
//! starts no worker beyond
//! that ([`Event::Capacity`]), so a low `LimitNOFILE=` leaves slots empty with one message
//! instead of failing starts and a master nobody can reach.

use crate::config::{Config, LogTarget, ReadyMode};
use crate::pool::Event;

use super::Driver;

/// Descriptors kept free for the operator's connections and the master's own transient needs
/// (a spawn's pipes, /proc reads, the upgrade's state file).
const RESERVE: usize = 16;

/// Files the sampler keeps open that no worker accounts for, opened after the master's own
/// descriptors are counted: the master's children list, `/proc/stat`, and the watcher's
/// statm and children list ([`crate::leftovers`]).
const SAMPLER_OWN: usize = 4;

/// The master's descriptors one worker process takes.
pub(super) fn per_worker(config: &Config) -> usize {
    let output = if config.logs.target == LogTarget::Inherit { 0 } else { 4 };
    let ipc = if config.ready.mode == ReadyMode::Ipc { 2 } else { 0 };
    let metrics = usize::from(config.metrics.as_ref().is_some_and(|m| m.workers));
    // The sampler's /proc/PID/statm and children files.
    let sampler = 2;
    output + ipc + metrics + sampler
}

/// Worker processes that fit: `nofile` less the master's `own` descriptors and the reserve, in
/// `per`-descriptor shares.
pub(super) fn capacity(nofile: u64, own: usize, per: usize) -> usize {
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    nofile.saturating_sub(own).saturating_sub(RESERVE) / per.max(1)
}

/// Descriptors this process has open.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}

impl Driver {
    /// Work out the capacity for `config` (the one new workers start from) and tell the pool.
    pub(super) fn tell_capacity(&mut self, config: &Config) {
        let nofile =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(s, _)| s);
        let per = per_worker(config);
        // Measured once, before workers start (or, in an upgrade's new image, less the share of
        // the workers it took over): later, connections and samples come and go.
        let workers = self.workers.len() * per_worker(self.pool.config());
        let own = *self.own_descriptors.get_or_insert_with(|| open_descriptors().saturating_sub(workers)) + SAMPLER_OWN;
        let processes = capacity(nofile, own, per);
        tracing::debug!(nofile, per_worker = per, processes, "worker processes the descriptor limit holds");
        self.dispatch(Event::Capacity { processes, nofile });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_leaves_room_for_the_master_the_sampler_and_the_operator() {
        // 64: 17 of the master's own, 16 kept: 31 left, 6 each.
        assert_eq!(capacity(64, 17, 6), 5);
        // systemd's default for services (LimitNOFILE=524288 hard, raised to it).
        assert!(capacity(524_288, 20, 6) > 80_000);
        assert_eq!(capacity(16, 14, 6), 0);
    }
}
