//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Parsing is strict (`deny_unknown_fields`) and every value that needs checking is checked
//! inside its own `Deserialize` impl, so `toml` attaches the value's span to the error and the
//! user sees `file:line:col: message`. Cross-field checks use [`serde_spanned::Spanned`] for the
//! same reason. This module reads the file and the CPU count and nothing else: it never touches a
//! socket or a process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;
use serde_spanned::Spanned;

mod values;
pub use values::*;

/// A configuration error, rendered as `file:line:col: message` (exit code 78).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{col}: {message}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl ConfigError {
    fn at(path: &Path, text: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        let (line, col) = span.map_or((1, 1), |s| line_col(text, s.start));
        ConfigError { path: path.to_owned(), line, col, message: message.into() }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyMode {
    Notify,
    Spawn,
    Delay,
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
        Ready { mode: ReadyMode::Notify, timeout: Dur(Duration::from_secs(30)), delay: Dur(Duration::from_secs(1)) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stop {
    pub signal: Sig,
    pub timeout: Dur,
}

impl Default for Stop {
    fn default() -> Self {
        Stop { signal: Sig(Signal::SIGTERM), timeout: Dur(Duration::from_secs(30)) }
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
            max_delay: Dur(Duration::from_secs(30)),
            min_uptime: Dur(Duration::from_secs(5)),
            max_restarts: 15,
            window: Dur(Duration::from_secs(60)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reload {
    pub batch: Batch,
}

impl Default for Reload {
    fn default() -> Self {
        Reload { batch: Batch::Count(1) }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
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
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub listen: SocketAddr,
}

/// The file as written; checked further by [`Config::from_raw`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Option<Spanned<String>>,
    command: Option<Command>,
    workdir: Option<Spanned<PathBuf>>,
    instances: Option<Instances>,
    user: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    instance_var: Option<Spanned<String>>,
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    #[serde(default)]
    ready: Ready,
    #[serde(default)]
    stop: Stop,
    #[serde(default)]
    restart: Restart,
    #[serde(default)]
    reload: Reload,
    #[serde(default)]
    limits: Limits,
    watchdog: Option<Watchdog>,
    recycle: Option<Recycle>,
    #[serde(default)]
    logs: Logs,
    metrics: Option<Metrics>,
}

/// A validated pool configuration. `instances` is already resolved to a count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub name: String,
    pub command: Vec<String>,
    pub workdir: Option<PathBuf>,
    pub instances_spec: Instances,
    pub instances: usize,
    pub user: Option<String>,
    pub env: BTreeMap<String, String>,
    pub instance_var: Option<String>,
    pub listen: Vec<ListenAddr>,
    pub ready: Ready,
    pub stop: Stop,
    pub restart: Restart,
    pub reload: Reload,
    pub limits: Limits,
    pub watchdog: Option<Watchdog>,
    pub recycle: Option<Recycle>,
    pub logs: Logs,
    pub metrics: Option<Metrics>,
}

/// Variables corral sets itself; a config may not override them.
const RESERVED_ENV: &[&str] =
    &["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

impl Config {
    /// Read and validate `path`, resolving `instances` against the CPUs this process may use.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            line: 1,
            col: 1,
            message: format!("cannot read config: {e}"),
        })?;
        Config::parse(path, &text, usable_cpus())
    }

    /// Validate `text` (the contents of `path`) for a machine with `cpus` usable CPUs.
    pub fn parse(path: &Path, text: &str, cpus: usize) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim_end().to_string();
            ConfigError::at(path, text, e.span(), msg)
        })?;
        Config::from_raw(path, text, raw, cpus)
    }

    fn from_raw(path: &Path, text: &str, raw: RawConfig, cpus: usize) -> Result<Config, ConfigError> {
        let err = |span: Range<usize>, msg: String| ConfigError::at(path, text, Some(span), msg);
        let name = match raw.name {
            Some(n) => {
                let valid = !n.get_ref().is_empty()
                    && n.get_ref().len() <= 64
                    && n.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
                if !valid {
                    return Err(err(
                        n.span(),
                        format!("invalid name {:?}: use 1-64 letters, digits, '-', '_', '.' or '@'", n.get_ref()),
                    ));
                }
                n.into_inner()
            }
            None => path.file_stem().and_then(|s| s.to_str()).unwrap_or("corral").to_string(),
        };
        let workdir = match raw.workdir {
            Some(w) if !w.get_ref().is_absolute() => {
                return Err(err(w.span(), format!("workdir must be an absolute path, got {:?}", w.get_ref())));
            }
            w => w.map(Spanned::into_inner),
        };
        let mut env = BTreeMap::new();
        for (k, v) in raw.env {
            let key = k.get_ref();
            if key.is_empty() || key.contains('=') || key.contains('\0') || v.contains('\0') {
                return Err(err(k.span(), format!("invalid environment variable name {key:?}")));
            }
            if RESERVED_ENV.contains(&key.as_str()) || key.starts_with("CORRAL_") {
                return Err(err(k.span(), format!("{key} is set by corral for each worker and cannot be overridden")));
            }
            env.insert(k.into_inner(), v);
        }
        if let Some(var) = &raw.instance_var {
            let v = var.get_ref();
            if v.is_empty() || v.contains('=') || v.contains('\0') || RESERVED_ENV.contains(&v.as_str()) {
                return Err(err(var.span(), format!("invalid instance_var {v:?}")));
            }
        }
        if let Some(user) = &raw.user {
            if user.get_ref().is_empty() {
                return Err(err(user.span(), "user must not be empty".into()));
            }
        }
        let r = &raw.restart;
        if r.max_delay < r.delay {
            return Err(ConfigError::at(
                path,
                text,
                find_key(text, "max_delay"),
                "restart.max_delay must not be shorter than restart.delay",
            ));
        }
        if r.window.0.is_zero() {
            return Err(ConfigError::at(path, text, find_key(text, "window"), "restart.window must be longer than 0"));
        }
        if raw.ready.timeout.0.is_zero() {
            return Err(ConfigError::at(path, text, find_key(text, "timeout"), "ready.timeout must be longer than 0"));
        }
        if raw.limits.interval.0.is_zero() {
            return Err(ConfigError::at(
                path,
                text,
                find_key(text, "interval"),
                "limits.interval must be longer than 0",
            ));
        }
        if let Some(w) = &raw.watchdog {
            if w.timeout.0 < Duration::from_millis(10) {
                return Err(ConfigError::at(
                    path,
                    text,
                    find_key(text, "timeout"),
                    "watchdog.timeout must be at least 10ms",
                ));
            }
        }
        let Some(command) = raw.command else {
            return Err(ConfigError::at(
                path,
                text,
                None,
                "missing `command`: add the worker's argv, like command = [\"node\", \"src/index.js\"]",
            ));
        };
        let mut listen = Vec::new();
        for l in &raw.listen {
            listen.push(l.get_ref().trim().parse::<ListenAddr>().map_err(|e| err(l.span(), e))?);
        }
        let instances_spec = raw.instances.unwrap_or(Instances::Fixed(1));
        Ok(Config {
            path: path.to_owned(),
            name,
            command: command.0,
            workdir,
            instances_spec,
            instances: instances_spec.resolve(cpus),
            user: raw.user.map(Spanned::into_inner),
            env,
            instance_var: raw.instance_var.map(Spanned::into_inner),
            listen,
            ready: raw.ready,
            stop: raw.stop,
            restart: raw.restart,
            reload: raw.reload,
            limits: raw.limits,
            watchdog: raw.watchdog,
            recycle: raw.recycle,
            logs: raw.logs,
            metrics: raw.metrics,
        })
    }

    /// Workers replaced at a time during a reload, for `instances` workers.
    pub fn batch(&self, instances: usize) -> usize {
        self.reload.batch.resolve(instances)
    }
}

/// Byte span of the first `key =` in `text`, for errors about values checked after parsing.
fn find_key(text: &str, key: &str) -> Option<Range<usize>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                let start = offset + (line.len() - trimmed.len());
                return Some(start..start + key.len());
            }
        }
        offset += line.len();
    }
    None
}

/// CPUs this process may run on: the affinity mask and the cgroup CPU quota (std reads both).
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Where to find a pool's config: `-c FILE`, else `$CORRAL_CONFIG`, else `/etc/corral/NAME.toml`
/// for a NAME, else `./corral.toml`.
pub fn locate(explicit: Option<&Path>, env: Option<&str>, name: Option<&str>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    if let Some(e) = env.filter(|e| !e.is_empty()) {
        return PathBuf::from(e);
    }
    if let Some(n) = name {
        return PathBuf::from(format!("/etc/corral/{n}.toml"));
    }
    PathBuf::from("corral.toml")
}

#[cfg(test)]
mod tests;
