//! `corral is-pool-unit UNIT`: whether a systemd service runs a corral pool, for the polkit rule
//! the packages ship (`/usr/share/polkit-1/rules.d/50-corral.rules`). The rule lets members of
//! the `corral` group reload and restart such units, and no others; polkitd runs this as its
//! own unprivileged user, so it reads only the world-readable unit files.
//!
//! A unit runs a pool when the `ExecStart=` systemd ends up with (its unit file, then its
//! drop-ins in the order systemd applies them, an empty `ExecStart=` clearing what came before)
//! is one command line whose program is named `corral` and whose first argument is `run`, as
//! the units `corral init` writes and the `corral@.service` template are. Only root writes
//! unit files, so what a unit file says is what root decided.

use std::path::{Path, PathBuf};

/// Where systemd's system manager looks for units, first wins.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Unit files bigger than this are not read.
const MAX_UNIT_FILE: u64 = 1024 * 1024;

/// The unit file of `unit` that runs a corral pool, or why it does not.
pub fn is_pool_unit(unit: &str) -> Result<PathBuf, String> {
    is_pool_unit_in(unit, &UNIT_DIRS.iter().map(PathBuf::from).collect::<Vec<_>>())
}

pub fn is_pool_unit_in(unit: &str, dirs: &[PathBuf]) -> Result<PathBuf, String> {
    let valid = unit.len() <= 256
        && unit.ends_with(".service")
        && !unit.starts_with('.')
        && unit.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-' | '\\'));
    if !valid {
        return Err(format!("{unit:?} is not the name of a service unit"));
    }
    // An instance `a@b.service` comes from its own file if there is one, else its template.
    let template = unit.split_once('@').map(|(prefix, _)| format!("{prefix}@.service"));
    let names: Vec<&str> = std::iter::once(unit).chain(template.as_deref()).collect();
    let fragment = names
        .iter()
        .find_map(|name| dirs.iter().map(|d| d.join(name)).find(|p| p.symlink_metadata().is_ok()))
        .ok_or_else(|| format!("no unit file for {unit}"))?;
    let mut exec = Vec::new();
    apply_exec_start(&fragment, &mut exec)?;
    for dropin in dropins(&names, dirs) {
        apply_exec_start(&dropin, &mut exec)?;
    }
    match exec.as_slice() {
        [line] if runs_corral(line) => Ok(fragment),
        [] => Err(format!("{unit} has no ExecStart=")),
        [line] => Err(format!("{unit} does not run `corral run` (ExecStart={line})")),
        _ => Err(format!("{unit} has several ExecStart= lines")),
    }
}

/// The drop-ins of `names` (`NAME.d/*.conf`, the unit's own before its template's, as systemd
/// orders them: by file name, a name in an earlier directory hiding the same name later).
fn dropins(names: &[&str], dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = std::collections::BTreeMap::new();
    for name in names.iter().rev() {
        for dir in dirs.iter().rev() {
            let Ok(entries) = std::fs::read_dir(dir.join(format!("{name}.d"))) else { continue };
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if file.ends_with(".conf") {
                    seen.insert(file, e.path());
                }
            }
        }
    }
    seen.into_values().collect()
}

/// Apply the `ExecStart=` lines of the `[Service]` section of `path` to `exec`.
fn apply_exec_start(path: &Path, exec: &mut Vec<String>) -> Result<(), String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_UNIT_FILE).read_to_string(&mut text).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut in_service = false;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let mut line = line.trim().to_string();
        // Continuation lines.
        while line.ends_with('\\') {
            line.pop();
            line.push(' ');
            line.push_str(lines.next().unwrap_or_default().trim());
        }
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        if key.trim() != "ExecStart" {
            continue;
        }
        let value = value.trim();
        if value.is_empty() {
            exec.clear();
        } else {
            exec.push(value.to_string());
        }
    }
    Ok(())
}

/// `[-@:+!]…/corral run …`.
fn runs_corral(line: &str) -> bool {
    let words = shlex::split(line.trim_start_matches(['-', '@', ':', '+', '!'])).unwrap_or_default();
    let program = words.first().map(|p| Path::new(p).file_name() == Some("corral".as_ref()));
    program == Some(true) && words.get(1).map(String::as_str) == Some("run")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> (PathBuf, Vec<PathBuf>) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "corral-unitfile-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let dirs = vec![root.join("etc"), root.join("usr")];
        (root, dirs)
    }

    #[test]
    fn pools_are_told_from_other_units() {
        let pool =
            "[Unit]\nDescription=x\n[Service]\nType=notify\nExecStart=/usr/bin/corral run -c /etc/corral/myapi.toml\n";
        let (root, dirs) = tree(&[
            ("etc/myapi.service", pool),
            ("usr/corral@.service", &pool.replace("myapi", "%i")),
            ("etc/ssh.service", "[Service]\nExecStart=/usr/sbin/sshd -D\n"),
            (
                "etc/sneaky.service",
                "[Unit]\nExecStart=/usr/bin/corral run\n[Service]\nExecStart=/bin/sh -c 'corral run'\n",
            ),
            ("etc/two.service", "[Service]\nType=oneshot\nExecStart=/usr/bin/corral run\nExecStart=/bin/rm -rf /srv\n"),
            ("etc/status.service", "[Service]\nExecStart=/usr/bin/corral status\n"),
            // A drop-in that replaces the command: no longer a pool.
            ("etc/over.service", pool),
            ("etc/over.service.d/10-cmd.conf", "[Service]\nExecStart=\nExecStart=/bin/bash\n"),
            // The template's drop-in (say, user-master.conf) leaves it a pool.
            ("etc/corral@.service.d/user.conf", "[Service]\nUser=web\n"),
            ("etc/cont.service", "[Service]\nExecStart=/usr/bin/corral \\\n  run -c /etc/corral/cont.toml\n"),
        ]);
        assert!(is_pool_unit_in("myapi.service", &dirs).is_ok());
        assert!(is_pool_unit_in("corral@web.service", &dirs).is_ok());
        assert!(is_pool_unit_in("cont.service", &dirs).is_ok());
        for (unit, why) in [
            ("ssh.service", "does not run"),
            ("sneaky.service", "does not run"),
            ("two.service", "several"),
            ("status.service", "does not run"),
            ("over.service", "does not run"),
            ("nope.service", "no unit file"),
            ("myapi.socket", "not the name"),
            ("../etc/myapi.service", "not the name"),
            ("a/b.service", "not the name"),
        ] {
            let err = is_pool_unit_in(unit, &dirs).unwrap_err();
            assert!(err.contains(why), "{unit}: {err}");
        }
        let _ = std::fs::remove_dir_all(root);
    }
}
