//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Parsing is strict (`deny_unknown_fields`) and every value that needs checking is checked
//! inside its own `Deserialize` impl, so `toml` attaches the value's span to the error and the
//! user sees `file:line:col: message`. Cross-field checks use [`serde_spanned::Spanned`] for the
//! same reason. This module reads the file and the CPU count and nothing else: it never touches a
//! socket or a process.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

mod sections;
mod values;
pub use sections::*;
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
    #[serde(default)]
    control: Control,
}

/// A validated pool configuration. `instances` is already resolved to a count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    /// The text it was parsed from: `corral upgrade` hands it to the new binary, which checks
    /// every generation it takes over.
    pub source: std::sync::Arc<str>,
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
    pub control: Control,
}

/// The most a config file may hold; anything bigger is not a config.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The shortest `limits.interval`: sampling reads /proc for every worker's processes.
pub const MIN_LIMITS_INTERVAL: Duration = Duration::from_millis(100);

/// Read a config file: a regular file (following symlinks, as a `current` link needs) of at most
/// [`MAX_CONFIG_BYTES`]. A FIFO, a device or a directory is refused without blocking on it.
fn read_config_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read config: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read config: {e}"))?;
    if !meta.is_file() {
        return Err("cannot read config: not a regular file".into());
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!("config is {} bytes, more than the {MAX_CONFIG_BYTES} a config may have", meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read config: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("config is more than the {MAX_CONFIG_BYTES} bytes a config may have"));
    }
    String::from_utf8(bytes).map_err(|_| "cannot read config: it is not UTF-8 text".into())
}

/// A pool name as it may appear in paths and unit names: 1-64 ASCII letters, digits, `-`, `_`,
/// `.` or `@`, starting with a letter, digit or `_` (so never `.`, `..`, a hidden name or an
/// option). The same rule holds for `name =`, `corral init` and every CLI command taking a NAME.
pub fn check_pool_name(name: &str) -> Result<String, InvalidPoolName> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name.to_string())
    } else {
        Err(InvalidPoolName(name.to_string()))
    }
}

/// A pool name [`check_pool_name`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid pool name {0:?}: use 1-64 letters, digits, '-', '_', '.' or '@', starting with a letter, digit or '_'"
)]
pub struct InvalidPoolName(pub String);

/// Variables corral sets itself for each worker (and keeps from the master's own environment);
/// a config may not override them.
pub(crate) const RESERVED_ENV: &[&str] =
    &["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Node-based package managers: a worker's `command` cannot be one of them.
pub const NODE_WRAPPERS: &[&str] = &["npm", "npx", "yarn", "pnpm"];

/// Why: what `corral check`, `corral run` and `corral import` say.
pub const NODE_WRAPPER_CANNOT: &str = "a Node program: Node marks the descriptors it inherits close-on-exec, so the \
                                       server it starts never gets the listening sockets (fd 3…)";

impl Config {
    /// A warning for a `command` that runs a Node-based package manager (`npm start`, `yarn
    /// start`, `pnpm start`, `npx`): Node marks the descriptors it inherits close-on-exec as it
    /// starts, so the server it runs never gets the listening sockets.
    pub fn wrapper_warning(&self) -> Option<String> {
        let program = std::path::Path::new(self.command.first()?).file_name()?.to_str()?;
        if !NODE_WRAPPERS.contains(&program) {
            return None;
        }
        Some(format!(
            "command runs {program}, {NODE_WRAPPER_CANNOT}; run what the package.json script runs instead (`corral \
             import` reads it for you), e.g. command = [\"node\", \"server.js\"]"
        ))
    }

    /// Read and validate `path`, resolving `instances` against the CPUs this process may use.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_config_file(path).map_err(|message| ConfigError {
            path: path.to_owned(),
            line: 1,
            col: 1,
            message,
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
            Some(n) => check_pool_name(n.get_ref()).map_err(|e| err(n.span(), e.to_string()))?,
            None => {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                check_pool_name(&stem).map_err(|e| {
                    ConfigError::at(
                        path,
                        text,
                        None,
                        format!("the file name gives no valid pool name ({e}): set `name = \"...\"`"),
                    )
                })?
            }
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
        // Checks that involve more than one value, or a bound on a shared type, point at the
        // value itself: its span comes from a second, span-keeping parse of the same text.
        let at = |keys: &[&str], msg: &str| ConfigError::at(path, text, value_span(text, keys), msg);
        let r = &raw.restart;
        if r.max_delay < r.delay {
            return Err(at(&["restart", "max_delay"], "restart.max_delay must not be shorter than restart.delay"));
        }
        if r.window.0.is_zero() {
            return Err(at(&["restart", "window"], "restart.window must be longer than 0"));
        }
        if let Some(group) = &raw.control.group {
            let ok = !group.is_empty()
                && group.len() <= 32
                && !group.starts_with('-')
                && group.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok {
                return Err(at(
                    &["control", "group"],
                    &format!("control.group {group:?} is not a group name (letters, digits, `_`, `-`, `.`)"),
                ));
            }
        }
        if raw.ready.timeout.0.is_zero() {
            return Err(at(&["ready", "timeout"], "ready.timeout must be longer than 0"));
        }
        if raw.limits.interval.0 < MIN_LIMITS_INTERVAL {
            return Err(at(
                &["limits", "interval"],
                "limits.interval must be at least 100ms (each check reads /proc for every worker)",
            ));
        }
        if let Some(w) = &raw.watchdog {
            if w.timeout.0 < Duration::from_millis(10) {
                return Err(at(&["watchdog", "timeout"], "watchdog.timeout must be at least 10ms"));
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
            source: std::sync::Arc::from(text),
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
            control: raw.control,
        })
    }

    /// Workers replaced at a time during a reload, for `instances` workers.
    pub fn batch(&self, instances: usize) -> usize {
        self.reload.batch.resolve(instances)
    }
}

/// Byte span of the value at `keys` (a table path like `["watchdog", "timeout"]`), found by the
/// parser itself, so it is right whatever the layout: dotted keys, inline tables, the same key
/// name in several tables.
fn value_span(text: &str, keys: &[&str]) -> Option<Range<usize>> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let (last, parents) = keys.split_last()?;
    for key in parents {
        let (_, v) = table.iter().find(|(k, _)| k.get_ref() == key)?;
        match v.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => return None,
        }
    }
    table.iter().find(|(k, _)| k.get_ref() == last).map(|(_, v)| v.span())
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
