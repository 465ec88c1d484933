//! Where the master's own logs go, decided once for the master and for its workers' output:
//! journald when `[logs] target = "journal"`, or `"auto"` and stderr is connected to journald
//! (`JOURNAL_STREAM`); else text or JSON lines on stderr.

use std::io::IsTerminal;

use crate::config::LogTarget;

/// Whether logs for `target` go to journald.
pub fn uses_journal(target: LogTarget) -> bool {
    match target {
        LogTarget::Journal => true,
        LogTarget::Auto => crate::output::journal::stderr_is_journal(),
        LogTarget::Stderr | LogTarget::Inherit => false,
    }
}

/// Set up the master's logs: to journald when [`uses_journal`], else text (or JSON lines) on
/// stderr. CORRAL_LOG sets the level: error, warn, info (default), debug, trace. (A plain level
/// rather than an EnvFilter: the master logs only its own events, and the regex engine an
/// EnvFilter brings would be most of the master's memory.)
pub fn init(target: LogTarget, json: bool) {
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("CORRAL_LOG")
        .ok()
        .and_then(|l| l.trim().parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    if json {
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(|| crate::output::stderr::LogWriter)
            .with_target(false);
        tracing_subscriber::registry().with(filter).with(layer).init();
        return;
    }
    if uses_journal(target) {
        if let Ok(layer) = tracing_journald::layer() {
            tracing_subscriber::registry().with(filter).with(layer.with_syslog_identifier("corral".into())).init();
            return;
        }
    }
    let tty = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| crate::output::stderr::LogWriter)
        .with_target(false)
        .with_ansi(tty && std::env::var_os("NO_COLOR").is_none());
    tracing_subscriber::registry().with(filter).with(fmt).init();
}
