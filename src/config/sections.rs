//! The sections of a pool's config (`[ready]`, `[stop]`, `[restart]`, `[reload]`, `[limits]`,
//! `[watchdog]`, `[recycle]`, `[logs]`, `[metrics]`) with their defaults, as `corral.toml(5)`
//! documents them. Values that need checking check themselves (`values.rs`), so an error
//! points at the value.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;

use super::values::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyMode {
    /// The worker sends `READY=1` on `NOTIFY_SOCKET`.
    Notify,
    /// A process of the worker's group waits for connections on an inherited socket (seen by
    /// the master in /proc: see `crate::readiness::listen`).
    Listen,
    /// Node's `process.send('ready')` on the IPC channel corral gives (`NODE_CHANNEL_FD`).
    Ipc,
    Spawn,
    Delay,
}

/// Where a worker's readiness came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadySignal {
    /// `READY=1` on the notify socket.
    Notify,
    /// Seen waiting for connections on an inherited socket.
    Listening,
    /// `'ready'` on the Node IPC channel.
    Ipc,
}

impl ReadyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyMode::Notify => "notify",
            ReadyMode::Listen => "listen",
            ReadyMode::Ipc => "ipc",
            ReadyMode::Spawn => "spawn",
            ReadyMode::Delay => "delay",
        }
    }

    /// What makes a worker ready in this mode, in a few words (`corral check`).
    pub fn meaning(self) -> &'static str {
        match self {
            ReadyMode::Notify => "ready when it sends READY=1",
            ReadyMode::Listen => "ready when corral sees it wait for connections on its socket",
            ReadyMode::Ipc => "ready when its Node IPC channel says 'ready', or it sends READY=1",
            ReadyMode::Spawn => "ready as soon as it started",
            ReadyMode::Delay => "ready after ready.delay, or sooner with READY=1",
        }
    }

    /// Whether a worker in this mode is made ready by `signal`. `READY=1` counts in every mode
    /// except "listen": there the master's own observation decides, because the process that
    /// sends `READY=1` is not always the one that serves (gunicorn's arbiter sends it before its
    /// worker process accepts). In "delay" and "spawn" it can only make a worker ready sooner.
    pub fn accepts(self, signal: ReadySignal) -> bool {
        match (self, signal) {
            (ReadyMode::Listen, s) => s == ReadySignal::Listening,
            (ReadyMode::Ipc, s) => s != ReadySignal::Listening,
            (_, s) => s == ReadySignal::Notify,
        }
    }

    /// Whether the worker has `ready.timeout` to become ready.
    pub fn has_timeout(self) -> bool {
        matches!(self, ReadyMode::Notify | ReadyMode::Listen | ReadyMode::Ipc)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ready {
    pub mode: ReadyMode,
    pub timeout: Dur,
    pub delay: Dur,
}

impl Default for Ready {
    fn default() -> Self {
        // "listen": a worker is ready when the master sees it accept, whatever it says (gunicorn's
        // arbiter sends READY=1 a second before any worker accepts). Before 0.2 it was "notify".
        Ready { mode: ReadyMode::Listen, timeout: Dur(Duration::from_secs(30)), delay: Dur(Duration::from_secs(1)) }
    }
}

/// Who gets the stop signal, in systemd's `KillMode=` spirit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    /// Every process of the worker's process group (`KillMode=control-group`).
    #[default]
    Group,
    /// The worker's main process only, which stops its own children in order; the rest of the
    /// group gets SIGKILL after `stop.timeout` (`KillMode=mixed`).
    Main,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stop {
    pub signal: Sig,
    pub timeout: Dur,
    pub mode: StopMode,
    /// On SIGTERM/SIGINT, keep serving this long with /health and /ready answering 503 (so a
    /// load balancer or Kubernetes stops sending) before the workers are stopped.
    pub drain: Dur,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            signal: Sig(Signal::SIGTERM),
            timeout: Dur(Duration::from_secs(30)),
            mode: StopMode::Group,
            drain: Dur(Duration::ZERO),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Restart {
    pub delay: Dur,
    pub max_delay: Dur,
    pub min_uptime: Dur,
    pub max_restarts: u32,
    pub window: Dur,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            delay: Dur(Duration::from_millis(100)),
            max_delay: Dur(Duration::from_secs(10)),
            min_uptime: Dur(Duration::from_secs(5)),
            max_restarts: 10,
            window: Dur(Duration::from_secs(60)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reload {
    pub batch: Batch,
    /// The nice value a worker runs at while it starts and other workers serve (a reload, a
    /// crash restart, scaling up), its whole process group; 0 turns it off. Restored when the
    /// worker is ready, or at half its `ready.timeout` if it is not ready by then.
    pub start_nice: StartNice,
}

impl Default for Reload {
    fn default() -> Self {
        Reload { batch: Batch::Count(1), start_nice: StartNice(DEFAULT_START_NICE) }
    }
}

/// `reload.start_nice` when the config does not say.
pub const DEFAULT_START_NICE: u8 = 10;

/// A nice value from 0 (off) to 19.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct StartNice(pub u8);

impl TryFrom<i64> for StartNice {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        u8::try_from(n)
            .ok()
            .filter(|n| *n <= 19)
            .map(StartNice)
            .ok_or_else(|| format!("start_nice must be from 0 (off) to 19, not {n}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory: Option<Size>,
    #[serde(default = "default_limit_interval")]
    pub interval: Dur,
}

fn default_limit_interval() -> Dur {
    Dur(Duration::from_secs(5))
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory: None, interval: default_limit_interval() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    pub timeout: Dur,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recycle {
    pub after: Dur,
    #[serde(default = "zero_dur")]
    pub jitter: Dur,
}

fn zero_dur() -> Dur {
    Dur(Duration::ZERO)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    #[default]
    Auto,
    Journal,
    Stderr,
    Inherit,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Logs {
    pub target: LogTarget,
    /// Without journald: "text" lines on stderr, or "json": one JSON object per line, the
    /// master's and the workers' alike, all on stdout (for container log collectors).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Who may use the control socket besides root and the master's own user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// Members of this group may run `corral status`, `reload`, `scale` and `upgrade` on the
    /// pool (the packages create `corral` for this; it has no members until an admin adds one).
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub listen: SocketAddr,
    /// `/ready` answers 200 with at least this many ready workers: N, or "P%" of `instances`.
    #[serde(default)]
    pub min_ready: MinReady,
    /// Each worker gets `CORRAL_METRICS_SOCKET`, where it may serve its own registry; /metrics
    /// then carries every live worker's series with `slot` and `generation` added.
    #[serde(default)]
    pub workers: bool,
    /// How long a scrape waits for one worker's answer (they are asked at once, so this is what
    /// a worker that does not answer adds to a scrape).
    #[serde(default = "default_worker_timeout")]
    pub worker_timeout: Dur,
    /// The most one worker's answer may be; a longer one is dropped (that worker shows 0 in
    /// `corral_worker_metrics_up`).
    #[serde(default = "default_worker_max_size")]
    pub worker_max_size: Size,
}

fn default_worker_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(1))
}

fn default_worker_max_size() -> Size {
    Size(4 << 20)
}

/// How many ready workers make the pool ready for traffic (`/ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub enum MinReady {
    Count(usize),
    Percent(u8),
}

impl Default for MinReady {
    fn default() -> Self {
        MinReady::Count(1)
    }
}

impl TryFrom<toml::Value> for MinReady {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        let bad = || "min_ready must be a number of workers (1 or more) or a percentage like \"50%\"".to_string();
        match v {
            toml::Value::Integer(n) if (1..=MAX_INSTANCES as i64).contains(&n) => Ok(MinReady::Count(n as usize)),
            toml::Value::String(s) => match s.trim().strip_suffix('%').and_then(|p| p.trim().parse::<u8>().ok()) {
                Some(p) if (1..=100).contains(&p) => Ok(MinReady::Percent(p)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl MinReady {
    /// The count for a pool of `desired` workers (at least 1).
    pub fn resolve(self, desired: usize) -> usize {
        match self {
            MinReady::Count(n) => n,
            MinReady::Percent(p) => (desired * p as usize).div_ceil(100).max(1),
        }
    }
}
