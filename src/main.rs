//! The `corral` binary: parse the command line, call into the library, map errors to exit codes
//! (0 clean stop, 78 bad config, 1 anything else).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use corral::cli::{Cli, Command};
use corral::config::{self, Config, LogFormat, LogTarget};
use corral::control::{self, Reply, Request};
use corral::driver;

/// EX_CONFIG from sysexits.h: units say `RestartPreventExitStatus=78`.
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env_config = std::env::var("CORRAL_CONFIG").ok();
    let env_config = env_config.as_deref();
    match cli.command {
        Command::Run { state_fd: Some(fd), .. } => resume(fd),
        Command::Run { config, state_fd: None, init } => run(config::locate(config.as_deref(), env_config, None), init),
        Command::UpgradeCheck { state_fd } => upgrade_check(state_fd),
        Command::IsPoolUnit { unit } => match corral::unitfile::is_pool_unit(&unit) {
            Ok(path) => {
                println!("{unit} runs a corral pool ({})", path.display());
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("corral: {why}");
                ExitCode::FAILURE
            }
        },
        Command::WatchMaster { record } => {
            corral::output::stderr::init();
            corral::logging::init(LogTarget::Auto, false);
            let code = corral::leftovers::watch(&record);
            corral::output::stderr::flush_before_exit(Duration::from_millis(200));
            ExitCode::from(code as u8)
        }
        Command::Upgrade { name, timeout } => upgrade(name.as_deref(), timeout),
        Command::Check { config, name } => check(&config::locate(config.as_deref(), env_config, name.as_deref())),
        Command::Status { name, json } => status(name.as_deref(), json),
        Command::Logs { name, follow, worker, since, lines } => {
            ExitCode::from(corral::logs::run(&corral::logs::LogsRequest { name, follow, worker, since, lines }))
        }
        Command::Top { name, count } => ExitCode::from(corral::top::run(name.as_deref(), count)),
        Command::Reload { name, no_wait, config, timeout } => reload(name, config, env_config, !no_wait, timeout),
        Command::Scale { name, count } => scale(&name, count),
        Command::Init { name, listen, user, instances, credential, files, command } => init(
            corral::init::InitRequest {
                name,
                listen,
                user,
                instances,
                command,
                root: files.root.clone(),
                binary: own_binary(),
                on_failure_alert: files.on_failure_alert,
                control_group: Some(files.control_group.clone()).filter(|g| !g.is_empty()),
                credentials: credential,
            },
            &files,
        ),
        Command::Import { file, app, env, listen, files } => import(
            corral::import::ImportRequest {
                file,
                app,
                env,
                listen,
                root: files.root.clone(),
                binary: own_binary(),
                on_failure_alert: files.on_failure_alert,
                control_group: Some(files.control_group.clone()).filter(|g| !g.is_empty()),
            },
            &files,
        ),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "corral", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

/// `corral run --state-fd N`: the new image of an upgrade.
fn resume(fd: std::os::fd::RawFd) -> ExitCode {
    corral::output::stderr::init();
    let (target, format) = corral::handover::borrow(fd)
        .and_then(corral::handover::read_state)
        .map_or((LogTarget::Auto, LogFormat::Text), |s| (s.log_target, s.log_format));
    // A JSON-logging master already pointed its stderr at stdout before the upgrade.
    corral::logging::init(target, format == LogFormat::Json && !corral::logging::uses_journal(target));
    finish_run(driver::resume(fd))
}

/// `corral run`: the master in the foreground. `init`: as a container's init (or PID 1).
fn run(path: std::path::PathBuf, init: bool) -> ExitCode {
    let mut config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            corral::output::stderr::init();
            corral::logging::init(LogTarget::Auto, false);
            tracing::error!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    // A container's init: its logs are the container's output, whatever is mounted.
    let container = init || std::process::id() == 1;
    if container && config.logs.target == LogTarget::Auto {
        config.logs.target = LogTarget::Stderr;
    }
    let json = config.logs.format == LogFormat::Json && !corral::logging::uses_journal(config.logs.target);
    if json {
        // Every line, the master's and the workers', goes to stdout as JSON.
        if let Err(e) = nix::unistd::dup2_stderr(std::io::stdout()) {
            eprintln!("corral: cannot send the logs to stdout ({e}); they stay on stderr");
        }
    }
    corral::output::stderr::init();
    corral::logging::init(config.logs.target, json);
    if container {
        tracing::info!(
            "running as the container's init (pid {}): orphans are reaped, SIGTERM/SIGINT stop the pool \
             gracefully{}",
            std::process::id(),
            if config.stop.drain.0.is_zero() {
                String::new()
            } else {
                format!(" after draining for {}", humantime::format_duration(config.stop.drain.0))
            }
        );
    }
    finish_run(driver::run(config))
}

/// `corral upgrade-check --state-fd N`, run by an old master with this binary.
fn upgrade_check(state_fd: std::os::fd::RawFd) -> ExitCode {
    match corral::handover::check(state_fd) {
        Ok(version) => {
            println!("{version}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `corral reload [NAME]`: the pool named, or the one the config names.
fn reload(
    name: Option<String>,
    config: Option<std::path::PathBuf>,
    env_config: Option<&str>,
    wait: bool,
    timeout: Duration,
) -> ExitCode {
    let name = match name {
        Some(n) => n,
        None => {
            let path = config::locate(config.as_deref(), env_config, None);
            match Config::load(&path) {
                Ok(c) => c.name,
                Err(e) => {
                    eprintln!("corral reload: give a pool NAME, or a config to take it from: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
            }
        }
    };
    let reply = control::ask(&name, &Request::Reload { wait }, if wait { timeout } else { Duration::from_secs(10) });
    finish(&name, reply)
}

/// `corral scale NAME N|+N|-N`.
fn scale(name: &str, count: String) -> ExitCode {
    if let Err(e) = control::parse_scale(&count) {
        eprintln!("corral scale: {e}");
        return ExitCode::from(2);
    }
    let reply = control::ask(name, &Request::Scale { to: count }, Duration::from_secs(10));
    finish(name, reply)
}

/// `corral init`: write a pool's config and units (or print them with --dry-run).
fn init(req: corral::init::InitRequest, opts: &corral::cli::PoolFiles) -> ExitCode {
    let files = match corral::init::render(&req) {
        Ok(f) => f.into_vec(),
        Err(e) => {
            eprintln!("corral init: {e}");
            return ExitCode::from(2);
        }
    };
    match write_pool_files("init", &files, opts) {
        Ok(true) => print!("{}", corral::init::next_steps(&req)),
        Ok(false) => {}
        Err(code) => return code,
    }
    ExitCode::SUCCESS
}

/// `corral import`: PM2 ecosystem file → pools, with the report of what was mapped.
fn import(req: corral::import::ImportRequest, opts: &corral::cli::PoolFiles) -> ExitCode {
    let outcome = match corral::import::import(&req) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("corral import: {e}");
            return ExitCode::from(2);
        }
    };
    for p in &outcome.pools {
        print!("{}", corral::import::render_report(p));
    }
    for l in &outcome.notes {
        if let corral::import::Line::NotMapped { key, why } = l {
            println!("file: not mapped  {key:<22} {why}");
        }
    }
    for (app, why) in &outcome.skipped {
        eprintln!("corral import: skipped app {app:?}: {why}");
    }
    let files: Vec<_> = outcome.pools.iter().flat_map(|p| p.files.clone()).collect();
    if files.is_empty() {
        eprintln!("corral import: nothing to import");
        return ExitCode::from(2);
    }
    if opts.dry_run {
        println!();
    }
    match write_pool_files("import", &files, opts) {
        Ok(true) => outcome.pools.iter().for_each(|p| print!("{}", corral::import::next_steps(p))),
        Ok(false) => {}
        Err(code) => return code,
    }
    if outcome.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The exit status of `corral run` (a first start or an upgrade's new image), once the master's
/// last log lines had their chance to be read.
fn finish_run(result: Result<i32, driver::StartError>) -> ExitCode {
    let code = match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    };
    corral::output::stderr::flush_before_exit(Duration::from_secs(1));
    code
}

/// Print a reply's message (stdout) or error (stderr); exit 0 or 1 accordingly.
fn finish(name: &str, reply: Result<Reply, control::ClientError>) -> ExitCode {
    match reply {
        Ok(Reply { ok: true, message, .. }) => {
            println!("{name}: {}", message.unwrap_or_else(|| "ok".into()));
            ExitCode::SUCCESS
        }
        Ok(Reply { error, .. }) => {
            eprintln!("{name}: {}", error.unwrap_or_else(|| "failed".into()));
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("corral: {e}");
            ExitCode::from(1)
        }
    }
}

/// `corral upgrade [NAME]`: ask each master to re-execute itself, then wait until the new image
/// answers with the same pid.
fn upgrade(name: Option<&str>, timeout: Duration) -> ExitCode {
    let names = match name {
        Some(n) => vec![n.to_string()],
        None => corral::rundir::running_pools(),
    };
    if names.is_empty() {
        println!("no pools running (looked in {})", corral::rundir::runtime_root().display());
        return ExitCode::SUCCESS;
    }
    let mut failed = false;
    for n in &names {
        if let Err(e) = upgrade_one(n, timeout) {
            eprintln!("{n}: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Why `corral upgrade` failed for one pool.
#[derive(Debug, thiserror::Error)]
enum UpgradeFailed {
    #[error(transparent)]
    Unreachable(#[from] control::ClientError),
    /// The master's own words (a refusal, or no status to compare with).
    #[error("{0}")]
    Master(String),
    #[error("the master was replaced (pid {before} → {now}), not upgraded in place")]
    Replaced { before: u32, now: u32 },
    #[error("no new image answered within {}", humantime::format_duration(*.0))]
    NoAnswer(Duration),
}

fn upgrade_one(name: &str, timeout: Duration) -> Result<(), UpgradeFailed> {
    let status = |wait: Duration| match control::ask(name, &Request::Status, wait) {
        Ok(Reply { status: Some(s), .. }) => Ok(s),
        Ok(Reply { error, .. }) => Err(UpgradeFailed::Master(error.unwrap_or_else(|| "no status".into()))),
        Err(e) => Err(e.into()),
    };
    let before = status(Duration::from_secs(10))?;
    match control::ask(name, &Request::Upgrade, Duration::from_secs(30)) {
        Ok(Reply { ok: false, error, .. }) => {
            return Err(UpgradeFailed::Master(error.unwrap_or_else(|| "upgrade refused".into())))
        }
        // Accepted; or the connection closed with the exec before the reply was written.
        Ok(_) | Err(control::ClientError::Io { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(now) = status(Duration::from_secs(2)) {
            if now.pid != before.pid {
                return Err(UpgradeFailed::Replaced { before: before.pid, now: now.pid });
            }
            if now.upgrades > before.upgrades {
                let pids = |s: &corral::status::PoolStatus| s.workers.iter().filter_map(|w| w.pid).collect::<Vec<_>>();
                let kept = pids(&now).iter().filter(|p| pids(&before).contains(p)).count();
                println!(
                    "{name}: upgraded in place from corral {} to {} (master pid {}, {kept} of {} workers kept)",
                    before.version,
                    now.version,
                    now.pid,
                    before.workers.len()
                );
                return Ok(());
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(UpgradeFailed::NoAnswer(timeout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(name: Option<&str>, json: bool) -> ExitCode {
    let names: Vec<String> = match name {
        Some(n) => vec![n.to_string()],
        None => {
            let found = corral::rundir::running_pools();
            if found.is_empty() && !json {
                println!("no pools running (looked in {})", corral::rundir::runtime_root().display());
                return ExitCode::SUCCESS;
            }
            found
        }
    };
    let mut pools = Vec::new();
    let mut failed = false;
    for n in &names {
        match control::ask(n, &Request::Status, Duration::from_secs(10)) {
            Ok(Reply { status: Some(s), .. }) => pools.push(s),
            Ok(Reply { error, .. }) => {
                eprintln!("{n}: {}", error.unwrap_or_else(|| "no status".into()));
                failed = true;
            }
            Err(e) => {
                eprintln!("corral: {e}");
                failed = true;
            }
        }
    }
    if json {
        let text = match (name, pools.first()) {
            (Some(_), Some(p)) => serde_json::to_string_pretty(p),
            (Some(_), None) => return ExitCode::from(1),
            (None, _) => serde_json::to_string_pretty(&pools),
        };
        println!("{}", text.unwrap_or_default());
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", corral::status::render(&pools, color));
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok — pool {:?}, {} worker{} of `{}`, ready.mode = {:?} ({})",
                path.display(),
                c.name,
                c.instances,
                if c.instances == 1 { "" } else { "s" },
                c.command.join(" "),
                c.ready.mode.as_str(),
                c.ready.mode.meaning()
            );
            if let Some(w) = c.wrapper_warning() {
                println!("warning: {w}");
            }
            if let Some(Err(e)) = c.control.group.as_deref().map(corral::control::group_gid) {
                println!("warning: {e}: until then the control socket stays root's and the pool user's only");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EX_CONFIG)
        }
    }
}

/// The corral binary the generated units run: this one.
fn own_binary() -> std::path::PathBuf {
    std::env::current_exe().ok().and_then(|p| p.canonicalize().ok()).unwrap_or_else(|| "/usr/bin/corral".into())
}

/// `init` and `import`: print the files (`--dry-run`, Ok(false)) or write them and say so
/// (Ok(true)); Err with the exit code when they could not be written.
fn write_pool_files(cmd: &str, files: &[corral::init::File], opts: &corral::cli::PoolFiles) -> Result<bool, ExitCode> {
    if opts.dry_run {
        for f in files {
            println!("# {}\n{}", f.path.display(), f.text);
        }
        return Ok(false);
    }
    if let Err(e) = corral::init::write(files, opts.force) {
        eprintln!("corral {cmd}: {e}");
        return Err(ExitCode::from(1));
    }
    for f in files {
        println!("wrote {}", f.path.display());
    }
    Ok(true)
}
