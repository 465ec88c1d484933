//! `corral import ecosystem.config.js`: a PM2 ecosystem file becomes corral pools.
//!
//! The file is read as PM2 reads it: `.js`/`.cjs`/`.mjs` evaluated by `node` (it is a program:
//! `require`, `process.env`, computed values), `.json` and `.yaml`/`.yml` parsed. Each app
//! becomes one pool: a config (with a comment on every line that came from PM2) and, as `corral
//! init` writes them, its `.socket` and `.service` units; a `cron_restart` becomes a timer that
//! runs `corral reload`. Every PM2 option is reported: mapped (to what), or not mapped (why, and
//! the corral or systemd way to get the same). Nothing is written for an app that cannot be
//! converted, and nothing at all with `--dry-run`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::init::File;
use crate::text::toml_str;

/// What `corral import` was asked for.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub file: PathBuf,
    /// Import only this app (by its PM2 name).
    pub app: Option<String>,
    /// PM2's `--env NAME`: `env_NAME` is merged over `env`.
    pub env: Option<String>,
    /// Listen here instead of on `PORT` from the app's environment.
    pub listen: Vec<String>,
    /// Prefix for /etc (tests and packaging); "/" normally.
    pub root: PathBuf,
    /// The corral binary the units run.
    pub binary: PathBuf,
    /// Add `OnFailure=corral-alert@%n.service` to the units.
    pub on_failure_alert: bool,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Mapped { key: String, to: String },
    NotMapped { key: String, why: String },
}

/// One app, converted.
#[derive(Debug, Clone)]
pub struct Imported {
    pub pm2_name: String,
    pub name: String,
    pub files: Vec<File>,
    pub report: Vec<Line>,
    pub listen: Vec<String>,
}

/// Read an ecosystem file into the JSON value PM2 would see.
pub fn read_ecosystem(path: &Path) -> Result<Value, String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let text = || std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    match ext.as_str() {
        "json" => serde_json::from_str(&text()?).map_err(|e| format!("{}: not valid JSON: {e}", path.display())),
        "yaml" | "yml" => yaml_to_json(&text()?).map_err(|e| format!("{}: not valid YAML: {e}", path.display())),
        "js" | "cjs" | "mjs" => eval_with_node(path),
        _ => Err(format!("{}: an ecosystem file ends in .js, .cjs, .mjs, .json, .yaml or .yml", path.display())),
    }
}

/// Evaluate a JavaScript ecosystem file with `node` and take its export as JSON.
fn eval_with_node(path: &Path) -> Result<Value, String> {
    let abs = std::fs::canonicalize(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // import() reads CommonJS and ES modules alike; functions and undefined drop out of JSON.
    let script = "import(require('url').pathToFileURL(process.argv[1]).href).then((m) => {\
                    let c = m.default !== undefined ? m.default : m;\
                    if (c && c['module.exports']) c = c['module.exports'];\
                    process.stdout.write(JSON.stringify(c));\
                  }).catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });";
    let out = std::process::Command::new("node")
        .args(["-e", script])
        .arg(&abs)
        .current_dir(abs.parent().unwrap_or(Path::new("/")))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{}: a .js ecosystem file is a program, and `node` is needed to read it: install Node.js, \
                     or save it as JSON first (node -p 'JSON.stringify(require(\"./{}\"))' > ecosystem.json)",
                    path.display(),
                    path.file_name().and_then(|n| n.to_str()).unwrap_or("ecosystem.config.js")
                )
            } else {
                format!("cannot run node: {e}")
            }
        })?;
    if !out.status.success() {
        return Err(format!(
            "{}: node could not evaluate it:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{}: its export is not JSON data: {e}", path.display()))
}

fn yaml_to_json(text: &str) -> Result<Value, String> {
    use yaml_rust2::Yaml;
    fn conv(y: &Yaml) -> Value {
        match y {
            Yaml::Real(s) => {
                s.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
            }
            Yaml::Integer(i) => Value::from(*i),
            Yaml::String(s) => Value::from(s.clone()),
            Yaml::Boolean(b) => Value::from(*b),
            Yaml::Array(a) => Value::Array(a.iter().map(conv).collect()),
            Yaml::Hash(h) => Value::Object(
                h.iter()
                    .map(|(k, v)| {
                        let key = match k {
                            Yaml::String(s) => s.clone(),
                            Yaml::Integer(i) => i.to_string(),
                            Yaml::Boolean(b) => b.to_string(),
                            other => format!("{other:?}"),
                        };
                        (key, conv(v))
                    })
                    .collect(),
            ),
            Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
        }
    }
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    Ok(docs.first().map_or(Value::Null, conv))
}

/// The apps of an ecosystem: `{apps: [...]}`, `{apps: {...}}`, `[...]`, or one app object.
pub fn apps(eco: &Value) -> Result<Vec<Map<String, Value>>, String> {
    let list = match eco {
        Value::Object(o) => match o.get("apps") {
            Some(Value::Array(a)) => a.clone(),
            Some(v @ Value::Object(_)) => vec![v.clone()],
            Some(_) => return Err("`apps` must be a list of apps".into()),
            None if o.contains_key("script") => vec![eco.clone()],
            None => return Err("no `apps` in the ecosystem file".into()),
        },
        Value::Array(a) => a.clone(),
        _ => return Err("the ecosystem file must export an object with `apps`".into()),
    };
    list.into_iter()
        .enumerate()
        .map(|(i, a)| match a {
            Value::Object(o) => Ok(o),
            _ => Err(format!("app #{} is not an object", i + 1)),
        })
        .collect()
}

/// A pool name from a PM2 name: PM2 allows anything; units and /run paths do not.
fn pool_name(pm2: &str) -> String {
    let mut n: String =
        pm2.chars().map(|c| if c.is_ascii_alphanumeric() || "_.@-".contains(c) { c } else { '-' }).collect();
    if !n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
        n = format!("app{n}");
    }
    n.truncate(64);
    n
}

/// A PM2 scalar as text (numbers, booleans and strings alike).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// PM2 durations are milliseconds (a number, or a string of digits), or strings like "10s".
fn millis(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => n.as_u64().map(ms_text),
        Value::String(s) if s.trim().chars().all(|c| c.is_ascii_digit()) && !s.trim().is_empty() => {
            s.trim().parse().ok().map(ms_text)
        }
        Value::String(s) => humantime::parse_duration(s.trim()).ok().map(|_| s.trim().to_string()),
        _ => None,
    }
}

fn ms_text(ms: u64) -> String {
    if ms > 0 && ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// PM2 memory sizes: "300M", "1G", "512K" (powers of 1024) or bytes.
fn memory(v: &Value) -> Option<String> {
    let s = text(v)?;
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let unit = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => "B",
        "K" | "KB" => "KiB",
        "M" | "MB" => "MiB",
        "G" | "GB" => "GiB",
        _ => return None,
    };
    Some(format!("{n}{unit}"))
}

/// The interpreter PM2 picks for a script by its extension (`interpreter: "none"`: run it).
fn interpreter_for(script: &str) -> Option<&'static str> {
    let ext = Path::new(script).extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "js" | "cjs" | "mjs" => Some("node"),
        "ts" | "tsx" => Some("ts-node"),
        "py" => Some("python3"),
        "rb" => Some("ruby"),
        "php" => Some("php"),
        "pl" => Some("perl"),
        "sh" => Some("bash"),
        "coffee" => Some("coffee"),
        _ => None,
    }
}

/// `args`/`interpreter_args`: an array, or a string split as a shell would.
fn argv(v: &Value, key: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Array(a) => a.iter().map(|x| text(x).ok_or_else(|| format!("`{key}` must hold strings"))).collect(),
        Value::String(s) => shlex::split(s).ok_or_else(|| format!("`{key}`: unbalanced quotes in {s:?}")),
        Value::Null => Ok(Vec::new()),
        other => text(other).map(|t| vec![t]).ok_or_else(|| format!("`{key}` must be a string or a list")),
    }
}

/// A cron expression as systemd's `OnCalendar=`, for the 5-field forms and the @ shortcuts.
pub fn cron_to_oncalendar(cron: &str) -> Option<String> {
    let cron = cron.trim();
    let short = match cron {
        "@yearly" | "@annually" => Some("yearly"),
        "@monthly" => Some("monthly"),
        "@weekly" => Some("weekly"),
        "@daily" | "@midnight" => Some("daily"),
        "@hourly" => Some("hourly"),
        _ => None,
    };
    if let Some(s) = short {
        return Some(s.to_string());
    }
    let f: Vec<&str> = cron.split_whitespace().collect();
    // PM2's cron also takes 6 fields, seconds first.
    let (sec, f) = match f.len() {
        5 => ("00".to_string(), &f[..]),
        6 => (field(f[0], 0, 59)?, &f[1..]),
        _ => return None,
    };
    let minute = field(f[0], 0, 59)?;
    let hour = field(f[1], 0, 23)?;
    let dom = field(f[2], 1, 31)?;
    let month = field(f[3], 1, 12)?;
    let dow = weekdays(f[4])?;
    let date = format!("*-{month}-{dom}");
    let time = format!("{hour}:{minute}:{sec}");
    Some(match dow {
        Some(d) => format!("{d} {date} {time}"),
        None => format!("{date} {time}"),
    })
}

/// One numeric cron field: `*`, `N`, `A-B`, `*/S`, `A-B/S`, and lists of those.
fn field(f: &str, lo: u32, hi: u32) -> Option<String> {
    let part = |p: &str| -> Option<String> {
        let (range, step) = match p.split_once('/') {
            Some((r, s)) => (r, Some(s.parse::<u32>().ok().filter(|s| *s > 0)?)),
            None => (p, None),
        };
        let num = |s: &str| s.parse::<u32>().ok().filter(|n| (lo..=hi).contains(n));
        let two = |n: u32| if hi >= 10 { format!("{n:02}") } else { n.to_string() };
        let base = match range {
            "*" => match step {
                Some(s) => return Some(format!("{}/{s}", two(lo))),
                None => return Some("*".into()),
            },
            r => match r.split_once('-') {
                Some((a, b)) => format!("{}..{}", two(num(a)?), two(num(b)?)),
                None => two(num(r)?),
            },
        };
        match step {
            // systemd has no stepped range: spell it out.
            Some(s) if base.contains("..") => {
                let (a, b) = range.split_once('-')?;
                let (a, b) = (num(a)?, num(b)?);
                Some((a..=b).step_by(s as usize).map(two).collect::<Vec<_>>().join(","))
            }
            Some(s) => Some(format!("{base}/{s}")),
            None => Some(base),
        }
    };
    f.split(',').map(part).collect::<Option<Vec<_>>>().map(|v| v.join(","))
}

/// The day-of-week field: None for `*`.
fn weekdays(f: &str) -> Option<Option<String>> {
    if f == "*" || f == "?" {
        return Some(None);
    }
    const NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    let day = |s: &str| -> Option<&'static str> {
        if let Ok(n) = s.parse::<usize>() {
            return NAMES.get(n % 7).copied().filter(|_| n <= 7);
        }
        NAMES.iter().copied().find(|n| n.eq_ignore_ascii_case(s.get(..3).unwrap_or("")))
    };
    let parts: Option<Vec<String>> = f
        .split(',')
        .map(|p| match p.split_once('-') {
            Some((a, b)) => Some(format!("{}..{}", day(a)?, day(b)?)),
            None => day(p).map(str::to_string),
        })
        .collect();
    parts.map(|p| Some(p.join(",")))
}

/// Why an option is not mapped, and what to do instead.
fn not_mapped(key: &str) -> Option<&'static str> {
    Some(match key {
        "watch" | "ignore_watch" | "watch_delay" | "watch_options" => {
            "file watching restarts on every change, which production does not want: deploy, then \
             `systemctl reload NAME` (rolling, no failed request); in development use `node --watch` or nodemon"
        }
        "out_file" | "error_file" | "log_file" | "output" | "error" | "log" | "merge_logs" | "combine_logs"
        | "log_date_format" | "time" | "log_type" | "disable_logs" | "pid_file" | "pid" => {
            "journald keeps every line, timestamped and tagged with the worker that wrote it: \
             `journalctl -u NAME`, one worker with `CORRAL_WORKER=N`, JSON with `-o json`; no log files to rotate"
        }
        "post_update" => {
            "building the app is the deploy's job, not the process manager's: run these steps in the \
             deploy script, then `systemctl reload NAME`"
        }
        "autorestart" => {
            "corral always replaces a worker that exits; a pool that cannot start gives up and systemd's \
             Restart= decides"
        }
        "vizion" | "pmx" | "automation" | "treekill" | "source_map_support" | "disable_source_map_support"
        | "force" | "append_env_to_name" | "namespace" | "version" | "max" | "exec_interpreter" => {
            "PM2-specific, nothing to do under corral"
        }
        "increment_var" => "not supported: give each worker its own value from CORRAL_WORKER (0..N-1) instead",
        "shutdown_with_message" => "not supported: corral stops workers with `stop.signal` (see [stop])",
        "stop_exit_codes" => "not supported: corral replaces a worker whenever it exits while it should run",
        "kill_retry_time" => "not needed: corral sends SIGKILL once at `stop.timeout`",
        "filter_env" => "not needed: a worker gets the master's environment (the unit's) plus `env`",
        "cron_restart" => "not a cron expression corral can convert: write a systemd timer running `corral reload NAME`",
        "deploy" => "PM2's deploy (git pull over ssh) is not corral's job: keep your deploy tool, and end it with `systemctl reload` of the pool",
        _ => return None,
    })
}

/// Convert one app. `dir` is the ecosystem file's directory (relative paths start there).
pub fn convert(app: &Map<String, Value>, req: &ImportRequest, dir: &Path) -> Result<Imported, String> {
    let mut report = Vec::new();
    let pm2_name = app.get("name").and_then(text).unwrap_or_else(|| {
        app.get("script")
            .and_then(text)
            .map_or("app".into(), |s| Path::new(&s).file_stem().and_then(|n| n.to_str()).unwrap_or("app").to_string())
    });
    let name = pool_name(&pm2_name);
    crate::config::check_pool_name(&name)?;
    mapped(&mut report, "name", format!("name = {} (the units are {name}.socket and {name}.service)", toml_str(&name)));

    // Paths: cwd relative to the ecosystem file's directory, script relative to cwd.
    let workdir = match app.get("cwd").and_then(text) {
        Some(c) => dir.join(c),
        None => dir.to_path_buf(),
    };
    let workdir = normalize(&workdir);
    let script = app.get("script").and_then(text).ok_or_else(|| format!("app {pm2_name:?} has no `script`"))?;
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
        command.extend(argv(args, "interpreter_args")?);
    }
    command.push(script_path);
    command.extend(argv(app.get("args").unwrap_or(&Value::Null), "args")?);
    mapped(&mut report, "script", format!("command = {}", toml_argv(&command)));
    for k in ["args", "interpreter", "interpreter_args", "node_args"] {
        if app.contains_key(k) {
            mapped(&mut report, k, "in `command`".into());
        }
    }
    if app.contains_key("cwd") {
        mapped(&mut report, "cwd", format!("workdir = {}", toml_str(&workdir.display().to_string())));
    }

    let instances = match app.get("instances") {
        None => "1".to_string(),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(0) => "\"max\"".into(),
            Some(-1) => "\"max-1\"".into(),
            Some(i) if i < -1 => format!("\"max{i}\""),
            Some(i) => i.to_string(),
            None => return Err(format!("app {pm2_name:?}: instances must be a whole number or \"max\"")),
        },
        Some(Value::String(s)) if s == "max" => "\"max\"".into(),
        Some(Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(0) => "\"max\"".into(),
            Ok(i) if i < 0 => format!("\"max{i}\""),
            Ok(i) => i.to_string(),
            Err(_) => return Err(format!("app {pm2_name:?}: instances {s:?} is not a number or \"max\"")),
        },
        Some(other) => return Err(format!("app {pm2_name:?}: instances {other} is not a number or \"max\"")),
    };
    if app.contains_key("instances") {
        mapped(
            &mut report,
            "instances",
            format!(
                "instances = {instances} (\"max\" counts the CPUs this service may use: affinity and cgroup quota)"
            ),
        );
    }
    if let Some(mode) = app.get("exec_mode").and_then(text) {
        let what = if mode.contains("cluster") {
            "every worker accepts on the shared listening socket, as in cluster mode, but the master never \
             touches a connection"
        } else {
            "corral runs `instances` workers that share the listening socket; a fork-mode app that binds its \
             own port must take fd 3 instead (docs/frameworks.md)"
        };
        mapped(&mut report, "exec_mode", what.into());
    }

    // The environment: env, then env_<ENV> over it (PM2's --env).
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut take_env = |key: &str, report: &mut Vec<Line>| -> Result<(), String> {
        match app.get(key) {
            None => Ok(()),
            Some(Value::Object(o)) => {
                for (k, v) in o {
                    if k == "PM2_HOME" || k.starts_with("PM2_") {
                        report.push(Line::NotMapped {
                            key: format!("{key}.{k}"),
                            why: "PM2's own setting, meaningless under corral".into(),
                        });
                        continue;
                    }
                    if crate::config::RESERVED_ENV.contains(&k.as_str()) || k.starts_with("CORRAL_") {
                        report.push(Line::NotMapped {
                            key: format!("{key}.{k}"),
                            why: "set by corral for each worker".into(),
                        });
                        continue;
                    }
                    match v {
                        Value::Null => {}
                        Value::Object(_) | Value::Array(_) => {
                            env.insert(k.clone(), v.to_string());
                        }
                        other => {
                            env.insert(k.clone(), text(other).unwrap_or_default());
                        }
                    }
                }
                report.push(Line::Mapped { key: key.into(), to: "env".into() });
                Ok(())
            }
            Some(_) => Err(format!("app {pm2_name:?}: `{key}` must be an object")),
        }
    };
    take_env("env", &mut report)?;
    if let Some(e) = &req.env {
        let key = format!("env_{e}");
        if app.contains_key(&key) {
            take_env(&key, &mut report)?;
        } else {
            report.push(Line::NotMapped {
                key,
                why: format!("this app has none: only `env` applies (as with pm2 --env {e})"),
            });
        }
    }
    for k in app.keys().filter(|k| k.starts_with("env_") && Some(&k[4..]) != req.env.as_deref()) {
        report.push(Line::NotMapped {
            key: k.clone(),
            why: format!("another environment: import with `--env {}` to use it", &k[4..]),
        });
    }

    // Where to listen: --listen, else PORT from the environment (every address, as the app's
    // own listen(PORT) did).
    let listen: Vec<String> = if !req.listen.is_empty() {
        req.listen.clone()
    } else if let Some(port) = env.get("PORT") {
        report.push(Line::Mapped {
            key: "env.PORT".into(),
            to: format!(
                "listen = [\"{port}\"] (corral, or the .socket unit, binds it; the app must take fd 3, \
                 like `server.listen({{fd: 3}})`, instead of binding the port: docs/frameworks.md)"
            ),
        });
        vec![port.clone()]
    } else {
        return Err(format!(
            "no PORT in its environment: a corral pool serves a listening socket; if this app serves \
             one, import it alone with `--app {pm2_name} --listen ADDR`; a background worker with no \
             socket is better run as a plain systemd service (Restart=always)"
        ));
    };

    let instance_var = app.get("instance_var").and_then(text).unwrap_or_else(|| "NODE_APP_INSTANCE".into());
    if app.contains_key("instance_var") {
        mapped(&mut report, "instance_var", format!("instance_var = {}", toml_str(&instance_var)));
    }

    // [ready]
    let wait_ready = app.get("wait_ready").is_some_and(|v| v == &Value::Bool(true) || v == "true");
    let ready_mode = if wait_ready { "ipc" } else { "listen" };
    if app.contains_key("wait_ready") {
        mapped(
            &mut report,
            "wait_ready",
            if wait_ready {
                "ready.mode = \"ipc\" (the app's process.send('ready') makes a worker ready)".into()
            } else {
                "ready.mode = \"listen\" (ready once the worker accepts on its socket)".into()
            },
        );
    }
    let ready_timeout = app.get("listen_timeout").and_then(millis);
    if let Some(t) = &ready_timeout {
        mapped(&mut report, "listen_timeout", format!("ready.timeout = \"{t}\""));
    }

    // [stop]: PM2 sends SIGINT by default.
    let stop_signal = app.get("kill_signal").and_then(text).unwrap_or_else(|| "SIGINT".into());
    if app.contains_key("kill_signal") {
        mapped(&mut report, "kill_signal", format!("stop.signal = \"{stop_signal}\""));
    }
    let stop_timeout = app.get("kill_timeout").and_then(millis);
    if let Some(t) = &stop_timeout {
        mapped(&mut report, "kill_timeout", format!("stop.timeout = \"{t}\""));
    }

    // [restart]
    let mut restart = Vec::new();
    if let Some(d) = app.get("restart_delay").and_then(millis) {
        restart.push(format!("delay = \"{d}\""));
        restart.push(format!("max_delay = \"{d}\"   # PM2's restart_delay does not grow"));
        mapped(
            &mut report,
            "restart_delay",
            format!("restart.delay = restart.max_delay = \"{d}\" (a crash after min_uptime restarts at once)"),
        );
    }
    if let Some(d) = app.get("exp_backoff_restart_delay").and_then(millis) {
        restart.retain(|l| !l.starts_with("delay") && !l.starts_with("max_delay"));
        restart.push(format!("delay = \"{d}\""));
        restart.push("max_delay = \"15s\"   # PM2's exponential backoff stops at 15s".into());
        mapped(
            &mut report,
            "exp_backoff_restart_delay",
            format!("restart.delay = \"{d}\", doubling up to max_delay = \"15s\""),
        );
    }
    if let Some(n) = app.get("max_restarts").and_then(|v| text(v)?.parse::<u32>().ok()) {
        restart.push(format!("max_restarts = {n}"));
        mapped(
            &mut report,
            "max_restarts",
            format!("restart.max_restarts = {n} (failed starts in a row before the pool gives up)"),
        );
    }
    if let Some(d) = app.get("min_uptime").and_then(millis) {
        restart.push(format!("min_uptime = \"{d}\""));
        mapped(&mut report, "min_uptime", format!("restart.min_uptime = \"{d}\""));
    }
    let memory_limit = app.get("max_memory_restart").and_then(memory);
    if let Some(m) = &memory_limit {
        mapped(
            &mut report,
            "max_memory_restart",
            format!("limits.memory = \"{m}\" (a worker over it is replaced without downtime)"),
        );
    }
    let user = app.get("user").or_else(|| app.get("uid")).and_then(text);
    if let Some(u) = &user {
        mapped(&mut report, if app.contains_key("user") { "user" } else { "uid" }, format!("user = {}", toml_str(u)));
    }

    // cron_restart: a timer that runs a rolling reload.
    let mut timer = None;
    if let Some(cron) = app.get("cron_restart").and_then(text) {
        match cron_to_oncalendar(&cron) {
            Some(cal) => {
                mapped(
                    &mut report,
                    "cron_restart",
                    format!(
                        "{name}-reload.timer (OnCalendar={cal}) runs `corral reload {name}`: a rolling reload at \
                         those times, worker by worker, where PM2 restarts them all at once"
                    ),
                );
                timer = Some(cal);
            }
            None => report.push(Line::NotMapped {
                key: "cron_restart".into(),
                why: not_mapped("cron_restart").unwrap_or("").into(),
            }),
        }
    }

    const KNOWN: &[&str] = &[
        "name",
        "script",
        "args",
        "interpreter",
        "interpreter_args",
        "node_args",
        "cwd",
        "instances",
        "exec_mode",
        "env",
        "instance_var",
        "wait_ready",
        "listen_timeout",
        "kill_signal",
        "kill_timeout",
        "restart_delay",
        "exp_backoff_restart_delay",
        "max_restarts",
        "min_uptime",
        "max_memory_restart",
        "user",
        "uid",
        "cron_restart",
        "gid",
        "exec_interpreter",
    ];
    for k in app.keys() {
        if KNOWN.contains(&k.as_str()) || k.starts_with("env_") {
            if k == "gid" {
                report.push(Line::NotMapped {
                    key: k.clone(),
                    why: "workers take the primary and supplementary groups of `user`".into(),
                });
            }
            continue;
        }
        let why = not_mapped(k).map_or_else(
            || "not a PM2 option corral knows: check it by hand".to_string(),
            |w| w.replace("NAME", &name),
        );
        report.push(Line::NotMapped { key: k.clone(), why });
    }

    // The config, with where each value came from.
    let mut cfg = format!(
        "# Pool {name}: imported by `corral import` from {} (PM2 app {pm2_name:?}). See corral.toml(5).\n",
        req.file.display()
    );
    let _ = writeln!(cfg, "name = {}", toml_str(&name));
    let _ = writeln!(cfg, "command = {}", toml_argv(&command));
    let _ = writeln!(cfg, "workdir = {}", toml_str(&workdir.display().to_string()));
    let _ = writeln!(cfg, "instances = {instances}");
    if let Some(u) = &user {
        let _ = writeln!(cfg, "user = {}", toml_str(u));
    }
    let _ = writeln!(cfg, "instance_var = {}   # the worker's number, 0..N-1, as PM2 sets it", toml_str(&instance_var));
    if !env.is_empty() {
        let pairs: Vec<String> = env.iter().map(|(k, v)| format!("{} = {}", toml_key(k), toml_str(v))).collect();
        let _ = writeln!(cfg, "env = {{ {} }}", pairs.join(", "));
    }
    cfg += "# Used when the pool runs without its .socket unit (`corral run` by hand):\n";
    let _ = writeln!(cfg, "listen = [{}]", listen.iter().map(|l| toml_str(l)).collect::<Vec<_>>().join(", "));
    let _ = writeln!(
        cfg,
        "\n[ready]\nmode = \"{ready_mode}\"{}",
        if wait_ready {
            "   # PM2's wait_ready: process.send('ready')"
        } else {
            "   # ready once a worker accepts on its socket"
        }
    );
    if let Some(t) = &ready_timeout {
        let _ = writeln!(cfg, "timeout = \"{t}\"   # PM2's listen_timeout");
    }
    let _ = writeln!(cfg, "\n[stop]\nsignal = \"{stop_signal}\"   # PM2's kill_signal (default SIGINT)");
    if let Some(t) = &stop_timeout {
        let _ = writeln!(cfg, "timeout = \"{t}\"   # PM2's kill_timeout");
    }
    if !restart.is_empty() {
        let _ = writeln!(cfg, "\n[restart]\n{}", restart.join("\n"));
    }
    if let Some(m) = &memory_limit {
        let _ = writeln!(cfg, "\n[limits]\nmemory = \"{m}\"   # PM2's max_memory_restart");
    }
    let config_path = Path::new("/etc/corral").join(format!("{name}.toml"));
    // The same parser as `corral run`: what is written runs (a bad --listen is reported here).
    crate::config::Config::parse(&config_path, &cfg, 1)
        .map_err(|e| format!("app {pm2_name:?}: the imported config would be invalid: {e}"))?;

    let init = crate::init::InitRequest {
        name: name.clone(),
        listen: listen.clone(),
        user: user.clone(),
        instances: None,
        command: command.clone(),
        root: req.root.clone(),
        binary: req.binary.clone(),
        on_failure_alert: req.on_failure_alert,
    };
    let mut files = crate::init::render(&init)?;
    files[0].text = cfg;
    for f in &mut files[1..] {
        f.text = f.text.replace(
            "written by `corral init`; edit freely (`corral init --force` rewrites it)",
            "written by `corral import`; edit freely",
        );
    }
    if let Some(cal) = timer {
        let etc = |p: String| req.root.join(p.trim_start_matches('/'));
        let bin = req.binary.display();
        files.push(File {
            path: etc(format!("/etc/systemd/system/{name}-reload.timer")),
            text: format!(
                "# PM2's cron_restart ({}) for pool {name}: a rolling reload at these times.\n\
                 [Unit]\nDescription=Rolling reload of corral pool {name}\n\n\
                 [Timer]\nOnCalendar={cal}\nPersistent=false\n\n[Install]\nWantedBy=timers.target\n",
                app.get("cron_restart").and_then(text).unwrap_or_default()
            ),
        });
        files.push(File {
            path: etc(format!("/etc/systemd/system/{name}-reload.service")),
            text: format!(
                "[Unit]\nDescription=Rolling reload of corral pool {name}\nRequisite={name}.service\n\
                 After={name}.service\n\n[Service]\nType=oneshot\nExecStart={bin} reload {name}\n"
            ),
        });
    }
    Ok(Imported { pm2_name, name, files, report, listen })
}

fn mapped(report: &mut Vec<Line>, key: &str, to: String) {
    report.push(Line::Mapped { key: key.into(), to });
}

fn toml_argv(argv: &[String]) -> String {
    format!("[{}]", argv.iter().map(|a| toml_str(a)).collect::<Vec<_>>().join(", "))
}

fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        toml_str(k)
    }
}

/// `a/./b/../c` → `a/c`, without touching the filesystem (the app may not be deployed yet).
fn normalize(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")).join(p)
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// What `corral import` made of a file.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub pools: Vec<Imported>,
    /// Apps that could not be converted: (PM2 name, why).
    pub skipped: Vec<(String, String)>,
    /// Top-level keys of the file that are not apps.
    pub notes: Vec<Line>,
}

/// Import every app of `req.file` (or the one named by `req.app`).
pub fn import(req: &ImportRequest) -> Result<Outcome, String> {
    let eco = read_ecosystem(&req.file)?;
    let all = apps(&eco)?;
    let dir = normalize(req.file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")));
    let label = |a: &Map<String, Value>| a.get("name").or_else(|| a.get("script")).and_then(text).unwrap_or_default();
    let chosen: Vec<&Map<String, Value>> = match &req.app {
        Some(want) => {
            let found: Vec<_> = all.iter().filter(|a| label(a) == *want).collect();
            if found.is_empty() {
                let names: Vec<String> = all.iter().map(label).collect();
                return Err(format!("no app named {want:?} in {} (it has: {})", req.file.display(), names.join(", ")));
            }
            found
        }
        None => all.iter().collect(),
    };
    if chosen.is_empty() {
        return Err(format!("{} has no apps", req.file.display()));
    }
    if chosen.len() > 1 && !req.listen.is_empty() {
        return Err("--listen applies to one app: choose it with --app".into());
    }
    let mut out = Outcome { pools: Vec::new(), skipped: Vec::new(), notes: Vec::new() };
    for app in chosen {
        match convert(app, req, &dir) {
            Ok(i) if out.pools.iter().any(|p| p.name == i.name) => out.skipped.push((
                i.pm2_name.clone(),
                format!("another app already becomes pool {:?}: import it alone with --app", i.name),
            )),
            Ok(i) => out.pools.push(i),
            Err(e) => out.skipped.push((label(app), e)),
        }
    }
    if let Value::Object(o) = &eco {
        for k in o.keys().filter(|k| *k != "apps") {
            let why = not_mapped(k).map_or("not part of an app: ignored", |w| w);
            out.notes.push(Line::NotMapped { key: k.clone(), why: why.into() });
        }
    }
    Ok(out)
}

/// The report for one app, as printed.
pub fn render_report(i: &Imported) -> String {
    let mut s = format!("PM2 app {:?} → corral pool {:?}\n", i.pm2_name, i.name);
    for l in &i.report {
        if let Line::Mapped { key, to } = l {
            let _ = writeln!(s, "  mapped      {key:<26} → {to}");
        }
    }
    for l in &i.report {
        if let Line::NotMapped { key, why } = l {
            let _ = writeln!(s, "  not mapped  {key:<26} {why}");
        }
    }
    s
}

/// What to type next for an imported pool.
pub fn next_steps(i: &Imported) -> String {
    let n = &i.name;
    let timer = if i.files.iter().any(|f| f.path.to_string_lossy().ends_with("-reload.timer")) {
        format!("  systemctl enable --now {n}-reload.timer   # PM2's cron_restart, as rolling reloads\n")
    } else {
        String::new()
    };
    format!(
        "Next for {n} (after `pm2 delete {pm2}` frees its port):\n  corral check -c /etc/corral/{n}.toml\n  \
         systemctl daemon-reload\n  systemctl enable --now {n}.socket\n{timer}  corral status {n}\n",
        pm2 = i.pm2_name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_become_oncalendar() {
        for (cron, want) in [
            ("0 3 * * 1-5", Some("Mon..Fri *-*-* 03:00:00")),
            ("0 0 * * *", Some("*-*-* 00:00:00")),
            ("*/15 * * * *", Some("*-*-* *:00/15:00")),
            ("30 2 1 * *", Some("*-*-01 02:30:00")),
            ("0 0,12 * * 0", Some("Sun *-*-* 00,12:00:00")),
            ("0 0 * * 7", Some("Sun *-*-* 00:00:00")),
            ("0 8-18/2 * * *", Some("*-*-* 08,10,12,14,16,18:00:00")),
            ("0 0 1 1 *", Some("*-01-01 00:00:00")),
            ("15 30 4 * * *", Some("*-*-* 04:30:15")),
            ("0 9 * * mon,fri", Some("Mon,Fri *-*-* 09:00:00")),
            ("@daily", Some("daily")),
            ("@hourly", Some("hourly")),
            ("61 * * * *", None),
            ("* * *", None),
            ("0 0 * * 9", None),
            ("*/0 * * * *", None),
            ("nonsense", None),
        ] {
            assert_eq!(cron_to_oncalendar(cron).as_deref(), want, "{cron}");
        }
    }

    #[test]
    fn pm2_values() {
        assert_eq!(memory(&Value::from("300M")).as_deref(), Some("300MiB"));
        assert_eq!(memory(&Value::from("1G")).as_deref(), Some("1GiB"));
        assert_eq!(memory(&Value::from("512K")).as_deref(), Some("512KiB"));
        assert_eq!(memory(&Value::from(1048576)).as_deref(), Some("1048576B"));
        assert_eq!(memory(&Value::from("lots")), None);
        assert_eq!(millis(&Value::from(2000)).as_deref(), Some("2s"));
        assert_eq!(millis(&Value::from(1500)).as_deref(), Some("1500ms"));
        assert_eq!(millis(&Value::from("3000")).as_deref(), Some("3s"));
        assert_eq!(millis(&Value::from("5s")).as_deref(), Some("5s"));
        assert_eq!(millis(&Value::from("soon")), None);
        assert_eq!(pool_name("my api/v2"), "my-api-v2");
        assert_eq!(pool_name("-x"), "app-x");
        assert!(crate::config::check_pool_name(&pool_name(&"x".repeat(100))).is_ok());
        assert_eq!(argv(&Value::from("--a 'b c'"), "args").unwrap(), ["--a", "b c"]);
        assert_eq!(argv(&serde_json::json!(["x", 1]), "args").unwrap(), ["x", "1"]);
        assert!(argv(&Value::from("'open"), "args").is_err());
    }

    #[test]
    fn apps_in_every_shape() {
        let one = serde_json::json!({"script": "a.js"});
        assert_eq!(apps(&one).unwrap().len(), 1);
        assert_eq!(apps(&serde_json::json!({"apps": [{"script": "a"}, {"script": "b"}]})).unwrap().len(), 2);
        assert_eq!(apps(&serde_json::json!({"apps": {"script": "a"}})).unwrap().len(), 1);
        assert_eq!(apps(&serde_json::json!([{"script": "a"}])).unwrap().len(), 1);
        assert!(apps(&serde_json::json!({"deploy": {}})).unwrap_err().contains("no `apps`"));
        assert!(apps(&serde_json::json!({"apps": [1]})).unwrap_err().contains("not an object"));
        let y = yaml_to_json("apps:\n  - script: ./a.js\n    instances: 4\n    env:\n      PORT: 3001\n").unwrap();
        assert_eq!(y, serde_json::json!({"apps": [{"script": "./a.js", "instances": 4, "env": {"PORT": 3001}}]}));
    }
}
