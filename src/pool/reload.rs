//! Reload and scale requests: a reload only moves the target generation (coalescing requests that
//! arrive meanwhile); aborting it moves the target back.

use super::*;

impl Pool {
    pub(super) fn on_reload(
        &mut self,
        config: Result<Arc<Config>, String>,
        reply: Option<ReplyId>,
        out: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Running {
            if let Some(to) = reply {
                out.push(Action::Reply { to, result: Err("the pool is stopping".into()) });
            }
            return;
        }
        let replies: Vec<ReplyId> = reply.into_iter().collect();
        match config {
            Err(error) => {
                tracing::error!("reload refused, keeping generation {}: {error}", self.target);
                for to in replies {
                    out.push(Action::Reply { to, result: Err(error.clone()) });
                }
                if self.reload.is_none() {
                    // Tell systemd the reload happened (and ended): notify-reload waits for it.
                    out.push(Action::Notify(vec![Notify::Reloading]));
                    out.push(Action::Notify(vec![Notify::Ready]));
                    self.reloads.1 += 1;
                    self.last_reload = Some(ReloadResult::Failed(error));
                }
            }
            Ok(config) => {
                if self.reload.is_some() {
                    tracing::info!("reload requested during a reload: it will follow the current one");
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

    pub(super) fn start_reload(&mut self, config: Arc<Config>, replies: Vec<ReplyId>) {
        let from = self.target;
        let to = self.configs.keys().next_back().copied().unwrap_or(from) + 1;
        if config.instances_spec != self.configs[&from].instances_spec {
            self.desired = config.instances;
        }
        tracing::info!("reloading: generation {from} → {to}, {} workers", self.desired);
        self.configs.insert(to, config);
        self.target = to;
        self.reload = Some(ReloadRun { from, to, replies });
    }

    pub(super) fn finish_reload(&mut self, result: Result<String, String>, out: &mut Vec<Action>) {
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
                ReloadResult::Failed(e)
            }
        });
        if let Some(q) = self.queued.take() {
            self.start_reload(q.config, q.replies);
        } else {
            out.push(Action::Notify(vec![Notify::Ready]));
        }
    }

    pub(super) fn abort_reload(&mut self, reason: String, out: &mut Vec<Action>) {
        let Some(run) = self.reload.as_ref() else {
            return;
        };
        tracing::error!("reload to generation {} failed, generation {} keeps serving: {reason}", run.to, run.from);
        self.target = run.from;
        self.finish_reload(Err(format!("reload failed, generation {} keeps serving: {reason}", run.from)), out);
    }

    pub(super) fn on_scale(&mut self, request: ScaleRequest, reply: Option<ReplyId>, out: &mut Vec<Action>) {
        let result = if self.phase != Phase::Running {
            Err("the pool is stopping".to_string())
        } else {
            let n = match request {
                ScaleRequest::Set(n) => i64::try_from(n).unwrap_or(i64::MAX),
                ScaleRequest::Add(d) => i64::try_from(self.desired).unwrap_or(i64::MAX).saturating_add(d),
            };
            let max = MAX_INSTANCES as i64;
            if n > max {
                Err(format!("a pool runs at most {max} workers: {n} refused, still {} workers", self.desired))
            } else {
                // Shrinking below one worker stops at one (`-1` on a single worker is a no-op).
                let n = n.max(1) as usize;
                tracing::info!("scaling from {} to {n} workers", self.desired);
                self.desired = n;
                Ok(format!("scaled to {n} workers"))
            }
        };
        if let Some(to) = reply {
            out.push(Action::Reply { to, result });
        }
    }
}
