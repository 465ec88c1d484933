//! `corral logs NAME [-f] [--worker N] [--since TIME] [-n LINES]`: the pool's journal as
//! `pm2 logs` shows it. journalctl selects (the pool's unit, `CORRAL_WORKER=N`, `--since`,
//! `--follow`) and writes JSON, one entry per line; each entry is printed prefixed with who
//! wrote it (`master`, `w0`, `w1`…, `systemd`), coloured per worker on a terminal. journalctl
//! rather than a journal-reading crate: it knows every journal file format, namespace and
//! permission rule of the running systemd, and the crates that read the files do not.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Command, Stdio};

use serde_json::Value;

/// What to show.
#[derive(Debug, Clone, Default)]
pub struct LogsRequest {
    pub name: String,
    pub follow: bool,
    pub worker: Option<usize>,
    pub since: Option<String>,
    pub lines: Option<u64>,
}

/// The unit a pool runs in: the running master's (from its cgroup), else the unit `corral init`
/// wrote (`NAME.service`, when it runs corral), else the template's instance.
pub fn unit_of(name: &str) -> String {
    let running = crate::control::ask(name, &crate::control::Request::Status, std::time::Duration::from_secs(2))
        .ok()
        .and_then(|r| r.status)
        .and_then(|s| std::fs::read_to_string(format!("/proc/{}/cgroup", s.pid)).ok())
        .and_then(|cg| unit_in_cgroup(&cg));
    if let Some(unit) = running {
        return unit;
    }
    let written = format!("/etc/systemd/system/{name}.service");
    match std::fs::read_to_string(&written) {
        Ok(text) if text.contains("corral") => format!("{name}.service"),
        _ => format!("corral@{name}.service"),
    }
}

/// The service unit in a `/proc/PID/cgroup` text ("0::/system.slice/api.service").
pub fn unit_in_cgroup(cgroup: &str) -> Option<String> {
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    path.split('/').rev().find(|c| c.ends_with(".service")).map(str::to_string)
}

/// journalctl's arguments for `req` in `unit`.
pub fn journalctl_args(req: &LogsRequest, unit: &str) -> Vec<String> {
    let mut args = vec!["--unit".to_string(), unit.to_string(), "--output=json".into(), "--no-pager".into()];
    if req.follow {
        args.push("--follow".into());
    }
    if let Some(since) = &req.since {
        args.push(format!("--since={since}"));
    }
    match (req.lines, &req.since) {
        (Some(n), _) => args.push(format!("--lines={n}")),
        (None, None) => args.push("--lines=50".into()),
        (None, Some(_)) => {}
    }
    if let Some(w) = req.worker {
        args.push(format!("CORRAL_WORKER={w}"));
    }
    args
}

/// A journal field as text: journalctl writes a value that is not UTF-8 as an array of bytes.
fn field(entry: &Value, name: &str) -> Option<String> {
    match entry.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Array(bytes) => {
            let raw: Vec<u8> = bytes.iter().filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect();
            Some(String::from_utf8_lossy(&raw).into_owned())
        }
        other => Some(other.to_string()),
    }
}

/// Who wrote an entry: `w2`, `master` or `systemd`.
pub fn author(entry: &Value) -> String {
    if let Some(slot) = field(entry, "CORRAL_WORKER") {
        return format!("w{slot}");
    }
    if field(entry, "_PID").as_deref() == Some("1") || field(entry, "SYSLOG_IDENTIFIER").as_deref() == Some("systemd") {
        return "systemd".into();
    }
    "master".into()
}

/// One entry as a line: "2026-12-04T17:40:01Z w2      | message".
pub fn format_entry(entry: &Value, color: bool) -> Option<String> {
    let message = field(entry, "MESSAGE")?;
    let who = author(entry);
    let when = field(entry, "__REALTIME_TIMESTAMP")
        .and_then(|t| t.parse::<u64>().ok())
        .map(|us| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_micros(us)))
        .map_or_else(String::new, |t| t.to_string());
    let priority: u8 = field(entry, "PRIORITY").and_then(|p| p.parse().ok()).unwrap_or(6);
    let message = crate::text::escape_terminal(&message).into_owned();
    if !color {
        return Some(format!("{when} {who:<7} | {message}"));
    }
    let who_color = match who.strip_prefix('w').and_then(|s| s.parse::<usize>().ok()) {
        Some(slot) => ["36", "35", "34", "32", "33", "96", "95", "94"][slot % 8],
        None if who == "systemd" => "2",
        None => "1",
    };
    let message = match priority {
        0..=3 => format!("\x1b[31m{message}\x1b[0m"),
        4 => format!("\x1b[33m{message}\x1b[0m"),
        _ => message,
    };
    Some(format!("\x1b[2m{when}\x1b[0m \x1b[{who_color}m{who:<7}\x1b[0m | {message}"))
}

/// `corral logs`: the exit status.
pub fn run(req: &LogsRequest) -> u8 {
    let unit = unit_of(&req.name);
    let mut child = match Command::new("journalctl")
        .args(journalctl_args(req, &unit))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral logs: cannot run journalctl: {e} (it comes with systemd)");
            return 1;
        }
    };
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = std::io::stdout().lock();
    let mut shown = 0u64;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(entry) = serde_json::from_str::<Value>(&line) else { continue };
            let Some(text) = format_entry(&entry, color) else { continue };
            // A reader that went away (`| head`) ends it quietly.
            if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                let _ = child.kill();
                let _ = child.wait();
                return 0;
            }
            shown += 1;
        }
    }
    match child.wait() {
        Ok(s) if s.success() => {
            if shown == 0 && !req.follow {
                eprintln!(
                    "corral logs: no entries of {unit}{}",
                    req.worker.map_or(String::new(), |w| format!(" from worker {w}"))
                );
            }
            0
        }
        Ok(_) => 1,
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_comes_from_the_masters_cgroup() {
        assert_eq!(unit_in_cgroup("0::/system.slice/api.service\n").as_deref(), Some("api.service"));
        assert_eq!(
            unit_in_cgroup("0::/system.slice/system-corral.slice/corral@web.service\n").as_deref(),
            Some("corral@web.service")
        );
        assert_eq!(unit_in_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"), None);
    }

    #[test]
    fn arguments_select_the_unit_the_worker_and_the_time() {
        let req = LogsRequest {
            name: "api".into(),
            follow: true,
            worker: Some(2),
            since: Some("1 hour ago".into()),
            lines: None,
        };
        assert_eq!(
            journalctl_args(&req, "api.service"),
            [
                "--unit",
                "api.service",
                "--output=json",
                "--no-pager",
                "--follow",
                "--since=1 hour ago",
                "CORRAL_WORKER=2"
            ]
        );
        let req = LogsRequest { name: "api".into(), ..Default::default() };
        assert!(journalctl_args(&req, "api.service").contains(&"--lines=50".to_string()));
    }

    #[test]
    fn entries_are_prefixed_with_who_wrote_them() {
        let e = serde_json::json!({"MESSAGE": "hello", "CORRAL_WORKER": "2", "__REALTIME_TIMESTAMP": "1764870001000000", "PRIORITY": "6"});
        assert_eq!(format_entry(&e, false).unwrap(), "2025-12-04T17:40:01Z w2      | hello");
        let e = serde_json::json!({"MESSAGE": [104, 105, 255], "SYSLOG_IDENTIFIER": "corral", "_PID": "77"});
        assert_eq!(format_entry(&e, false).unwrap(), " master  | hi\u{fffd}");
        let e = serde_json::json!({"MESSAGE": "Reloading", "_PID": "1"});
        assert!(format_entry(&e, false).unwrap().contains("systemd | Reloading"));
        let e = serde_json::json!({"MESSAGE": "boom\u{1b}[2J", "CORRAL_WORKER": "0", "PRIORITY": "3"});
        let colored = format_entry(&e, true).unwrap();
        assert!(colored.contains("\x1b[31mboom") && !colored.contains("\x1b[2J"), "{colored:?}");
    }
}
