//! `corral import` on PM2 ecosystem files: the one PM2 users write (imported, then run: it
//! answers on its port), the examples of PM2's documentation (.js, .json, .yaml), and what
//! cannot be imported.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const PM2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pm2");

fn import(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(CORRAL).arg("import").args(args).current_dir(dir).output().expect("run corral import");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn copy_example(name: &str, to: &Path) {
    std::fs::copy(format!("{PM2}/{name}"), to.join(name)).unwrap();
}

/// The issue's ecosystem file, with the Express-style example app as its ./src/index.js: every
/// option reported, the config valid, and the imported pool answers on port 3000.
#[test]
fn the_pm2_users_ecosystem_file_imports_and_serves_on_its_port() {
    let dir = TempDir::new("import-eco");
    copy_example("ecosystem.config.js", dir.path());
    std::fs::create_dir(dir.join("src")).unwrap();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/node/app.js"), dir.join("src/index.js")).unwrap();
    let root = dir.join("root");
    let (code, out, err) = import(dir.path(), &["ecosystem.config.js", "--root", root.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    for key in
        ["name", "script", "instances", "exec_mode", "env.PORT", "restart_delay", "max_restarts", "max_memory_restart"]
    {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(&format!("mapped      {key} "))),
            "{key} mapped:\n{out}"
        );
    }
    for key in ["watch", "post_update", "out_file", "error_file", "merge_logs", "log_date_format", "env_production"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(&format!("not mapped  {key} "))),
            "{key} reported:\n{out}"
        );
    }
    let config = root.join("etc/corral/my-api.toml");
    for unit in ["my-api.socket", "my-api.service"] {
        let text = std::fs::read_to_string(root.join("etc/systemd/system").join(unit)).unwrap();
        assert!(text.contains("written by `corral import`"), "{text}");
    }
    let text = std::fs::read_to_string(&config).unwrap();
    for want in [
        "instances = \"max\"",
        "listen = [\"3000\"]",
        "memory = \"300MiB\"",
        "delay = \"2s\"",
        "max_restarts = 10",
        "signal = \"SIGINT\"",
        "mode = \"listen\"",
        "NODE_ENV = \"production\"",
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }
    let check = Command::new(CORRAL).args(["check", "-c", config.to_str().unwrap()]).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    // --env production: PM2's own PM2_HOME is reported, not passed on.
    let (code, out, err) =
        import(dir.path(), &["ecosystem.config.js", "--env", "production", "--dry-run", "--root", "/nonexistent"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("not mapped  env_production.PM2_HOME"), "{out}");
    // Nothing is overwritten without --force.
    let (code, _, err) = import(dir.path(), &["ecosystem.config.js", "--root", root.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("exists; use --force"), "{err}");

    // Run it, as the unit would (but binding the port itself).
    let body = serve_imported(&dir, &config, "127.0.0.1:3000".parse().unwrap());
    assert!(body.contains("Hello from worker"), "{body}");
}

/// The ecosystem file many Node projects have: `script: "npm", args: "start"`, and no PORT (the
/// port is in the code). npm cannot pass the socket on (Node marks inherited descriptors
/// close-on-exec), so import runs what package.json's start script runs; one run gives each app
/// its address; the imported pool serves. `corral check` warns about a config that runs npm.
#[test]
fn an_npm_start_ecosystem_file_imports_into_pools_that_serve() {
    let dir = TempDir::new("import-npm");
    for app in ["api", "web"] {
        std::fs::create_dir_all(dir.join(&format!("{app}/src"))).unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/node/app.js"),
            dir.join(&format!("{app}/src/index.js")),
        )
        .unwrap();
        std::fs::write(
            dir.join(&format!("{app}/package.json")),
            r#"{"name": "x", "scripts": {"start": "NODE_ENV=production node src/index.js", "prestart": "true"}}"#,
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("ecosystem.json"),
        r#"{"apps": [
            {"name": "api", "script": "npm", "args": "start", "cwd": "api", "instances": 2},
            {"name": "web", "script": "npm", "args": ["run", "start"], "cwd": "web"}]}"#,
    )
    .unwrap();
    let (api, web) = (free_port(), free_port());
    let root = dir.join("root");
    let api_arg = format!("api=127.0.0.1:{api}");
    let web_arg = format!("web=127.0.0.1:{web}");
    let (code, out, err) = import(
        dir.path(),
        &["ecosystem.json", "--listen", &api_arg, "--listen", &web_arg, "--root", root.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("what `npm start` runs") && out.contains("close-on-exec"), "{out}");
    assert!(out.contains("\"prestart\""), "the skipped hook is reported: {out}");
    assert!(out.contains("its code chooses its port") && out.contains("fd 3"), "{out}");
    let config = root.join("etc/corral/api.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("command = [\"node\", \"src/index.js\"]"), "{text}");
    assert!(text.contains("NODE_ENV = \"production\""), "{text}");
    assert!(text.contains(&format!("listen = [\"127.0.0.1:{api}\"]")), "{text}");
    let web_text = std::fs::read_to_string(root.join("etc/corral/web.toml")).unwrap();
    assert!(web_text.contains(&format!("listen = [\"127.0.0.1:{web}\"]")), "{web_text}");
    // An address for an app the file does not have is refused; a bare one needs one app.
    let (code, _, err) = import(dir.path(), &["ecosystem.json", "--listen", "nope=3000", "--dry-run"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no app named \"nope\""), "{err}");
    let (code, _, err) = import(dir.path(), &["ecosystem.json", "--listen", "3000", "--dry-run"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--listen APP=ADDR"), "{err}");

    // The imported pool serves.
    let body = serve_imported(&dir, &config, format!("127.0.0.1:{api}").parse().unwrap());
    assert!(body.contains("Hello from worker"), "{body}");

    // A config that runs npm itself: check and run say why it cannot serve.
    let npm_cfg = dir.join("npm.toml");
    std::fs::write(&npm_cfg, "command = [\"npm\", \"start\"]\nlisten = [\"127.0.0.1:1\"]\n").unwrap();
    let check = Command::new(CORRAL).args(["check", "-c", npm_cfg.to_str().unwrap()]).output().unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && said.contains("warning: command runs npm") && said.contains("fd 3"), "{said}");
}

/// Run an imported config as its unit would (but binding the port itself) until it answers
/// `/api/v1/hello` at `addr`; stop it (it must exit 0) and return the answer.
fn serve_imported(dir: &TempDir, config: &Path, addr: std::net::SocketAddr) -> String {
    let mut master = Command::new(CORRAL)
        .args(["run", "-c", config.to_str().unwrap()])
        .env("CORRAL_RUNTIME_ROOT", dir.join("run"))
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("master.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut answered = None;
    while answered.is_none() && std::time::Instant::now() < deadline && master.try_wait().ok().flatten().is_none() {
        answered = get_path(addr, "/api/v1/hello").ok();
        if answered.is_none() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(master.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let status = master.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("master.log")).unwrap_or_default();
    let body = answered.unwrap_or_else(|| panic!("the imported pool did not answer at {addr}:\n{log}"));
    assert_eq!(status.code(), Some(0), "{log}");
    body
}

/// The examples of PM2's documentation: what is imported, what is skipped and why.
#[test]
fn pm2_documentation_examples() {
    let dir = TempDir::new("import-docs");
    for f in std::fs::read_dir(PM2).unwrap().flatten() {
        std::fs::copy(f.path(), dir.join(f.file_name().to_str().unwrap())).unwrap();
    }
    let dry = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--dry-run", "--root", "/nonexistent"]);
        import(dir.path(), &a)
    };

    // `pm2 init simple`: no port anywhere, so nothing to import, and the way out is given.
    let (code, _, err) = dry(&["simple.config.js"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("skipped app \"app1\": no PORT") && err.contains("--listen app1=ADDR"), "{err}");
    let (code, out, err) = dry(&["simple.config.js", "--app", "app1", "--listen", "127.0.0.1:8000"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("listen = [\"127.0.0.1:8000\"]"), "{out}");
    // The app's own code chooses its port: the report still says to take the socket from fd 3.
    assert!(out.contains("its code chooses its port") && out.contains("fd 3"), "{out}");

    // `pm2 init`: two apps and a deploy section.
    let (code, out, err) = dry(&["init.config.js"]);
    assert_eq!(code, Some(2));
    assert!(out.contains("file: not mapped  deploy"), "{out}");
    assert!(err.contains("skipped app \"index.js\"") && err.contains("skipped app \"./service-worker/\""), "{err}");

    // Environments: PORT only in env_production.
    let (code, out, err) = dry(&["environments.config.js", "--env", "production"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("listen = [\"8080\"]") && out.contains("NODE_ENV = \"production\""), "{out}");
    assert!(out.contains("not mapped  env_development"), "{out}");

    // YAML, two apps: the API is imported, the background worker (no socket) is skipped: exit 1.
    let (code, out, err) = dry(&["process.yml"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("corral pool \"api-app\"") && out.contains("instances = 4"), "{out}");
    assert!(err.contains("skipped app \"worker\""), "{err}");

    // JSON, with an interpreter and a kill signal.
    let (code, out, err) = dry(&["process.json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("command = [\"python3\", \"{}/server.py\"]", dir.path().display())), "{out}");
    assert!(out.contains("signal = \"SIGTERM\"") && out.contains("memory = \"1GiB\""), "{out}");

    // Cluster mode with wait_ready, -1 instances, backoff and a cron restart.
    let (code, out, err) = dry(&["cluster.config.js"]);
    assert_eq!(code, Some(0), "{err}");
    for want in [
        "mode = \"ipc\"",
        "instances = \"max-1\"",
        "timeout = \"10s\"   # PM2's listen_timeout",
        "timeout = \"3s\"   # PM2's kill_timeout",
        "max_delay = \"15s\"",
        "instance_var = \"INSTANCE_ID\"",
        "\"--max-old-space-size=512\"",
        "\"not used\"",
        "OnCalendar=Mon..Fri *-*-* 03:00:00",
        "ExecStart=",
    ] {
        assert!(out.contains(want), "{want} in:\n{out}");
    }
    // systemd reads the timer's schedule as PM2's cron did.
    let cal = Command::new("systemd-analyze").args(["calendar", "Mon..Fri *-*-* 03:00:00"]).output().unwrap();
    assert!(cal.status.success(), "{}", String::from_utf8_lossy(&cal.stderr));
}

#[test]
fn what_cannot_be_read() {
    let dir = TempDir::new("import-bad");
    std::fs::write(dir.join("broken.config.js"), "module.exports = { apps: [ { name: 'x', ").unwrap();
    let (code, _, err) = import(dir.path(), &["broken.config.js", "--dry-run"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("node could not evaluate it") && err.contains("SyntaxError"), "{err}");
    std::fs::write(dir.join("a.json"), "{ not json").unwrap();
    let (code, _, err) = import(dir.path(), &["a.json", "--dry-run"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("a.json: not valid JSON"), "{err}");
    std::fs::write(dir.join("eco.toml"), "").unwrap();
    let (code, _, err) = import(dir.path(), &["eco.toml", "--dry-run"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("ends in .js, .cjs, .mjs, .json, .yaml or .yml"), "{err}");
    // A .js file without node on PATH: what to do instead.
    copy_example("ecosystem.config.js", dir.path());
    let out = Command::new(CORRAL)
        .args(["import", "ecosystem.config.js", "--dry-run"])
        .current_dir(dir.path())
        .env("PATH", dir.join("empty"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`node` is needed to read it") && err.contains("save it as JSON"), "{err}");
    let (code, _, err) = import(dir.path(), &["ecosystem.config.js", "--app", "nope", "--dry-run"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no app named \"nope\"") && err.contains("it has: my-api"), "{err}");
}

#[test]
fn secrets_in_the_environment_are_reported_not_copied() {
    let dir = TempDir::new("import-secret");
    std::fs::write(
        dir.join("ecosystem.json"),
        r#"{"apps": [{"name": "api", "script": "/srv/api/index.js",
            "env": {"PORT": 3000, "NODE_ENV": "production", "STRIPE_SECRET_KEY": "sk_live_123",
                    "DB_PASSWORD": "hunter2", "GITHUB_TOKEN": "ghp_abc"}}]}"#,
    )
    .unwrap();
    let root = dir.join("root");
    let (code, out, err) = import(dir.path(), &["ecosystem.json", "--root", root.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let text = std::fs::read_to_string(root.join("etc/corral/api.toml")).unwrap();
    assert!(text.contains("NODE_ENV = \"production\""), "{text}");
    for (name, value, file) in [
        ("STRIPE_SECRET_KEY", "sk_live_123", "stripe-secret-key"),
        ("DB_PASSWORD", "hunter2", "db-password"),
        ("GITHUB_TOKEN", "ghp_abc", "github-token"),
    ] {
        assert!(!text.contains(name) && !text.contains(value), "{name} copied:\n{text}");
        let line =
            out.lines().find(|l| l.contains(&format!("env.{name} "))).unwrap_or_else(|| panic!("{name}:\n{out}"));
        assert!(line.contains("not mapped") && line.contains(&format!("--credential {file}=")), "{line}");
        assert!(!out.contains(value), "the report shows no secret:\n{out}");
    }
}
