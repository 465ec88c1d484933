//! `corral import ecosystem.config.js`: a PM2 ecosystem file becomes corral pools.
//!
//! The file is read as PM2 reads it: `.js`/`.cjs`/`.mjs` evaluated by `node` (it is a program:
//! `require`, `process.env`, computed values), `.json` and `.yaml`/`.yml` parsed. Each app
//! becomes one pool: a config (with a comment on every line that came from PM2) and, as `corral
//! init` writes them, its `.socket` and `.service` units; a `cron_restart` becomes a timer that
//! runs `corral reload`. Every PM2 option is reported: mapped (to what), or not mapped (why, and
//! the corral or systemd way to get the same). Nothing is written for an app that cannot be
//! converted, and nothing at all with `--dry-run`.
//!
//! `ecosystem.rs` reads the file, `values.rs` and `cron.rs` convert PM2's values, `mapping.rs`
//! maps an app part by part (one function per config section), `unmapped.rs` says why the
//! rest is not mapped; here the draft becomes the config and units, and the report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::init::File;
use crate::text::toml_str;

mod cron;
mod ecosystem;
mod mapping;
mod npm;
mod unmapped;
mod values;

pub use cron::cron_to_oncalendar;
pub use ecosystem::{apps, read_ecosystem};
use mapping::{App, Context, Draft};
use values::{normalize, text, toml_argv, toml_key};

/// What `corral import` was asked for.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub file: PathBuf,
    /// Import only this app (by its PM2 name).
    pub app: Option<String>,
    /// PM2's `--env NAME`: `env_NAME` is merged over `env`.
    pub env: Option<String>,
    /// Listen here instead of on `PORT` from the app's environment: `ADDR` (one app), or
    /// `APP=ADDR` for the app of that PM2 (or pool) name.
    pub listen: Vec<String>,
    /// Prefix for /etc (tests and packaging); "/" normally.
    pub root: PathBuf,
    /// The corral binary the units run.
    pub binary: PathBuf,
    /// Add `OnFailure=corral-alert@%n.service` to the units.
    pub on_failure_alert: bool,
    /// `[control] group`: who else may operate the pools.
    pub control_group: Option<String>,
}

/// Why `corral import` imports nothing from a file; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: String },
    #[error("{}: not valid {format}: {error}", path.display())]
    Syntax { path: PathBuf, format: &'static str, error: String },
    #[error("{}: an ecosystem file ends in .js, .cjs, .mjs, .json, .yaml or .yml", .0.display())]
    Extension(PathBuf),
    #[error(
        "{}: a .js ecosystem file is a program, and `node` is needed to read it: install Node.js, or save it \
         as JSON first (node -p 'JSON.stringify(require(\"./{file}\"))' > ecosystem.json)",
        path.display()
    )]
    NodeMissing { path: PathBuf, file: String },
    #[error("cannot run node: {0}")]
    Node(String),
    #[error("{}: node could not evaluate it:\n{stderr}", path.display())]
    Evaluate { path: PathBuf, stderr: String },
    #[error("{}: its export is not JSON data: {error}", path.display())]
    Export { path: PathBuf, error: String },
    /// The apps are not where PM2 looks for them.
    #[error("{0}")]
    Shape(&'static str),
    #[error("app #{0} is not an object")]
    NotAnApp(usize),
    #[error("no app named {want:?} in {} (it has: {names})", file.display())]
    NoSuchApp { want: String, file: PathBuf, names: String },
    #[error("{} has no apps", .0.display())]
    NoApps(PathBuf),
    #[error("--listen ADDR applies to one app: choose it with --app, or give each app its own as --listen APP=ADDR")]
    ListenForMany,
    #[error("--listen {given}: no app named {app:?} in {} (it has: {names})", file.display())]
    ListenForNone { given: String, app: String, file: PathBuf, names: String },
}

/// Why one app is not converted: it is skipped, with this as the reason, and the others are
/// imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    #[error(transparent)]
    Name(#[from] crate::config::InvalidPoolName),
    #[error("app {0:?} has no `script`")]
    NoScript(String),
    #[error(
        "no PORT in its environment: a corral pool serves a listening socket; if this app serves \
         one, give it its address with `--listen {0}=ADDR` (and make it take the socket from fd 3); \
         a background worker with no socket is better run as a plain systemd service (Restart=always)"
    )]
    NoPort(String),
    /// A value PM2 would take that corral cannot read: `instances` not a number, an `env` that
    /// is not an object, unbalanced quotes in `args`.
    #[error("{0}")]
    Value(String),
    #[error("app {app:?}: the imported config would be invalid: {error}")]
    Config { app: String, error: crate::config::ConfigError },
    #[error(transparent)]
    Units(#[from] crate::init::InitError),
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

/// Convert one app. `dir` is the ecosystem file's directory (relative paths start there).
pub fn convert(app: &App, req: &ImportRequest, dir: &Path) -> Result<Imported, Skipped> {
    let d = mapping::draft(app, &Context { req, dir })?;
    let cfg = config_text(&d, req);
    let config_path = Path::new("/etc/corral").join(format!("{}.toml", d.name));
    // The same parser as `corral run`: what is written runs (a bad --listen is reported here).
    crate::config::Config::parse(&config_path, &cfg, 1)
        .map_err(|error| Skipped::Config { app: d.pm2_name.clone(), error })?;
    let init = crate::init::InitRequest {
        name: d.name.clone(),
        listen: d.listen.clone(),
        user: d.user.clone(),
        instances: None,
        command: d.command.clone(),
        root: req.root.clone(),
        binary: req.binary.clone(),
        on_failure_alert: req.on_failure_alert,
        control_group: req.control_group.clone(),
        credentials: Vec::new(),
    };
    let (socket, service) = crate::init::render_units(&init, "`corral import`; edit freely")?;
    let mut files = vec![File { path: crate::init::under_root(&req.root, &config_path), text: cfg }, socket, service];
    if let Some((cron, cal)) = &d.timer {
        files.extend(reload_timer(&d.name, cron, cal, req));
    }
    Ok(Imported { pm2_name: d.pm2_name, name: d.name, files, report: d.report, listen: d.listen })
}

/// The config, with where each value came from.
fn config_text(d: &Draft, req: &ImportRequest) -> String {
    let name = &d.name;
    let mut cfg = format!(
        "# Pool {name}: imported by `corral import` from {} (PM2 app {:?}). See corral.toml(5).\n",
        req.file.display(),
        d.pm2_name
    );
    let _ = writeln!(cfg, "name = {}", toml_str(name));
    let _ = writeln!(cfg, "command = {}", toml_argv(&d.command));
    let _ = writeln!(cfg, "workdir = {}", toml_str(&d.workdir.display().to_string()));
    let _ = writeln!(cfg, "instances = {}", d.instances);
    if let Some(u) = &d.user {
        let _ = writeln!(cfg, "user = {}", toml_str(u));
    }
    let _ =
        writeln!(cfg, "instance_var = {}   # the worker's number, 0..N-1, as PM2 sets it", toml_str(&d.instance_var));
    if !d.env.is_empty() {
        let pairs: Vec<String> = d.env.iter().map(|(k, v)| format!("{} = {}", toml_key(k), toml_str(v))).collect();
        let _ = writeln!(cfg, "env = {{ {} }}", pairs.join(", "));
    }
    cfg += "# Used when the pool runs without its .socket unit (`corral run` by hand):\n";
    let _ = writeln!(cfg, "listen = [{}]", d.listen.iter().map(|l| toml_str(l)).collect::<Vec<_>>().join(", "));
    let _ = writeln!(
        cfg,
        "\n[ready]\nmode = \"{}\"{}",
        if d.wait_ready { "ipc" } else { "listen" },
        if d.wait_ready {
            "   # PM2's wait_ready: process.send('ready')"
        } else {
            "   # ready once a worker accepts on its socket"
        }
    );
    if let Some(t) = &d.ready_timeout {
        let _ = writeln!(cfg, "timeout = \"{t}\"   # PM2's listen_timeout");
    }
    let _ = writeln!(cfg, "\n[stop]\nsignal = \"{}\"   # PM2's kill_signal (default SIGINT)", d.stop_signal);
    if let Some(t) = &d.stop_timeout {
        let _ = writeln!(cfg, "timeout = \"{t}\"   # PM2's kill_timeout");
    }
    if !d.restart.is_empty() {
        let _ = writeln!(cfg, "\n[restart]\n{}", d.restart.join("\n"));
    }
    if let Some(m) = &d.memory {
        let _ = writeln!(cfg, "\n[limits]\nmemory = \"{m}\"   # PM2's max_memory_restart");
    }
    cfg += &crate::init::control_section(req.control_group.as_deref());
    cfg
}

/// PM2's `cron_restart` as a timer and the oneshot service it runs: `corral reload NAME`.
fn reload_timer(name: &str, cron: &str, cal: &str, req: &ImportRequest) -> [File; 2] {
    let bin = req.binary.display();
    [
        File {
            path: crate::init::under_root(&req.root, format!("/etc/systemd/system/{name}-reload.timer")),
            text: format!(
                "# PM2's cron_restart ({cron}) for pool {name}: a rolling reload at these times.\n\
                 [Unit]\nDescription=Rolling reload of corral pool {name}\n\n\
                 [Timer]\nOnCalendar={cal}\nPersistent=false\n\n[Install]\nWantedBy=timers.target\n"
            ),
        },
        File {
            path: crate::init::under_root(&req.root, format!("/etc/systemd/system/{name}-reload.service")),
            text: format!(
                "[Unit]\nDescription=Rolling reload of corral pool {name}\nRequisite={name}.service\n\
                 After={name}.service\n\n[Service]\nType=oneshot\nExecStart={bin} reload {name}\n"
            ),
        },
    ]
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
pub fn import(req: &ImportRequest) -> Result<Outcome, ImportError> {
    let eco = read_ecosystem(&req.file)?;
    let all = apps(&eco)?;
    let dir = normalize(req.file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")));
    let label = |a: &App| a.get("name").or_else(|| a.get("script")).and_then(text).unwrap_or_default();
    let chosen: Vec<&App> = match &req.app {
        Some(want) => {
            let found: Vec<_> = all.iter().filter(|a| label(a) == *want).collect();
            if found.is_empty() {
                let names: Vec<String> = all.iter().map(label).collect();
                return Err(ImportError::NoSuchApp {
                    want: want.clone(),
                    file: req.file.clone(),
                    names: names.join(", "),
                });
            }
            found
        }
        None => all.iter().collect(),
    };
    if chosen.is_empty() {
        return Err(ImportError::NoApps(req.file.clone()));
    }
    if chosen.len() > 1 && req.listen.iter().any(|l| split_listen(l).0.is_none()) {
        return Err(ImportError::ListenForMany);
    }
    for l in &req.listen {
        if let (Some(app), _) = split_listen(l) {
            if !all.iter().any(|a| label(a) == app || values::pool_name(&label(a)) == app) {
                let names: Vec<String> = all.iter().map(label).collect();
                return Err(ImportError::ListenForNone {
                    given: l.clone(),
                    app: app.to_string(),
                    file: req.file.clone(),
                    names: names.join(", "),
                });
            }
        }
    }
    let mut out = Outcome { pools: Vec::new(), skipped: Vec::new(), notes: Vec::new() };
    for app in chosen {
        match convert(app, req, &dir) {
            Ok(i) if out.pools.iter().any(|p| p.name == i.name) => out.skipped.push((
                i.pm2_name.clone(),
                format!("another app already becomes pool {:?}: import it alone with --app", i.name),
            )),
            Ok(i) => out.pools.push(i),
            Err(e) => out.skipped.push((label(app), e.to_string())),
        }
    }
    if let Value::Object(o) = &eco {
        for k in o.keys().filter(|k| *k != "apps") {
            let why = unmapped::not_mapped(k).map_or("not part of an app: ignored", |w| w);
            out.notes.push(Line::NotMapped { key: k.clone(), why: why.into() });
        }
    }
    Ok(out)
}

/// `--listen APP=ADDR` → (Some(APP), ADDR); `--listen ADDR` → (None, ADDR). No address has an
/// `=` (`3000`, `127.0.0.1:3000`, `[::1]:3000`, `unix:/run/x.sock`).
fn split_listen(l: &str) -> (Option<&str>, &str) {
    match l.split_once('=') {
        Some((app, addr)) => (Some(app), addr),
        None => (None, l),
    }
}

/// The addresses `--listen` gives the app `pm2_name` (pool `name`).
pub(super) fn listen_for(listen: &[String], pm2_name: &str, name: &str) -> Vec<String> {
    listen
        .iter()
        .filter_map(|l| match split_listen(l) {
            (None, addr) => Some(addr.to_string()),
            (Some(app), addr) if app == pm2_name || app == name => Some(addr.to_string()),
            _ => None,
        })
        .collect()
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
