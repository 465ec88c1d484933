//! The `corral` binary: parse the command line, call into the library, map errors to exit codes
//! (0 clean stop, 78 bad config, 1 anything else).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use corral::cli::{Cli, Command};
use corral::config::{self, Config};
use corral::driver::{self, StartError};

/// EX_CONFIG from sysexits.h: units say `RestartPreventExitStatus=78`.
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Run { config } => {
            let path = config::locate(config.as_deref(), std::env::var("CORRAL_CONFIG").ok().as_deref(), None);
            match driver::run(&path) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(StartError::Config(e)) => {
                    tracing::error!("{e}");
                    ExitCode::from(EX_CONFIG)
                }
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check { config, name } => {
            let path =
                config::locate(config.as_deref(), std::env::var("CORRAL_CONFIG").ok().as_deref(), name.as_deref());
            check(&path)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "corral", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Manpages { dir } => match corral::manpages::write_all(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corral: cannot write man pages into {}: {e}", dir.display());
                ExitCode::from(1)
            }
        },
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok — pool {:?}, {} worker{} of `{}`",
                path.display(),
                c.name,
                c.instances,
                if c.instances == 1 { "" } else { "s" },
                c.command.join(" ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EX_CONFIG)
        }
    }
}

/// Master logs: to journald when our stderr is connected to it (JOURNAL_STREAM), else text on
/// stderr. CORRAL_LOG sets the level: error, warn, info (default), debug, trace. (A plain level
/// rather than an EnvFilter: the master logs only its own events, and the regex engine an
/// EnvFilter brings would be most of the master's memory.)
fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("CORRAL_LOG")
        .ok()
        .and_then(|l| l.trim().parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    if stderr_is_journal() {
        if let Ok(layer) = tracing_journald::layer() {
            tracing_subscriber::registry().with(filter).with(layer.with_syslog_identifier("corral".into())).init();
            return;
        }
    }
    let tty = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(tty && std::env::var_os("NO_COLOR").is_none());
    tracing_subscriber::registry().with(filter).with(fmt).init();
}

/// True when stderr is the stream systemd connected to journald (`JOURNAL_STREAM=dev:ino`).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let stream = stream.to_string_lossy().into_owned();
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}
