//! Command-line definitions. They also feed the man page (clap_mangen) and shell completions
//! (clap_complete), so help text written here is what users read everywhere.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A systemd-native worker pool: N copies of any command sharing listening sockets, kept alive,
/// reloaded one by one without a failed request, with readiness and logs reported to systemd.
#[derive(Debug, Parser)]
#[command(name = "corral", version = crate::VERSION, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the master in the foreground (what ExecStart= calls).
    ///
    /// Sockets come from systemd socket activation (LISTEN_FDS) or, without it, are bound from
    /// `listen` in the config. SIGHUP reloads, SIGTERM/SIGINT stop (a second one kills),
    /// SIGTTIN/SIGTTOU add or remove a worker.
    Run {
        /// Config file [default: $CORRAL_CONFIG, else ./corral.toml]
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Take over from a previous image of this master (`corral upgrade` passes it)
        #[arg(long, hide = true, value_name = "FD")]
        state_fd: Option<i32>,
        /// Act as a container's init even when not PID 1 (as PID 1 it always does): logs never
        /// go to journald, and the process tree below is reaped and stopped with the pool
        #[arg(long)]
        init: bool,
    },
    /// Validate a config: exit 0, or 78 with `file:line:col: message`.
    Check {
        /// Config file [default: $CORRAL_CONFIG, else /etc/corral/NAME.toml, else ./corral.toml]
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Pool name, to check /etc/corral/NAME.toml
        #[arg(value_parser = pool_name)]
        name: Option<String>,
    },
    /// Show each worker: slot, pid, generation, state, uptime, restarts, RSS, CPU.
    ///
    /// Without NAME, every pool running on this machine (that you may see) is listed.
    Status {
        /// Pool name (the config's `name`)
        #[arg(value_parser = pool_name)]
        name: Option<String>,
        /// Machine-readable output (one object for a NAME, else an array)
        #[arg(long)]
        json: bool,
    },
    /// The pool's journal, like `pm2 logs`: the master's and the workers' lines, each prefixed
    /// with who wrote it (master, w0, w1, ...), coloured per worker on a terminal.
    ///
    /// Reads the journal of the pool's unit through journalctl (root, or a member of the
    /// systemd-journal or adm group).
    Logs {
        /// Pool name (the config's `name`)
        #[arg(value_parser = pool_name)]
        name: String,
        /// Keep printing new lines as they come
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only this worker's lines (its slot, CORRAL_WORKER)
        #[arg(short = 'w', long, value_name = "SLOT")]
        worker: Option<usize>,
        /// From this time on, as journalctl takes it ("2026-12-04 10:00", "1 hour ago", "today")
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// The last N lines [default: 50, or all with --since]
        #[arg(short = 'n', long, value_name = "N")]
        lines: Option<u64>,
    },
    /// Live view of a pool's workers, like `pm2 monit`: state, pid, CPU, memory with its last
    /// minute, restarts, uptime, refreshed every second.
    ///
    /// Keys: r reload, + / - scale by one, Tab next pool, q quit. Without NAME, every pool
    /// running on this machine (that you may see). When its output is not a terminal, it prints
    /// the status table every second instead.
    Top {
        /// Pool name (the config's `name`)
        #[arg(value_parser = pool_name)]
        name: Option<String>,
        /// Stop after this many refreshes
        #[arg(short = 'n', long, value_name = "N")]
        count: Option<u64>,
    },
    /// Rolling reload: re-read the config and replace workers batch by batch.
    ///
    /// Waits for the result and exits non-zero with the reason when the config is invalid or the
    /// new release failed (the old generation keeps serving). This is what ExecReload= calls.
    Reload {
        /// Pool name [default: the `name` of the config found by -c, $CORRAL_CONFIG or ./corral.toml]
        #[arg(value_parser = pool_name)]
        name: Option<String>,
        /// Return once the reload has started
        #[arg(long)]
        no_wait: bool,
        #[arg(short, long, value_name = "FILE", hide = true)]
        config: Option<PathBuf>,
        /// Give up waiting after this long
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Change the number of workers at runtime: N, +N or -N (graceful when shrinking).
    Scale {
        /// Pool name
        #[arg(value_parser = pool_name)]
        name: String,
        /// New worker count, or a change: 8, +2, -1
        #[arg(allow_hyphen_values = true, value_name = "N|+N|-N")]
        count: String,
    },
    /// Turn a PM2 ecosystem file into corral pools: a config and units per app, like `init`.
    ///
    /// Reads .js/.cjs/.mjs (evaluated with node), .json and .yaml/.yml. Prints every PM2 option
    /// it mapped, and every one it did not with the reason and what to do instead. Nothing is
    /// overwritten without --force; --dry-run prints the files instead.
    Import {
        /// The ecosystem file (ecosystem.config.js, .json, .yaml)
        file: PathBuf,
        /// Import only this app (its PM2 name)
        #[arg(long)]
        app: Option<String>,
        /// Merge env_ENV over env, like `pm2 start --env ENV`
        #[arg(long, value_name = "ENV")]
        env: Option<String>,
        /// Listen here instead of on PORT from the app's env (repeatable): ADDR for the one app
        /// imported, or APP=ADDR for each app of the file
        #[arg(long, value_name = "[APP=]ADDR")]
        listen: Vec<String>,
        #[command(flatten)]
        files: PoolFiles,
    },
    /// Write /etc/corral/NAME.toml and the NAME.socket / NAME.service units for a new pool.
    ///
    /// Nothing is overwritten without --force; --dry-run prints the files instead.
    Init {
        /// Pool name (also the unit and config file names)
        #[arg(value_parser = pool_name)]
        name: String,
        /// Address to listen on (repeatable): 3000, 127.0.0.1:3000, [::1]:3000, unix:/run/x.sock
        #[arg(long, required = true)]
        listen: Vec<String>,
        /// Run the master and its workers as this user: the service gets User= and no
        /// capability at all (systemd-analyze security 1.5 against the root master's 4.6)
        #[arg(long)]
        user: Option<String>,
        /// Number of workers: N, max, max-1, 50% [default: max]
        #[arg(long)]
        instances: Option<String>,
        /// A secret for the workers as a systemd credential (repeatable): they read
        /// $CREDENTIALS_DIRECTORY/NAME. PATH is a file only root reads (LoadCredential=), or one
        /// made by `systemd-creds encrypt` ending in .cred (LoadCredentialEncrypted=)
        #[arg(long, value_name = "NAME=PATH")]
        credential: Vec<String>,
        #[command(flatten)]
        files: PoolFiles,
        /// The worker command and its arguments
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Replace the master's binary in place: same pid, same workers (also SIGUSR2).
    ///
    /// The master re-executes the binary now at the path it was started from (which a package
    /// upgrade has just replaced), after that binary has checked it can take over. Waits until
    /// the new image answers; exits 1 with the reason when the upgrade is refused (the pool
    /// carries on untouched). Without NAME, every pool this user can reach.
    Upgrade {
        /// Pool name
        #[arg(value_parser = pool_name)]
        name: Option<String>,
        /// Give up waiting after this long
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Stop the workers' process groups recorded at RECORD once the master dies (started by
    /// the master, reading a pipe on stdin).
    #[command(hide = true)]
    WatchMaster { record: std::path::PathBuf },
    /// Exit 0 when systemd service UNIT runs a corral pool (its ExecStart= is `corral run`),
    /// else 1 with the reason: asked by the packages' polkit rule.
    #[command(hide = true)]
    IsPoolUnit { unit: String },
    /// Check that this binary can take over from the state at FD (run by the master).
    #[command(hide = true)]
    UpgradeCheck {
        #[arg(long, value_name = "FD")]
        state_fd: i32,
    },
}

/// Every NAME on the command line follows the config's pool-name rule: it becomes a path.
fn pool_name(s: &str) -> Result<String, crate::config::InvalidPoolName> {
    crate::config::check_pool_name(s)
}

/// How `init` and `import` write a pool's config and units.
#[derive(Debug, Args)]
pub struct PoolFiles {
    /// Print the files instead of writing them
    #[arg(long)]
    pub dry_run: bool,
    /// Overwrite existing files
    #[arg(long)]
    pub force: bool,
    /// Run the hooks in /etc/corral/alert.d when the pool fails for good (OnFailure=)
    #[arg(long)]
    pub on_failure_alert: bool,
    /// Members of this group may run corral status/reload/scale/upgrade on the pool and
    /// systemctl reload/restart its unit ([control] group; "" for nobody but root and the
    /// pool's user)
    #[arg(long, value_name = "GROUP", default_value = "corral")]
    pub control_group: String,
    /// Write under this directory instead of / (for packaging and tests)
    #[arg(long, hide = true, default_value = "/")]
    pub root: PathBuf,
}
