//! Text helpers shared by the layers that talk to people: terminal-safe escaping of text from
//! outside, human durations and sizes, TOML string literals. A leaf: it depends on nothing of
//! corral's.

use std::fmt::Write as _;
use std::time::Duration;

/// Seconds as "42s", "3m 5s", "2h 5m", "3d 4h" (the status table's uptime).
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// Bytes in IEC units ("1.5 MiB").
pub fn human_bytes(b: u64) -> String {
    bytesize::ByteSize(b).display().iec().to_string()
}

/// Text from outside (a worker's `STATUS=`, its output, an error that quotes it) made safe for a
/// terminal, as `systemctl` and `journalctl` do: control characters (C0 but tab, DEL, C1) become
/// visible `\xNN` escapes, so no worker can move the cursor, retitle the window or hide text.
/// Machine output (JSON, journald fields) keeps the exact text.
pub fn escape_terminal(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| (c.is_control() && c != '\t') || c == '\u{7f}';
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A duration in whole milliseconds ("1s 569ms", not nanoseconds), for log lines.
pub fn human_ms(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
}

/// `s` as a TOML basic string, quoted and escaped.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_are_made_visible() {
        assert_eq!(escape_terminal("plain\ttext ✓"), "plain\ttext ✓");
        assert_eq!(escape_terminal("\x1b]0;owned\x07\x1b[2J"), "\\x1b]0;owned\\x07\\x1b[2J");
        assert_eq!(escape_terminal("a\rb\nc\u{9b}d\u{7f}"), "a\\x0db\\x0ac\\x9bd\\x7f");
    }

    #[test]
    fn durations_sizes_and_toml_strings() {
        assert_eq!(human_duration(59.9), "59s");
        assert_eq!(human_duration(3725.0), "1h 2m");
        assert_eq!(human_bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(human_ms(Duration::from_nanos(1_569_400_000)).to_string(), "1s 569ms");
        for tricky in ["plain", "a \"b\"\n", "back\\slash", "'single'", "tab\tand ✓"] {
            let doc: toml::Table = toml::from_str(&format!("x = {}", toml_str(tricky))).unwrap();
            assert_eq!(doc["x"].as_str(), Some(tricky), "{}", toml_str(tricky));
        }
    }
}
