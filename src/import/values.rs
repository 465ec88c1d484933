//! PM2's values as corral's: names, durations (milliseconds), memory sizes, argument lists, the
//! interpreter PM2 picks by extension; and the TOML and path spellings the imported config uses.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::text::toml_str;

/// A pool name from a PM2 name: PM2 allows anything; units and /run paths do not.
pub(super) fn pool_name(pm2: &str) -> String {
    let mut n: String =
        pm2.chars().map(|c| if c.is_ascii_alphanumeric() || "_.@-".contains(c) { c } else { '-' }).collect();
    if !n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
        n = format!("app{n}");
    }
    n.truncate(64);
    n
}

/// A PM2 scalar as text (numbers, booleans and strings alike).
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// PM2 durations are milliseconds (a number, or a string of digits), or strings like "10s".
pub(super) fn millis(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => n.as_u64().map(ms_text),
        Value::String(s) if s.trim().chars().all(|c| c.is_ascii_digit()) && !s.trim().is_empty() => {
            s.trim().parse().ok().map(ms_text)
        }
        Value::String(s) => humantime::parse_duration(s.trim()).ok().map(|_| s.trim().to_string()),
        _ => None,
    }
}

fn ms_text(ms: u64) -> String {
    if ms > 0 && ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// PM2 memory sizes: "300M", "1G", "512K" (powers of 1024) or bytes.
pub(super) fn memory(v: &Value) -> Option<String> {
    let s = text(v)?;
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let unit = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => "B",
        "K" | "KB" => "KiB",
        "M" | "MB" => "MiB",
        "G" | "GB" => "GiB",
        _ => return None,
    };
    Some(format!("{n}{unit}"))
}

/// The interpreter PM2 picks for a script by its extension (`interpreter: "none"`: run it).
pub(super) fn interpreter_for(script: &str) -> Option<&'static str> {
    let ext = Path::new(script).extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "js" | "cjs" | "mjs" => Some("node"),
        "ts" | "tsx" => Some("ts-node"),
        "py" => Some("python3"),
        "rb" => Some("ruby"),
        "php" => Some("php"),
        "pl" => Some("perl"),
        "sh" => Some("bash"),
        "coffee" => Some("coffee"),
        _ => None,
    }
}

/// `args`/`interpreter_args`: an array, or a string split as a shell would.
pub(super) fn argv(v: &Value, key: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Array(a) => a.iter().map(|x| text(x).ok_or_else(|| format!("`{key}` must hold strings"))).collect(),
        Value::String(s) => shlex::split(s).ok_or_else(|| format!("`{key}`: unbalanced quotes in {s:?}")),
        Value::Null => Ok(Vec::new()),
        other => text(other).map(|t| vec![t]).ok_or_else(|| format!("`{key}` must be a string or a list")),
    }
}

pub(super) fn toml_argv(argv: &[String]) -> String {
    format!("[{}]", argv.iter().map(|a| toml_str(a)).collect::<Vec<_>>().join(", "))
}

pub(super) fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        toml_str(k)
    }
}

/// `a/./b/../c` → `a/c`, without touching the filesystem (the app may not be deployed yet).
pub(super) fn normalize(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")).join(p)
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pm2_values() {
        assert_eq!(memory(&Value::from("300M")).as_deref(), Some("300MiB"));
        assert_eq!(memory(&Value::from("1G")).as_deref(), Some("1GiB"));
        assert_eq!(memory(&Value::from("512K")).as_deref(), Some("512KiB"));
        assert_eq!(memory(&Value::from(1048576)).as_deref(), Some("1048576B"));
        assert_eq!(memory(&Value::from("lots")), None);
        assert_eq!(millis(&Value::from(2000)).as_deref(), Some("2s"));
        assert_eq!(millis(&Value::from(1500)).as_deref(), Some("1500ms"));
        assert_eq!(millis(&Value::from("3000")).as_deref(), Some("3s"));
        assert_eq!(millis(&Value::from("5s")).as_deref(), Some("5s"));
        assert_eq!(millis(&Value::from("soon")), None);
        assert_eq!(pool_name("my api/v2"), "my-api-v2");
        assert_eq!(pool_name("-x"), "app-x");
        assert!(crate::config::check_pool_name(&pool_name(&"x".repeat(100))).is_ok());
        assert_eq!(argv(&Value::from("--a 'b c'"), "args").unwrap(), ["--a", "b c"]);
        assert_eq!(argv(&serde_json::json!(["x", 1]), "args").unwrap(), ["x", "1"]);
        assert!(argv(&Value::from("'open"), "args").is_err());
    }
}
