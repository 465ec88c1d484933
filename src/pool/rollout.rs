//! The rollout story: a reload from request to done or rollback.
//!
//! A reload only moves the target generation ([`Pool::start_reload`]); converging does the rest,
//! `reload.batch` slots at a time. The reload is done when every slot has a ready worker of the
//! target and no older worker is live ([`Pool::conclude`]); it is aborted when a worker of the
//! new generation fails before it was ready ([`Pool::abort_reload`], called from the crash
//! story), which moves the target back, so the same converging stops the half-started workers
//! and rolls back slots already replaced. A reload asked for during a reload is queued (requests
//! coalesce) and starts when the current one ends. A config that cannot be used changes nothing.

use std::sync::Arc;

use crate::config::ConfigError;

use super::{Action, Config, Notice, Notify, Phase, Pool, QueuedReload, Refusal, ReloadResult, ReloadRun, ReplyId};

impl Pool {
    /// SIGHUP or `corral reload`: the new config, or why it could not be read.
    pub(super) fn on_reload(
        &mut self,
        config: Result<Arc<Config>, ConfigError>,
        reply: Option<ReplyId>,
        out: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Running {
            if let Some(to) = reply {
                out.push(Action::Reply { to, result: Err(Refusal::Stopping) });
            }
            return;
        }
        let replies: Vec<ReplyId> = reply.into_iter().collect();
        match config {
            Err(error) => {
                self.notices.push(Notice::ReloadRefused { keeping: self.target, error: error.to_string() });
                for to in replies {
                    out.push(Action::Reply { to, result: Err(Refusal::Config(error.clone())) });
                }
                if self.reload.is_none() {
                    // Tell systemd the reload happened (and ended): notify-reload waits for it.
                    out.push(Action::Notify(vec![Notify::Reloading]));
                    out.push(Action::Notify(vec![Notify::Ready]));
                    self.reloads.1 += 1;
                    self.last_reload = Some(ReloadResult::Failed(error.to_string()));
                }
            }
            Ok(config) => {
                if self.reload.is_some() {
                    self.notices.push(Notice::ReloadQueued);
                    let queued = self.queued.get_or_insert(QueuedReload { config: config.clone(), replies: vec![] });
                    queued.config = config;
                    queued.replies.extend(replies);
                } else {
                    out.push(Action::Notify(vec![Notify::Reloading]));
                    self.start_reload(config, replies);
                }
            }
        }
    }

    /// Move the target to a new generation running `config`.
    fn start_reload(&mut self, config: Arc<Config>, replies: Vec<ReplyId>) {
        let from = self.target;
        let to = self.configs.keys().next_back().copied().unwrap_or(from) + 1;
        if config.instances_spec != self.configs[&from].instances_spec {
            self.desired = config.instances;
        }
        self.notices.push(Notice::Reloading { from, to, workers: self.desired });
        self.configs.insert(to, config);
        self.target = to;
        self.reload = Some(ReloadRun { from, to, replies });
    }

    /// After converging: tell systemd once the first generation is ready, and finish a reload
    /// whose new generation serves alone (which may start the queued one).
    pub(super) fn conclude(&mut self, out: &mut Vec<Action>) {
        if !self.phase.serving() || !self.all_slots_ready_on_target() {
            return;
        }
        if !self.announced_ready {
            self.announced_ready = true;
            self.notices.push(Notice::AllReady { generation: self.target, workers: self.desired.min(self.fit()) });
            out.push(Action::Notify(vec![Notify::Ready]));
        }
        if let Some(run) = &self.reload {
            let no_old = !self.workers.iter().any(|w| w.is_live() && w.generation != self.target);
            if no_old {
                let serving = self.desired.min(self.fit());
                let msg = if serving < self.desired {
                    format!(
                        "generation {} serving with {serving} of {} workers (the rest do not fit in RLIMIT_NOFILE {})",
                        run.to, self.desired, self.capacity.1
                    )
                } else {
                    format!("generation {} serving with {serving} workers", run.to)
                };
                self.notices.push(Notice::ReloadDone(msg.clone()));
                self.finish_reload(Ok(msg), out);
            }
        }
    }

    fn finish_reload(&mut self, result: Result<String, Refusal>, out: &mut Vec<Action>) {
        let Some(run) = self.reload.take() else {
            return;
        };
        for to in run.replies {
            out.push(Action::Reply { to, result: result.clone() });
        }
        self.last_reload = Some(match result {
            Ok(_) => {
                self.reloads.0 += 1;
                ReloadResult::Succeeded(run.to)
            }
            Err(e) => {
                self.reloads.1 += 1;
                ReloadResult::Failed(e.to_string())
            }
        });
        if let Some(q) = self.queued.take() {
            self.start_reload(q.config, q.replies);
        } else {
            out.push(Action::Notify(vec![Notify::Ready]));
        }
    }

    /// A worker of the new generation failed: the old generation keeps serving.
    pub(super) fn abort_reload(&mut self, reason: String, out: &mut Vec<Action>) {
        let Some(run) = self.reload.as_ref() else {
            return;
        };
        let (from, to) = (run.from, run.to);
        self.notices.push(Notice::ReloadFailed { from, to, reason: reason.clone() });
        self.target = from;
        self.finish_reload(Err(Refusal::ReloadFailed { keeping: from, reason }), out);
    }
}
