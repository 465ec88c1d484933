//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Parsing is strict (`deny_unknown_fields`) and every value that needs checking is checked
//! inside its own `Deserialize` impl, so `toml` attaches the value's span to the error and the
//! user sees `file:line:col: message`. Cross-field checks use [`serde_spanned::Spanned`] for the
//! same reason. This module reads the file and the CPU count and nothing else: it never touches a
//! socket or a process.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_spanned::Spanned;

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

/// How many workers: `N`, `"max"`, `"max-K"` or `"P%"` of the usable CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    Fixed(usize),
    MaxMinus(usize),
    Percent(u32),
}

impl Instances {
    /// The worker count for `cpus` usable CPUs; never below 1.
    pub fn resolve(self, cpus: usize) -> usize {
        let n = match self {
            Instances::Fixed(n) => n,
            Instances::MaxMinus(k) => cpus.saturating_sub(k),
            Instances::Percent(p) => (cpus * p as usize).div_ceil(100),
        };
        n.max(1)
    }
}

impl FromStr for Instances {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid instances {s:?}: expected a number, \"max\", \"max-1\" or a percentage like \"50%\"");
        let s = s.trim();
        if s == "max" {
            return Ok(Instances::MaxMinus(0));
        }
        if let Some(k) = s.strip_prefix("max-") {
            return k.trim().parse().map(Instances::MaxMinus).map_err(|_| bad());
        }
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| bad())?;
            return if (1..=100).contains(&p) {
                Ok(Instances::Percent(p))
            } else {
                Err(format!("invalid instances {s:?}: a percentage must be between 1% and 100%"))
            };
        }
        let n: usize = s.parse().map_err(|_| bad())?;
        Instances::fixed(n)
    }
}

impl Instances {
    fn fixed(n: usize) -> Result<Self, String> {
        if n == 0 {
            Err("instances must be at least 1".into())
        } else {
            Ok(Instances::Fixed(n))
        }
    }
}

/// A value written either as a number or as a string (`instances`, `reload.batch`, `memory`).
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    N(i64),
    S(String),
}

impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use NumOrStr as Raw;
        match Raw::deserialize(d)
            .map_err(|_| de::Error::custom("instances must be a number or a string like \"max\", \"max-1\", \"50%\""))?
        {
            Raw::N(n) if n < 1 => Err(de::Error::custom("instances must be at least 1")),
            Raw::N(n) => Instances::fixed(n as usize).map_err(de::Error::custom),
            Raw::S(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

/// `reload.batch`: a count or a percentage of the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Count(usize),
    Percent(u32),
}

impl Batch {
    pub fn resolve(self, instances: usize) -> usize {
        match self {
            Batch::Count(n) => n,
            Batch::Percent(p) => (instances * p as usize).div_ceil(100),
        }
        .max(1)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use NumOrStr as Raw;
        let msg = "reload.batch must be a number of workers (at least 1) or a percentage like \"25%\"";
        match Raw::deserialize(d).map_err(|_| de::Error::custom(msg))? {
            Raw::N(n) if n >= 1 => Ok(Batch::Count(n as usize)),
            Raw::S(s) => match s.trim().strip_suffix('%').map(|p| p.trim().parse::<u32>()) {
                Some(Ok(p)) if (1..=100).contains(&p) => Ok(Batch::Percent(p)),
                _ => Err(de::Error::custom(msg)),
            },
            Raw::N(_) => Err(de::Error::custom(msg)),
        }
    }
}

/// A duration written like `500ms`, `30s`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)
            .map_err(|_| de::Error::custom("expected a duration as a string, like \"500ms\", \"30s\" or \"1h\""))?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            de::Error::custom(format!("invalid duration {s:?}: {e} (write it like \"500ms\", \"30s\", \"1h\")"))
        })
    }
}

/// A size written like `300MiB`, `1G`, `512 kB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use NumOrStr as Raw;
        let hint = "write a size like \"300MiB\", \"1G\" or a number of bytes";
        match Raw::deserialize(d).map_err(|_| de::Error::custom(format!("expected a size: {hint}")))? {
            Raw::N(n) if n <= 0 => Err(de::Error::custom("a size must be greater than 0")),
            Raw::N(n) => Ok(Size(n as u64)),
            Raw::S(s) => match bytesize::ByteSize::from_str(s.trim()) {
                Ok(b) if b.as_u64() > 0 => Ok(Size(b.as_u64())),
                Ok(_) => Err(de::Error::custom("a size must be greater than 0")),
                Err(e) => Err(de::Error::custom(format!("invalid size {s:?}: {e}; {hint}"))),
            },
        }
    }
}

/// A signal name like `SIGTERM` or `TERM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub Signal);

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d).map_err(|_| de::Error::custom("expected a signal name like \"SIGTERM\""))?;
        let up = s.trim().to_ascii_uppercase();
        let full = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
        match Signal::from_str(&full) {
            Ok(Signal::SIGKILL | Signal::SIGSTOP) => {
                Err(de::Error::custom(format!("{full} cannot be used as a stop signal: it cannot be handled")))
            }
            Ok(sig) => Ok(Sig(sig)),
            Err(_) => {
                Err(de::Error::custom(format!("unknown signal {s:?} (expected a name like \"SIGTERM\" or \"SIGINT\")")))
            }
        }
    }
}

/// The argv of a worker: a non-empty array of non-empty strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command(pub Vec<String>);

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let argv = Vec::<String>::deserialize(d).map_err(|_| {
            de::Error::custom(
                "command must be an array of strings, like [\"node\", \"src/index.js\"] (no shell is involved)",
            )
        })?;
        if argv.is_empty() || argv[0].is_empty() {
            return Err(de::Error::custom(
                "command must not be empty: give the program and its arguments, like [\"node\", \"src/index.js\"]",
            ));
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(de::Error::custom("command arguments must not contain NUL bytes"));
        }
        Ok(Command(argv))
    }
}

/// One `listen` entry: a TCP address or a unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// A bare port: every address, IPv6 and IPv4, like systemd's `ListenStream=3000`.
    Port(u16),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Port(p) => write!(f, "[::]:{p}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("unix socket path must be absolute, like \"unix:/run/app/http.sock\": {s:?}"));
            }
            if path.as_os_str().len() > 107 {
                return Err(format!("unix socket path is longer than 107 bytes: {s:?}"));
            }
            return Ok(ListenAddr::Unix(path));
        }
        if let Ok(port) = s.parse::<u16>() {
            return Ok(ListenAddr::Port(port));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(addr));
        }
        if let Some(port) = s.strip_prefix("localhost:").and_then(|p| p.parse::<u16>().ok()) {
            return Ok(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        Err(format!(
            "invalid listen address {s:?}: expected \"127.0.0.1:3000\", \"[::1]:3000\", \"3000\" or \"unix:/path/to.sock\""
        ))
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)
            .map_err(|_| de::Error::custom("a listen address must be a string like \"127.0.0.1:3000\""))?;
        s.trim().parse().map_err(de::Error::custom)
    }
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/corral/api.toml"), text, 8)
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("config should be rejected").to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("command = [\"node\", \"index.js\"]\n").unwrap();
        assert_eq!(c.name, "api");
        assert_eq!(c.instances, 1);
        assert_eq!(c.ready.mode, ReadyMode::Notify);
        assert_eq!(c.stop.signal, Sig(Signal::SIGTERM));
        assert_eq!(c.restart.max_restarts, 15);
        assert_eq!(c.batch(4), 1);
    }

    #[test]
    fn full_config_from_the_spec_parses() {
        let text = r#"
name = "myapi"
command = ["node", "src/index.js"]
workdir = "/srv/myapi"
instances = "max"
user = "myapi"
env = { NODE_ENV = "production" }
instance_var = "NODE_APP_INSTANCE"
listen = ["127.0.0.1:3000", "unix:/run/myapi/http.sock", "8080"]
[ready]
mode = "notify"
timeout = "30s"
[stop]
signal = "SIGTERM"
timeout = "30s"
[restart]
delay = "100ms"
max_delay = "30s"
min_uptime = "5s"
max_restarts = 15
window = "60s"
[reload]
batch = "25%"
[limits]
memory = "300MiB"
interval = "5s"
[watchdog]
timeout = "10s"
[recycle]
after = "24h"
jitter = "1h"
[logs]
target = "auto"
[metrics]
listen = "127.0.0.1:9464"
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.instances, 8);
        assert_eq!(c.batch(8), 2);
        assert_eq!(c.limits.memory, Some(Size(300 * 1024 * 1024)));
        assert_eq!(c.listen.len(), 3);
        assert_eq!(c.listen[2], ListenAddr::Port(8080));
        assert_eq!(c.recycle.unwrap().after, Dur(Duration::from_secs(86400)));
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let cases: &[(&str, &str)] = &[
            ("command = [\"x\"]\nbogus = 1\n", "api.toml:2:1: unknown field `bogus`"),
            ("command = [\"x\"]\ninstances = 0\n", "api.toml:2:13: instances must be at least 1"),
            ("command = [\"x\"]\ninstances = \"lots\"\n", "api.toml:2:13: invalid instances \"lots\""),
            ("command = []\n", "api.toml:1:11: command must not be empty"),
            ("command = \"node x.js\"\n", "api.toml:1:11: command must be an array of strings"),
            ("command = [\"x\"]\n[stop]\ntimeout = \"soon\"\n", "api.toml:3:11: invalid duration \"soon\""),
            ("command = [\"x\"]\n[limits]\nmemory = \"lots\"\n", "api.toml:3:10: invalid size \"lots\""),
            ("command = [\"x\"]\n[stop]\nsignal = \"SIGFOO\"\n", "api.toml:3:10: unknown signal \"SIGFOO\""),
            ("command = [\"x\"]\n[ready]\nmode = \"soon\"\n", "api.toml:3:8: unknown variant `soon`"),
            ("command = [\"x\"]\nlisten = [\"nowhere\"]\n", "api.toml:2:11: invalid listen address \"nowhere\""),
            ("command = [\"x\"]\nworkdir = \"srv\"\n", "api.toml:2:11: workdir must be an absolute path"),
            ("command = [\"x\"]\nenv = { LISTEN_FDS = \"1\" }\n", "api.toml:2:9: LISTEN_FDS is set by corral"),
            (
                "command = [\"x\"]\n[restart]\ndelay = \"10s\"\nmax_delay = \"1s\"\n",
                "api.toml:4:1: restart.max_delay must not be shorter",
            ),
            ("command = [\"x\"]\n[reload]\nbatch = 0\n", "api.toml:3:9: reload.batch must be"),
            ("name = \"a b\"\ncommand = [\"x\"]\n", "api.toml:1:8: invalid name \"a b\""),
            ("[ready]\nmode = \"spawn\"\n", "api.toml:1:1: missing `command`"),
            ("command = [\"x\"\n", "api.toml:1:"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.contains(want), "for {text:?}\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn instances_resolve_against_cpus() {
        let table = [
            ("1", 4, 1),
            ("max", 4, 4),
            ("max-1", 4, 3),
            ("max-1", 1, 1),
            ("max-8", 4, 1),
            ("50%", 4, 2),
            ("50%", 3, 2),
            ("50%", 1, 1),
            ("100%", 2, 2),
        ];
        for (spec, cpus, want) in table {
            let i: Instances = spec.parse().unwrap();
            assert_eq!(i.resolve(cpus), want, "{spec} on {cpus} cpus");
        }
        assert!("0%".parse::<Instances>().is_err());
        assert!("101%".parse::<Instances>().is_err());
        assert!("0".parse::<Instances>().is_err());
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é=\nx", 2), (1, 2));
    }

    #[test]
    fn config_lookup_order() {
        assert_eq!(locate(Some(Path::new("a.toml")), Some("b.toml"), Some("n")), PathBuf::from("a.toml"));
        assert_eq!(locate(None, Some("b.toml"), Some("n")), PathBuf::from("b.toml"));
        assert_eq!(locate(None, None, Some("n")), PathBuf::from("/etc/corral/n.toml"));
        assert_eq!(locate(None, Some(""), None), PathBuf::from("corral.toml"));
    }
}
