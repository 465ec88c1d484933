//! `script: "npm", args: "start"` (and yarn's, pnpm's): what the package manager would run,
//! read from package.json, as the worker's command.
//!
//! A package manager cannot be the worker: it is a Node program, and Node marks the descriptors
//! it inherits close-on-exec as it starts, so the server npm spawns never gets fd 3 (`listen
//! EINVAL` at `listen({fd: 3})`, in every worker, until corral gives up). The script's own
//! command can, when it is one simple command.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::NODE_WRAPPERS;

/// What a package.json script runs, as a worker's command.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Unwrapped {
    /// The script's name and text, as package.json has it.
    pub script: String,
    pub command: Vec<String>,
    /// `VAR=value` words before the program.
    pub env: BTreeMap<String, String>,
    /// What the package manager would also have done, which this command does not.
    pub notes: Vec<String>,
}

/// The program's name, if `command` runs a package manager (or npx); else None.
pub(super) fn manager(command: &[String]) -> Option<&str> {
    let program = Path::new(command.first()?).file_name()?.to_str()?;
    NODE_WRAPPERS.iter().copied().find(|m| *m == program)
}

/// For a command that runs a package.json script through a package manager: what the script
/// runs (Ok), or why that cannot be told (Err). None for any other command.
pub(super) fn unwrap(command: &[String], workdir: &Path) -> Option<Result<Unwrapped, String>> {
    let manager = manager(command)?;
    let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    let name = match (manager, args.as_slice()) {
        ("npx", _) => return Some(Err(format!("`{}` runs a package, not a package.json script", command.join(" ")))),
        (_, ["start"]) => "start",
        (_, ["run" | "run-script", name]) => name,
        ("yarn" | "pnpm", [name]) if !name.starts_with('-') => name,
        _ => return Some(Err(format!("`{}` is not a package.json script corral can read", command.join(" ")))),
    };
    Some(script(manager, name, workdir))
}

fn script(manager: &str, name: &str, workdir: &Path) -> Result<Unwrapped, String> {
    let path = workdir.join("package.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {} ({e})", path.display()))?;
    let pkg: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON ({e})", path.display()))?;
    let scripts = pkg.get("scripts").and_then(|s| s.as_object());
    let line = match scripts.and_then(|s| s.get(name)).and_then(|v| v.as_str()) {
        Some(line) => line.to_string(),
        // npm's default start script.
        None if name == "start" && manager == "npm" && workdir.join("server.js").exists() => "node server.js".into(),
        None => return Err(format!("{} has no script {name:?}", path.display())),
    };
    let mut out = parse(&line, workdir).map_err(|why| format!("package.json's {name:?} = {line:?}: {why}"))?;
    out.script = format!("{name}: {line}");
    for hook in [format!("pre{name}"), format!("post{name}")] {
        if scripts.is_some_and(|s| s.contains_key(&hook)) {
            out.notes.push(format!(
                "{manager} would also run package.json's {hook:?} script: run it before the pool starts (an \
                 ExecStartPre= line) or as part of the deployment"
            ));
        }
    }
    Ok(out)
}

/// One simple command: optional `VAR=value` words, a program and its arguments. Anything a shell
/// would have to interpret (`&&`, pipes, redirections, substitutions) is refused.
fn parse(line: &str, workdir: &Path) -> Result<Unwrapped, String> {
    if let Some(op) = ["&&", "||", "|", ";", ">", "<", "$(", "`", "&", "*", "?"].iter().find(|op| line.contains(**op)) {
        return Err(format!(
            "it needs a shell (`{op}`): write a script that ends in `exec` of the server, or set \
                            `command` by hand"
        ));
    }
    let words = shlex::split(line).ok_or("unbalanced quotes")?;
    let mut env = BTreeMap::new();
    let mut rest = words.as_slice();
    while let Some((first, more)) = rest.split_first() {
        match first.split_once('=') {
            Some((k, v)) if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                env.insert(k.to_string(), v.to_string());
                rest = more;
            }
            _ => break,
        }
    }
    let Some((program, args)) = rest.split_first() else { return Err("it runs nothing".into()) };
    if manager(std::slice::from_ref(program)).is_some() {
        return Err(format!("it runs {program} again"));
    }
    let mut notes = Vec::new();
    // npm puts node_modules/.bin first on PATH.
    let bin = workdir.join("node_modules/.bin").join(program);
    let program = if !program.contains('/') && bin.exists() {
        bin.display().to_string()
    } else {
        if !program.contains('/') && program != "node" && !program_in_path(program) {
            notes.push(format!(
                "`{program}` is not in PATH, nor in node_modules/.bin yet: install the app's dependencies, then \
                 run `corral check` (the command is resolved when a worker starts)"
            ));
        }
        program.clone()
    };
    let mut command = vec![program];
    command.extend(args.iter().cloned());
    Ok(Unwrapped { script: String::new(), command, env, notes })
}

fn program_in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn package_manager_scripts_become_their_command() {
        let dir = std::env::temp_dir().join(format!("corral-npm-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("node_modules/.bin")).unwrap();
        std::fs::write(dir.join("node_modules/.bin/next"), "").unwrap();
        std::fs::write(
            dir.join("package.json"),
            r#"{"scripts": {"start": "NODE_ENV=production node dist/main.js --port 3000",
                "prestart": "tsc", "serve": "next start", "dev": "tsc && node dist/main.js",
                "loop": "npm run start"}}"#,
        )
        .unwrap();
        let next = dir.join("node_modules/.bin/next").display().to_string();
        let table: &[(&str, Result<&[&str], &str>)] = &[
            ("npm start", Ok(&["node", "dist/main.js", "--port", "3000"])),
            ("/usr/bin/npm run start", Ok(&["node", "dist/main.js", "--port", "3000"])),
            ("yarn serve", Ok(&["NEXT", "start"])),
            ("pnpm run-script serve", Ok(&["NEXT", "start"])),
            ("npm run dev", Err("needs a shell (`&&`)")),
            ("npm run loop", Err("runs npm again")),
            ("npm run missing", Err("has no script \"missing\"")),
            ("npm install", Err("not a package.json script")),
        ];
        for (cmd, want) in table {
            let got = unwrap(&argv(cmd), &dir).expect("a package manager");
            match (want, got) {
                (Ok(w), Ok(u)) => {
                    let w: Vec<String> =
                        w.iter().map(|a| if *a == "NEXT" { next.clone() } else { a.to_string() }).collect();
                    assert_eq!(u.command, w, "{cmd}");
                }
                (Err(w), Err(e)) => assert!(e.contains(w), "{cmd}: {e}"),
                (w, g) => panic!("{cmd}: want {w:?}, got {g:?}"),
            }
        }
        let start = unwrap(&argv("npm start"), &dir).unwrap().unwrap();
        assert_eq!(start.env.get("NODE_ENV").map(String::as_str), Some("production"));
        assert!(start.notes.iter().any(|n| n.contains("\"prestart\"")), "{:?}", start.notes);
        assert!(unwrap(&argv("node app.js"), &dir).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
