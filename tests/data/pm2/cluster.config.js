// PM2's documentation, "Cluster Mode" and "Graceful Start/Shutdown" options together.
module.exports = {
  apps : [{
    name: "api",
    script: "api.js",
    instances: -1,
    exec_mode: "cluster",
    wait_ready: true,
    listen_timeout: 10000,
    kill_timeout: 3000,
    exp_backoff_restart_delay: 100,
    min_uptime: "5s",
    cron_restart: "0 3 * * 1-5",
    instance_var: "INSTANCE_ID",
    interpreter_args: "--max-old-space-size=512",
    args: "--color --port 'not used'",
    env: { PORT: 4000 },
    source_map_support: true,
    merge_logs: true
  }]
}
