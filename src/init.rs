//! `corral init NAME --listen ADDR -- CMD…`: write a pool's config and its systemd units.
//!
//! The units are rendered from the templates shipped in `units/` (`corral@.service`,
//! `corral@.socket`) with the instance name filled in, the `--listen` addresses as
//! `ListenStream=` lines, and the path of the running `corral` binary. The generated config is
//! validated with the same parser `corral run` uses before anything is written, and existing
//! files are never overwritten without `--force`. This module writes files and nothing else.

use std::path::{Path, PathBuf};

use crate::config::{Config, ListenAddr};
use crate::text::toml_str;

const SERVICE_TEMPLATE: &str = include_str!("../units/corral@.service");
const SOCKET_TEMPLATE: &str = include_str!("../units/corral@.socket");
/// The drop-in that runs a master as its workers' user (shipped for template instances too).
const USER_MASTER: &str = include_str!("../units/user-master.conf");
/// Where the template's root-master block starts (it runs to `[Install]`).
const ROOT_BLOCK: &str = "# The master runs as root";

/// The service's hardening for a master that runs as `user`: the template's root block replaced
/// by [`USER_MASTER`]'s directives, with the user filled in.
fn as_user(service: &str, user: &str) -> String {
    let (Some(start), Some(end)) = (service.find(ROOT_BLOCK), service.find("[Install]")) else {
        return service.to_string();
    };
    let mut block = String::from(
        "# The master runs as the workers' user, with no capabilities: see units/user-master.conf\n\
         # (/usr/share/doc/corral/examples/systemd/) for what each line buys and what stays open.\n",
    );
    for line in USER_MASTER.lines().filter(|l| !l.is_empty() && !l.starts_with('#') && *l != "[Service]") {
        block.push_str(&line.replace("USER", user));
        block.push('\n');
    }
    block.push('\n');
    format!("{}{block}{}", &service[..start], &service[end..])
}

/// What `corral init` was asked for.
#[derive(Debug, Clone)]
pub struct InitRequest {
    pub name: String,
    pub listen: Vec<String>,
    pub user: Option<String>,
    pub instances: Option<String>,
    pub command: Vec<String>,
    /// Prefix for /etc (tests and packaging); "/" normally.
    pub root: PathBuf,
    /// The corral binary the units run.
    pub binary: PathBuf,
    /// Add `OnFailure=corral-alert@%n.service`: the hooks in /etc/corral/alert.d run when the
    /// pool fails for good.
    pub on_failure_alert: bool,
    /// `[control] group`: who else may operate the pool.
    pub control_group: Option<String>,
    /// `--credential NAME=PATH`, as given.
    pub credentials: Vec<String>,
}

/// `LoadCredential=` (or `LoadCredentialEncrypted=` for a `.cred` file from `systemd-creds
/// encrypt`) lines for `--credential NAME=PATH` arguments.
pub fn credential_lines(credentials: &[String]) -> Result<String, InitError> {
    let mut out = String::new();
    for c in credentials {
        let bad = |why: &str| InitError::Credential(format!("--credential {c:?}: {why}"));
        let (name, path) = c.split_once('=').ok_or_else(|| bad("use NAME=PATH"))?;
        let name_ok = !name.is_empty()
            && name.len() <= 255
            && name != "."
            && name != ".."
            && name.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
        if !name_ok {
            return Err(bad("NAME is a file name: letters, digits, `_`, `-`, `.`"));
        }
        if !path.starts_with('/') || path.chars().any(|ch| ch.is_whitespace() || ch == '%' || ch.is_control()) {
            return Err(bad("PATH must be absolute, without spaces or `%`"));
        }
        let key = if path.ends_with(".cred") { "LoadCredentialEncrypted" } else { "LoadCredential" };
        out += &format!("{key}={name}:{path}\n");
    }
    if !out.is_empty() {
        out.insert_str(0, "# Secrets: each worker reads $CREDENTIALS_DIRECTORY/NAME (see corral(1), SECURITY).\n");
    }
    Ok(out)
}

/// The `[control]` section for `group` (nothing without one).
pub fn control_section(group: Option<&str>) -> String {
    match group {
        None => String::new(),
        Some(g) => format!(
            "\n[control]\n\
             # Members may run corral status/reload/scale/upgrade here and systemctl reload/restart\n\
             # the unit, without sudo (usermod -aG {g} deploy). See corral(1), SECURITY.\n\
             group = {}\n",
            toml_str(g)
        ),
    }
}

/// A file to write: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: PathBuf,
    pub text: String,
}

/// Why `corral init` (or `import`) writes nothing; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Name(#[from] crate::config::InvalidPoolName),
    #[error("give the worker command after `--`, like: corral init myapi --listen 3000 -- node index.js")]
    NoCommand,
    #[error("give at least one --listen address, like --listen 3000 or --listen unix:/run/myapi.sock")]
    NoListen,
    /// A `--listen` address, in the words of the config's own parser.
    #[error("{0}")]
    Listen(String),
    #[error("the config would be invalid: {0}")]
    Config(crate::config::ConfigError),
    #[error(
        "{} exists; use --force to overwrite it (or --dry-run to see what would be written)",
        .0.display()
    )]
    Exists(PathBuf),
    #[error("cannot {action}: {error}")]
    Io { action: String, error: String },
    #[error("{0}")]
    Credential(String),
}

/// What `corral init` writes for a pool: its config and its two units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolFiles {
    pub config: File,
    pub socket: File,
    pub service: File,
}

impl PoolFiles {
    /// In the order they are written (and printed by `--dry-run`).
    pub fn into_vec(self) -> Vec<File> {
        vec![self.config, self.socket, self.service]
    }
}

/// The config, socket and service files for `req`, validated but not written.
pub fn render(req: &InitRequest) -> Result<PoolFiles, InitError> {
    crate::config::check_pool_name(&req.name)?;
    if req.command.is_empty() {
        return Err(InitError::NoCommand);
    }
    if req.listen.is_empty() {
        return Err(InitError::NoListen);
    }
    // Addresses first: a bad one is named as such, not as an invalid config.
    let listen = parse_listen(&req.listen)?;
    let config_path = Path::new("/etc/corral").join(format!("{}.toml", req.name));

    let mut cfg = format!("# Pool {name}: written by `corral init`. See corral.toml(5).\n", name = req.name);
    cfg += &format!("name = {}\n", toml_str(&req.name));
    let argv: Vec<String> = req.command.iter().map(|a| toml_str(a)).collect();
    cfg += &format!("command = [{}]\n", argv.join(", "));
    match &req.instances {
        Some(i) if i.parse::<usize>().is_ok() => cfg += &format!("instances = {i}\n"),
        Some(i) => cfg += &format!("instances = {}\n", toml_str(i)),
        None => cfg += "instances = \"max\"\n",
    }
    if let Some(u) = &req.user {
        cfg += &format!("user = {}\n", toml_str(u));
    }
    cfg += "# Used when the pool runs without its .socket unit (`corral run` by hand):\n";
    let addrs: Vec<String> = req.listen.iter().map(|l| toml_str(l)).collect();
    cfg += &format!("listen = [{}]\n", addrs.join(", "));
    cfg += "\n[ready]\n\
             mode = \"listen\"   # ready once it waits for connections on its socket: no app change needed;\n\
             \x20                 # \"notify\" if the app sends READY=1 when warm, \"ipc\" for process.send('ready')\n\
             timeout = \"30s\"\n";
    cfg += &control_section(req.control_group.as_deref());
    Config::parse(&config_path, &cfg, 1).map_err(InitError::Config)?;
    let (socket, mut service) = units(req, &listen, "`corral init`; edit freely (`corral init --force` rewrites it)");
    let creds = credential_lines(&req.credentials)?;
    if !creds.is_empty() {
        if let Some(at) =
            service.text.find("\nExecReload=").and_then(|i| service.text[i + 1..].find('\n').map(|j| i + 2 + j))
        {
            service.text.insert_str(at, &creds);
        }
    }
    Ok(PoolFiles { config: File { path: under_root(&req.root, &config_path), text: cfg }, socket, service })
}

/// A pool's `.socket` and `.service` units, rendered from the shipped templates with the
/// instance name, the `listen` addresses as `ListenStream=` lines and the binary's path; the
/// header says who wrote them (`written_by`: "`corral init`; …", "`corral import`; …").
pub fn render_units(req: &InitRequest, written_by: &str) -> Result<(File, File), InitError> {
    crate::config::check_pool_name(&req.name)?;
    Ok(units(req, &parse_listen(&req.listen)?, written_by))
}

fn parse_listen(listen: &[String]) -> Result<Vec<ListenAddr>, InitError> {
    listen.iter().map(|l| l.parse().map_err(InitError::Listen)).collect()
}

fn units(req: &InitRequest, listen: &[ListenAddr], written_by: &str) -> (File, File) {
    let header = format!("# Pool {}: written by {written_by}.\n", req.name);
    let bin = req.binary.display().to_string();
    let body = |template: &str| -> String {
        let mut out = header.clone();
        for line in template.lines().skip_while(|l| l.starts_with('#')) {
            out.push_str(line);
            out.push('\n');
        }
        out.replace("/usr/bin/corral", &bin).replace("%i", &req.name)
    };
    let service = body(SERVICE_TEMPLATE);
    let service = match &req.user {
        Some(user) => as_user(&service, user),
        None => service,
    };
    let service =
        service.replace(&format!("corral worker pool {}", req.name), &format!("corral pool {}", req.name)).replace(
            "After=network.target",
            &format!(
                "Requires={n}.socket\nAfter={n}.socket network.target{alert}",
                n = req.name,
                alert = if req.on_failure_alert {
                    "\n# When the pool fails for good: the hooks in /etc/corral/alert.d/ (corral-alert@.service).\n\
                     OnFailure=corral-alert@%n.service"
                } else {
                    ""
                }
            ),
        );
    let mut socket = String::new();
    for line in body(SOCKET_TEMPLATE).lines() {
        if line.starts_with("ListenStream=") {
            for a in listen {
                socket += &format!("ListenStream={}\n", listen_stream(a));
            }
        } else if line.starts_with("Service=") {
            socket += &format!("Service={}.service\n", req.name);
        } else {
            socket += line;
            socket.push('\n');
        }
    }
    (
        File { path: under_root(&req.root, format!("/etc/systemd/system/{}.socket", req.name)), text: socket },
        File { path: under_root(&req.root, format!("/etc/systemd/system/{}.service", req.name)), text: service },
    )
}

/// An absolute `path` under `root` (`--root`, for tests and packaging; "/" normally).
pub fn under_root(root: &Path, path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// `ListenStream=` syntax for a listen address.
fn listen_stream(a: &ListenAddr) -> String {
    match a {
        ListenAddr::Tcp(addr) => addr.to_string(),
        ListenAddr::Port(p) => p.to_string(),
        ListenAddr::Unix(p) => p.display().to_string(),
    }
}

/// Write `files`; refuse to overwrite any existing one unless `force`.
pub fn write(files: &[File], force: bool) -> Result<(), InitError> {
    if !force {
        if let Some(f) = files.iter().find(|f| f.path.exists()) {
            return Err(InitError::Exists(f.path.clone()));
        }
    }
    let io = |action: String| move |e: std::io::Error| InitError::Io { action, error: e.to_string() };
    for f in files {
        if let Some(dir) = f.path.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        }
        std::fs::write(&f.path, &f.text).map_err(io(format!("write {}", f.path.display())))?;
    }
    Ok(())
}

/// What to type next, printed after writing.
pub fn next_steps(req: &InitRequest) -> String {
    let n = &req.name;
    let try_it = match req.listen.first().and_then(|l| l.parse::<ListenAddr>().ok()) {
        Some(ListenAddr::Tcp(a)) => format!("curl http://{a}/"),
        Some(ListenAddr::Port(p)) => format!("curl http://localhost:{p}/"),
        Some(ListenAddr::Unix(p)) => format!("curl --unix-socket {} http://localhost/", p.display()),
        None => String::new(),
    };
    format!(
        "Next:\n  systemctl daemon-reload\n  systemctl enable --now {n}.socket   # workers start on the first connection\n  {try_it}\n  systemctl reload {n}                # rolling reload, fails if the new release does\n  corral status {n}\n  journalctl -u {n} CORRAL_WORKER=0\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> InitRequest {
        InitRequest {
            name: "myapi".into(),
            listen: vec!["3000".into(), "unix:/run/myapi/http.sock".into()],
            user: Some("www-data".into()),
            instances: Some("4".into()),
            command: vec!["node".into(), "/srv/my api/index.js".into()],
            root: PathBuf::from("/tmp/root"),
            binary: PathBuf::from("/usr/bin/corral"),
            on_failure_alert: false,
            control_group: Some("corral".into()),
            credentials: Vec::new(),
        }
    }

    #[test]
    fn credentials_become_load_credential_lines() {
        let mut r = req();
        r.credentials = vec!["db-password=/etc/corral/secrets/db".into(), "api_key=/etc/corral/api.cred".into()];
        let service = render(&r).unwrap().service.text;
        assert!(
            service.contains("ExecReload=/usr/bin/corral reload myapi\n# Secrets: each worker reads $CREDENTIALS_DIRECTORY/NAME (see corral(1), SECURITY).\nLoadCredential=db-password:/etc/corral/secrets/db\nLoadCredentialEncrypted=api_key:/etc/corral/api.cred\n"),
            "{service}"
        );
        for bad in ["nopath", "=/x", "a/b=/x", "x=relative", "x=/with space", "..=/x"] {
            r.credentials = vec![bad.into()];
            let e = render(&r).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--credential {bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn renders_config_socket_and_service() {
        let files = render(&req()).unwrap();
        assert_eq!(files.config.path, PathBuf::from("/tmp/root/etc/corral/myapi.toml"));
        assert!(files.config.text.contains("command = [\"node\", \"/srv/my api/index.js\"]"), "{}", files.config.text);
        assert!(files.config.text.contains("instances = 4\nuser = \"www-data\"\n"));
        assert!(files.config.text.contains("\n[control]\n") && files.config.text.contains("\ngroup = \"corral\"\n"));
        let mut private = req();
        private.control_group = None;
        assert!(!render(&private).unwrap().config.text.contains("[control]"));
        assert_eq!(files.socket.path, PathBuf::from("/tmp/root/etc/systemd/system/myapi.socket"));
        let socket = &files.socket.text;
        assert!(socket.contains("ListenStream=3000\nListenStream=/run/myapi/http.sock\n"), "{socket}");
        assert!(socket.contains("Service=myapi.service\n"));
        assert!(!socket.contains("%i") && !socket.contains("corral@"), "{socket}");
        // After a package removal the admin's enabled units are skipped, not failed.
        assert!(socket.contains("\nConditionPathExists=/usr/bin/corral\n"), "{socket}");
        let service = &files.service.text;
        assert!(service.contains("ExecStart=/usr/bin/corral run -c /etc/corral/myapi.toml\n"));
        assert!(service.contains("ExecReload=/usr/bin/corral reload myapi\n"));
        assert!(service.contains("Requires=myapi.socket\nAfter=myapi.socket network.target\n"));
        assert!(service.contains("RuntimeDirectory=corral/myapi\n"));
        assert!(service.contains("\nConditionPathExists=/usr/bin/corral\n"), "{service}");
        let mut r = req();
        r.binary = PathBuf::from("/opt/corral/bin/corral");
        let files = render(&r).unwrap();
        for unit in [&files.socket, &files.service] {
            assert!(unit.text.contains("\nConditionPathExists=/opt/corral/bin/corral\n"), "{}", unit.text);
        }
        assert!(!service.contains("%i"), "{service}");
        assert!(!service.contains("OnFailure="), "{service}");
        let mut r = req();
        r.on_failure_alert = true;
        let service = &render(&r).unwrap().service.text;
        assert!(service.contains("\nOnFailure=corral-alert@%n.service\n"), "{service}");
    }

    #[test]
    fn with_a_user_the_master_runs_as_that_user_with_no_capabilities() {
        let service = render(&req()).unwrap().service.text;
        assert!(service.contains("\nUser=www-data\n"), "{service}");
        assert!(service.contains("\nCapabilityBoundingSet=\n"), "{service}");
        assert!(service.contains("\nSystemCallFilter=@system-service\n"), "{service}");
        assert!(service.contains("\nProtectSystem=strict\n"), "{service}");
        assert!(!service.contains("CAP_SYS_PTRACE") && !service.contains("runs as root"), "{service}");
        assert!(service.contains("\n[Install]\nWantedBy=multi-user.target"), "{service}");
        let mut r = req();
        r.user = None;
        let service = render(&r).unwrap().service.text;
        assert!(service.contains("CAP_SYS_PTRACE") && !service.contains("\nUser="), "{service}");
    }

    #[test]
    fn refuses_bad_input() {
        let mut r = req();
        r.listen = vec!["nowhere".into()];
        assert!(render(&r).unwrap_err().to_string().contains("invalid listen address"));
        let mut r = req();
        r.name = "my api".into();
        assert!(render(&r).unwrap_err().to_string().contains("invalid pool name"));
        let mut r = req();
        r.instances = Some("0".into());
        assert!(render(&r).unwrap_err().to_string().contains("instances must be at least 1"));
    }
}
