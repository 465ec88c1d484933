//! The mapping: one small function per part of a pool's config, each naming the PM2 keys it
//! takes. [`MAPPERS`] runs them in order over one app, filling a [`Draft`] and its report; the
//! keys they name are the keys corral knows ([`known`]), so the list cannot drift from what is
//! mapped. Every other key of the app is reported as not mapped, with why ([`not_mapped`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::unmapped::not_mapped;
use super::values::{argv, interpreter_for, memory, millis, normalize, pool_name, text, toml_argv};
use super::{ImportRequest, Line, Skipped};
use crate::text::toml_str;

/// One app of the ecosystem file.
pub(super) type App = Map<String, Value>;

/// What an app becomes, before it is written out as a config.
pub(super) struct Draft {
    pub pm2_name: String,
    pub name: String,
    pub command: Vec<String>,
    pub workdir: PathBuf,
    /// As written in the config: `4`, `"max"`, `"max-1"`.
    pub instances: String,
    pub env: BTreeMap<String, String>,
    pub listen: Vec<String>,
    /// `VAR=value` words before the program in the package.json script `npm start` ran: they
    /// win over `env`, as in the script.
    pub script_env: BTreeMap<String, String>,
    pub instance_var: String,
    pub wait_ready: bool,
    pub ready_timeout: Option<String>,
    pub stop_signal: String,
    pub stop_timeout: Option<String>,
    /// Lines of `[restart]`.
    pub restart: Vec<String>,
    pub memory: Option<String>,
    pub user: Option<String>,
    /// `cron_restart` as given, and as `OnCalendar=`.
    pub timer: Option<(String, String)>,
    pub report: Vec<Line>,
}

impl Draft {
    fn mapped(&mut self, key: &str, to: String) {
        self.report.push(Line::Mapped { key: key.into(), to });
    }
    fn not_mapped(&mut self, key: String, why: String) {
        self.report.push(Line::NotMapped { key, why });
    }
}

/// Where an app is converted: what was asked, and the ecosystem file's folder (relative paths
/// start there).
pub(super) struct Context<'a> {
    pub req: &'a ImportRequest,
    pub dir: &'a Path,
}

/// A part of the mapping: the PM2 keys it takes (an app's `env_*` keys are the environment's
/// too), and the function that maps them.
pub(super) struct Mapper {
    pub keys: &'static [&'static str],
    pub map: fn(&App, &Context<'_>, &mut Draft) -> Result<(), Skipped>,
}

/// In order: later parts read what earlier ones found (the listen address comes from the
/// environment's PORT).
pub(super) const MAPPERS: &[Mapper] = &[
    Mapper { keys: &["name"], map: identity },
    Mapper {
        keys: &["script", "args", "interpreter", "interpreter_args", "node_args", "exec_interpreter", "cwd"],
        map: command,
    },
    Mapper { keys: &["instances", "exec_mode"], map: instances },
    Mapper { keys: &["env"], map: environment },
    Mapper { keys: &[], map: listen },
    Mapper { keys: &["instance_var"], map: instance_var },
    Mapper { keys: &["wait_ready", "listen_timeout"], map: ready },
    Mapper { keys: &["kill_signal", "kill_timeout"], map: stop },
    Mapper { keys: &["restart_delay", "exp_backoff_restart_delay", "max_restarts", "min_uptime"], map: restart },
    Mapper { keys: &["max_memory_restart"], map: limits },
    Mapper { keys: &["user", "uid", "gid"], map: user },
    Mapper { keys: &["cron_restart"], map: cron },
];

/// Whether corral maps `key` (one of the mappers' keys, or an `env_*` environment).
pub(super) fn known(key: &str) -> bool {
    key.starts_with("env_") || MAPPERS.iter().any(|m| m.keys.contains(&key))
}

/// Convert one app into a draft: every mapper in order, then every key no mapper takes.
pub(super) fn draft(app: &App, cx: &Context<'_>) -> Result<Draft, Skipped> {
    let mut d = Draft {
        pm2_name: String::new(),
        name: String::new(),
        command: Vec::new(),
        workdir: PathBuf::new(),
        instances: "1".into(),
        env: BTreeMap::new(),
        listen: Vec::new(),
        script_env: BTreeMap::new(),
        instance_var: "NODE_APP_INSTANCE".into(),
        wait_ready: false,
        ready_timeout: None,
        stop_signal: "SIGINT".into(),
        stop_timeout: None,
        restart: Vec::new(),
        memory: None,
        user: None,
        timer: None,
        report: Vec::new(),
    };
    for m in MAPPERS {
        (m.map)(app, cx, &mut d)?;
    }
    for k in app.keys() {
        if known(k) {
            if k == "gid" {
                d.not_mapped(k.clone(), "workers take the primary and supplementary groups of `user`".into());
            }
            continue;
        }
        let why = not_mapped(k).map_or_else(
            || "not a PM2 option corral knows: check it by hand".to_string(),
            |w| w.replace("NAME", &d.name),
        );
        d.not_mapped(k.clone(), why);
    }
    Ok(d)
}

/// `name`: the pool's name, from PM2's (or the script's file name).
fn identity(app: &App, _: &Context<'_>, d: &mut Draft) -> Result<(), Skipped> {
    d.pm2_name = app.get("name").and_then(text).unwrap_or_else(|| {
        app.get("script")
            .and_then(text)
            .map_or("app".into(), |s| Path::new(&s).file_stem().and_then(|n| n.to_str()).unwrap_or("app").to_string())
    });
    d.name = pool_name(&d.pm2_name);
    crate::config::check_pool_name(&d.name)?;
    let to = format!("name = {} (the units are {n}.socket and {n}.service)", toml_str(&d.name), n = d.name);
    d.mapped("name", to);
    Ok(())
}

/// `command` and `workdir`: the script with its interpreter and arguments, found as PM2 finds it.
fn command(app: &App, cx: &Context<'_>, d: &mut Draft) -> Result<(), Skipped> {
    // Paths: cwd relative to the ecosystem file's directory, script relative to cwd.
    let workdir = match app.get("cwd").and_then(text) {
        Some(c) => cx.dir.join(c),
        None => cx.dir.to_path_buf(),
    };
    let workdir = normalize(&workdir);
    let pm2_name = &d.pm2_name;
    let script = app.get("script").and_then(text).ok_or_else(|| Skipped::NoScript(pm2_name.clone()))?;
    // The interpreter given ("none": run the script itself), else PM2's by extension.
    let interpreter = match app.get("interpreter").or_else(|| app.get("exec_interpreter")).and_then(text) {
        Some(i) if i == "none" => None,
        Some(i) => Some(i),
        None => interpreter_for(&script).map(str::to_string),
    };
    // PM2 resolves the script against cwd, unless it is a command found in PATH (`npm`).
    let script_is_file = script.contains('/') || interpreter.is_some() || workdir.join(&script).exists();
    let script_path =
        if script_is_file { normalize(&workdir.join(&script)).display().to_string() } else { script.clone() };
    let mut command = Vec::new();
    if let Some(i) = interpreter {
        command.push(i);
        let args = app.get("interpreter_args").or(app.get("node_args")).unwrap_or(&Value::Null);
        command.extend(argv(args, "interpreter_args").map_err(Skipped::Value)?);
    }
    command.push(script_path);
    command.extend(argv(app.get("args").unwrap_or(&Value::Null), "args").map_err(Skipped::Value)?);
    match super::npm::unwrap(&command, &workdir) {
        None => d.mapped("script", format!("command = {}", toml_argv(&command))),
        Some(Ok(run)) => {
            d.mapped(
                "script",
                format!(
                    "command = {} (what `{}` runs: package.json's {:?}; the package manager itself cannot pass \
                     the listening socket on: it is {})",
                    toml_argv(&run.command),
                    command.join(" "),
                    run.script,
                    crate::config::NODE_WRAPPER_CANNOT
                ),
            );
            for note in run.notes {
                d.not_mapped("script".into(), note);
            }
            d.script_env = run.env;
            command = run.command;
        }
        Some(Err(why)) => {
            d.mapped("script", format!("command = {}", toml_argv(&command)));
            d.not_mapped(
                "script".into(),
                format!(
                    "{why}: as written it cannot serve (it is {}); set `command` to what it runs",
                    crate::config::NODE_WRAPPER_CANNOT
                ),
            );
        }
    }
    for k in ["args", "interpreter", "interpreter_args", "node_args"] {
        if app.contains_key(k) {
            d.mapped(k, "in `command`".into());
        }
    }
    if app.contains_key("cwd") {
        d.mapped("cwd", format!("workdir = {}", toml_str(&workdir.display().to_string())));
    }
    d.command = command;
    d.workdir = workdir;
    Ok(())
}

/// `instances` (PM2's 0 and -1 are "max" and "max-1"), and what `exec_mode` means here.
fn instances(app: &App, _: &Context<'_>, d: &mut Draft) -> Result<(), Skipped> {
    let pm2_name = &d.pm2_name;
    let instances = match app.get("instances") {
        None => "1".to_string(),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(0) => "\"max\"".into(),
            Some(-1) => "\"max-1\"".into(),
            Some(i) if i < -1 => format!("\"max{i}\""),
            Some(i) => i.to_string(),
            None => {
                return Err(Skipped::Value(format!("app {pm2_name:?}: instances must be a whole number or \"max\"")))
            }
        },
        Some(Value::String(s)) if s == "max" => "\"max\"".into(),
        Some(Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(0) => "\"max\"".into(),
            Ok(i) if i < 0 => format!("\"max{i}\""),
            Ok(i) => i.to_string(),
            Err(_) => {
                return Err(Skipped::Value(format!("app {pm2_name:?}: instances {s:?} is not a number or \"max\"")))
            }
        },
        Some(other) => {
            return Err(Skipped::Value(format!("app {pm2_name:?}: instances {other} is not a number or \"max\"")))
        }
    };
    if app.contains_key("instances") {
        let to = format!(
            "instances = {instances} (\"max\" counts the CPUs this service may use: affinity and cgroup quota)"
        );
        d.mapped("instances", to);
    }
    if let Some(mode) = app.get("exec_mode").and_then(text) {
        let what = if mode.contains("cluster") {
            "every worker accepts on the shared listening socket, as in cluster mode, but the master never \
             touches a connection"
        } else {
            "corral runs `instances` workers that share the listening socket; a fork-mode app that binds its \
             own port must take fd 3 instead (docs/frameworks.md)"
        };
        d.mapped("exec_mode", what.into());
    }
    d.instances = instances;
    Ok(())
}

/// `env`, then `env_<ENV>` over it (PM2's `--env`); the other environments are reported.
fn environment(app: &App, cx: &Context<'_>, d: &mut Draft) -> Result<(), Skipped> {
    take_env(app, "env", d)?;
    if let Some(e) = &cx.req.env {
        let key = format!("env_{e}");
        if app.contains_key(&key) {
            take_env(app, &key, d)?;
        } else {
            d.not_mapped(key, format!("this app has none: only `env` applies (as with pm2 --env {e})"));
        }
    }
    for k in app.keys().filter(|k| k.starts_with("env_") && Some(&k[4..]) != cx.req.env.as_deref()) {
        d.not_mapped(k.clone(), format!("another environment: import with `--env {}` to use it", &k[4..]));
    }
    let script_env = std::mem::take(&mut d.script_env);
    d.env.extend(script_env);
    Ok(())
}

/// An environment variable name that names a secret (KEY, TOKEN, SECRET, PASSWORD, …).
fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"].iter().any(|w| upper.contains(w))
}

/// The variables of one environment object `key` into the draft's environment.
fn take_env(app: &App, key: &str, d: &mut Draft) -> Result<(), Skipped> {
    match app.get(key) {
        None => Ok(()),
        Some(Value::Object(o)) => {
            for (k, v) in o {
                if k == "PM2_HOME" || k.starts_with("PM2_") {
                    d.not_mapped(format!("{key}.{k}"), "PM2's own setting, meaningless under corral".into());
                    continue;
                }
                if crate::config::RESERVED_ENV.contains(&k.as_str()) || k.starts_with("CORRAL_") {
                    d.not_mapped(format!("{key}.{k}"), "set by corral for each worker".into());
                    continue;
                }
                if looks_secret(k) && !matches!(v, Value::Null) {
                    let file = k.to_ascii_lowercase().replace('_', "-");
                    d.not_mapped(
                        format!("{key}.{k}"),
                        format!(
                            "looks like a secret: not copied into the config. Put it in a file only root reads \
                             (or `systemd-creds encrypt` it) and pass it as a systemd credential: corral init \
                             NAME --credential {file}=/etc/corral/secrets/{file} …; the app reads \
                             $CREDENTIALS_DIRECTORY/{file}"
                        ),
                    );
                    continue;
                }
                match v {
                    Value::Null => {}
                    Value::Object(_) | Value::Array(_) => {
                        d.env.insert(k.clone(), v.to_string());
                    }
                    other => {
                        d.env.insert(k.clone(), text(other).unwrap_or_default());
                    }
                }
            }
            d.report.push(Line::Mapped { key: key.into(), to: "env".into() });
            Ok(())
        }
        Some(_) => Err(Skipped::Value(format!("app {:?}: `{key}` must be an object", d.pm2_name))),
    }
}

/// `listen`: `--listen`, else PORT from the environment (every address, as the app's own
/// `listen(PORT)` did).
fn listen(_: &App, cx: &Context<'_>, d: &mut Draft) -> Result<(), Skipped> {
    let given = super::listen_for(&cx.req.listen, &d.pm2_name, &d.name);
    d.listen = if !given.is_empty() {
        let why = if d.env.contains_key("PORT") {
            "instead of env.PORT"
        } else {
            "its code chooses its port (no PORT in `env`: hard-coded, another variable, a .env file)"
        };
        d.report.push(Line::Mapped {
            key: "--listen".into(),
            to: format!(
                "listen = [{}] ({why}; corral, or the .socket unit, binds it: change the app to take the socket \
                 from fd 3, like `server.listen({{fd: 3}})`, instead of binding a port: docs/frameworks.md)",
                given.iter().map(|l| toml_str(l)).collect::<Vec<_>>().join(", ")
            ),
        });
        given
    } else if let Some(port) = d.env.get("PORT").cloned() {
        d.report.push(Line::Mapped {
            key: "env.PORT".into(),
            to: format!(
                "listen = [\"{port}\"] (corral, or the .socket unit, binds it; the app must take fd 3, \
                 like `server.listen({{fd: 3}})`, instead of binding the port: docs/frameworks.md)"
            ),
        });
        vec![port]
    } else {
        return Err(Skipped::NoPort(d.pm2_name.clone()));
    };
    Ok(())
}

/// `instance_var`: the variable holding the worker's number (PM2's default NODE_APP_INSTANCE).
fn instance_var(app: &App, _: &Context<'_>, d: &mut Draft) -> Result<(), Skipped> {
    if let Some(v) = app.get("instance_var").and_then(text) {
        d.instance_var = v;
        d.mapped("instance_var", format!("instance_var = {}", toml_str(&d.instance_var)));
    }
    Ok(())
}

/// `[ready]`: `wait_ready` is the "ipc" mode, else "listen"; `listen_timeout` its timeout.
fn ready(app: &App, _: &Context<'_>, d: &mut Draft) -> Result<(), Skipped> {
    d.wait_ready = app.get("wait_ready").is_some_and(|v| v == &Value::Bool(true) || v == "true");
    if app.contains_key("wait_ready") {
        let to = if d.wait_ready {
            "ready.mode = \"ipc\" (the app's process.send('ready') makes a worker ready)"
        } else {
            "ready.mode = \"listen\" (ready once the worker accepts on its socket)"
        };
        d.mapped("wait_ready", to.into());
    }
    d.ready_timeout = app.get("listen_timeout").and_then(millis);
    if let Some(t) = d.ready_timeout.clone() {
        d.mapped("listen_timeout", format!("ready.timeout = \"{t}\""));
    }
    Ok(())
}

/// `[stop]`: PM2 sends SIGINT by default.
fn stop(app: &App, _: &Context<'_>, d: &mut Draft) -> Result<(), Skipped> {
    if let Some(signal) = app.get("kill_signal").and_then(text) {
        d.stop_signal = signal;
        d.mapped("kill_signal", format!("stop.signal = \"{}\"", d.stop_signal));
    }
    d.stop_timeout = app.get("kill_timeout").and_then(millis);
    if let Some(t) = d.stop_timeout.clone() {
        d.mapped("kill_timeout", format!("stop.timeout = \"{t}\""));
    }
    Ok(())
}

/// `[restart]`: PM2's fixed or exponential delay, its restart limit and `min_uptime`.
fn restart(app: &App, _: &Context<'_>, d: &mut Draft) -> Result<(), Skipped> {
    if let Some(t) = app.get("restart_delay").and_then(millis) {
        d.restart.push(format!("delay = \"{t}\""));
        d.restart.push(format!("max_delay = \"{t}\"   # PM2's restart_delay does not grow"));
        let to = format!("restart.delay = restart.max_delay = \"{t}\" (a crash after min_uptime restarts at once)");
        d.mapped("restart_delay", to);
    }
    if let Some(t) = app.get("exp_backoff_restart_delay").and_then(millis) {
        d.restart.retain(|l| !l.starts_with("delay") && !l.starts_with("max_delay"));
        d.restart.push(format!("delay = \"{t}\""));
        d.restart.push("max_delay = \"15s\"   # PM2's exponential backoff stops at 15s".into());
        d.mapped("exp_backoff_restart_delay", format!("restart.delay = \"{t}\", doubling up to max_delay = \"15s\""));
    }
    if let Some(n) = app.get("max_restarts").and_then(|v| text(v)?.parse::<u32>().ok()) {
        d.restart.push(format!("max_restarts = {n}"));
        let to = format!("restart.max_restarts = {n} (failed starts in a row before the pool gives up)");
        d.mapped("max_restarts", to);
    }
    if let Some(t) = app.get("min_uptime").and_then(millis) {
        d.restart.push(format!("min_uptime = \"{t}\""));
        d.mapped("min_uptime", format!("restart.min_uptime = \"{t}\""));
    }
    Ok(())
}

/// `[limits]`: `max_memory_restart` is the per-worker memory limit.
fn limits(app: &App, _: &Context<'_>, d: &mut Draft) -> Result<(), Skipped> {
    d.memory = app.get("max_memory_restart").and_then(memory);
    if let Some(m) = d.memory.clone() {
        d.mapped(
            "max_memory_restart",
            format!("limits.memory = \"{m}\" (a worker over it is replaced without downtime)"),
        );
    }
    Ok(())
}

/// `user` (or `uid`); `gid` is reported with the keys no mapper takes.
fn user(app: &App, _: &Context<'_>, d: &mut Draft) -> Result<(), Skipped> {
    d.user = app.get("user").or_else(|| app.get("uid")).and_then(text);
    if let Some(u) = d.user.clone() {
        d.mapped(if app.contains_key("user") { "user" } else { "uid" }, format!("user = {}", toml_str(&u)));
    }
    Ok(())
}

/// `cron_restart`: a timer that runs a rolling reload.
fn cron(app: &App, _: &Context<'_>, d: &mut Draft) -> Result<(), Skipped> {
    let Some(cron) = app.get("cron_restart").and_then(text) else { return Ok(()) };
    match super::cron::cron_to_oncalendar(&cron) {
        Some(cal) => {
            let to = format!(
                "{n}-reload.timer (OnCalendar={cal}) runs `corral reload {n}`: a rolling reload at \
                 those times, worker by worker, where PM2 restarts them all at once",
                n = d.name
            );
            d.mapped("cron_restart", to);
            d.timer = Some((cron, cal));
        }
        None => d.not_mapped("cron_restart".into(), not_mapped("cron_restart").unwrap_or("").into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key a mapper takes is known, and no key is taken twice; what is not mapped on
    /// purpose (with a reason) is not a mapper's.
    #[test]
    fn the_known_keys_are_the_mappers_keys() {
        let mut all: Vec<&str> = MAPPERS.iter().flat_map(|m| m.keys.iter().copied()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a key taken by two mappers");
        for k in &all {
            assert!(known(k), "{k}");
            assert!(not_mapped(k).is_none() || *k == "cron_restart", "{k} is both mapped and not");
        }
        assert!(known("env_production") && !known("watch") && !known("nonsense"));
    }
}
