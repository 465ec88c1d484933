//! Accepting connections (control socket, metrics) without letting them hurt the loop.
//!
//! Two limits, as nginx and tokio's own examples have them: at most [`MAX_CONNECTIONS`] served
//! at once per listener (more wait in the kernel's backlog, costing the master nothing), and a
//! pause after `accept` fails, longer when the process is out of descriptors or memory
//! (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`), so a full descriptor table never turns into a busy
//! loop. Warnings about it are rate-limited.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Connections served at the same time on one listener.
pub const MAX_CONNECTIONS: usize = 64;
/// Pause after running out of descriptors or memory.
const RESOURCE_PAUSE: Duration = Duration::from_millis(200);
/// Pause after any other accept error (a connection reset before it was accepted, say).
const OTHER_PAUSE: Duration = Duration::from_millis(10);
/// At most one warning per listener this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The admission state of one listener.
pub struct Gate {
    what: &'static str,
    permits: Arc<Semaphore>,
    paused_until: Cell<Option<Instant>>,
    last_warning: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl Gate {
    pub fn new(what: &'static str) -> Gate {
        Gate {
            what,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            paused_until: Cell::new(None),
            last_warning: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    /// Wait until a connection may be accepted: any pause is over and a slot is free. The permit
    /// goes with the connection and frees the slot when it is dropped.
    pub async fn admit(&self) -> OwnedSemaphorePermit {
        if let Some(until) = self.paused_until.get() {
            tokio::time::sleep_until(until).await;
            self.paused_until.set(None);
        }
        // The semaphore is never closed, so acquiring only waits.
        match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => std::future::pending().await,
        }
    }

    /// `accept` failed: pause this listener and say so (not more than once per [`WARN_EVERY`]).
    pub fn failed(&self, error: &std::io::Error) {
        let exhausted =
            matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
        let now = Instant::now();
        self.paused_until.set(Some(now + if exhausted { RESOURCE_PAUSE } else { OTHER_PAUSE }));
        let due = self.last_warning.get().is_none_or(|t| now.duration_since(t) >= WARN_EVERY);
        if due {
            let more = match self.suppressed.replace(0) {
                0 => String::new(),
                n => format!(" ({n} more since the last warning)"),
            };
            if exhausted {
                tracing::warn!("{}: cannot accept a connection: {error}; pausing new connections{more}", self.what);
            } else {
                tracing::warn!("{}: cannot accept a connection: {error}{more}", self.what);
            }
            self.last_warning.set(Some(now));
        } else {
            self.suppressed.set(self.suppressed.get() + 1);
        }
    }
}
