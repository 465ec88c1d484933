//! The PM2 options corral does not map, each with why and what to do instead (the journal for
//! log files, a rolling reload for `watch`, the deploy script for `post_update`, ...).

/// Why an option is not mapped, and what to do instead.
pub(super) fn not_mapped(key: &str) -> Option<&'static str> {
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
        | "force" | "append_env_to_name" | "namespace" | "version" | "max" => {
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
