//! corral: a systemd-native worker pool.
//!
//! One `corral` master per service. systemd owns the listening sockets (or the master binds them
//! itself), the master starts N workers (any command) that inherit them at fd 3.. exactly as
//! systemd would hand them over, and the kernel gives each connection to whichever worker
//! `accept()`s it: the master never touches a request.
//!
//! The lifecycle, in the order a newcomer should read the modules:
//! - [`config`]: the TOML file becomes a validated [`config::Config`] (errors as `file:line:col`).
//! - `pool`: the pure state machine that decides everything: which slot to (re)start, crash
//!   backoff, rolling reloads and their rollback, scaling, stop escalation. Events in, actions
//!   and notices out, no IO, no clock, no logging; one file per story (converge, rollout, crash,
//!   shutdown) and one place where a worker's state changes. It depends on `config` and
//!   [`text`] only.
//! - [`driver`]: the single-threaded tokio loop that turns signals, child exits, notify datagrams
//!   and timers into events and executes the pool's actions: assembled in one place
//!   (`driver/start.rs`), one file per concern (workers, readiness, requests, observing,
//!   left-behind processes, the upgrade).
//! - `launch`, `os`: what a worker is started with (its user, its program found as `execvp`
//!   would, the descriptor limit it gets back, why a start failed), prepared in safe code; then
//!   fork/exec of one worker and the descriptors systemd hands over, the only `unsafe` code
//!   (`unsafe_code = "deny"` for the whole package in Cargo.toml, allowed in `os` alone;
//!   `LISTEN_PID` is written into a reserved envp buffer between fork and exec).
//! - `sockets`, [`notify`]: the listening sockets (inherited or bound, kept in systemd's fd
//!   store), and sd_notify in both directions.
//! - [`readiness`]: the ready modes the master observes itself ("listen": a worker waiting for
//!   connections, seen in /proc; "ipc": Node's `process.send('ready')`).
//! - [`output`]: worker output (journald's native protocol with per-worker fields, or stderr),
//!   and the master's own stderr, written without ever blocking the loop; [`logging`] decides
//!   where the master's logs go.
//! - [`control`], [`status`], [`sampler`], [`metrics`], `gate`: the control socket behind
//!   `corral status`, `reload` and `scale`; status snapshots (the JSON contract and the table);
//!   the /proc sampling behind their RSS and CPU figures; Prometheus `/metrics` and `/health`;
//!   the connection limit and accept back-off both listeners share.
//! - [`rundir`]: the pool's runtime directory, created and checked without following links.
//! - [`handover`]: what `corral upgrade` hands from one image of the master to the next (the
//!   state, the descriptors kept), and the check the new binary makes first; the driver's side
//!   of the upgrade is `driver/upgrade.rs`.
//! - [`init`], [`import`]: `corral init`, which writes a pool's config and systemd units, and
//!   `corral import`, which makes pools of a PM2 ecosystem file.
//! - [`text`]: a leaf of text helpers (terminal-safe escaping, human units, TOML strings).
//! - [`cli`]: the command line (and the completions generated from it; the man pages in `man/`
//!   are written by hand, and a test checks they name every subcommand).

/// corral's version, as `corral --version`, `corral status` and the packages report it. A build
/// may set `CORRAL_BUILD_VERSION` (packaging tests build a second version this way).
pub const VERSION: &str = match option_env!("CORRAL_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

pub mod cli;
pub mod config;
pub mod control;
pub mod credentials;
pub mod driver;
pub(crate) mod gate;
pub mod handover;
pub mod import;
pub mod init;
pub(crate) mod launch;
pub mod leftovers;
pub mod logging;
pub mod logs;
pub mod metrics;
pub mod notify;
pub(crate) mod os;
pub mod output;
pub(crate) mod pool;
pub mod readiness;
pub mod rundir;
pub mod sampler;
pub(crate) mod sockets;
pub mod status;
pub mod text;
pub mod top;
pub mod unitfile;
