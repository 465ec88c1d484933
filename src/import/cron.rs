//! PM2's `cron_restart` (5 or 6 cron fields, or an @ shortcut) as systemd's `OnCalendar=`.

/// A cron expression as systemd's `OnCalendar=`, for the 5-field forms and the @ shortcuts.
pub fn cron_to_oncalendar(cron: &str) -> Option<String> {
    let cron = cron.trim();
    let short = match cron {
        "@yearly" | "@annually" => Some("yearly"),
        "@monthly" => Some("monthly"),
        "@weekly" => Some("weekly"),
        "@daily" | "@midnight" => Some("daily"),
        "@hourly" => Some("hourly"),
        _ => None,
    };
    if let Some(s) = short {
        return Some(s.to_string());
    }
    let f: Vec<&str> = cron.split_whitespace().collect();
    // PM2's cron also takes 6 fields, seconds first.
    let (sec, f) = match f.len() {
        5 => ("00".to_string(), &f[..]),
        6 => (field(f[0], 0, 59)?, &f[1..]),
        _ => return None,
    };
    let minute = field(f[0], 0, 59)?;
    let hour = field(f[1], 0, 23)?;
    let dom = field(f[2], 1, 31)?;
    let month = field(f[3], 1, 12)?;
    let dow = weekdays(f[4])?;
    let date = format!("*-{month}-{dom}");
    let time = format!("{hour}:{minute}:{sec}");
    Some(match dow {
        Some(d) => format!("{d} {date} {time}"),
        None => format!("{date} {time}"),
    })
}

/// One numeric cron field: `*`, `N`, `A-B`, `*/S`, `A-B/S`, and lists of those.
fn field(f: &str, lo: u32, hi: u32) -> Option<String> {
    let part = |p: &str| -> Option<String> {
        let (range, step) = match p.split_once('/') {
            Some((r, s)) => (r, Some(s.parse::<u32>().ok().filter(|s| *s > 0)?)),
            None => (p, None),
        };
        let num = |s: &str| s.parse::<u32>().ok().filter(|n| (lo..=hi).contains(n));
        let two = |n: u32| if hi >= 10 { format!("{n:02}") } else { n.to_string() };
        let base = match range {
            "*" => match step {
                Some(s) => return Some(format!("{}/{s}", two(lo))),
                None => return Some("*".into()),
            },
            r => match r.split_once('-') {
                Some((a, b)) => format!("{}..{}", two(num(a)?), two(num(b)?)),
                None => two(num(r)?),
            },
        };
        match step {
            // systemd has no stepped range: spell it out.
            Some(s) if base.contains("..") => {
                let (a, b) = range.split_once('-')?;
                let (a, b) = (num(a)?, num(b)?);
                Some((a..=b).step_by(s as usize).map(two).collect::<Vec<_>>().join(","))
            }
            Some(s) => Some(format!("{base}/{s}")),
            None => Some(base),
        }
    };
    f.split(',').map(part).collect::<Option<Vec<_>>>().map(|v| v.join(","))
}

/// The day-of-week field: None for `*`.
fn weekdays(f: &str) -> Option<Option<String>> {
    if f == "*" || f == "?" {
        return Some(None);
    }
    const NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    let day = |s: &str| -> Option<&'static str> {
        if let Ok(n) = s.parse::<usize>() {
            return NAMES.get(n % 7).copied().filter(|_| n <= 7);
        }
        NAMES.iter().copied().find(|n| n.eq_ignore_ascii_case(s.get(..3).unwrap_or("")))
    };
    let parts: Option<Vec<String>> = f
        .split(',')
        .map(|p| match p.split_once('-') {
            Some((a, b)) => Some(format!("{}..{}", day(a)?, day(b)?)),
            None => day(p).map(str::to_string),
        })
        .collect();
    parts.map(|p| Some(p.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_become_oncalendar() {
        for (cron, want) in [
            ("0 3 * * 1-5", Some("Mon..Fri *-*-* 03:00:00")),
            ("0 0 * * *", Some("*-*-* 00:00:00")),
            ("*/15 * * * *", Some("*-*-* *:00/15:00")),
            ("30 2 1 * *", Some("*-*-01 02:30:00")),
            ("0 0,12 * * 0", Some("Sun *-*-* 00,12:00:00")),
            ("0 0 * * 7", Some("Sun *-*-* 00:00:00")),
            ("0 8-18/2 * * *", Some("*-*-* 08,10,12,14,16,18:00:00")),
            ("0 0 1 1 *", Some("*-01-01 00:00:00")),
            ("15 30 4 * * *", Some("*-*-* 04:30:15")),
            ("0 9 * * mon,fri", Some("Mon,Fri *-*-* 09:00:00")),
            ("@daily", Some("daily")),
            ("@hourly", Some("hourly")),
            ("61 * * * *", None),
            ("* * *", None),
            ("0 0 * * 9", None),
            ("*/0 * * * *", None),
            ("nonsense", None),
        ] {
            assert_eq!(cron_to_oncalendar(cron).as_deref(), want, "{cron}");
        }
    }
}
